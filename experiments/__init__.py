"""Entry points (python -m experiments.X): each parses flags and calls the library."""

from absl import app, flags, logging

from cnnjax import runtime


def begin(argv, *, deterministic: bool = True) -> None:
    """What every entry point does first: refuse stray arguments, show only warnings from
    jax's start-up unless --verbosity was given, and apply cnnjax.runtime's settings for the
    platform the work will run on (before anything starts JAX; `deterministic`: a run's
    config.train.deterministic) unless $CNNJAX_UNTUNED is set."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if runtime.wanted():
        logging.info("runtime settings: %s", runtime.tune(deterministic=deterministic))
