"""cnnjax.sweeps.results: per-setting mean and std over seeds by hand, the best setting, the
table's text, and the report's files with what they hold."""

import math

import numpy as np
import pytest

from cnnjax.output import sweep_plots
from cnnjax.sweeps import results


def row(member, overrides, accuracy, loss=0.5, diverged_at=None):
    """One member's results row, as cnnjax.sweeps.sweep writes it."""
    return dict(
        member=member,
        overrides=overrides,
        test_accuracy=accuracy,
        test_loss=loss,
        diverged_at=diverged_at,
    )


def result(member, lr, seed, accuracy, loss=0.5, diverged_at=None):
    """A row of a learning-rate sweep."""
    return row(member, {"optim.learning_rate": lr, "seed": seed}, accuracy, loss, diverged_at)


def test_settings_table_by_hand():
    rows = [
        result(0, 0.1, 0, 0.90),
        result(1, 0.1, 1, 0.92),
        result(2, 0.1, 2, 0.94),
        result(3, 1.0, 0, 0.10, diverged_at=7),
        result(4, 1.0, 1, 0.95),
    ]
    summary = results.settings_summary(rows)
    assert [s["setting"] for s in summary] == [
        {"optim.learning_rate": 0.1},
        {"optim.learning_rate": 1.0},
    ]
    assert summary[0]["test_accuracy"] == pytest.approx((0.92, 0.02))  # std with ddof 1
    assert summary[1]["test_accuracy"] == (0.95, 0.0)  # the diverged member is left out
    assert (summary[1]["members"], summary[1]["diverged"]) == (2, 1)
    assert results.best_setting(summary) == 1
    table = results.settings_table(summary)
    assert "92.00 ± 2.00" in table and "1/2" in table
    assert table.splitlines()[2].rstrip().endswith("*")  # the best row is marked


def test_two_swept_numbers_draw_a_heat_map_and_one_draws_a_line(tmp_path):
    rows = []
    grid = [(lr, wd, s) for lr in (0.1, 0.2) for wd in (0.0, 1e-4) for s in (0, 1)]
    for i, (lr, wd, seed) in enumerate(grid):
        overrides = {"optim.learning_rate": lr, "optim.weight_decay": wd, "seed": seed}
        rows.append(row(i, overrides, 0.8 + lr / 10 + seed / 100))
    table = results.write_report(tmp_path / "grid", rows)
    assert (tmp_path / "grid" / "accuracy_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert len(table.splitlines()) == 1 + 4 and "82.50 ± 0.71" in table
    results.write_report(tmp_path / "line", [result(0, 0.1, 0, 0.9), result(1, 0.2, 0, 0.8)])
    assert (tmp_path / "line" / "accuracy_vs_learning_rate.png").exists()


def test_summary_is_in_sweep_order_with_loss_stats_by_hand():
    rows = [
        result(3, 1.0, 0, 0.10, diverged_at=7),
        result(1, 0.1, 1, 0.92, loss=0.4),
        result(4, 1.0, 1, 0.95, loss=0.2),
        result(0, 0.1, 0, 0.90, loss=0.3),
        result(2, 0.1, 2, 0.94, loss=0.5),
        result(5, 10.0, 0, 0.0, diverged_at=1),
    ]
    summary = results.settings_summary(rows)  # rows arrive as shards finish: any order
    assert [s["setting"]["optim.learning_rate"] for s in summary] == [0.1, 1.0, 10.0]
    assert summary[0]["test_loss"] == pytest.approx((0.4, 0.1))  # sqrt((0.01 + 0 + 0.01) / 2)
    assert summary[0]["test_accuracy"] == pytest.approx((0.92, 0.02))
    assert (summary[0]["members"], summary[0]["diverged"]) == (3, 0)
    assert summary[1]["test_loss"] == (0.2, 0.0)  # one healthy member: std 0
    everyone_diverged = summary[2]
    assert (everyone_diverged["members"], everyone_diverged["diverged"]) == (1, 1)
    assert math.isnan(everyone_diverged["test_accuracy"][0])
    assert everyone_diverged["test_accuracy"][1] == 0.0
    assert "seed" not in summary[0]["setting"]
    assert results.best_setting(summary) == 1  # the NaN of the diverged setting is skipped


def test_best_setting_is_none_when_every_setting_diverged():
    rows = [result(0, 0.1, 0, 0.5, diverged_at=3), result(1, 1.0, 0, 0.5, diverged_at=1)]
    assert results.best_setting(results.settings_summary(rows)) is None
    assert results.best_setting([]) is None


def test_settings_table_text_by_hand():
    rows = [
        result(0, 0.1, 0, 0.90, loss=0.3),
        result(1, 0.1, 1, 0.92, loss=0.4),
        result(2, 0.1, 2, 0.94, loss=0.5),
        result(3, 1.0, 0, 0.10, diverged_at=7),
        result(4, 1.0, 1, 0.95, loss=0.2),
        result(5, 10.0, 0, 0.0, diverged_at=1),
    ]
    table = results.settings_table(results.settings_summary(rows))
    assert table.splitlines() == [
        "optim.learning_rate  runs ok  test accuracy %        test loss  best",
        "0.1                      3/3     92.00 ± 2.00  0.4000 ± 0.1000",
        "1                        1/2     95.00 ± 0.00  0.2000 ± 0.0000  *",
        "10                       0/1       nan ± 0.00     nan ± 0.0000",
    ]


def test_a_setting_that_is_not_a_float_is_written_as_it_is():
    rows = [
        row(m, {"train.batch_size": b, "model.name": "reference", "seed": 0}, accuracy)
        for m, (b, accuracy) in enumerate([(32, 0.9), (64, 0.8)])
    ]
    lines = results.settings_table(results.settings_summary(rows)).splitlines()
    assert lines[0].split("  ")[:2] == ["train.batch_size", "model.name"]
    assert lines[1].split()[:2] == ["32", "reference"] and lines[1].endswith("*")
    assert lines[2].split()[:2] == ["64", "reference"] and not lines[2].endswith("*")


@pytest.fixture
def sweep_plot_calls(monkeypatch):
    """The calls write_report makes to the sweep plots: (plot name, its arguments)."""
    calls = []
    for name in ("plot_sweep_line", "plot_sweep_heatmap"):
        monkeypatch.setattr(sweep_plots, name, lambda *args, name=name: calls.append((name, args)))
    return calls


def test_write_report_with_one_swept_number_plots_each_healthy_seed(sweep_plot_calls, tmp_path):
    rows = [
        result(0, 0.1, 0, 0.90),
        result(1, 0.1, 1, 0.94),
        result(2, 1.0, 0, 0.10, diverged_at=7),
        result(3, 1.0, 1, 0.95),
    ]
    table = results.write_report(tmp_path / "line", rows)
    assert (tmp_path / "line" / "table.txt").read_text() == table + "\n"
    assert table == results.settings_table(results.settings_summary(rows))
    ((name, (by_x, path, xlabel)),) = sweep_plot_calls
    assert name == "plot_sweep_line" and by_x == {0.1: [0.90, 0.94], 1.0: [0.95]}
    assert path == tmp_path / "line" / "accuracy_vs_learning_rate.png"
    assert xlabel == "optim.learning_rate"


def test_write_report_with_two_swept_numbers_plots_the_mean_grid(sweep_plot_calls, tmp_path):
    accuracy_by_setting = {(0.1, 0.0): (0.8, 0.9), (0.1, 1e-4): (0.7, 0.7), (0.2, 0.0): (0.6, None)}
    rows = []
    for (lr, wd), accuracies in accuracy_by_setting.items():
        for seed, accuracy in enumerate(accuracies):  # None: that seed diverged
            overrides = {"optim.learning_rate": lr, "optim.weight_decay": wd, "seed": seed}
            rows.append(
                row(len(rows), overrides, accuracy or 0.0, diverged_at=None if accuracy else 3)
            )
    results.write_report(tmp_path / "grid", rows)
    ((name, (grid_YX, xs, ys, path, xlabel, ylabel)),) = sweep_plot_calls
    assert name == "plot_sweep_heatmap"
    assert (xs, ys) == ([0.1, 0.2], [0.0, 1e-4])
    # rows: weight decay; columns: learning rate; (0.2, 1e-4) was never run
    np.testing.assert_allclose(grid_YX, [[0.85, 0.6], [0.7, np.nan]])
    assert path == tmp_path / "grid" / "accuracy_heatmap.png"
    assert (xlabel, ylabel) == ("optim.learning_rate", "optim.weight_decay")
    assert (tmp_path / "grid" / "table.txt").exists()


def test_write_report_draws_nothing_for_a_swept_name_or_three_numbers(sweep_plot_calls, tmp_path):
    names = [row(m, {"model.name": name, "seed": 0}, 0.9) for m, name in enumerate("ab")]
    results.write_report(tmp_path / "names", names)
    three = [row(0, {"a.x": 1.0, "a.y": 2.0, "a.z": 3.0, "seed": 0}, 0.9)]
    results.write_report(tmp_path / "three", three)
    assert sweep_plot_calls == []
    assert sorted(p.name for p in (tmp_path / "names").iterdir()) == ["table.txt"]
    assert sorted(p.name for p in (tmp_path / "three").iterdir()) == ["table.txt"]


def test_by_member_counts_identical_repeats_once_and_lists_rows_that_disagree():
    nan_row = result(1, 1.0, 0, 0.1, loss=math.nan, diverged_at=7)  # NaN != NaN as a float
    rows = [result(0, 0.1, 0, 0.9), nan_row, dict(nan_row), result(0, 0.1, 0, 0.9)]
    by_member, conflicts = results.by_member(rows)
    assert sorted(by_member) == [0, 1] and conflicts == []
    by_member, conflicts = results.by_member([*rows, result(0, 0.1, 0, 0.8)])
    assert sorted(by_member) == [1] and conflicts == [0]


def test_write_rows_replaces_the_file_whole_and_reads_back_what_it_wrote(tmp_path):
    path = tmp_path / "results.jsonl"
    first = [dict(kind="member", step=3, **result(0, 0.1, 0, 0.9))]
    results.write_rows(path, first)
    (tmp_path / "results.jsonl.partial").write_text('{"kind": "member", "st')  # a killed write
    both = [*first, dict(kind="member", step=3, **result(1, 1.0, 0, 0.1, math.nan, 2))]
    results.write_rows(path, both)
    back = results.read_rows(path)
    assert [r["member"] for r in back] == [0, 1] and math.isnan(back[1]["test_loss"])
    assert not (tmp_path / "results.jsonl.partial").exists()
    assert results.read_rows(tmp_path / "none.jsonl") == []


def test_summary_refuses_a_member_listed_twice():
    with pytest.raises(ValueError, match="a member twice"):
        results.settings_summary([result(0, 0.1, 0, 0.9), result(0, 0.1, 0, 0.9)])
