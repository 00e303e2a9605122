"""Entry points (python -m experiments.X): each parses flags and calls the library."""

import importlib.util

from absl import app, flags, logging

from cnnjax import runtime, sweep


def begin(argv) -> None:
    """What every entry point does first: refuse stray arguments, show only warnings from
    jax's start-up unless --verbosity was given, and apply cnnjax.runtime's XLA:CPU settings
    (before anything starts JAX) unless $CNNJAX_UNTUNED is set."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if runtime.wanted():
        logging.info("runtime settings: %s", runtime.tune())


def sweep_axes(path: str):
    """get_sweep() of the config file at `path`."""
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise sweep.SweepError(f"{path} has no get_sweep(); a sweep config defines get_sweep() "
                               "returning a list of axes (see configs/sweep_lr.py)")  # fmt: skip
    return module.get_sweep()
