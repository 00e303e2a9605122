"""cnnjax.data: IDX parsing (gz and raw), split loading, errors, the default directory."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from cnnjax import data


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file as the MNIST distribution writes it: magic 0x0000080<ndim>, dims, uint8."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(directory, split, images_NHW, labels_N, *, gz: bool):
    images_stem, labels_stem = data.FILES[split]
    for stem, array in ((images_stem, images_NHW), (labels_stem, labels_N)):
        raw = idx_bytes(array)
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    images_NHW = rng.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    labels_N = np.array([3, 0, 9, 1, 7], np.uint8)
    return images_NHW, labels_N


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_split_round_trips(tmp_path, arrays, gz):
    images_NHW, labels_N = arrays
    write_split(tmp_path, "test", images_NHW, labels_N, gz=gz)
    images_NHWC, labels = data.load_split(tmp_path, "test")
    assert images_NHWC.dtype == np.uint8 and images_NHWC.shape == (5, 4, 3, 1)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(images_NHWC[..., 0], images_NHW)  # H, W not swapped
    np.testing.assert_array_equal(labels, labels_N)


def test_read_idx_rejects_a_bad_magic(tmp_path, arrays):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x0d" + idx_bytes(arrays[1])[4:])  # 0x0d: float32, not uint8
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.*magic.*0x0000080d"):
        data.read_idx(path)


def test_read_idx_rejects_a_size_that_does_not_match_the_header(tmp_path, arrays):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(arrays[0])[:-1]))  # one pixel short
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz.*\(5, 4, 3\)"):
        data.read_idx(path)


def test_read_idx_rejects_a_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08")
    with pytest.raises(ValueError, match="shorter than 4 bytes"):
        data.read_idx(path)


def test_load_split_errors(tmp_path, arrays):
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_split(tmp_path, "validation")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_split(tmp_path, "train")
    write_split(tmp_path, "train", arrays[0], arrays[1][:4], gz=False)
    with pytest.raises(ValueError, match="do not pair up"):
        data.load_split(tmp_path, "train")


def test_default_data_dir_prefers_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNJAX_DATA_DIR", str(tmp_path))
    assert data.default_data_dir() == tmp_path
    monkeypatch.setenv("CNNJAX_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="CNNJAX_DATA_DIR"):
        data.default_data_dir()


def test_default_data_dir_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNJAX_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(data, "SHARED_DIR", tmp_path / "no-shared")
    with pytest.raises(FileNotFoundError) as excinfo:
        data.default_data_dir()
    message = str(excinfo.value)
    for stem in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "dataset-fashion-mnist"):
        assert stem in message
    assert "CNNJAX_DATA_DIR" in message


def test_normalize_maps_uint8_onto_the_unit_interval():
    x = data.normalize(np.array([0, 1, 128, 255], np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x[[0, 3]], [0.0, 1.0])
    assert np.all(np.diff(x) > 0)
