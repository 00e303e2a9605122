"""Prepare, here, what an offline accelerator image lacks to run cnnjax: wheels of the packages
of --lock that it does not have (cnnjax/bench/wheels.py lists the H200 image's), and the MNIST IDX
files for the device check's real data.

    python -m experiments.device_wheels --out .device

Then on that machine, from the repository root (README: On a GPU or TPU):

    python3 -m pip install --no-index --no-deps --target /tmp/site .device/wheels/*.whl
    PYTHONPATH=/tmp/site:. CNNJAX_DATA_DIR=.device/mnist python3 -m experiments.device_check
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

import experiments
from cnnjax.bench import wheels
from cnnjax.training import RunError, idx

_OUT = flags.DEFINE_string("out", ".device", "folder for wheels/ and mnist/ (git-ignored)")
_LOCK = flags.DEFINE_string("lock", "constraints-newest.txt", "the lock file to take pins from")
_PYTHON = flags.DEFINE_string("python", "3.12", "the image's Python version")


def main(argv) -> int:
    if len(argv) > 1:
        raise RunError(f"unexpected arguments {argv[1:]}: every option is a flag, --name=value")
    out = Path(_OUT.value)
    wanted = wheels.missing(wheels.pins(Path(_LOCK.value).read_text()))
    print(f"{len(wanted)} packages the image lacks: {', '.join(wanted)}")
    try:
        files = wheels.download(wanted, out / "wheels", _PYTHON.value)
    except wheels.WheelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    megabytes = sum(f.stat().st_size for f in files) / 2**20
    print(f"{len(files)} wheels in {out / 'wheels'} ({megabytes:.1f} MiB)")
    source = idx.find_source_dir("mnist")
    if source is None:
        print("no MNIST IDX files here (see README: Data); the device check's run needs them")
    else:
        copied = wheels.copy_idx_files(source, out / "mnist")
        print(f"{len(copied)} MNIST IDX files from {source} in {out / 'mnist'}")
    return 0


if __name__ == "__main__":
    experiments.run(main)
