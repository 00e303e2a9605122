"""Population members with a network state and random layers (tests/user_layers.py): each
member's params and state, in every layout, are its solo run's; and a member's divergence
is judged as before."""

import jax
import numpy as np
import pytest

from cnnjax.sweeps import population
from tests import user_layers
from tests.builders import (
    MEMBER_ATOL,
    MEMBER_RTOL,
    member_configs,
    one_device_feed,
    run_steps,
    synthetic,
)

SPEC = (*user_layers.USER_NET[:-1], user_layers.models.Dense(3))


def _together(configs, images, labels, layout):
    steps = images.shape[0] // configs[0].train.batch_size
    data = one_device_feed(images, labels)
    pop = population.init(configs, SPEC, images.shape[1:], steps)
    step = population.make_step(SPEC, configs[0], steps, layout, data)
    for epoch in range(configs[0].train.epochs):
        idx_MSB = population.epoch_indices(pop, epoch, images.shape[0], configs[0].train.batch_size)
        for s in range(idx_MSB.shape[1]):
            pop, _ = step(pop, data.resident, data.batch(np.asarray(idx_MSB[:, s]), 1))
    return pop


@pytest.fixture(scope="module")
def solo():
    images, labels = synthetic(64)
    configs = member_configs()
    return images, labels, configs, [run_steps(c, images, labels, 2, spec=SPEC)[0] for c in configs]


@pytest.mark.parametrize("layout", ["vmap", "unroll", "map"])
def test_members_carry_their_own_state_as_their_solo_runs(solo, layout):
    images, labels, configs, states = solo
    pop = _together(configs, images, labels, layout)
    assert int(pop.diverged_at.max()) == 0
    for k, state in enumerate(states):
        got = population.member(pop, k).state
        for tree in ("params", "model_state", "dropout_key"):
            for g, w in zip(
                jax.tree.leaves(getattr(got, tree)),
                jax.tree.leaves(getattr(state, tree)),
                strict=True,
            ):
                np.testing.assert_allclose(g, w, rtol=MEMBER_RTOL, atol=MEMBER_ATOL)
    means = [population.member(pop, k).state.model_state["runningmean1"]["mean"] for k in range(3)]
    assert not np.allclose(means[0], means[1])  # each member its own data order, its own state
