"""cnnjax.bench.measuring: what every method shares, and one method measured in this process (the
row's numbers consistent, not their speed)."""

import numpy as np
import pytest

from cnnjax.bench import measuring
from configs import default


def test_every_method_trains_the_same_plain_sgd():
    config = measuring.train_config(default.get_config(), "autodiff", 64)
    assert (config.optim.schedule, config.optim.warmup_epochs) == ("constant", 0.0)
    assert (config.optim.weight_decay, config.optim.nesterov) == (0.0, False)
    train = config.train
    assert (train.gradients, train.batch_size, train.scan) == ("autodiff", 64, "no")
    assert config.train.label_smoothing == 0.0
    assert (config.data.shift, config.data.flip) == (0, False)
    assert default.get_config().optim.schedule != "constant"  # a copy: the base is untouched


def test_unknown_methods_are_rejected():
    with pytest.raises(ValueError, match="method must be one of"):
        measuring.measure(
            "jax", 4, default.get_config(), steps=2, repeats=1, eval_images=10, evaluate=False
        )


@pytest.mark.parametrize("method", ["cnnjax hand", "flax linen"])
def test_one_method_measured_here(method):
    sizes = dict(steps=2, repeats=2, eval_images=10, examples=64)
    row = measuring.measure(method, 4, default.get_config(), **sizes, evaluate=True)
    assert (row["method"], row["batch"], row["steps"]) == (method, 4, 2)
    assert np.isfinite(row["loss"]) and np.isfinite(row["compile_s"])
    assert 0 < row["img_per_s_min"] <= row["img_per_s"] <= row["img_per_s_max"]
    assert 0 < row["rss_growth_mib"] < row["peak_rss_mib"] and row["load_average"] >= 0
    assert row["eval"]["method"] == method and row["eval"]["images"] == 10
    assert 0 < row["eval"]["img_per_s_min"] <= row["eval"]["img_per_s_max"]
    assert row["eval"]["load_average"] == row["load_average"]
