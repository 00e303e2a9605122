"""Output: metrics files (jsonl), tables, progress bars, plots."""
