"""One run: its data (IDX files, TFDS, feeds to the devices), the training step, the checked
config, the run directory, checkpoints, and the loop that ties them (`run`).

RunError is the one error a run (and a sweep, cnnjax.sweeps) raises for people: its message
says what is wrong and what to do; the entry points print it as one line.
"""


class RunError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""
