"""cnnjax.output.progress: bars that stay silent when off and show the metrics when on."""

import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.output import progress


class _Unconvertible:
    def __float__(self):
        raise AssertionError("a disabled bar converted a value")


@pytest.mark.parametrize("enabled", [False, None], ids=["disabled", "not-a-tty"])
def test_progress_is_silent_when_off(enabled, capsys):
    bar = progress.progress(range(5), "epoch 1", enabled=enabled)
    seen = []
    for item in bar:
        seen.append(item)
        bar.set_metrics(loss=_Unconvertible())
    bar.close()
    assert seen == [0, 1, 2, 3, 4]
    assert capsys.readouterr() == ("", "")


def test_progress_shows_metrics_when_on(capsys):
    bar = progress.progress(3, "epoch 2", enabled=True)
    for _ in range(3):
        bar.update(1)
        bar.set_metrics(loss=jnp.float32(0.41), accuracy=np.float64(0.8625))
    bar.close()
    err = capsys.readouterr().err
    assert "epoch 2" in err and "3/3" in err and "loss=0.4100, accuracy=0.8625" in err
