"""MNIST-family IDX files (MNIST, Fashion-MNIST) from a local directory: arrays in, arrays out.

Legend: images_NHWC uint8 with C = 1, labels_N int32 class ids. A later version loads through
tensorflow-datasets; this one reads the four standard IDX files, gzipped or raw.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

IMAGES_MAGIC = 0x00000803  # uint8 data, 3 dims (N, H, W)
LABELS_MAGIC = 0x00000801  # uint8 data, 1 dim (N,)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"  # full MNIST on our machines


def read_idx(path) -> np.ndarray:
    """An IDX file (.gz or raw) as a uint8 array of the shape its header gives.

    The header is big-endian: a 4-byte magic 0x00000803 (images) or 0x00000801 (labels),
    whose last byte is the number of dims, then one uint32 per dim; the data follows as uint8.
    Raises ValueError naming the file for an unknown magic or a size that does not match.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = bytearray(f.read())  # a bytearray, so the arrays made from it are writable
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        found = "a file shorter than 4 bytes" if magic is None else f"0x{magic:08x}"
        raise ValueError(
            f"{path}: not an MNIST IDX file: magic must be 0x{IMAGES_MAGIC:08x} (images) or "
            f"0x{LABELS_MAGIC:08x} (labels), got {found}"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: header needs {header_size} bytes, file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header_size + int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(
            f"{path}: header says shape {dims}, which needs {expected} bytes, but the file has "
            f"{len(raw)} (truncated or corrupt; download it again)"
        )
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(dims)


def _find(data_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise FileNotFoundError(
        f"neither {stem}.gz nor {stem} is in {data_dir}; that directory needs the four IDX files "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte; .gz or raw)"
    )


def load_split(data_dir, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images_NHWC uint8 with C = 1, labels_N int32) of split "train" or "test"."""
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    images_stem, labels_stem = FILES[split]
    images_NHW = read_idx(_find(Path(data_dir), images_stem))
    labels_N = read_idx(_find(Path(data_dir), labels_stem))
    if images_NHW.ndim != 3 or labels_N.ndim != 1 or len(images_NHW) != len(labels_N):
        raise ValueError(
            f"{data_dir}: {split} images {images_NHW.shape} and labels {labels_N.shape} do not "
            "pair up (expected (N, H, W) and (N,))"
        )
    return images_NHW[..., None], labels_N.astype(np.int32)


def default_data_dir() -> Path:
    """The first existing directory of: $CNNJAX_DATA_DIR, Debian's Fashion-MNIST, and
    ../shared/data/mnist beside the repo root. A CNNJAX_DATA_DIR that is set but is not a
    directory is an error, not silently skipped."""
    env = os.environ.get("CNNJAX_DATA_DIR")
    if env and not Path(env).is_dir():
        raise FileNotFoundError(f"CNNJAX_DATA_DIR={env} is not a directory")
    candidates = [Path(env)] if env else []
    candidates += [DEBIAN_DIR, SHARED_DIR]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    names = ", ".join(f"{stem}.gz" for pair in FILES.values() for stem in pair)
    raise FileNotFoundError(
        f"no MNIST-family data found (looked in {', '.join(map(str, candidates))}). Either put "
        f"the four IDX files ({names}; .gz or raw) into {SHARED_DIR}, or run "
        "`apt-get install -y dataset-fashion-mnist` (Fashion-MNIST into "
        f"{DEBIAN_DIR}), or set CNNJAX_DATA_DIR to a directory that holds them."
    )


def normalize(images_uint8) -> np.ndarray:
    """uint8 pixels 0..255 as float32 in [0, 1]."""
    return np.asarray(images_uint8, np.float32) / np.float32(255.0)
