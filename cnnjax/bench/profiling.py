"""Where a training step's time goes: the compiled step's operations, in the order they ran,
each with its share of the step's wall-clock time and the network layer it belongs to.

The step is traced with jax.profiler; each event of an operation of the compiled program (an
XLA instruction: a fusion, a convolution, a dot) is matched to the instruction's output shape
and source operation in the optimized HLO. A step's wall-clock time is cut at every event's
start and end, and each piece is charged to the operations running then, shared equally. XLA:CPU
runs its (Eigen) convolutions and some dots asynchronously: their events end when the work is
handed to the threads, and the pieces where no operation's event is open are the wait for them,
charged to the latest convolution or dot started before. The charges of a step add up to it.

Legend: B the batch size.
"""

from __future__ import annotations

import collections
import itertools
import pathlib
import re
import tempfile
import time

import jax
import numpy as np

from cnnjax import models, parallel
from cnnjax.bench import measuring
from cnnjax.output import tables
from cnnjax.training import feed, settings, train

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_instructions(hlo_text: str) -> dict:
    """{name: (shape, source operation, opcode)} for the instructions of the entry computation
    of an optimized HLO module's text; the source operation is the last part of the
    instruction's op_name metadata (e.g. conv_general_dilated), else its opcode."""
    entry = hlo_text[hlo_text.index("\nENTRY") :]
    found = {}
    for line in entry.splitlines()[1:]:
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        name, shape, opcode = match.groups()
        op_name = _OP_NAME.search(line)
        source = op_name.group(1).rsplit("/", 1)[-1] if op_name else opcode
        found[name] = (shape.split("{")[0], source, opcode)
    return found


def layer_shapes(spec, input_shape, batch_size: int) -> dict:
    """{"f32[B,...]": "conv1 / relu1", ...}: which layers' outputs (batched) and which parameters
    have each shape, or a permutation of it ("... (transposed)"), so an operation's output
    shape says where in the network it is."""
    labels = collections.defaultdict(list)
    counts, shape = collections.Counter(), tuple(input_shape)
    labels[(batch_size, *shape)].append("input")
    for layer, name in zip(spec, models.layer_names(spec), strict=True):
        kind = type(layer).__name__.lower()
        counts[kind] += 1
        shape = models.layer_output_shape(layer, shape)
        labels[(batch_size, *shape)].append(name or f"{kind}{counts[kind]}")
    params = models.init(jax.random.key(0), spec, input_shape)
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:  # residual1/conv1 kernel
        *where, leaf = (key.key for key in path)
        labels[tuple(value.shape)].append(f"{'/'.join(where)} {leaf}")
    exact = {shape: " / ".join(names) for shape, names in labels.items()}
    transposed = {}  # e.g. a kernel gradient computed as (I, kh, kw, O), an activation as CHWN
    for shape, label in exact.items():
        for order in itertools.permutations(shape):
            if order not in exact:
                transposed.setdefault(order, f"{label} (transposed)")
    return {_hlo_shape(shape): label for shape, label in {**transposed, **exact}.items()}


def _hlo_shape(shape) -> str:
    return f"f32[{','.join(map(str, shape))}]"


def _trace_events(run_steps, names) -> list:
    """(start_ns, duration_ns, name) of every profiler event whose name is in `names`."""
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            run_steps()
        (path,) = pathlib.Path(directory).rglob("*.xplane.pb")
        profile = jax.profiler.ProfileData.from_file(str(path))
    return sorted(
        (event.start_ns, event.duration_ns, event.name)
        for plane in profile.planes
        for line in plane.lines
        for event in line.events
        if event.name in names
    )


ASYNC_OPCODES = ("convolution", "dot")  # what XLA:CPU may hand to its threads and not wait for


def step_timeline(events, first: str, asynchronous=frozenset()) -> list[list]:
    """Split sorted (start_ns, duration_ns, name) events into steps, each beginning with an
    event named `first` (the program's first operation) and lasting until the next begins (the
    last: until its last event ends), and charge each step's time as the module docstring says:
    `asynchronous` names the operations whose work may outlast their event; a wait with none of
    them started goes to the operation that ended last. The wait after a step's last operation
    includes dispatching the next step. Returns [(name, start_ms, charged_ms), ...] per step."""
    steps = []
    for start, duration, name in events:
        if name == first or not steps:
            steps.append([])
        steps[-1].append((start, start + duration, name))
    timelines = []
    for k, step in enumerate(steps):
        begin = step[0][0]
        end = steps[k + 1][0][0] if k + 1 < len(steps) else max(e for _, e, _ in step)
        charged = collections.defaultdict(float)
        points = sorted({begin, end, *(t for s, e, _ in step for t in (s, e) if t < end)})
        for lo, hi in itertools.pairwise(points):
            running = [n for s, e, n in step if s <= lo and e >= hi]
            if not running:  # waiting: for the latest asynchronous operation started
                started = [n for s, _, n in step if s <= lo and n in asynchronous]
                ended = sorted((e, n) for s, e, n in step if e <= lo)
                running = started[-1:] or [ended[-1][1]]
            for name in running:
                charged[name] += (hi - lo) / len(running)
        timelines.append([(n, (s - begin) / 1e6, charged[n] / 1e6) for s, _, n in step])
    return timelines


def profile_step(
    config, *, gradients: str = "hand", batch_size: int = 128, steps: int = 10, examples=10_000
) -> dict:
    """Trace `steps` training steps of config's network (the benchmark's step: SGD momentum, no
    augmentation) on random uint8 images. Returns {"rows": one per operation in the order of
    the median step (start_ms, ms: its median charge, share, name, shape, op, layer), "step_ms":
    the median traced step, "untraced_step_ms": the median step without the profiler}."""
    config = measuring.train_config(config, gradients, batch_size)
    spec, input_shape = settings.spec(config), models.REFERENCE_INPUT_SHAPE
    rng = np.random.default_rng(config.seed)
    images = rng.integers(0, 256, (examples, *input_shape), np.uint8)
    labels = rng.integers(0, 10, examples).astype(np.int32)
    idx = rng.integers(0, examples, (steps + 3, batch_size)).astype(np.int32)
    data = feed.DeviceFeed((images, labels), parallel.make_mesh(jax.devices()[:1]))
    batches = list(data.batches(idx))
    optimizer = train.make_optimizer(config.optim, steps_per_epoch=1, epochs=1)
    state = [train.init_state(config.seed, spec, input_shape, optimizer)]
    fed_step = train.fed_step(data, spec=spec, optimizer=optimizer, config=config)
    step = jax.jit(fed_step, donate_argnums=0)
    compiled = step.lower(state[0], data.resident, batches[0]).compile()
    instructions = hlo_instructions(compiled.as_text())

    def run(rows):
        seconds = []
        for k in rows:
            begin = time.perf_counter()
            state[0], metrics = compiled(state[0], data.resident, batches[k])
            jax.block_until_ready(metrics)
            seconds.append(time.perf_counter() - begin)
        return seconds

    run(range(3))  # warm-up
    untraced = run(range(3, steps + 3))
    events = _trace_events(lambda: run(range(3, steps + 3)), set(instructions))
    asynchronous = {n for n, (*_, opcode) in instructions.items() if opcode in ASYNC_OPCODES}
    # The first traced step pays the profiler's start-up; the last has no next step to wait for.
    timelines = step_timeline(events, events[0][2], asynchronous)[1:-1]
    charges = collections.defaultdict(list)
    starts = collections.defaultdict(list)
    for timeline in timelines:
        for name, start_ms, ms in timeline:
            charges[name].append(ms)
            starts[name].append(start_ms)
    shapes = layer_shapes(spec, input_shape, batch_size)
    rows = []
    for name in sorted(charges, key=lambda n: np.median(starts[n])):
        shape, op, _ = instructions[name]
        start_ms, ms = float(np.median(starts[name])), float(np.median(charges[name]))
        layer = shapes.get(shape, "")
        rows.append(dict(name=name, start_ms=start_ms, ms=ms, shape=shape, op=op, layer=layer))
    total = sum(r["ms"] for r in rows)
    for row in rows:
        row["share"] = row["ms"] / total
    step_ms = float(np.median([sum(ms for _, _, ms in t) for t in timelines]))
    untraced_step_ms = 1e3 * float(np.median(untraced))
    return dict(
        rows=rows,
        step_ms=step_ms,
        untraced_step_ms=untraced_step_ms,
        gradients=gradients,
        batch_size=batch_size,
        steps=len(timelines),
    )


def _operation_cells(r) -> tuple:
    times = (f"{r['start_ms']:.2f}", f"{r['ms']:.2f}", f"{100 * r['share']:.1f}%")
    return (*times, r["op"], r["shape"], r["layer"], r["name"])


def format_profile(result: dict, *, min_share: float = 0.005) -> str:
    """The step's operations in order (those under `min_share` of the step folded into one
    line), then the time by layer label."""
    header = ("start ms", "ms", "share", "op", "output shape", "layer (by shape)", "instruction")
    shown = [r for r in result["rows"] if r["share"] >= min_share]
    rest = [r for r in result["rows"] if r["share"] < min_share]
    body = [_operation_cells(r) for r in shown]
    if rest:
        ms = sum(r["ms"] for r in rest)
        share = sum(r["share"] for r in rest)
        body.append(("", f"{ms:.2f}", f"{100 * share:.1f}%", f"{len(rest)} more", "", "", ""))
    by_layer = collections.defaultdict(float)
    for r in result["rows"]:
        by_layer[r["layer"] or "(other shapes)"] += r["ms"]
    layers = sorted(by_layer.items(), key=lambda kv: -kv[1])
    by_layer_rows = [
        (layer, f"{ms:.2f}", f"{100 * ms / result['step_ms']:.1f}%") for layer, ms in layers
    ]
    heading = (
        f"{result['gradients']} step, batch {result['batch_size']}: median of {result['steps']} "
        f"traced steps {result['step_ms']:.2f} ms ({result['untraced_step_ms']:.2f} ms "
        "untraced); the time is shared by the operations running, and a wait is charged to the "
        "convolution or dot in flight (cnnjax/bench/profiling.py)"
    )
    return "\n".join(
        [
            heading,
            tables.format_table(header, body, right=(0, 1, 2)),
            "",
            "by layer (operations whose output has a layer's shape, forward and backward):",
            tables.format_table(("layer", "ms", "share"), by_layer_rows, right=(1, 2)),
        ]
    )
