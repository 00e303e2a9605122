"""Progress bars on stderr (tqdm), one per epoch: shown on a terminal, silent in logs and CI."""

from __future__ import annotations

import numbers
import sys
from collections.abc import Iterable

from tqdm.std import tqdm

from cnnjax.output import jsonl


class Progress(tqdm):
    """A tqdm bar whose `set_metrics` takes jax/numpy scalars and converts them only when drawn.

    Converting a jax array to a float waits for the device; doing it only at the bar's refresh
    rate (at most every `mininterval` seconds) keeps the training loop's dispatch asynchronous.
    The values must not be donated buffers that a later step invalidates.
    """

    def __init__(self, *args, **kwargs):
        self._metrics = {}
        super().__init__(*args, **kwargs)

    def set_metrics(self, **values) -> None:
        """Shows `name=value` (4 decimals) after the bar from the next redraw on."""
        if not self.disable:
            self._metrics = values

    @property
    def format_dict(self):
        info = super().format_dict
        if self._metrics:  # set_metrics keeps none while disabled; close() disables first
            shown = ", ".join(f"{k}={_format_metric(v)}" for k, v in self._metrics.items())
            info["postfix"] = shown if not info.get("postfix") else f"{info['postfix']}, {shown}"
        return info


def _format_metric(value) -> str:
    value = jsonl.plain(value)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def progress(
    iterable_or_total: Iterable | int, description: str = "", enabled: bool | None = None, **kw
) -> Progress:
    """A progress bar on stderr, e.g. one per epoch.

    Args:
      iterable_or_total: what to iterate over (`for batch in progress(batches, "epoch 1")`), or
        an int total for a bar advanced by hand with `bar.update(n)`.
      description: the text before the bar.
      enabled: True/False to force; None shows the bar only when stderr is a terminal (not in
        CI or a log file). A disabled bar prints nothing and still iterates.
      **kw: passed on to tqdm (e.g. `leave=False`, `total=` for an iterable without len).
    Returns:
      A `Progress` (a tqdm); call `bar.set_metrics(loss=loss, accuracy=acc)` to show values and
      `bar.close()` when done if not iterating it to the end.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if isinstance(iterable_or_total, numbers.Integral):
        iterable, kw = None, {"total": int(iterable_or_total), **kw}
    else:
        iterable = iterable_or_total
    kw = {"dynamic_ncols": True, **kw}
    return Progress(iterable, desc=description, disable=not enabled, file=sys.stderr, **kw)
