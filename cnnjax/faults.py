"""Named points in the code where a test may kill this process outright (SIGKILL, as an
out-of-memory killer or a cluster scheduler would), to prove what a crash there leaves behind.

    CNNJAX_KILL_AT=checkpoint.saved python -m experiments.train ...     # at the first arrival
    CNNJAX_KILL_AT=results.row:2 python -m experiments.sweep ...        # at the second

Unset (always, outside tests), `point` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_arrivals: dict[str, int] = {}


def point(name: str) -> None:
    """Kill this process with SIGKILL if $CNNJAX_KILL_AT names this point ("name" or "name:n",
    the n-th arrival, 1-based); else return at once."""
    wanted = os.environ.get("CNNJAX_KILL_AT")
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    if target != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
