"""MNIST-family datasets through tensorflow-datasets (TFDS), without TensorFlow: arrays out.

Legend: images_NHW / images_NHWC uint8 (C = 1), labels_N class ids.

`load(name, split)` reads TFDS array_record files through `tfds.data_source`. The first call
prepares them with our own builders (`cnnjax_mnist`, `cnnjax_fashion_mnist`): the four standard
IDX files (gz or raw) come from a source directory, else from TFDS's download. Each decompressed
IDX file must match the sha256 in its builder's table; the gzip wrapper is not checked, because
legitimate copies differ in it. Features are `tfds.features.Tensor`, since Image features need
TensorFlow. Source directory, in order: the `source_dir` argument (a config field / CLI flag),
$CNNJAX_DATA_DIR, the builder's DEFAULT_SOURCE, else TFDS's download.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

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
REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"  # full MNIST on our machines


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


def _decompressed_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: a broken gzip file ({error}); replace it") from error


def parse_idx(raw: bytes, where) -> np.ndarray:
    """The content of an IDX file as a uint8 array of the shape its header gives.

    The header is big-endian: a 4-byte magic 0x00000803 (images) or 0x00000801 (labels),
    whose last byte is the number of dims, then one uint32 per dim; the data follows as uint8.
    Raises ValueError naming `where` for an unknown magic or a size that does not match.
    """
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic not in (IMAGES_MAGIC, LABELS_MAGIC):
        found = "a file shorter than 4 bytes" if magic is None else f"0x{magic:08x}"
        raise ValueError(
            f"{where}: not an MNIST IDX file: magic must be 0x{IMAGES_MAGIC:08x} (images) or "
            f"0x{LABELS_MAGIC:08x} (labels), got {found}"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{where}: header needs {header_size} bytes, file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = header_size + int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(
            f"{where}: header says shape {dims}, which needs {expected} bytes, but the file has "
            f"{len(raw)} (truncated or corrupt; download it again)"
        )
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(dims)


def read_idx(path) -> np.ndarray:
    """An IDX file (gzipped or raw, whatever its name says) as a uint8 array; see parse_idx."""
    return parse_idx(_decompressed_bytes(Path(path)), path)


def normalize(images_uint8) -> np.ndarray:
    """uint8 pixels 0..255 as float32 in [0, 1]."""
    return np.asarray(images_uint8, np.float32) / np.float32(255.0)


class _IdxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder for one MNIST-family dataset: four IDX files -> array_record splits.

    Subclasses are data: CLASS_NAMES, URL (where TFDS downloads the .gz files from), SHA256
    (of each decompressed IDX file, by stem), DEFAULT_SOURCE and INSTALL_HINT.
    Args: source_dir, a directory of the four IDX files (None: $CNNJAX_DATA_DIR, then
    DEFAULT_SOURCE, then download); checksums, a stem -> sha256 table that replaces SHA256,
    for test data only.
    """

    VERSION = tfds.core.Version("1.0.0")
    CLASS_NAMES: tuple[str, ...] = ()
    URL = ""
    SHA256: ClassVar[dict[str, str]] = {}  # stem -> sha256 of the decompressed file
    DEFAULT_SOURCE = Path()
    INSTALL_HINT = ""
    HOMEPAGE = ""

    def __init__(self, *, source_dir=None, checksums=None, **kwargs):
        self._source_dir = source_dir
        self._checksums = dict(self.SHA256 if checksums is None else checksums)
        kwargs.setdefault("file_format", "array_record")  # what tfds.data_source reads
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS 4.9.10 finds this file through `importlib_resources`, a package it installs
        # only on Python < 3.9 (tensorflow/datasets#11212); this file is the answer anyway.
        return tfds.core.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.name}: {self.HOMEPAGE}, {len(self.CLASS_NAMES)} classes.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=IMAGE_HWC, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
            disable_shuffling=True,  # keep the IDX order: test image i is the official i-th
        )

    def _split_generators(self, dl_manager):
        source = _source_of(type(self), self._source_dir)
        paths = self._download(dl_manager) if source is None else _idx_paths(self, source)
        arrays = {stem: self._read_verified(paths[stem], stem) for stem in STEMS}
        return {
            split: self._generate_examples(arrays[images], arrays[labels])
            for split, (images, labels) in FILES.items()
        }

    def _generate_examples(self, images_NHW, labels_N):
        if images_NHW.shape[1:] != IMAGE_HWC[:2] or images_NHW.shape[:1] != labels_N.shape:
            raise ValueError(
                f"{self.name}: images {images_NHW.shape} and labels {labels_N.shape} do not "
                f"pair up (expected (N, {IMAGE_HWC[0]}, {IMAGE_HWC[1]}) and (N,))"
            )
        for index, (image_HW, label) in enumerate(zip(images_NHW, labels_N, strict=True)):
            yield index, {"image": image_HW[:, :, None], "label": int(label)}

    def _download(self, dl_manager) -> dict:
        urls = {stem: urllib.parse.urljoin(self.URL, f"{stem}.gz") for stem in STEMS}
        if not _reachable(self.URL):
            raise _missing(self, f"{self.URL} is not reachable.")
        try:
            return dl_manager.download(urls)
        except OSError as error:  # requests' ConnectionError is an OSError
            raise _missing(self, f"downloading failed: {error}") from error

    def _read_verified(self, path: Path, stem: str) -> np.ndarray:
        raw = _decompressed_bytes(Path(path))
        actual = hashlib.sha256(raw).hexdigest()
        if actual != self._checksums.get(stem):
            raise ValueError(
                f"{path}: the sha256 of its decompressed content is {actual}, but {self.name} "
                f"expects {self._checksums.get(stem)} for {stem}. The file is corrupt or not "
                f"the official one: replace it with an official copy (gz or raw; any gzip "
                f"wrapper will do). {_how_to_provide(self)}"
            )
        return parse_idx(raw, path)


def _reachable(url: str, timeout_s: float = 5.0) -> bool:
    """Whether url's host accepts a connection (TFDS would retry a dead host for minutes)."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.getproxies().get(parts.scheme):
        return True  # only the proxy can tell
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def _how_to_provide(builder) -> str:
    ways = [
        "pass source_dir=DIR (--config.source_dir=DIR) for a directory DIR that holds them",
        f"set {ENV_VAR}=DIR",
        f"put them into {builder.DEFAULT_SOURCE}",
    ]
    if builder.INSTALL_HINT:
        ways.append(builder.INSTALL_HINT)
    ways.append(f"or let TFDS download them from {builder.URL} (needs the internet)")
    return "Ways to provide the IDX files: " + "; ".join(ways) + "."


def _missing(builder, problem: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{builder.name} cannot be prepared: {problem} It needs the four IDX files "
        f"{', '.join(STEMS)} (each .gz or raw) in one directory. {_how_to_provide(builder)}"
    )


def _idx_paths(builder, source: Path) -> dict[str, Path]:
    paths = {}
    for stem in STEMS:
        found = [source / name for name in (f"{stem}.gz", stem) if (source / name).is_file()]
        if not found:
            raise _missing(builder, f"neither {stem}.gz nor {stem} is in {source}.")
        paths[stem] = found[0]
    return paths


class CnnjaxMnist(_IdxBuilder):
    """MNIST handwritten digits (LeCun, Cortes, Burges; CC BY-SA 3.0)."""

    CLASS_NAMES = tuple(str(digit) for digit in range(10))
    URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"  # TFDS's own mirror
    SHA256 = MNIST_SHA256
    DEFAULT_SOURCE = SHARED_DIR
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"


class CnnjaxFashionMnist(_IdxBuilder):
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


DATASETS = {"mnist": CnnjaxMnist, "fashion_mnist": CnnjaxFashionMnist}  # name -> builder


def builder_class(name: str) -> type[_IdxBuilder]:
    """The TFDS builder class of dataset `name`, a key of DATASETS."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def class_names(name: str) -> tuple[str, ...]:
    """The class names of dataset `name`, index = label."""
    return builder_class(name).CLASS_NAMES


def num_classes(name: str) -> int:
    """How many classes dataset `name` has."""
    return len(class_names(name))


def find_source_dir(name: str, source_dir=None) -> Path | None:
    """The directory to read dataset `name`'s IDX files from; None means download them.

    Order: source_dir, $CNNJAX_DATA_DIR, the builder's DEFAULT_SOURCE (if it exists). The
    first two must be directories: a wrong path is an error, not silently passed over.
    """
    return _source_of(builder_class(name), source_dir)


def _source_of(builder, source_dir) -> Path | None:
    for given, origin in ((source_dir, "source_dir"), (os.environ.get(ENV_VAR), ENV_VAR)):
        if given:
            if not Path(given).is_dir():
                raise FileNotFoundError(
                    f"{origin}={given} is not a directory; it must be one that holds the four "
                    f"IDX files {', '.join(STEMS)} (each .gz or raw)"
                )
            return Path(given)
    default = builder.DEFAULT_SOURCE
    return default if default.is_dir() else None


def load(name: str, split: str, *, data_dir=None, source_dir=None, checksums=None):
    """(images_NHWC uint8, labels_N int32) of split "train" or "test" of dataset `name`.

    Reads through tfds.data_source, preparing the array_record files into data_dir first if
    they are not there yet (once: later calls only read).
    Args:
      name: "mnist" or "fashion_mnist" (a key of DATASETS).
      data_dir: where TFDS keeps prepared datasets; None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
      source_dir: a directory of the four IDX files; None: see find_source_dir.
      checksums: stem -> sha256 of test IDX files, replacing the official table. Test data
        only, so it needs an explicit data_dir (never mixed with the real datasets).
    Raises: FileNotFoundError (files missing: says how to provide them), ValueError (corrupt).
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    if checksums is not None and data_dir is None:
        raise ValueError("checksums= replaces the official sha256 table; pass a data_dir for it")
    source_dir = find_source_dir(name, source_dir)  # a wrong path fails even once prepared
    source = tfds.data_source(
        builder_class(name).name,
        split=split,
        data_dir=data_dir,
        builder_kwargs={"source_dir": source_dir, "checksums": checksums},
    )
    examples = source.__getitems__(range(len(source)))  # one batched read
    images_NHWC = np.stack([example["image"] for example in examples])
    labels_N = np.array([example["label"] for example in examples], np.int32)
    return images_NHWC, labels_N
