"""Measurement: speed against peers, sweep layouts, per-op profiles, the accelerator check."""
