"""README.md: its Python examples run as written (in one namespace, top to bottom)."""

import pathlib
import re

from cnnjax import layers, models

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 4  # a layer, a loss, a hand-derived gradient, the net in Flax
    namespace = {}
    kinds, specs = dict(layers.KINDS), dict(models.SPECS)
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:  # its own layer kind is not left registered for the tests after it
        layers.KINDS.clear(), layers.KINDS.update(kinds)
        models.SPECS.clear(), models.SPECS.update(specs)
    assert float(namespace["loss"]) == float(namespace["loss_auto"])


def test_readme_first_screen_gives_the_two_commands():
    first_screen = "\n".join(README.read_text().splitlines()[:20])
    assert "make train" in first_screen and "make test" in first_screen


def test_every_test_readme_names_exists():
    """README backs its promises with named tests (`tests/x.py::test_y`, or a bare `test_y`):
    each must be a test function of the suite, so a renamed or deleted one shows here."""
    defined = set()
    for path in (README.parent / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    named = set(re.findall(r"`(?:[\w/]+\.py::)?(test_\w+)`", README.read_text()))
    named |= set(re.findall(r"::(test_\w+)", README.read_text()))
    assert len(named) >= 20
    assert named <= defined, sorted(named - defined)
