"""cnnjax.training.checkpoints: a saved state comes back bit for bit in the template's structure;
the latest good checkpoint wins (a damaged, changed or unfinished one is passed over in one line
and set aside by the next save); the params hash tells bit-identical params apart."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.training import checkpoints, train


def _state(value: float) -> train.TrainState:
    params = {"dense": {"kernel": jnp.full((3, 2), value), "bias": jnp.arange(2.0) + value}}
    key = jnp.zeros(2, jnp.uint32)
    model_state = {"runningmean1": {"mean": jnp.full(2, value)}}
    return train.TrainState(params, (), jnp.int32(int(value)), key, key, model_state, key)


def test_nothing_saved_gives_the_template_and_zero_epochs(tmp_path):
    template = _state(0.0)
    state, epochs = checkpoints.restore(checkpoints.manager(tmp_path), template)
    assert state is template and epochs == 0


def test_the_latest_checkpoint_comes_back_bit_for_bit(tmp_path):
    saved = checkpoints.manager(tmp_path, keep=2)
    for epoch in (1, 2, 3):
        checkpoints.save(saved, epoch, _state(epoch + 0.25))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "3"]
    state, epochs = checkpoints.restore(checkpoints.manager(tmp_path), _state(0.0))
    assert epochs == 3 and isinstance(state, train.TrainState)
    np.testing.assert_array_equal(state.params["dense"]["kernel"], np.full((3, 2), 3.25))
    assert int(state.step) == 3


def test_the_params_hash_sees_one_changed_bit():
    params = _state(1.0).params
    assert checkpoints.params_hash(params) == checkpoints.params_hash(_state(1.0).params)
    kernel = np.array(params["dense"]["kernel"])
    kernel.view(np.uint32)[0, 0] ^= 1  # the last bit of one float
    changed = {"dense": {**params["dense"], "kernel": jnp.asarray(kernel)}}
    assert checkpoints.params_hash(changed) != checkpoints.params_hash(params)


def test_a_manager_never_keeps_no_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="at least 1 checkpoint, got keep=0"):
        checkpoints.manager(tmp_path, keep=0)
    assert not (tmp_path / "checkpoints").exists()


def _saved(tmp_path, epochs=(1, 2)):
    saved = checkpoints.manager(tmp_path)
    for epoch in epochs:
        checkpoints.save(saved, epoch, _state(epoch + 0.25))
    return tmp_path / "checkpoints"


def _data_file(step_dir):
    """The largest of the array-data files a step's restore reads (ocdbt.process_<i>/ hold
    each process's writes, merged into default/d/ when the save is committed)."""
    return max((step_dir / "default" / "d").iterdir(), key=lambda p: p.stat().st_size)


def _flip(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


DAMAGE = {
    "a flipped byte": _flip,
    "a truncated file": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "a deleted file": lambda p: p.unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys, damage):
    root = _saved(tmp_path)
    DAMAGE[damage](_data_file(root / "2"))
    capsys.readouterr()
    state, epochs = checkpoints.restore(checkpoints.manager(tmp_path), _state(0.0))
    assert epochs == 1 and float(state.params["dense"]["kernel"][0, 0]) == 1.25
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("checkpoint 2 in ")
    assert lines[0].endswith("; falling back to checkpoint 1")


def test_a_checkpoint_that_reads_back_changed_fails_its_checksum(tmp_path, capsys):
    root = _saved(tmp_path)
    # Another state's checksum: what a byte flip the files' format does not notice looks like.
    (root / "2" / checkpoints.CHECKSUM).write_text(json.dumps({"sha256": "0" * 64}))
    capsys.readouterr()
    state, epochs = checkpoints.restore(checkpoints.manager(tmp_path), _state(0.0))
    assert epochs == 1 and int(state.step) == 1
    assert "checkpoint 2 in " in capsys.readouterr().err
    changed = _state(2.25).params
    changed["dense"]["bias"] = changed["dense"]["bias"].at[0].add(1e-6)
    assert checkpoints.params_hash(changed) != checkpoints.params_hash(_state(2.25).params)


def test_a_checkpoint_without_its_checksum_did_not_finish_and_none_left_says_so(tmp_path, capsys):
    root = _saved(tmp_path)
    for step in ("1", "2"):
        (root / step / checkpoints.CHECKSUM).unlink()
    capsys.readouterr()
    template = _state(0.0)
    state, epochs = checkpoints.restore(checkpoints.manager(tmp_path), template)
    assert state is template and epochs == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all("did not finish" in line for line in lines)
    assert lines[0].endswith("falling back to checkpoint 1")
    assert lines[1].endswith("no earlier checkpoint is left, so it starts from epoch 0")


def test_saving_after_a_fallback_sets_the_passed_over_checkpoints_aside(tmp_path):
    root = _saved(tmp_path, epochs=(1, 2, 3))
    _flip(_data_file(root / "2"))
    (root / "3" / checkpoints.CHECKSUM).unlink()
    saved = checkpoints.manager(tmp_path)
    state, epochs = checkpoints.restore(saved, _state(0.0))
    assert epochs == 1
    checkpoints.save(saved, 2, _state(7.0))
    assert sorted(p.name for p in root.iterdir()) == ["1", "2"]
    assert sorted(p.name for p in (tmp_path / checkpoints.REJECTED).iterdir()) == ["2", "3"]
    state, epochs = checkpoints.restore(checkpoints.manager(tmp_path), _state(0.0))
    assert epochs == 2 and int(state.step) == 7
    assert checkpoints.saved_epochs(tmp_path) == [1, 2]
