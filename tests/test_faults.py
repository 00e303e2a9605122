"""cnnjax.faults: a named point kills the process at the chosen arrival, and only there."""

import subprocess
import sys

import pytest

from tests.builders import REPO

SCRIPT = """
from cnnjax import faults
for i in range(3):
    faults.point("a")
    print(i, flush=True)
"""


@pytest.mark.parametrize(
    ("kill_at", "printed", "code"), [("a", "", -9), ("a:3", "0\n1\n", -9), ("b", "0\n1\n2\n", 0)]
)
def test_a_point_kills_the_process_at_the_chosen_arrival(kill_at, printed, code):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"CNNJAX_KILL_AT": kill_at, "PATH": ""},
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (code, printed), done.stderr
