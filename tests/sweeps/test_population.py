"""cnnjax.sweeps.population: every layout trains each member exactly as its solo run does; a member
that diverges is frozen and marked while the others go on; memory sizing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import parallel
from cnnjax.output import jsonl
from cnnjax.sweeps import grid, population
from cnnjax.training import settings, train
from tests.builders import (
    MEMBER_ATOL,
    MEMBER_RTOL,
    SMALL_SPEC,
    member_configs,
    one_device_feed,
    synthetic,
    together,
)

EPOCHS = 2


def solo(config, images, labels):
    """The member trained alone by train.py's own loop: (final state, loss per step)."""
    steps = images.shape[0] // config.train.batch_size
    optimizer = train.make_optimizer(config.optim, steps, config.train.epochs)
    state = train.init_state(config.seed, SMALL_SPEC, images.shape[1:], optimizer)
    run = train.make_train_steps(SMALL_SPEC, optimizer, config, one_device_feed(images, labels))
    curve = []
    for epoch in range(config.train.epochs):
        idx = train.epoch_indices(state, epoch, images.shape[0], config.train.batch_size)
        state, metrics = run(state, np.asarray(idx))
        curve += list(np.asarray(metrics["loss"]))
    return state, np.array(curve)


@pytest.fixture(scope="module")
def solo_runs():
    images, labels = synthetic()
    return images, labels, [solo(c, images, labels) for c in member_configs()]


@pytest.mark.parametrize("layout", population.LAYOUTS)
def test_each_member_trains_as_its_solo_run(solo_runs, layout):
    images, labels, solos = solo_runs
    pop, losses = together(member_configs(), images, labels, layout)
    np.testing.assert_array_equal(pop.diverged_at, 0)
    for k, (state, curve) in enumerate(solos):
        np.testing.assert_allclose(losses[:, k], curve, rtol=MEMBER_RTOL, atol=MEMBER_ATOL)
        mine = population.member(pop, k).state
        assert int(mine.step) == int(state.step) == len(curve)
        for a, b in zip(jax.tree.leaves(mine.params), jax.tree.leaves(state.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=MEMBER_RTOL, atol=MEMBER_ATOL)
    # The members really differ: a mix-up of seeds or rates could not pass the loop above.
    assert np.min(np.abs(losses[-1, 0] - losses[-1, 1:])) > 1e-3


def test_a_diverging_member_is_frozen_and_marked_and_the_others_go_on(solo_runs):
    images, labels, solos = solo_runs
    configs = member_configs()
    configs[1].optim.learning_rate = 1e30  # overflows float32 within a few steps
    pop, losses = together(configs, images, labels, "unroll")
    diverged_at = np.asarray(pop.diverged_at)
    assert diverged_at[0] == diverged_at[2] == 0 and diverged_at[1] > 0
    assert np.all(np.isnan(losses[diverged_at[1] - 1 :, 1]))
    frozen = population.member(pop, 1).state
    assert int(frozen.step) == diverged_at[1] - 1  # its last finite update
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(frozen.params))
    for k in (0, 2):
        np.testing.assert_allclose(losses[:, k], solos[k][1], rtol=MEMBER_RTOL, atol=MEMBER_ATOL)


def test_same_population_twice_is_bit_identical():
    images, labels = synthetic(n=64)
    first, _ = together(member_configs(), images, labels, "unroll")
    second, _ = together(member_configs(), images, labels, "unroll")
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)


def test_layout_names():
    assert population.resolve_layout("auto") == "sequential"  # the test machine is a CPU
    assert population.resolve_layout("vmap") == "vmap"
    with pytest.raises(ValueError, match=r"sweep\.layout must be"):
        population.resolve_layout("grouped")


def test_memory_sizing():
    images, labels = synthetic(n=64)
    config = member_configs()[0]
    per_member = grid.member_bytes(SMALL_SPEC, config, 4, one_device_feed(images, labels))
    params = population.init([config], SMALL_SPEC, images.shape[1:], 4).state.params
    state_bytes = 4 * sum(leaf.size for leaf in jax.tree.leaves(params))
    assert per_member > 2 * state_bytes  # the params alone, in and out, are a lower bound
    assert grid.members_per_program(per_member, 10 * per_member) == 10
    assert grid.members_per_program(per_member, 10 * per_member, cap=4) == 4
    assert grid.members_per_program(per_member, per_member // 2) == 1
    assert grid.chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert grid.available_bytes() > 0


def test_momentum_zero_keeps_plain_sgd_numbers():
    config = member_configs()[1]  # momentum 0
    params = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, 0.25])}
    hyper = {k: jnp.float32(settings.get(config, f)) for k, f in population.HYPER.items()}
    traced = population.member_optimizer(config, hyper, 10)
    plain = train.make_optimizer(config.optim, 10, config.train.epochs)
    with jax.numpy_dtype_promotion("standard"):
        a, _ = traced.update(g, traced.init(params), params)
        b, _ = plain.update(g, plain.init(params), params)
    np.testing.assert_array_equal(a["w"], b["w"])


def _cut_in_epoch_2(monkeypatch, fit) -> None:
    """fit() interrupted (KeyboardInterrupt) as its epoch 2 begins, after epoch 1's checkpoint."""
    real_epoch = population._epoch

    def dies_in_epoch_2(pop, step, train_split, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(pop, step, train_split, epoch, *args)

    monkeypatch.setattr(population, "_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        fit()
    monkeypatch.setattr(population, "_epoch", real_epoch)


def test_a_population_resumes_mid_sweep_to_the_uninterrupted_result(tmp_path, monkeypatch):
    images, labels = synthetic(n=64)
    splits = (one_device_feed(images, labels), one_device_feed(images[:32], labels[:32]))
    configs = member_configs()
    whole = population.fit(
        configs, [0, 1, 2], tmp_path / "whole", SMALL_SPEC, splits, layout="unroll", resume=False
    )
    _cut_in_epoch_2(
        monkeypatch,
        lambda: population.fit(
            configs, [0, 1, 2], tmp_path / "cut", SMALL_SPEC, splits, layout="unroll", resume=False
        ),
    )
    resumed = population.fit(
        configs, [0, 1, 2], tmp_path / "cut", SMALL_SPEC, splits, layout="unroll", resume=True
    )
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(whole), strict=True):
        np.testing.assert_array_equal(a, b)
    rows = [jsonl.read_metrics(d / "metrics.jsonl") for d in (tmp_path / "cut", tmp_path / "whole")]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows[0]) == strip(rows[1])
    assert [(r["epoch"], r["member"]) for r in rows[0]] == [
        (e, m) for e in (1, 2) for m in range(3)
    ]


def test_a_member_whose_evaluation_is_not_finite_is_frozen_and_resumes_so(tmp_path, monkeypatch):
    """Member 1's first evaluation is made NaN (as an overflowing forward pass would make it): it
    is marked at the end of epoch 1 and frozen through epoch 2, the others train on as in a
    clean population, and a resume from the epoch-1 checkpoint keeps the mark."""
    images, labels = synthetic(n=64)
    splits = (one_device_feed(images, labels), one_device_feed(images[:32], labels[:32]))
    steps = 64 // member_configs()[0].train.batch_size

    def fit(name, resume=False):
        return population.fit(
            member_configs(), [0, 1, 2], tmp_path / name, SMALL_SPEC, splits, layout="unroll",
            resume=resume,
        )  # fmt: skip

    clean = fit("clean")
    real_evaluate, calls = train.evaluate_fed, []

    def member_1_overflows_once(*args, **kwargs):
        calls.append(1)
        test = real_evaluate(*args, **kwargs)
        return dict(test, loss=np.nan) if len(calls) == 2 else test  # epoch 1, member 1

    monkeypatch.setattr(train, "evaluate_fed", member_1_overflows_once)
    marked = fit("marked")
    np.testing.assert_array_equal(marked.diverged_at, [0, steps, 0])
    assert int(population.member(marked, 1).state.step) == steps  # no update in epoch 2
    for k in (0, 2):
        for a, b in zip(
            *(jax.tree.leaves(population.member(p, k)) for p in (marked, clean)), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    rows = jsonl.read_metrics(tmp_path / "marked" / "metrics.jsonl")
    assert [r["diverged_at"] for r in rows if r["member"] == 1] == [steps, steps]
    assert np.isnan([r["train_loss"] for r in rows if r["member"] == 1][1])

    calls.clear()
    _cut_in_epoch_2(monkeypatch, lambda: fit("cut"))
    monkeypatch.setattr(train, "evaluate_fed", real_evaluate)
    resumed = fit("cut", resume=True)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(marked), strict=True):
        np.testing.assert_array_equal(a, b)


def test_judge_marks_a_blown_up_test_loss_as_a_run_would_stop_on_it():
    """The line a single run stops at (train.DIVERGED_LOSS, or NaN) marks a member too; a
    member marked earlier keeps its first mark."""
    configs = member_configs()
    images, _ = synthetic(64)
    pop = population.init(configs, SMALL_SPEC, images.shape[1:], 4)
    pop = pop._replace(diverged_at=jnp.array([0, 0, 3], jnp.int32))
    mesh = parallel.make_mesh(jax.devices()[:1])
    losses = [2.3, train.DIVERGED_LOSS * 1.0001, float("nan")]
    judged = population.judge(pop, losses, 8, mesh)
    assert np.asarray(judged.diverged_at).tolist() == [0, 8, 3]
    healthy = population.judge(pop, [2.3, train.DIVERGED_LOSS / 2, 1.0], 8, mesh)
    assert np.asarray(healthy.diverged_at).tolist() == [0, 0, 3]
