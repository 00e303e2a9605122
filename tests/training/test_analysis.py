"""cnnjax.training.analysis: a finished run's time to a target accuracy, from its metrics file."""

import json

import pytest

from cnnjax.output import jsonl
from cnnjax.training import analysis


def _run_dir(tmp_path, dataset, epochs):
    """A finished run's files as cnnjax.training.run writes them: (seconds, test_accuracy) per
    epoch."""
    workdir = tmp_path / dataset
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"data": {"name": dataset}}))
    with jsonl.MetricsWriter(workdir / "metrics.jsonl") as writer:
        for e, (seconds, accuracy) in enumerate(epochs, start=1):
            writer.write(kind="step", step=10 * e, epoch=e, loss=0.5)
            epoch_row = dict(step=10 * e, epoch=e, test_accuracy=accuracy, seconds=seconds)
            writer.write(kind="epoch", **epoch_row)
    return workdir


def test_time_to_accuracy_sums_epoch_seconds_to_the_first_epoch_at_target(tmp_path):
    workdir = _run_dir(tmp_path, "fashion_mnist", [(30.0, 0.85), (20.0, 0.9105), (25.0, 0.905)])
    got = analysis.time_to_accuracy(workdir)  # fashion_mnist: 91%
    assert got["reached"] and got["epoch"] == 2 and got["seconds"] == pytest.approx(50.0)
    assert got["target"] == 0.91 and got["epochs"] == 3
    assert got["total_seconds"] == pytest.approx(75.0)
    assert analysis.time_to_accuracy(workdir, target=0.85)["seconds"] == pytest.approx(30.0)
    assert "fashion_mnist" in analysis.format_time_to_accuracy([got])


def test_time_to_accuracy_never_reached(tmp_path):
    workdir = _run_dir(tmp_path, "mnist", [(10.0, 0.97), (10.0, 0.9899)])
    got = analysis.time_to_accuracy(workdir)  # mnist: 99%
    assert not got["reached"] and got["epoch"] is None and got["seconds"] is None
    assert got["best_accuracy"] == pytest.approx(0.9899) and got["target"] == 0.99
    assert "never" in analysis.format_time_to_accuracy([got])
    with pytest.raises(ValueError, match="no default target"):
        analysis.time_to_accuracy(_run_dir(tmp_path, "cifar", [(1.0, 0.5)]))
