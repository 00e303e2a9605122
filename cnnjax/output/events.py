"""TensorBoard event files beside a run's and a sweep's JSONL, written as training goes with
TensorBoard's own protos and writer (no TensorFlow): `tensorboard --logdir DIR` (make
tensorboard) shows them live.

    run directory   tensorboard/            every metrics row's numbers: step/loss, step/accuracy,
                                            step/learning_rate, epoch/test_accuracy, ...
    sweep directory tensorboard/            the HParams experiment: swept fields, metrics
                    tensorboard/member-<m>/ member m: step/loss, epoch/..., hyper/<name> (the
                                            numbers it trains with: PBT changes them) and the
                                            swept fields it started with, an HParams session

Scalars are tagged "<row kind>/<field>" at the row's global step. A resumed run or population
first writes a SessionLog START at the step after its checkpoint: TensorBoard's loader then
drops what the killed process wrote past the checkpoint (purge_orphaned_data), so the curves
are the uninterrupted run's.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

FLUSH_SECONDS = 5  # how stale the live view may be


class Events:
    """One process's event file in `logdir`; `resumed_at` = the step of the checkpoint a
    resumed run continues from (None for a fresh start)."""

    def __init__(self, logdir, resumed_at: int | None = None):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._pb = event_pb2
        self._writer = EventFileWriter(str(logdir), flush_secs=FLUSH_SECONDS)
        if resumed_at is not None:
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._add(event_pb2.Event(step=resumed_at + 1, session_log=start))

    def _add(self, event) -> None:
        event.wall_time = time.time()
        self._writer.add_event(event)

    def scalars(self, step: int, values: dict) -> None:
        """Each finite number in `values` (name -> number) as a scalar at `step`."""
        from tensorboard.compat.proto import summary_pb2

        kept = [
            summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in values.items()
            if _number(value) and math.isfinite(value)
        ]
        if kept:
            self._add(self._pb.Event(step=int(step), summary=summary_pb2.Summary(value=kept)))

    def write(self, row: dict) -> None:
        """A metrics row (cnnjax.output.jsonl): its numbers as "<kind>/<field>" at its step;
        flushed at once unless it is a step's row (those go out every FLUSH_SECONDS)."""
        skip = ("kind", "step", "epoch", "member")
        values = {f"{row['kind']}/{k}": v for k, v in row.items() if k not in skip}
        self.scalars(row["step"], values)
        if row["kind"] != "step":  # an epoch's rows are on disk before its checkpoint
            self.flush()

    def hparams(self, values: dict, group: str = "") -> None:
        """`values` (field -> number, string or bool) as this run's HParams session."""
        from tensorboard.plugins.hparams import plugin_data_pb2

        start = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=time.time())
        for name, value in values.items():
            if isinstance(value, bool):
                start.hparams[name].bool_value = value
            elif _number(value):
                start.hparams[name].number_value = float(value)
            else:
                start.hparams[name].string_value = str(value)
        self._plugin("_hparams_/session_start_info", plugin_data_pb2.HParamsPluginData(
            version=0, session_start_info=start))  # fmt: skip

    def experiment(self, fields: dict, metrics: list[str]) -> None:
        """The HParams experiment: the swept `fields` (name -> an example value, for its type)
        and the metric tags each session reports."""
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

        kinds = {bool: api_pb2.DATA_TYPE_BOOL, str: api_pb2.DATA_TYPE_STRING}
        infos = [
            api_pb2.HParamInfo(name=name, type=kinds.get(type(v), api_pb2.DATA_TYPE_FLOAT64))
            for name, v in fields.items()
        ]
        names = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics]
        found = api_pb2.Experiment(hparam_infos=infos, metric_infos=names)
        self._plugin("_hparams_/experiment", plugin_data_pb2.HParamsPluginData(
            version=0, experiment=found))  # fmt: skip

    def _plugin(self, tag: str, data) -> None:
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.hparams import metadata

        value = summary_pb2.Summary.Value(
            tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR
        )
        self._add(self._pb.Event(step=0, summary=summary_pb2.Summary(value=[value])))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class Members:
    """Event files of a population's members, in root/member-<m>/ (opened as first written)."""

    def __init__(self, root, resumed_at: int | None = None, hparams: dict | None = None):
        """`hparams`: member -> its swept fields, written as its HParams session."""
        self.root, self._resumed_at, self._open = Path(root), resumed_at, {}
        for m, values in (hparams or {}).items():
            self.member(m).hparams(values)

    def member(self, m: int) -> Events:
        if m not in self._open:
            self._open[m] = Events(self.root / f"member-{m}", self._resumed_at)
        return self._open[m]

    def write(self, row: dict) -> None:
        """A population's metrics row, to its member's file."""
        self.member(row["member"]).write(row)

    def epoch_steps(self, members: list[int], seen: dict, hyper: dict, before: int) -> None:
        """An epoch's per-step losses and accuracies (seen: name -> [S, M], after `before`
        steps) and each member's HYPER numbers (name -> [M]) at the epoch's last step."""
        for k, m in enumerate(members):
            for s in range(len(seen["loss"])):
                values = {f"step/{name}": seen[name][s, k] for name in ("loss", "accuracy")}
                self.member(m).scalars(before + s + 1, values)
            numbers = {f"hyper/{name}": float(value[k]) for name, value in hyper.items()}
            self.member(m).scalars(before + len(seen["loss"]), numbers)

    def close(self) -> None:
        for events in self._open.values():
            events.close()


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
