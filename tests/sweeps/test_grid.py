"""cnnjax.sweeps.grid: axes multiply and zip, which members share a program, shards."""

import pytest

from cnnjax.sweeps import grid
from cnnjax.training import settings
from configs import default, resnet_small, sweep_lr


def test_axes_multiply_and_fields_inside_one_axis_zip():
    axes = [{"optim.learning_rate": [0.1, 0.2], "optim.momentum": [0.9, 0.5]}, {"seed": [0, 1, 2]}]
    members = grid.expand(default.get_config(), axes)
    assert len(members) == 6
    assert members[0] == {"optim.learning_rate": 0.1, "optim.momentum": 0.9, "seed": 0}
    assert members[2] == {"optim.learning_rate": 0.1, "optim.momentum": 0.9, "seed": 2}
    assert members[5] == {"optim.learning_rate": 0.2, "optim.momentum": 0.5, "seed": 2}
    assert len(grid.expand(sweep_lr.get_config(), sweep_lr.get_sweep())) == 8


def test_only_numbers_and_seeds_share_a_program():
    base = default.get_config()
    key = grid.program_key(base)
    for name, value in [
        ("seed", 3),
        ("optim.learning_rate", 0.3),
        ("optim.momentum", 0.0),
        ("optim.weight_decay", 0.0),
        ("train.label_smoothing", 0.0),
    ]:
        assert grid.program_key(grid.member_config(base, {name: value})) == key, name
    for name, value in [
        ("train.batch_size", 64),
        ("train.epochs", 3),
        ("optim.nesterov", False),
        ("data.flip", False),
    ]:
        assert grid.program_key(grid.member_config(base, {name: value})) != key, name


def test_the_residual_networks_config_sweeps_three_seeds_of_one_program():
    config = resnet_small.get_config()
    settings.check(config)  # every field a run reads
    members = grid.expand(config, resnet_small.get_sweep())
    assert members == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
    assert len({grid.program_key(grid.member_config(config, m)) for m in members}) == 1
    assert config.model.spec == "resnet_small" and config.train.eval_flip


def test_shards_are_disjoint_and_cover_the_sweep():
    assert grid.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(grid.SweepError, match="--shard"):
            grid.parse_shard(bad)
    parts = [grid.shard_members(8, (i, 3)) for i in range(3)]
    assert parts == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert grid.shard_members(8, (0, 1)) == list(range(8))
