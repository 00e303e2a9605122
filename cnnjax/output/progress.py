"""Progress on stderr, one per epoch: a tqdm bar on a terminal; elsewhere (a log file, a pipe,
CI) one plain line when the bar closes, e.g. `epoch 3/30  loss 0.3121  acc 0.8876  11,234 img/s
41.2 s`."""

from __future__ import annotations

import numbers
import sys
import time
from collections.abc import Iterable

import numpy as np
from tqdm.std import tqdm

from cnnjax.output import jsonl


class Progress(tqdm):
    """A tqdm bar whose `set_metrics` takes jax/numpy scalars and converts them only when drawn.

    Converting a jax array to a float waits for the device; doing it only at the bar's refresh
    rate (at most every `mininterval` seconds) keeps the training loop's dispatch asynchronous.
    The values must not be donated buffers that a later step invalidates.

    With `line=True` (and disable=True) nothing is drawn; `close()` writes one line instead:
    the description, each metric, images per second (given `images_per_step`) and the seconds
    since the bar was made, with "n/total steps" if it closed before its total.
    """

    def __init__(self, *args, line: bool = False, images_per_step: int | None = None, **kwargs):
        self._metrics = {}
        self._line, self._images_per_step = line, images_per_step
        self._file, self._start = kwargs.get("file", sys.stderr), time.perf_counter()
        self._description = kwargs.get("desc", "")  # a disabled tqdm keeps no desc
        super().__init__(*args, **kwargs)

    def set_metrics(self, **values) -> None:
        """Shows `name=value` (4 decimals) after the bar from the next redraw on; an array of
        values (a population's members) shows as its finite range, min..max."""
        if not self.disable or self._line:
            self._metrics = values

    @property
    def format_dict(self):
        info = super().format_dict
        if self._metrics:  # set_metrics keeps none while disabled; close() disables first
            shown = ", ".join(f"{k}={_format_metric(v)}" for k, v in self._metrics.items())
            info["postfix"] = shown if not info.get("postfix") else f"{info['postfix']}, {shown}"
        return info

    def update(self, n=1):
        if self.disable and self._line:  # a disabled tqdm counts nothing; the line needs n
            self.n += n
            return None
        return super().update(n)

    def __iter__(self):
        if not (self.disable and self._line):
            yield from super().__iter__()
            return
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def close(self) -> None:
        if self._line:
            self._line = False  # once
            self._file.write(self.plain_line() + "\n")
            self._file.flush()
        super().close()

    def __del__(self):
        self._line = False  # a bar dropped without close() (an exception) writes no line
        super().__del__()

    def plain_line(self) -> str:
        """The line `close()` writes (no control characters): what the bar showed, in words."""
        seconds = time.perf_counter() - self._start
        parts = [self._description]
        if self.total is not None and self.n != self.total:
            parts.append(f"{self.n}/{self.total} steps")
        parts += [f"{k} {_format_metric(v)}" for k, v in self._metrics.items()]
        if self._images_per_step:
            parts.append(f"{self.n * self._images_per_step / max(seconds, 1e-9):,.0f} img/s")
        parts.append(f"{seconds:.1f} s")
        return "  ".join(p for p in parts if p)


def _format_metric(value) -> str:
    value = jsonl.plain(value)
    if isinstance(value, list):
        finite = np.asarray(value, np.float64)
        finite = finite[np.isfinite(finite)]
        if not finite.size:
            return "nan"
        low, high = (_format_metric(v) for v in (finite.min(), finite.max()))
        return low if len(value) == 1 else f"{low}..{high}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def progress(
    iterable_or_total: Iterable | int,
    description: str = "",
    enabled: bool | None = None,
    *,
    images_per_step: int | None = None,
    **kw,
) -> Progress:
    """Progress on stderr, e.g. one per epoch.

    Args:
      iterable_or_total: what to iterate over (`for batch in progress(batches, "epoch 1")`), or
        an int total for a bar advanced by hand with `bar.update(n)`.
      description: the text before the bar (and at the start of the line).
      enabled: True: a bar; False: nothing at all (e.g. on processes other than the first).
        None: a bar when stderr is a terminal, else one plain line (flushed) at close.
        A disabled bar prints nothing and still iterates.
      images_per_step: the images in one step (the batch size), for the line's img/s.
      **kw: passed on to tqdm (e.g. `leave=False`, `total=` for an iterable without len).
    Returns:
      A `Progress` (a tqdm); call `bar.set_metrics(loss=loss, acc=acc)` to show values and
      `bar.close()` when done if not iterating it to the end.
    """
    line = enabled is None and not sys.stderr.isatty()
    if enabled is None:
        enabled = not line
    if isinstance(iterable_or_total, numbers.Integral):
        iterable, kw = None, {"total": int(iterable_or_total), **kw}
    else:
        iterable = iterable_or_total
    kw = {"dynamic_ncols": True, **kw}
    return Progress(
        iterable,
        desc=description,
        disable=not enabled,
        file=sys.stderr,
        line=line,
        images_per_step=images_per_step,
        **kw,
    )
