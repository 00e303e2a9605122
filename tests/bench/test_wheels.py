"""cnnjax.bench.wheels: the wheels an offline image lacks, from a lock file's pins."""

from __future__ import annotations

from cnnjax.bench import wheels
from tests.builders import REPO


def test_the_wheels_an_image_lacks_come_from_the_newest_lock():
    locked = wheels.pins((REPO / "constraints-newest.txt").read_text())
    assert {"jax", "flax", "optax", "tensorflow-datasets", "ml-collections"} <= set(locked)
    lacking = wheels.missing(locked)
    assert {"tensorflow-datasets", "ml-collections", "array-record"} <= set(lacking)
    assert not {"jax", "jaxlib", "flax", "optax", "numpy", "ruff"} & set(lacking)
    assert list(lacking) == sorted(lacking)
    assert lacking["tensorflow-datasets"] == locked["tensorflow-datasets"]


def test_lock_lines_and_names():
    text = "# a comment\nFoo_Bar==1.2.3\nbaz == 0.1 ; python_version >= '3.12'\n-e .\nqux>=2\n"
    assert wheels.pins(text) == {"foo-bar": "1.2.3", "baz": "0.1"}
    assert wheels.normalized("Ml.Collections") == wheels.normalized("ml_collections")
    assert wheels.missing({"foo-bar": "1", "jax": "2"}, have={"JAX"}) == {"foo-bar": "1"}


def test_every_glibc_level_is_a_platform_tag():
    assert wheels.PLATFORMS[0] == "manylinux_2_17_x86_64"
    assert "manylinux_2_35_x86_64" in wheels.PLATFORMS
    assert wheels.PLATFORMS[-2:] == ("manylinux2014_x86_64", "manylinux1_x86_64")
