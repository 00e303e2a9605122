"""cnnjax.sweeps.ensemble: the mean of members' probabilities by hand, and a finished sweep's
members evaluated from their checkpoints as the sweep recorded them."""

import math

import numpy as np
import pytest

from cnnjax.sweeps import ensemble, grid, sweep
from tests.sweeps.test_sweep import sweep_config

# Each member's test accuracy re-evaluated from its checkpoint vs the sweep's own row: the same
# params and images, the same ops in another program (jit of one batch vs the epoch's eval), so
# the same predictions; the loss differs by float32 rounding only (~1e-7 relative).
LOSS_RTOL = 1e-5


def test_two_members_each_half_right_make_an_ensemble_all_right():
    # Member A is sure of example 0 and wrong on 1; B the other way round. The mean of their
    # probabilities, [[0.65, 0.35], [0.35, 0.65]], picks both labels.
    a = np.array([[0.9, 0.1], [0.6, 0.4]])
    b = np.array([[0.4, 0.6], [0.1, 0.9]])
    labels = np.array([0, 1])
    assert ensemble.combine(a[None], labels)["accuracy"] == 0.5
    assert ensemble.combine(b[None], labels)["accuracy"] == 0.5
    both = ensemble.combine(np.stack([a, b]), labels)
    assert both["accuracy"] == 1.0
    assert both["loss"] == pytest.approx(-math.log(0.65), rel=1e-12)


def test_a_sweeps_members_and_their_ensemble_from_its_checkpoints(dataset, tmp_path):
    config = sweep_config(dataset, max_members=2)
    axes = [{"seed": [0, 1, 2]}]
    rows = sweep.fit(config, axes, tmp_path / "sweep")
    result = ensemble.evaluate(config, axes, tmp_path / "sweep")
    assert [m["member"] for m in result["members"]] == [0, 1, 2]
    for member, row in zip(result["members"], rows, strict=True):
        assert member["test_accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-6)
        assert member["test_loss"] == pytest.approx(row["test_loss"], rel=LOSS_RTOL)
    assert result["ensemble"]["members"] == 3
    assert 0.0 <= result["ensemble"]["accuracy"] <= 1.0
    report = ensemble.format_report(result)
    assert "ensemble of 3" in report and "single models" in report
    with pytest.raises(grid.SweepError, match="another config or sweep"):
        ensemble.evaluate(config, [{"seed": [0, 1]}], tmp_path / "sweep")
    with pytest.raises(grid.SweepError, match=r"holds no sweep\.json"):
        ensemble.evaluate(config, axes, tmp_path)


def test_members_on_another_test_split_are_refused_before_they_are_evaluated(
    dataset, tmp_path, monkeypatch
):
    # Shifts change the training images only, so members with and without them share the test
    # split and make one ensemble. Where a data config brings another test split (here: the
    # loader gives shifted members' test labels rolled by one), the first member of that config
    # is refused before its evaluation, not after every member's.
    config = sweep_config(dataset, max_members=2)
    axes = [{"data.shift": [0, 1]}]
    sweep.fit(config, axes, tmp_path / "sweep")
    assert ensemble.evaluate(config, axes, tmp_path / "sweep")["ensemble"]["members"] == 2

    load_splits, evaluated = ensemble.run.load_splits, []

    def other_test_split_when_shifted(member_config):
        splits = load_splits(member_config)
        if member_config.data.shift:
            images, labels = splits[1]
            splits[1] = (images, np.roll(labels, 1))
        return splits

    def counted(state, member_config, images, *args, **kw):
        evaluated.append(member_config.data.shift)
        return member_probabilities(state, member_config, images, *args, **kw)

    member_probabilities = ensemble.member_probabilities
    monkeypatch.setattr(ensemble.run, "load_splits", other_test_split_when_shifted)
    monkeypatch.setattr(ensemble, "member_probabilities", counted)
    with pytest.raises(grid.SweepError, match="different test splits"):
        ensemble.evaluate(config, axes, tmp_path / "sweep")
    assert evaluated == [0]
