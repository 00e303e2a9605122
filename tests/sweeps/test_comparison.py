"""cnnjax.sweeps.comparison: anytime curves worked by hand from a sweep directory, the
summary's reach and half-budget columns, and the shipped budget configs spending one budget."""

import json

import numpy as np
import pytest

from cnnjax.output import jsonl
from cnnjax.sweeps import comparison, grid, stages
from tests.builders import REPO


def _population(directory, p, rows):
    with jsonl.MetricsWriter(directory / "populations" / str(p) / "metrics.jsonl") as writer:
        for member, epoch, test, held in rows:
            writer.write(kind="epoch", step=epoch, epoch=epoch, member=member, test_accuracy=test,
                         validation_accuracy=held, diverged_at=None, seconds=2.0)  # fmt: skip


def test_the_anytime_curve_takes_the_best_model_by_validation_and_reports_its_test_accuracy(
    tmp_path,
):
    """Stage 0: a population of members 0 and 1 for 2 epochs (2 member-epochs per epoch);
    stage 1: member 1 alone for a third epoch. The model chosen is the best by validation, so
    member 0's higher test accuracy at epoch 2 is not taken."""
    (tmp_path / "plan.json").write_text(json.dumps([[[0, 1]], [[1]]]))
    _population(tmp_path, 0, [(0, 1, 0.50, 0.40), (1, 1, 0.60, 0.45),
                              (0, 2, 0.90, 0.50), (1, 2, 0.70, 0.60)])  # fmt: skip
    _population(tmp_path, 1, [(1, 3, 0.80, 0.55)])
    curve = comparison.anytime(tmp_path)
    assert curve["spent"] == [2, 4, 5]
    assert curve["test_accuracy"] == [0.60, 0.70, 0.70]  # epoch 3's 0.55 < 0.60 on validation
    assert curve["objective"] == [0.45, 0.60, 0.60]
    assert curve["seconds"] == [2.0, 4.0, 6.0]
    assert comparison.at(curve, 1) != comparison.at(curve, 1)  # NaN before anything trained
    assert comparison.at(curve, 3) == 0.60 and comparison.reached(curve, 0.65) == 4
    assert comparison.reached(curve, 0.75) == float("inf")


def test_the_summary_measures_every_sweep_against_the_references_final_mean():
    grid_curves = [{"spent": [4, 8], "test_accuracy": [0.5, 0.8], "seconds": [1, 2]},
                   {"spent": [4, 8], "test_accuracy": [0.6, 0.9], "seconds": [1, 2]}]  # fmt: skip
    fast = [{"spent": [2, 8], "test_accuracy": [0.86, 0.88], "seconds": [1, 3]}] * 2
    rows = comparison.summarize({"grid": grid_curves, "fast": fast}, reference="grid")
    assert rows[0]["target"] == pytest.approx(0.85)
    assert rows[0]["final"][0] == pytest.approx(0.85)
    assert rows[0]["final"][1] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert rows[1]["to_reference"] == [2, 2] and rows[0]["to_reference"] == [float("inf"), 8]
    assert rows[1]["half"] == (pytest.approx(0.86), 0.0)
    assert "member-epochs to 85.00%" in comparison.table(rows)


@pytest.mark.parametrize("name", ["grid", "random", "halving", "pbt"])
def test_the_budget_configs_spend_the_same_member_epochs(name):
    config, found = comparison.load(str(REPO / "configs" / f"budget_{name}.py"))
    members = grid.expand(config, found) if isinstance(found, list) else found
    assert stages.budget(members, config.train.epochs) == 32
    assert config.data.validation_examples == 5000
