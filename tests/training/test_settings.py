"""cnnjax.training.settings: dotted fields, the one config check, whole batches per epoch."""

import types

import jax
import pytest

from cnnjax import parallel
from cnnjax.training import RunError, settings
from configs import default


def test_dotted_fields_get_put_and_drop():
    config = default.get_config()
    names = settings.dotted_fields(config)
    assert "optim.learning_rate" in names and "seed" in names and "train.batch_size" in names
    assert not any(name in ("optim", "train", "data", "model") for name in names)  # leaves only
    settings.put(config, "optim.learning_rate", 0.3)
    assert settings.get(config, "optim.learning_rate") == 0.3 == config.optim.learning_rate
    with pytest.raises(TypeError):  # a ConfigDict keeps its field's type
        settings.put(config, "train.batch_size", "many")
    plain = config.to_dict()
    settings.drop(plain, "optim.momentum")
    settings.drop(plain, "optim.not_there")  # absent: nothing to do
    assert "momentum" not in plain["optim"] and "learning_rate" in plain["optim"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("model.spec", "resnet9000"),
        ("train.gradients", "symbolic"),
        ("optim.schedule", "linear"),
        ("train.compute_dtype", "float16"),
        ("train.scan", "maybe"),
        ("data.placement", "disk"),
    ],
)
def test_every_choice_is_checked_with_the_flag_that_fixes_it(field, value):
    config = default.get_config()
    settings.check(config)  # the default passes
    settings.put(config, field, value)
    with pytest.raises(RunError, match=rf"config\.{field} must be one of .*--config\.{field}="):
        settings.check(config)


def test_the_batch_must_split_over_the_mesh():
    config = default.get_config()
    settings.check(config, parallel.make_mesh(jax.devices()[:1]))
    four_devices = types.SimpleNamespace(size=4)  # all check_divisible reads of a mesh
    config.train.batch_size = 30
    with pytest.raises(
        RunError, match=r"config\.train\.batch_size: .*30 .*--config\.train\.batch_"
    ):
        settings.check(config, four_devices)


def test_steps_per_epoch_counts_whole_batches_and_refuses_none():
    assert settings.steps_per_epoch(1000, 128) == 7
    assert settings.steps_per_epoch(128, 128) == 1
    with pytest.raises(RunError, match="127 examples, fewer than one batch of 128"):
        settings.steps_per_epoch(127, 128)
