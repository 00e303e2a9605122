"""Entry points (python -m experiments.X): each parses flags and calls the library."""

import importlib.util

from absl import app, flags, logging

from cnnjax import sweep


def begin(argv) -> None:
    """What every entry point does first: refuse stray arguments, and show only warnings from
    jax's start-up unless --verbosity was given."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def sweep_axes(path: str):
    """get_sweep() of the config file at `path`."""
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise sweep.SweepError(f"{path} has no get_sweep(); a sweep config defines get_sweep() "
                               "returning a list of axes (see configs/sweep_lr.py)")  # fmt: skip
    return module.get_sweep()
