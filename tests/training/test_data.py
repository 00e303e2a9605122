"""cnnjax.training.data: the TFDS builders from a directory (gz, raw) or a download; sha256 checks;
the errors; loading the prepared array_record files."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cnnjax.training import data, idx
from tests.builders import SIZES, idx_bytes, write_idx_dir


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No $CNNJAX_DATA_DIR, no default source directory, no network: only what a test gives."""
    monkeypatch.delenv(idx.ENV_VAR, raising=False)
    for facts in idx.DATASETS.values():
        monkeypatch.setattr(facts, "DEFAULT_SOURCE", tmp_path / "no-default-source")
    monkeypatch.setattr(data, "_reachable", lambda url: False)
    return tmp_path


# --- preparing and loading through TFDS ---------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_files_round_trip_through_tfds(isolated, gz):
    arrays, checksums = write_idx_dir(isolated / "idx", gz=gz)
    tfds_dir = isolated / "tfds"
    for split, (images_stem, labels_stem) in idx.FILES.items():
        images_NHWC, labels_N = data.load(
            "fashion_mnist",
            split,
            data_dir=tfds_dir,
            source_dir=isolated / "idx",
            checksums=checksums,
        )
        assert images_NHWC.dtype == np.uint8 and images_NHWC.shape == (SIZES[split], 28, 28, 1)
        assert labels_N.dtype == np.int32
        np.testing.assert_array_equal(images_NHWC[..., 0], arrays[images_stem])  # order kept
        np.testing.assert_array_equal(labels_N, arrays[labels_stem])
    assert sorted(p.name for p in (tfds_dir / "cnnjax_fashion_mnist" / "1.0.0").glob("*-*")) == [
        "cnnjax_fashion_mnist-test.array_record-00000-of-00001",
        "cnnjax_fashion_mnist-train.array_record-00000-of-00001",
    ]
    # A plain TFDS dataset: TFDS's own reader, without our load(), sees the same examples.
    source = tfds.data_source("cnnjax_fashion_mnist", split="test", data_dir=tfds_dir)
    np.testing.assert_array_equal(source[3]["image"][..., 0], arrays["t10k-images-idx3-ubyte"][3])
    info = tfds.builder("cnnjax_fashion_mnist", data_dir=tfds_dir).info
    assert tuple(info.features["label"].names) == idx.class_names("fashion_mnist")
    assert "tensorflow" not in sys.modules


def test_preparing_says_what_it_does_in_one_line_and_nothing_else(isolated, capfd, caplog):
    """No "Downloading and preparing dataset Unknown size" (nothing is downloaded), no warning
    about the folder TFDS is about to make, no progress bars when stderr is not a terminal (a
    log file would get lines of control characters); the second load only reads."""
    _, checksums = write_idx_dir(isolated / "idx", gz=True)
    tfds_dir = isolated / "tfds"
    load = dict(data_dir=tfds_dir, source_dir=isolated / "idx", checksums=checksums)
    with caplog.at_level("WARNING"):
        data.load("mnist", "test", **load)
    out, err = capfd.readouterr()
    examples = SIZES["train"] + SIZES["test"]
    prepared = tfds_dir / "cnnjax_mnist" / "1.0.0"
    assert out == f"preparing mnist from {isolated / 'idx'}: {examples} examples -> {prepared}\n"
    assert "\r" not in err and "\x1b" not in err and "examples/s" not in err, err
    assert "dataset_info.json" not in caplog.text + err, caplog.text
    data.load("mnist", "train", **load)
    assert capfd.readouterr() == ("", "")


def test_corrupt_content_names_the_file_and_both_sha256s(isolated):
    arrays, checksums = write_idx_dir(isolated / "idx", gz=True)
    images_NHW = arrays["t10k-images-idx3-ubyte"].copy()
    images_NHW[0, 0, 0] ^= 1  # one bit flipped: same size, valid header
    raw = idx_bytes(images_NHW)
    (isolated / "idx" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError) as excinfo:
        data.load(
            "mnist",
            "train",
            data_dir=isolated / "tfds",
            source_dir=isolated / "idx",
            checksums=checksums,
        )
    message = str(excinfo.value)
    assert "t10k-images-idx3-ubyte.gz" in message and "official copy" in message
    assert checksums["t10k-images-idx3-ubyte"] in message
    assert hashlib.sha256(raw).hexdigest() in message
    assert not (isolated / "tfds" / "cnnjax_mnist" / "1.0.0" / "dataset_info.json").exists()


def test_images_of_another_size_are_refused(isolated):
    _, checksums = write_idx_dir(isolated / "idx", gz=False, image_HW=(27, 28))
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        data.load(
            "mnist",
            "test",
            data_dir=isolated / "tfds",
            source_dir=isolated / "idx",
            checksums=checksums,
        )


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_missing_files_list_the_four_names_and_the_ways_to_provide_them(isolated, name):
    (isolated / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as excinfo:
        data.load(name, "test", data_dir=isolated / "tfds", source_dir=isolated / "empty")
    message = str(excinfo.value)
    for expected in (*idx.STEMS, "source_dir=", "--config.data.source_dir", idx.ENV_VAR):
        assert expected in message
    assert data.DATASETS[name].URL in message
    assert str(isolated / "no-default-source") in message
    if name == "fashion_mnist":
        assert "apt-get install -y dataset-fashion-mnist" in message


def test_nothing_found_offline_fails_at_once_with_the_install_hint(isolated):
    with pytest.raises(FileNotFoundError) as excinfo:
        data.load("fashion_mnist", "test", data_dir=isolated / "tfds")
    message = str(excinfo.value)
    assert "is not reachable" in message and "apt-get install -y dataset-fashion-mnist" in message
    assert all(stem in message for stem in idx.STEMS)


def test_the_download_path_asks_tfds_for_the_standard_urls(isolated, monkeypatch):
    arrays, checksums = write_idx_dir(isolated / "served", gz=True)
    requested = []

    def fake_download(self, url_or_urls):
        requested.append(url_or_urls)
        return {stem: isolated / "served" / f"{stem}.gz" for stem in url_or_urls}

    monkeypatch.setattr(data, "_reachable", lambda url: True)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    images_NHWC, labels_N = data.load(
        "mnist", "test", data_dir=isolated / "tfds", checksums=checksums
    )
    np.testing.assert_array_equal(images_NHWC[..., 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(labels_N, arrays["t10k-labels-idx1-ubyte"])
    base = "https://storage.googleapis.com/cvdf-datasets/mnist/"
    assert requested == [{stem: f"{base}{stem}.gz" for stem in idx.STEMS}]


def test_the_download_urls_are_tfds_own():
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    assert data.CnnjaxMnist.URL == tfds_mnist.MNIST.URL
    assert data.CnnjaxFashionMnist.URL == tfds_mnist.FashionMNIST.URL


def test_a_failed_download_says_what_to_do(isolated, monkeypatch):
    def broken_download(self, url_or_urls):
        raise OSError("connection reset")

    monkeypatch.setattr(data, "_reachable", lambda url: True)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", broken_download)
    with pytest.raises(FileNotFoundError, match=r"downloading failed: connection reset.*IDX"):
        data.load("mnist", "test", data_dir=isolated / "tfds")


def test_reachable_sees_a_listening_port_and_a_closed_one(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert data._reachable(f"http://127.0.0.1:{port}/")
    assert not data._reachable(f"http://127.0.0.1:{port}/", timeout_s=1.0)  # closed now
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    assert data._reachable(f"http://127.0.0.1:{port}/")  # behind a proxy, the proxy decides


def test_load_reads_the_directory_named_by_the_environment(isolated, monkeypatch):
    arrays, checksums = write_idx_dir(isolated / "idx", gz=False)
    monkeypatch.setenv(idx.ENV_VAR, str(isolated / "idx"))
    _, labels_N = data.load("mnist", "test", data_dir=isolated / "tfds", checksums=checksums)
    np.testing.assert_array_equal(labels_N, arrays["t10k-labels-idx1-ubyte"])


def test_preparing_twice_does_not_rebuild(isolated, monkeypatch):
    _, checksums = write_idx_dir(isolated / "idx", gz=True)
    kwargs = {"data_dir": isolated / "tfds", "source_dir": isolated / "idx", "checksums": checksums}
    first = data.load("mnist", "train", **kwargs)
    prepared = isolated / "tfds" / "cnnjax_mnist" / "1.0.0"
    stamps = {path: path.stat().st_mtime_ns for path in prepared.iterdir()}

    def no_rebuild(self, dl_manager):
        raise AssertionError("prepared again")

    monkeypatch.setattr(data.CnnjaxMnist, "_split_generators", no_rebuild)
    for path in (isolated / "idx").iterdir():
        path.unlink()  # the source is not needed any more
    second = data.load("mnist", "train", **kwargs)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert {path: path.stat().st_mtime_ns for path in prepared.iterdir()} == stamps


def test_a_checksums_override_needs_its_own_data_dir(isolated):
    _, checksums = write_idx_dir(isolated / "idx", gz=False)
    with pytest.raises(ValueError, match=r"checksums=.*data_dir"):
        data.load("mnist", "test", source_dir=isolated / "idx", checksums=checksums)


def test_unknown_names_and_splits_are_refused():
    with pytest.raises(ValueError, match="unknown dataset 'kmnist'; known: mnist, fashion_mnist"):
        data.load("kmnist", "test")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("mnist", "validation")


def test_the_registry_of_builders():
    assert data.builder_class("mnist") is data.CnnjaxMnist
    assert tfds.builder_cls("cnnjax_fashion_mnist") is data.CnnjaxFashionMnist
    for name, builder in data.DATASETS.items():
        assert issubclass(builder, idx.DATASETS[name])  # the facts are the dataset's own
        assert builder.CLASS_NAMES == idx.class_names(name)


NO_TENSORFLOW = """
import json, sys
from cnnjax.training import data
data_dir, source_dir, checksums = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
images_NHWC, _ = data.load("mnist", "test", data_dir=data_dir, source_dir=source_dir,
                           checksums=checksums)
assert images_NHWC.shape == (10, 28, 28, 1), images_NHWC.shape
print("tensorflow modules:", sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))
"""


def test_tensorflow_is_not_needed(isolated):
    """A fresh process prepares and loads without importing tensorflow (installed or not)."""
    _, checksums = write_idx_dir(isolated / "idx", gz=True)
    args = [str(isolated / "tfds"), str(isolated / "idx"), json.dumps(checksums)]
    result = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW, *args],
        cwd=idx.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorflow modules: []" in result.stdout


# --- the real datasets --------------------------------------------------------------------------

REAL_LABEL_COUNTS = {
    "mnist": {
        "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    },
    "fashion_mnist": {"train": [6000] * 10, "test": [1000] * 10},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL_LABEL_COUNTS))
def test_the_real_datasets_prepare_from_their_default_directory(name, tmp_path, monkeypatch):
    monkeypatch.delenv(idx.ENV_VAR, raising=False)
    builder = data.DATASETS[name]
    if not builder.DEFAULT_SOURCE.is_dir():
        # Not a silent skip: without the files (and offline), the error says how to get them.
        monkeypatch.setattr(data, "_reachable", lambda url: False)
        with pytest.raises(FileNotFoundError) as excinfo:
            data.load(name, "test", data_dir=tmp_path)
        assert (builder.INSTALL_HINT or str(builder.DEFAULT_SOURCE)) in str(excinfo.value)
        return
    for split, n in (("train", 60000), ("test", 10000)):
        images_NHWC, labels_N = data.load(name, split, data_dir=tmp_path)  # sha256s checked
        assert images_NHWC.shape == (n, 28, 28, 1) and images_NHWC.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(labels_N), REAL_LABEL_COUNTS[name][split])
    official_NHW = idx.read_idx(builder.DEFAULT_SOURCE / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(images_NHWC[..., 0], official_NHW)
    assert "tensorflow" not in sys.modules
