"""MNIST-family datasets through tensorflow-datasets (TFDS), without TensorFlow: arrays out.

Legend: images_NHWC uint8 (C = 1), labels_N class ids.

`load(name, split)` reads TFDS array_record files (`as_data_source`). The first call
prepares them with our own builders (`cnnjax_mnist`, `cnnjax_fashion_mnist`): the four standard
IDX files (gz or raw, sha256-checked; `cnnjax.training.idx` has the format, the checksums and where
the files are looked for) come from a source directory, else from TFDS's download. Features are
`tfds.features.Tensor`, since Image features need TensorFlow. Preparing says so in one line
("preparing mnist from DIR: 70,000 examples -> DIR"), without TFDS's download banner, its
warning about the folder not there yet, or its progress bars unless stderr is a terminal.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import urllib.parse
import urllib.request

import numpy as np
import tensorflow_datasets as tfds

from cnnjax.training import idx


class _IdxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder for one MNIST-family dataset: four IDX files -> array_record splits.

    Subclasses are also an `idx.Dataset` (its facts: class names, URL, sha256 table, ...).
    Args: source_dir, a directory of the four IDX files (None: $CNNJAX_DATA_DIR, then
    DEFAULT_SOURCE, then download); checksums, a stem -> sha256 table that replaces SHA256,
    for test data only.
    """

    VERSION = tfds.core.Version("1.0.0")

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
                    "image": tfds.features.Tensor(shape=idx.IMAGE_HWC, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
            disable_shuffling=True,  # keep the IDX order: test image i is the official i-th
        )

    def _split_generators(self, dl_manager):
        source = idx.source_of(type(self), self._source_dir)
        if source is None:
            paths = self._download(dl_manager)
        else:
            paths = idx.idx_paths(self.name, type(self), source)
        arrays = {
            stem: idx.read_verified(paths[stem], self._checksums.get(stem), self.name, type(self))
            for stem in idx.STEMS
        }
        for images, labels in idx.FILES.values():
            idx.check_pair(self.name, arrays[images], arrays[labels])
        examples = sum(len(arrays[labels]) for _, labels in idx.FILES.values())
        origin = self.URL if source is None else source
        label = self.name.removeprefix("cnnjax_")
        print(f"preparing {label} from {origin}: {examples:,} examples -> {self._final_dir}")
        return {
            split: self._generate_examples(arrays[images], arrays[labels])
            for split, (images, labels) in idx.FILES.items()
        }

    def _log_download_bytes(self):  # TFDS's "Downloading and preparing ... Unknown size"
        self._final_dir = self.data_dir  # _split_generators sees a temporary one

    def _log_download_done(self):  # TFDS's "... downloaded and prepared to ..."
        pass

    def _generate_examples(self, images_NHW, labels_N):
        for index, (image_HW, label) in enumerate(zip(images_NHW, labels_N, strict=True)):
            yield index, {"image": image_HW[:, :, None], "label": int(label)}

    def _download(self, dl_manager) -> dict:
        urls = {stem: urllib.parse.urljoin(self.URL, f"{stem}.gz") for stem in idx.STEMS}
        if not _reachable(self.URL):
            raise idx.missing(self.name, type(self), f"{self.URL} is not reachable.")
        try:
            return dl_manager.download(urls)
        except OSError as error:  # requests' ConnectionError is an OSError
            raise idx.missing(self.name, type(self), f"downloading failed: {error}") from error


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


class CnnjaxMnist(idx.Mnist, _IdxBuilder):
    """MNIST handwritten digits (LeCun, Cortes, Burges; CC BY-SA 3.0)."""


class CnnjaxFashionMnist(idx.FashionMnist, _IdxBuilder):
    """Fashion-MNIST: Zalando's article images (MIT)."""


DATASETS = {"mnist": CnnjaxMnist, "fashion_mnist": CnnjaxFashionMnist}  # name -> builder


def builder_class(name: str) -> type[_IdxBuilder]:
    """The TFDS builder class of dataset `name`, a key of DATASETS."""
    idx.dataset(name)  # the error for an unknown name
    return DATASETS[name]


def prepare(name: str, *, data_dir=None, source_dir=None, checksums=None):
    """Dataset `name`'s TFDS builder, its array_record files prepared into data_dir first if
    they are not there yet (once: later calls only check). Arguments as for `load`; a run
    calls this before it writes anything, so that missing or corrupt IDX files stop it first.
    Raises: idx.MissingFiles (a FileNotFoundError: says how to provide the files),
      idx.CorruptFile (a ValueError); both are RunErrors.
    """
    if checksums is not None and data_dir is None:
        raise ValueError("checksums= replaces the official sha256 table; pass a data_dir for it")
    source_dir = idx.find_source_dir(name, source_dir)  # a wrong path fails even once prepared
    builder = builder_class(name)(data_dir=data_dir, source_dir=source_dir, checksums=checksums)
    # is_prepared() warns about a missing folder; download_and_prepare checks quietly
    if not (builder.data_path.exists() and builder.is_prepared()):
        with _quiet_tfds():
            builder.download_and_prepare()
    return builder


def prepare_section(data_config):
    """`prepare` for a config's data section (name, source_dir, tfds_dir; "" = the default)."""
    return prepare(
        data_config.name,
        source_dir=data_config.source_dir or None,
        data_dir=data_config.tfds_dir or None,
    )


def load(name: str, split: str, *, data_dir=None, source_dir=None, checksums=None):
    """(images_NHWC uint8, labels_N int32) of split "train" or "test" of dataset `name`,
    read from TFDS's data source after `prepare`.

    Args:
      name: "mnist" or "fashion_mnist" (a key of DATASETS).
      data_dir: where TFDS keeps prepared datasets; None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
      source_dir: a directory of the four IDX files; None: see idx.find_source_dir.
      checksums: stem -> sha256 of test IDX files, replacing the official table. Test data
        only, so it needs an explicit data_dir (never mixed with the real datasets).
    Raises: as `prepare`.
    """
    if split not in idx.FILES:
        raise ValueError(f"split must be one of {sorted(idx.FILES)}, got {split!r}")
    builder = prepare(name, data_dir=data_dir, source_dir=source_dir, checksums=checksums)
    source = builder.as_data_source(split=split)
    examples = source.__getitems__(range(len(source)))  # one batched read
    images_NHWC = np.stack([example["image"] for example in examples])
    labels_N = np.array([example["label"] for example in examples], np.int32)
    return images_NHWC, labels_N


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS's progress bars only on a terminal (in a log file they are control characters)."""
    shown = getattr(tfds.core.utils.tqdm_utils, "_active", True)
    tfds.display_progress_bar(shown and sys.stderr.isatty())
    try:
        yield
    finally:
        tfds.display_progress_bar(shown)
