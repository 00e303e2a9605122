"""What an offline accelerator image lacks, as wheels to carry there: the packages of a lock
file (constraints-newest.txt: cnnjax's whole dependency closure on Python 3.12) that the image
does not have, downloaded here for the image's Python and platform, plus the MNIST IDX files.

The image's own packages (JAX with its CUDA plugin, Flax, Optax, ...) are used as they are; a
carried wheel is installed there with `pip install --no-index --no-deps --target DIR` and put
on PYTHONPATH. Standard library only: this runs where JAX need not be installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

# The packages of the `nvidia-h200` image (a CUDA 13 image with Python 3.12.3, jax 0.11.2 and
# jax-cuda13-plugin), as the device tool's KINDS.md listed them on 2026-11-17.
IMAGE_PACKAGES = frozenset(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite
lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo
pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
)
DEV_ONLY = frozenset({"ruff"})  # in the lock for the tests' lint, not needed to run
# pip matches manylinux tags exactly: every glibc level such an image can run.
GLIBC_MINORS = (17, 24, 27, 28, 31, 34, 35)
PLATFORMS = (
    *(f"manylinux_2_{n}_x86_64" for n in GLIBC_MINORS),
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def normalized(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): lower case, runs of -_. as '-'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock_text: str) -> dict[str, str]:
    """name -> version of every `name==version` line of a lock (constraints) file."""
    return {normalized(m[1]): m[2] for line in lock_text.splitlines() if (m := PIN.match(line))}


def missing(locked: dict[str, str], have=IMAGE_PACKAGES) -> dict[str, str]:
    """The pins whose package the image lacks (dev-only tools left out), sorted by name."""
    present = {normalized(n) for n in have} | DEV_ONLY
    return {name: locked[name] for name in sorted(locked) if name not in present}


class WheelError(RuntimeError):
    """A package that has no wheel for the image and no pure-Python source to build one from."""


def _pip(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def download(wanted: dict[str, str], dest: Path, python: str = "3.12") -> list[Path]:
    """Wheels of `wanted` (name -> version) for CPython `python` on x86_64 Linux, into dest.
    A release published as source only is built into a wheel here, which must be pure Python
    (py3-none-any: it then runs on any Python)."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    for name, version in wanted.items():
        pin = f"{name}=={version}"
        binary_only = ["--no-deps", "--only-binary=:all:", "--implementation", "cp"]
        target = ["--python-version", python, *platforms, "-d", str(dest)]
        binary = _pip([*pip, "download", *binary_only, *target, pin])
        if binary.returncode == 0:
            continue
        built = _pip([*pip, "wheel", "--no-deps", "-w", str(dest), pin])
        ours = [w for w in dest.glob("*.whl") if normalized(w.name.split("-")[0]) == name]
        if built.returncode != 0 or not ours or not ours[0].name.endswith("-none-any.whl"):
            for wheel in ours:
                wheel.unlink()
            last = (built.stderr.strip().splitlines() or ["no wheel built"])[-1]
            raise WheelError(
                f"{pin}: no wheel for Python {python} on x86_64 Linux, and building "
                f"one here gave no pure-Python wheel ({last})"
            )
    return sorted(dest.glob("*.whl"))


def copy_idx_files(source: Path, dest: Path) -> list[Path]:
    """The four IDX files (gz or raw) of a dataset directory, copied into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    files = [p for p in sorted(source.iterdir()) if "-ubyte" in p.name]
    return [Path(shutil.copy2(p, dest / p.name)) for p in files]
