"""cnnjax.training.checkpoints: a saved state comes back bit for bit in the template's structure;
the latest checkpoint wins; the params hash tells bit-identical params apart."""

import jax.numpy as jnp
import numpy as np

from cnnjax.training import checkpoints, train


def _state(value: float) -> train.TrainState:
    params = {"dense": {"kernel": jnp.full((3, 2), value), "bias": jnp.arange(2.0) + value}}
    key = jnp.zeros(2, jnp.uint32)
    return train.TrainState(params, (), jnp.int32(int(value)), key, key)


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
