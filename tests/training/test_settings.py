"""cnnjax.training.settings: dotted fields, the one config check, whole batches per epoch."""

import types

import jax
import ml_collections
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


@pytest.mark.parametrize(
    "field, value, wanted",
    [
        ("train.batch_size", -32, "an integer >= 1"),
        ("train.eval_batch_size", 0, "an integer >= 1"),
        ("train.steps_per_chunk", 0, "an integer >= 1"),
        ("train.epochs", 0, "an integer >= 1"),
        ("train.epochs", -1, "an integer >= 1"),
        ("train.checkpoints_kept", 0, "an integer >= 1"),
        ("train.label_smoothing", 1.0, "a number >= 0 and < 1"),
        ("optim.learning_rate", float("inf"), "a number >= 0"),
        ("optim.learning_rate", float("nan"), "a number >= 0"),
        ("optim.momentum", 1.5, "a number >= 0 and <= 1"),
        ("optim.weight_decay", -1e-4, "a number >= 0"),
        ("data.train_examples", -1, "an integer >= 0"),
        ("data.shift", -2, "an integer >= 0"),
    ],
)
def test_every_number_is_checked_with_the_flag_that_fixes_it(field, value, wanted):
    config = default.get_config()
    settings.put(config, field, value)
    with pytest.raises(RunError) as excinfo:
        settings.check(config)
    assert str(excinfo.value).startswith(f"config.{field} must be {wanted}, got {value!r}: ")
    assert f"pass --config.{field}=" in str(excinfo.value)
    settings.put(config, field, default.get_config()[field.split(".")[0]][field.split(".")[1]])
    settings.check(config)  # the same config with the default value passes


def test_a_config_file_of_the_wrong_types_is_refused():
    """A ConfigDict keeps an override's type, but a config file may set any value it likes."""
    for field, value, wanted in [
        ("train.epochs", 2.5, "an integer"),
        ("train.batch_size", True, "an integer"),
        ("optim.learning_rate", "0.1", "a number"),
        ("data.flip", 1, "True or False"),
    ]:
        plain = default.get_config().to_dict()
        section, name = field.split(".")
        plain[section][name] = value
        with pytest.raises(RunError, match=rf"config\.{field} must be {wanted}"):
            settings.check(ml_collections.ConfigDict(plain))
    config = default.get_config()
    config.optim.decay_epochs = (10, -1)
    with pytest.raises(
        RunError, match=r"config\.optim\.decay_epochs must be a number >= 0, got -1"
    ):
        settings.check(config)
    config = default.get_config()
    config.data.name = "kmnist"
    with pytest.raises(RunError, match=r"config\.data\.name must be one of \('mnist', 'fash"):
        settings.check(config)


def test_a_source_dir_that_is_not_there_is_refused_before_any_data(tmp_path):
    config = default.get_config()
    config.data.source_dir = str(tmp_path / "nowhere")
    with pytest.raises(RunError, match=r"nowhere is not a directory: pass --config\.data\.source"):
        settings.check(config)
