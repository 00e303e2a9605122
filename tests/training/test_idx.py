"""cnnjax.training.idx: IDX parsing, verified reads of a split straight from the files (no TFDS),
where the files are looked for, the dataset facts."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from cnnjax.training import idx
from tests.builders import REPO, SIZES, idx_bytes, write_idx_dir

# --- IDX files ---------------------------------------------------------------------------------


def test_read_idx_tells_gz_from_raw_by_content_not_name(tmp_path):
    labels_N = np.array([3, 0, 9], np.uint8)
    (tmp_path / "raw-name").write_bytes(gzip.compress(idx_bytes(labels_N)))
    (tmp_path / "gz-name.gz").write_bytes(idx_bytes(labels_N))
    for name in ("raw-name", "gz-name.gz"):
        np.testing.assert_array_equal(idx.read_idx(tmp_path / name), labels_N)


def test_read_idx_rejects_a_bad_magic(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x0d" + idx_bytes(np.arange(5))[4:])  # 0x0d: float32
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.*magic.*0x0000080d"):
        idx.read_idx(path)


def test_read_idx_rejects_a_size_that_does_not_match_the_header(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 4, 3)))[:-1]))  # one pixel short
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*\(5, 4, 3\)"):
        idx.read_idx(path)


def test_read_idx_rejects_a_truncated_gzip_stream(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 4, 3))))[:-9])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: a broken gzip file"):
        idx.read_idx(path)


def test_read_idx_rejects_a_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08")
    with pytest.raises(ValueError, match="shorter than 4 bytes"):
        idx.read_idx(path)


def test_normalize_maps_uint8_onto_the_unit_interval():
    x = idx.normalize(np.array([0, 1, 128, 255], np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x[[0, 3]], [0.0, 1.0])
    assert np.all(np.diff(x) > 0)


# --- the datasets and their files --------------------------------------------------------------


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No $CNNJAX_DATA_DIR and no default source directory: only what a test gives."""
    monkeypatch.delenv(idx.ENV_VAR, raising=False)
    for facts in idx.DATASETS.values():
        monkeypatch.setattr(facts, "DEFAULT_SOURCE", tmp_path / "no-default-source")
    return tmp_path


def test_source_dir_precedence(isolated, monkeypatch):
    explicit, env, default = (isolated / name for name in ("explicit", "env", "default"))
    for directory in (explicit, env, default):
        directory.mkdir()
    assert idx.find_source_dir("mnist") is None  # nothing anywhere: download
    monkeypatch.setattr(idx.Mnist, "DEFAULT_SOURCE", default)
    assert idx.find_source_dir("mnist") == default
    assert idx.find_source_dir("fashion_mnist") is None  # the default is per dataset
    monkeypatch.setenv(idx.ENV_VAR, str(env))
    assert idx.find_source_dir("mnist") == env
    assert idx.find_source_dir("mnist", explicit) == explicit
    monkeypatch.setenv(idx.ENV_VAR, str(isolated / "missing"))
    with pytest.raises(FileNotFoundError, match=f"{idx.ENV_VAR}=.*missing is not a directory"):
        idx.find_source_dir("mnist")
    with pytest.raises(FileNotFoundError, match=r"source_dir=.*nowhere is not a directory"):
        idx.find_source_dir("mnist", isolated / "nowhere")


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_read_split_reads_the_verified_files_in_order(isolated, gz):
    arrays, checksums = write_idx_dir(isolated / "idx", gz=gz)
    for split, (images_stem, labels_stem) in idx.FILES.items():
        images_NHWC, labels_N = idx.read_split("mnist", split, isolated / "idx", checksums)
        assert images_NHWC.shape == (SIZES[split], 28, 28, 1) and images_NHWC.dtype == np.uint8
        assert labels_N.dtype == np.int32
        np.testing.assert_array_equal(images_NHWC[..., 0], arrays[images_stem])
        np.testing.assert_array_equal(labels_N, arrays[labels_stem])


def test_read_split_refuses_a_file_whose_sha256_differs(isolated):
    _, checksums = write_idx_dir(isolated / "idx", gz=True)
    wrong = {**checksums, "t10k-labels-idx1-ubyte": "0" * 64}
    with pytest.raises(
        ValueError, match=r"idx1-ubyte\.gz: checksum mismatch: the sha256 .* expects 0{64}"
    ):
        idx.read_split("mnist", "test", isolated / "idx", wrong)
    with pytest.raises(ValueError, match="official copy"):  # the real table: test data fails
        idx.read_split("mnist", "test", isolated / "idx")


def test_read_split_names_a_missing_file_and_the_ways_to_provide_it(isolated):
    write_idx_dir(isolated / "idx", gz=False)
    (isolated / "idx" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as excinfo:
        idx.read_split("fashion_mnist", "test", isolated / "idx")
    message = str(excinfo.value)
    assert "neither t10k-images-idx3-ubyte.gz nor t10k-images-idx3-ubyte is in" in message
    assert "apt-get install -y dataset-fashion-mnist" in message and idx.ENV_VAR in message


def test_class_names_and_unknown_names():
    assert idx.num_classes("mnist") == idx.num_classes("fashion_mnist") == 10
    assert idx.class_names("mnist")[7] == "7"
    names = idx.class_names("fashion_mnist")
    assert (names[0], names[5], names[9]) == ("T-shirt/top", "Sandal", "Ankle boot")
    for facts in idx.DATASETS.values():
        assert sorted(facts.SHA256) == sorted(idx.STEMS)
    with pytest.raises(ValueError, match="unknown dataset 'kmnist'; known: mnist, fashion_mnist"):
        idx.class_names("kmnist")
    with pytest.raises(ValueError, match="split must be one of"):
        idx.read_split("mnist", "validation", ".")


def test_the_shared_mnist_directory_is_beside_the_checkout():
    """Full MNIST lives in ../shared/data/mnist next to the checkout (the one holding
    pyproject.toml), on these machines and in CI; a path computed one level off finds nothing
    and sends a fresh machine to the internet."""
    checkout = REPO
    assert (idx.REPO_ROOT / "pyproject.toml").is_file() and idx.REPO_ROOT == checkout
    assert idx.Mnist.DEFAULT_SOURCE == checkout.parent / "shared" / "data" / "mnist"
