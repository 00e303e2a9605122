"""The house's import rules (STYLE.md, with models before grads), checked by parsing imports."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "cnnjax"
STDLIB_OK = {"__future__", "collections", "dataclasses", "functools", "math", "typing"}

# Who may import whom inside cnnjax. Whole-network backprop in grads walks a spec, so models
# comes before grads; models.apply takes a table of layer functions, so grads can hand it the
# custom_vjp twins without models knowing about grads.
ALLOWED_INTERNAL = {
    "ops": set(),
    "losses": set(),
    "models": {"ops", "losses", "report"},
    "grads": {"ops", "losses", "models"},
    "gradcheck": {"ops", "losses", "models", "grads", "report"},
    "flax_models": {"ops", "losses", "models", "report"},
    "idx": set(),
    "data": {"idx"},
    "parallel": set(),
    "feed": {"parallel"},
    "report": set(),
    "progress": {"report"},
    "runtime": set(),
    "plots": {"report"},
    "train": {"ops", "losses", "models", "grads"},
    "run": {
        "data",
        "feed",
        "idx",
        "losses",
        "models",
        "parallel",
        "plots",
        "progress",
        "report",
        "runtime",
        "train",
    },
    "analysis": {"idx", "losses", "models", "plots", "report", "run", "train"},
    "population": {"parallel", "progress", "report", "run", "train"},
    "peers": {"flax_models", "models"},
    "benchmark": {
        "feed",
        "models",
        "ops",
        "parallel",
        "peers",
        "population",
        "report",
        "run",
        "runtime",
        "train",
    },
    "profiling": {"benchmark", "feed", "models", "parallel", "report", "train"},
    "results": {"plots", "report"},
    "wheels": set(),
    "device_check": {
        "benchmark",
        "flax_models",
        "gradcheck",
        "idx",
        "models",
        "report",
        "run",
        "runtime",
        "sweep",
    },
    "sweep": {"models", "parallel", "population", "report", "results", "run", "runtime", "train"},
}
# The math modules import only jax and numpy (plus the standard library above).
PURE_MATH = {"ops", "losses", "models", "grads"}


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            if node.module == "cnnjax":
                names.update(f"cnnjax.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


def _modules():
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("module", _modules())
def test_internal_imports_flow_one_way(module):
    assert module in ALLOWED_INTERNAL, f"add cnnjax/{module}.py to the import table"
    imports = _imports(PACKAGE / f"{module}.py")
    internal = {name.split(".")[1] for name in imports if name.startswith("cnnjax.")}
    assert internal <= ALLOWED_INTERNAL[module], f"{module} imports {internal}"
    assert not any(name.split(".")[0] in {"experiments", "configs"} for name in imports)


@pytest.mark.parametrize("module", sorted(PURE_MATH))
def test_math_modules_import_only_jax_and_numpy(module):
    roots = {name.split(".")[0] for name in _imports(PACKAGE / f"{module}.py")}
    assert roots <= {"jax", "numpy", "cnnjax"} | STDLIB_OK, roots


def test_a_planted_forbidden_import_is_seen(tmp_path):
    planted = tmp_path / "ops.py"
    planted.write_text("import flax\nfrom cnnjax import grads\n")
    assert _imports(planted) == {"flax", "cnnjax.grads"}
