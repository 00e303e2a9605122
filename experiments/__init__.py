"""Entry points (python -m experiments.X): each parses flags and calls the library."""

from absl import app, flags, logging


def begin(argv) -> None:
    """What every entry point does first: refuse stray arguments, and show only warnings from
    jax's start-up unless --verbosity was given."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
