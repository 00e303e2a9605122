"""The MNIST family as files: the IDX format, the two datasets' facts, where their files are found,
their checksums. NumPy and the standard library only (no TFDS): `cnnjax.training.data` builds its
TFDS datasets on this module, and a check that needs a few real images reads them here directly.

Legend: images_NHW / images_NHWC uint8 (C = 1), labels_N class ids. Each decompressed IDX file
must match the sha256 in its dataset's table; the gzip wrapper is not checked, because
legitimate copies differ in it. Source directory, in order: the `source_dir` argument (a config
field / CLI flag), $CNNJAX_DATA_DIR, the dataset's DEFAULT_SOURCE. Its errors are RunErrors
(one line: the file, what is wrong, the fix) that are also a ValueError (a corrupt file) or a
FileNotFoundError (files missing).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from cnnjax.training import RunError

IMAGES_MAGIC = 0x00000803  # uint8 data, 3 dims (N, H, W)
LABELS_MAGIC = 0x00000801  # uint8 data, 1 dim (N,)
GZIP_MAGIC = b"\x1f\x8b"  # an IDX file starts with 0x00, so the first bytes tell gz from raw
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
STEMS = (*FILES["train"], *FILES["test"])
IMAGE_HWC = (28, 28, 1)
ENV_VAR = "CNNJAX_DATA_DIR"  # a directory holding the four IDX files
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install -y dataset-fashion-mnist
REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: cnnjax/training/idx.py
SHARED_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"  # full MNIST on our machines
SOURCE_FLAG = "--config.data.source_dir"  # a run's flag for the source directory
REPLACE = (
    f"replace it with an official copy (gz or raw), or pass {SOURCE_FLAG}=DIR "
    f"(or set {ENV_VAR}=DIR) for a directory of good copies"
)


class CorruptFile(RunError, ValueError):
    """An IDX file that is not what it must be (broken gzip, bad header, wrong size, sha256)."""


class MissingFiles(RunError, FileNotFoundError):
    """IDX files that are not where they are looked for, or cannot be downloaded."""


# --------------------------------------------------------------------------- the format


def decompressed_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped if they start with the gzip magic (whatever the name says)."""
    raw = path.read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise CorruptFile(f"{path}: a broken gzip file ({error}); {REPLACE}") from error


def parse_idx(raw: bytes, where) -> np.ndarray:
    """The content of an IDX file as a uint8 array of the shape its header gives.

    The header is big-endian: a 4-byte magic 0x00000803 (images) or 0x00000801 (labels),
    whose last byte is the number of dims, then one uint32 per dim; the data follows as uint8.
    Raises CorruptFile (a ValueError) naming `where` for an unknown magic or a size that does
    not match.
    """
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        found = "a file shorter than 4 bytes" if magic is None else f"0x{magic:08x}"
        raise CorruptFile(
            f"{where}: not an MNIST IDX file: its magic must be 0x{IMAGES_MAGIC:08x} (images) "
            f"or 0x{LABELS_MAGIC:08x} (labels), got {found}; {REPLACE}"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise CorruptFile(
            f"{where}: truncated: its header needs {header_size} bytes, it has {len(raw)}; "
            f"{REPLACE}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header_size + int(np.prod(dims))
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "too long"
        raise CorruptFile(
            f"{where}: {problem}: its header says shape {dims}, which needs {expected} bytes, "
            f"but it has {len(raw)}; {REPLACE}"
        )
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(dims)


def read_idx(path) -> np.ndarray:
    """An IDX file (gzipped or raw, whatever its name says) as a uint8 array; see parse_idx."""
    return parse_idx(decompressed_bytes(Path(path)), path)


def normalize(images_uint8) -> np.ndarray:
    """uint8 pixels 0..255 as float32 in [0, 1]."""
    return np.asarray(images_uint8, np.float32) / np.float32(255.0)


# --------------------------------------------------------------------------- the datasets

# sha256 of each decompressed IDX file. MNIST: as in ../shared/data/mnist/PROVENANCE.md, the
# official files (their md5s too match the published ones).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# Fashion-MNIST: computed from Debian's dataset-fashion-mnist (recompressed .gz, official
# content); these sha256s and the md5s (f4a8712d.., 9018921c.., 8181f547.., 15d48437..) are the
# values other projects publish for the files inside Zalando's .gz.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


class Dataset:
    """One dataset's facts, as class attributes (the TFDS builders in cnnjax.training.data inherit
    them): CLASS_NAMES (index = label), URL (where TFDS downloads the .gz files from), SHA256 (of
    each decompressed IDX file, by stem), DEFAULT_SOURCE, INSTALL_HINT, HOMEPAGE."""

    CLASS_NAMES: tuple[str, ...] = ()
    URL = ""
    SHA256: ClassVar[dict[str, str]] = {}
    DEFAULT_SOURCE = Path()
    INSTALL_HINT = ""
    HOMEPAGE = ""


class Mnist(Dataset):
    """MNIST handwritten digits (LeCun, Cortes, Burges; CC BY-SA 3.0)."""

    CLASS_NAMES = tuple(str(digit) for digit in range(10))
    URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"  # TFDS's own mirror
    SHA256 = MNIST_SHA256
    DEFAULT_SOURCE = SHARED_DIR
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"


class FashionMnist(Dataset):
    """Fashion-MNIST: Zalando's article images (MIT)."""

    CLASS_NAMES = (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )  # fmt: skip
    URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # as TFDS's builder
    SHA256 = FASHION_MNIST_SHA256
    DEFAULT_SOURCE = DEBIAN_DIR
    INSTALL_HINT = "run `apt-get install -y dataset-fashion-mnist` (it installs them there)"
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"


DATASETS = {"mnist": Mnist, "fashion_mnist": FashionMnist}


def dataset(name: str) -> type[Dataset]:
    """The facts of dataset `name`, a key of DATASETS."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def class_names(name: str) -> tuple[str, ...]:
    """The class names of dataset `name`, index = label."""
    return dataset(name).CLASS_NAMES


def num_classes(name: str) -> int:
    """How many classes dataset `name` has."""
    return len(class_names(name))


# --------------------------------------------------------------------------- finding the files


def find_source_dir(name: str, source_dir=None) -> Path | None:
    """The directory to read dataset `name`'s IDX files from; None: none here (download them).

    Order: source_dir, $CNNJAX_DATA_DIR, the dataset's DEFAULT_SOURCE (if it exists). The
    first two must be directories: a wrong path is an error, not silently passed over.
    """
    return source_of(dataset(name), source_dir)


def source_of(facts: type[Dataset], source_dir) -> Path | None:
    """find_source_dir for a Dataset class (or a TFDS builder, which is one)."""
    for given, origin in ((source_dir, "source_dir"), (os.environ.get(ENV_VAR), ENV_VAR)):
        if given:
            if not Path(given).is_dir():
                flag = f"{SOURCE_FLAG}=DIR" if origin == "source_dir" else f"{ENV_VAR}=DIR"
                raise MissingFiles(
                    f"{origin}={given} is not a directory: pass {flag} for a directory that "
                    f"holds the four IDX files {', '.join(STEMS)} (each .gz or raw)"
                )
            return Path(given)
    default = facts.DEFAULT_SOURCE
    return default if default.is_dir() else None


def how_to_provide(facts: type[Dataset]) -> str:
    ways = [
        f"pass source_dir=DIR ({SOURCE_FLAG}=DIR) for a directory DIR that holds them",
        f"set {ENV_VAR}=DIR",
        f"put them into {facts.DEFAULT_SOURCE}",
    ]
    if facts.INSTALL_HINT:
        ways.append(facts.INSTALL_HINT)
    ways.append(f"or let TFDS download them from {facts.URL} (needs the internet)")
    return "Ways to provide the IDX files: " + "; ".join(ways) + "."


def missing(label: str, facts: type[Dataset], problem: str) -> MissingFiles:
    """The error for IDX files that cannot be had: what is wrong, the four names, the ways."""
    return MissingFiles(
        f"{label} cannot be prepared: {problem} It needs the four IDX files "
        f"{', '.join(STEMS)} (each .gz or raw) in one directory. {how_to_provide(facts)}"
    )


def idx_paths(label: str, facts: type[Dataset], source: Path) -> dict[str, Path]:
    """stem -> the file in `source` (stem.gz or stem); an error names the first one missing."""
    paths = {}
    for stem in STEMS:
        found = [source / name for name in (f"{stem}.gz", stem) if (source / name).is_file()]
        if not found:
            raise missing(label, facts, f"neither {stem}.gz nor {stem} is in {source}.")
        paths[stem] = found[0]
    return paths


def read_verified(path: Path, expected_sha256: str | None, label: str, facts) -> np.ndarray:
    """An IDX file's array, after checking its header and size (parse_idx) and then the sha256
    of its decompressed content (so a truncated file is called truncated)."""
    raw = decompressed_bytes(Path(path))
    array = parse_idx(raw, path)
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected_sha256:
        stem = Path(path).name.removesuffix(".gz")
        raise CorruptFile(
            f"{path}: checksum mismatch: the sha256 of its decompressed content is {actual}, but "
            f"{label} expects {expected_sha256} for {stem} (a corrupt or unofficial file); "
            f"{REPLACE}"
        )
    return array


def read_split(name: str, split: str, source: Path, checksums=None):
    """(images_NHWC uint8, labels_N int32) of a split, straight from the verified IDX files in
    `source` (see find_source_dir); checksums replaces the dataset's sha256 table (test data)."""
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    facts = dataset(name)
    table = facts.SHA256 if checksums is None else checksums
    paths = idx_paths(name, facts, Path(source))
    images_NHW, labels_N = (
        read_verified(paths[stem], table.get(stem), name, facts) for stem in FILES[split]
    )
    check_pair(name, images_NHW, labels_N)
    return images_NHW[..., None], labels_N.astype(np.int32)


def check_pair(label: str, images_NHW, labels_N) -> None:
    """A CorruptFile unless images_NHW are 28x28 images and labels_N one label for each."""
    if images_NHW.shape[1:] != IMAGE_HWC[:2] or images_NHW.shape[:1] != labels_N.shape:
        raise CorruptFile(
            f"{label}: images {images_NHW.shape} and labels {labels_N.shape} do not pair up "
            f"(expected (N, {IMAGE_HWC[0]}, {IMAGE_HWC[1]}) and (N,)); {REPLACE}"
        )
