"""The house's layout (STYLE.md), checked by parsing imports: every module sits on a tier,
imports flow down the tiers only and never in a circle, the math loads only jax and numpy, and
no module outgrows the size a reader takes in at once without saying why."""

import ast
import pathlib
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "cnnjax"

# The tiers, lowest first. A module may import modules of lower tiers and of its own tier (no
# cycles); never of a higher one. Names are relative to cnnjax ("training.run").
TIERS = {
    "process": {"parallel", "runtime", "faults"},
    "output": {
        "output",
        "output.jsonl",
        "output.tables",
        "output.progress",
        "output.plots",
        "output.events",
        "output.sweep_plots",
    },
    # and every layer kind's file (cnnjax/layers/*.py, added below)
    "math": {"ops", "losses", "models", "grads", "backprop", "layers"},
    "checks": {
        "gradcheck",
        "gradcheck.report",
        "gradcheck.engine",
        "gradcheck.suite",
        "gradcheck.plan",
        "flax_models",
    },
    "one run": {
        "training",
        "training.idx",
        "training.data",
        "training.feed",
        "training.augment",
        "training.train",
        "training.settings",
        "training.checkpoints",
        "training.workdir",
        "training.run",
        "training.analysis",
    },
    "many runs": {
        "sweeps",
        "sweeps.grid",
        "sweeps.search",
        "sweeps.stages",
        "sweeps.space",
        "sweeps.merging",
        "sweeps.records",
        "sweeps.comparison",
        "sweeps.ensemble",
        "sweeps.population",
        "sweeps.results",
        "sweeps.sweep",
    },
    "measurement": {
        "bench",
        "bench.timing",
        "bench.machine",
        "bench.peers",
        "bench.measuring",
        "bench.layouts",
        "bench.benchmark",
        "bench.profiling",
        "bench.wheels",
        "bench.device_check",
    },
}
TIERS["math"] |= {
    f"layers.{p.stem}" for p in (PACKAGE / "layers").glob("*.py") if p.stem != "__init__"
}
LEVEL = {module: level for level, tier in enumerate(TIERS.values()) for module in tier}
# The math and what it imports load only jax and numpy (and the standard library): no tqdm,
# matplotlib, orbax or tensorflow_datasets behind `import cnnjax.models`. A layer kind's Flax
# counterpart imports flax inside the function that builds it (deferred): only a caller that
# asks for the Flax module loads flax.
DEFERRED = {"flax"}
PURE = TIERS["math"] | {"output", "output.tables", "output.jsonl"}
LONG = 350  # lines; a longer module says why in its docstring: "Past 350 lines because ..."


def _path(module: str) -> pathlib.Path:
    path = PACKAGE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _modules() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if parts:  # not cnnjax/__init__.py
            found.append(".".join(parts))
    return found


def _imports(path: pathlib.Path, *, deferred=True) -> set[str]:
    """Absolute names imported: "jax", "cnnjax.ops", "cnnjax.training.run", ...; with
    deferred=False only those imported at module level (not inside a function)."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if deferred else _module_level(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            if node.module.startswith("cnnjax"):  # from cnnjax.training import run, RunError
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_level(tree):
    """Every node outside function bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def _internal(path: pathlib.Path) -> set[str]:
    """The cnnjax modules (relative names) a file imports; "cnnjax" itself and names that are
    not modules (RunError, a function) are dropped."""
    known = set(_modules())
    return {n.removeprefix("cnnjax.") for n in _imports(path) if n.startswith("cnnjax.")} & known


@pytest.mark.parametrize("module", _modules())
def test_every_module_has_a_tier_and_imports_flow_down(module):
    assert module in LEVEL, f"put cnnjax/{module} on a tier of TIERS"
    for imported in _internal(_path(module)) - {module}:
        assert LEVEL[imported] <= LEVEL[module], f"{module} imports {imported}, a higher tier"
    assert not any(n.split(".")[0] in {"experiments", "configs"} for n in _imports(_path(module)))


def test_no_import_cycles():
    graph = {m: _internal(_path(m)) - {m} for m in _modules()}
    done, path = set(), []

    def visit(module):
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        if module in done:
            return
        path.append(module)
        for imported in graph[module]:
            visit(imported)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


@pytest.mark.parametrize("module", sorted(PURE))
def test_the_math_imports_only_jax_and_numpy(module):
    allowed = {"jax", "numpy", "cnnjax"} | sys.stdlib_module_names
    roots = {name.split(".")[0] for name in _imports(_path(module), deferred=False)}
    assert roots <= allowed, roots
    roots = {name.split(".")[0] for name in _imports(_path(module))}
    assert roots <= allowed | DEFERRED, roots
    assert _internal(_path(module)) <= PURE, "the math may import only the math and PURE"


@pytest.mark.parametrize("module", _modules())
def test_modules_stay_small_or_say_why(module):
    text = _path(module).read_text()
    lines = text.count("\n")
    docstring = ast.get_docstring(ast.parse(text)) or ""
    assert docstring, f"cnnjax/{module}: a module docstring states its one responsibility"
    reason = f"Past {LONG} lines because" in " ".join(docstring.split())
    assert lines <= LONG or reason, f"cnnjax/{module}: {lines} lines and no reason in its docstring"


def test_the_checks_see_a_planted_violation(tmp_path):
    planted = tmp_path / "ops.py"
    planted.write_text("import flax\nfrom cnnjax.training import run, RunError\n")
    imported = {"flax", "cnnjax.training", "cnnjax.training.run", "cnnjax.training.RunError"}
    assert _imports(planted) == imported
    assert _internal(planted) == {"training", "training.run"}
    assert LEVEL["training.run"] > LEVEL["ops"]  # so ops importing it fails the flow test
