"""The trainer carries a network's state and draws its random layers' numbers: a researcher's
stateful and random layers (tests/user_layers.py, through the public protocol only) train on
every gradient path, their state is computed as by hand, kept in float32 under mixed precision,
used by evaluation, checkpointed, and an older checkpoint without it is refused in one line."""

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.training import RunError, checkpoints, settings, train, workdir
from tests import user_layers
from tests.builders import one_device_feed, small_config, synthetic

# RunningMean first: its input is the batch itself (no augmentation), so its running mean can
# be computed by hand; a second one after the convolution couples the examples' gradients.
MEAN_FIRST = (user_layers.RunningMean(), *user_layers.USER_NET[2:])
NOISY = (*user_layers.USER_NET[1:3], models.ReLU(), models.Flatten(), models.Dense(3))
STEPS = 5
# The gradient paths sum the same terms in different orders (float32, ~1e-7 relative per op);
# over 5 steps that stays orders of magnitude below these, while a wrong rule, a dropped state
# update or another noise draw moves params by more than 1e-2.
PATH_RTOL, PATH_ATOL = 1e-4, 1e-6


def _config(gradients="autodiff", **train_overrides):
    config = small_config(gradients, **train_overrides)
    config.data.shift, config.data.flip = 0, False  # the layers see the batch as it is
    return config


def _train(spec, config, images, labels, steps=STEPS):
    """(state after `steps` steps of epoch 0, idx_SB of those steps)."""
    optimizer = train.make_optimizer(config.optim, steps, 1)
    state = train.init_state(config.seed, spec, images.shape[1:], optimizer)
    run = train.make_train_steps(spec, optimizer, config, one_device_feed(images, labels))
    idx = np.asarray(train.epoch_indices(state, 0, images.shape[0], config.train.batch_size))
    state, _ = run(state, idx[:steps])
    return state, idx[:steps]


def test_the_running_mean_after_n_steps_is_the_hand_computed_one_and_eval_uses_it():
    images, labels = synthetic()
    state, idx = _train(MEAN_FIRST, _config("hand"), images, labels)
    mean = np.zeros(1, np.float64)
    for batch in idx:  # m' = momentum m + (1 - momentum) (the batch's mean pixel in [0, 1])
        batch_mean = np.asarray(images)[batch].astype(np.float64).mean() / 255
        mean = user_layers.MOMENTUM * mean + (1 - user_layers.MOMENTUM) * batch_mean
    got = state.model_state["runningmean1"]["mean"]
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, mean, rtol=1e-6)  # float32 sums of 2,304 pixels per batch
    assert np.all(np.asarray(state.model_state["runningmean2"]["mean"]) != 0)  # it moved too
    evaluated = train.evaluate(
        state.params, images, labels, spec=MEAN_FIRST, batch_size=64, model_state=state.model_state
    )
    fresh = models.init_state(MEAN_FIRST, images.shape[1:])
    unstated = train.evaluate(
        state.params, images, labels, spec=MEAN_FIRST, batch_size=64, model_state=fresh
    )
    assert evaluated["loss"] != unstated["loss"]  # eval mode reads the running means
    with pytest.raises(ValueError, match=r"state do not match the spec: missing \['runningmean1'"):
        train.evaluate(state.params, images, labels, spec=MEAN_FIRST, batch_size=64)


def _paths_agree(spec, path):
    images, labels = synthetic()
    want, _ = _train(spec, _config("autodiff"), images, labels)
    got, _ = _train(spec, _config(path), images, labels)
    for tree in ("params", "model_state"):
        close = jax.tree.map(
            lambda g, w: np.allclose(g, w, rtol=PATH_RTOL, atol=PATH_ATOL),
            getattr(got, tree),
            getattr(want, tree),
        )
        assert all(jax.tree.leaves(close)), f"{path} {tree}: {close}"
    moved = jax.tree.map(
        lambda a, b: not np.allclose(a, b),
        got.params,
        _train(spec, _config(), images, labels, 1)[0].params,
    )
    assert all(jax.tree.leaves(moved))  # the steps after the first changed every param


def test_hand_backprop_trains_stateful_and_random_layers_as_autodiff_does():
    _paths_agree(user_layers.USER_NET, "hand")


def test_custom_vjp_trains_random_layers_as_autodiff_does():
    _paths_agree(NOISY, "custom_vjp")


@pytest.mark.xfail(
    strict=True,
    raises=NameError,
    reason="layers.HAND_DERIVED's twin runs a layer's vjp where the vmap axis BATCH is unbound: "
    "a vjp that reduces over the batch (RunningMean's, BatchNorm's) raises NameError",
)
def test_custom_vjp_trains_layers_that_couple_examples_as_autodiff_does():
    _paths_agree(user_layers.USER_NET, "custom_vjp")


def test_the_dropout_key_draws_anew_each_step_and_alike_for_the_same_step():
    images, labels = synthetic(32)
    config = _config("hand", batch_size=32)
    optimizer = train.make_optimizer(config.optim, 1, 1)
    state = train.init_state(0, NOISY, images.shape[1:], optimizer)
    step = jax.jit(
        lambda s: train.train_step(
            s, images, labels, spec=NOISY, optimizer=optimizer, config=config
        )[1]["loss"]
    )
    assert step(state) == step(state)  # the step's key: fold_in(dropout_key, step)
    assert step(state) != step(state._replace(step=state.step + 1))
    fresh = train.init_state(0, NOISY, images.shape[1:], optimizer)
    assert fresh.dropout_key.tolist() not in (fresh.data_key.tolist(), fresh.aug_key.tolist())


def test_mixed_precision_keeps_the_state_in_float32():
    images, labels = synthetic()
    want, _ = _train(MEAN_FIRST, _config("hand"), images, labels)
    for gradients in ("hand", "autodiff"):
        got, _ = _train(MEAN_FIRST, _config(gradients, compute_dtype="bfloat16"), images, labels)
        assert {leaf.dtype for leaf in jax.tree.leaves(got.model_state)} == {jnp.dtype("float32")}
        # the first running mean, of the images themselves (~0.3): bfloat16 keeps 8 bits of each
        # pixel and of the mean, 2^-8 ~ 4e-3 relative; a missed or doubled update is off by 25%
        np.testing.assert_allclose(
            got.model_state["runningmean1"]["mean"],
            want.model_state["runningmean1"]["mean"],
            rtol=1e-2,
        )


def test_a_spec_without_state_keeps_an_empty_state():
    images, labels = synthetic()
    spec = (*user_layers.USER_NET[2:3], models.ReLU(), models.Flatten(), models.Dense(3))
    state, _ = _train(spec, _config("hand"), images, labels)
    assert state.model_state == {}


class _OlderTrainState(NamedTuple):  # a TrainState as cnnjax wrote it before the network state
    params: dict
    opt_state: tuple
    step: jax.Array
    data_key: jax.Array
    aug_key: jax.Array


def test_a_checkpoint_without_the_network_state_is_refused_in_one_line(tmp_path):
    optimizer = train.make_optimizer(train.Optim(0.1), 1, 1)
    state = train.init_state(0, MEAN_FIRST, (12, 12, 1), optimizer)
    saved = checkpoints.manager(tmp_path)
    checkpoints.save(saved, 1, _OlderTrainState(*state[:5]))
    with pytest.raises(RunError) as raised:
        checkpoints.restore(checkpoints.manager(tmp_path), state)
    message = str(raised.value)
    assert "\n" not in message and "checkpoint 1 in " in message
    assert "written by an older cnnjax (its state has no model_state, dropout_key)" in message
    assert message.endswith("start the run again in a new --workdir (nothing was changed)")
    assert checkpoints.saved_epochs(tmp_path) == [1]  # kept where it was, not set aside
    checkpoints.save(saved, 2, state)  # and a checkpoint with the state restores whole
    restored, epochs = checkpoints.restore(checkpoints.manager(tmp_path), state)
    assert epochs == 2
    assert checkpoints.params_hash(restored) == checkpoints.params_hash(state)


def test_model_modules_are_imported_before_the_spec_is_looked_up():
    config = _config()
    config.model.update(modules=" tests.user_layers ,", spec="user_net")
    assert settings.spec(config) is user_layers.USER_NET
    config.model.modules = "tests.user_layers,no_such_module_here"
    with pytest.raises(RunError) as raised:
        settings.check(config)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        "config.model.modules: cannot import no_such_module_here (ModuleNotFoundError: "
    )
    assert "pass --config.model.modules=" in message


def test_resuming_a_run_an_older_cnnjax_started_is_refused_in_one_line(tmp_path):
    config = _config()
    older = json.loads(config.to_json_best_effort())
    del older["model"]["modules"]  # a config.json written before the field existed
    (tmp_path / workdir.CONFIG).write_text(json.dumps(older))
    with pytest.raises(RunError) as raised:
        workdir.claim_run(tmp_path, config, resume=True)
    assert str(raised.value) == (
        f"{tmp_path} holds a run started by an older cnnjax (its config.json has no "
        "model.modules), which this version cannot resume: start the run again in a new "
        "--workdir (nothing was changed)"
    )
    workdir.release(tmp_path)
