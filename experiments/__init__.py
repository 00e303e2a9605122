"""Entry points (python -m experiments.X): each parses flags and calls the library.

Every entry point starts with `run(main)` in place of absl's app.run(main): an error a person
can fix (a RunError, a misspelt or ill-typed flag or config field, a missing config file, a
directory that cannot be written, a full disk) ends the process with one line on stderr,
`error: <what is wrong and the fix>`, and exit status 2; --debug (or $CNNJAX_DEBUG=1) shows the
traceback too. Anything else is a bug and keeps its traceback. --help exits 0.
"""

from __future__ import annotations

import difflib
import errno
import functools
import itertools
import os
import re
import sys
import threading
import traceback
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from cnnjax import runtime
from cnnjax.training import RunError

_DEBUG = flags.DEFINE_bool("debug", False, "on an error, show its traceback ($CNNJAX_DEBUG=1 too)")
_CONFIG_FLAGS: dict[str, str | None] = {}  # config_file's flags -> their default files
_HELP = {"-?", "--help", "-help", "--helpshort", "--helpfull", "--helpxml"}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_ACCESS = {errno.EROFS, errno.EACCES, errno.EPERM}
_TENSORSTORE = re.compile(r"os_error_code='(\d+)'")  # orbax's writes fail as tensorstore's text
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
# orbax writes checkpoint N into DIR/N.orbax-checkpoint-tmp-*, renamed to DIR/N once whole
_CHECKPOINT_TMP = re.compile(r"^(.*/)(\d+)\.orbax-checkpoint-tmp")


def begin(argv, *, deterministic: bool = True) -> None:
    """What every entry point does first: refuse stray arguments, show only warnings from
    jax's start-up unless --verbosity was given, and apply cnnjax.runtime's settings for the
    platform the work will run on (before anything starts JAX; `deterministic`: a run's
    config.train.deterministic) unless $CNNJAX_UNTUNED is set."""
    if len(argv) > 1:
        raise RunError(f"unexpected arguments {argv[1:]}: every option is a flag, --name=value")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if runtime.wanted():
        logging.info("runtime settings: %s", runtime.tune(deterministic=deterministic))


def config_file(default: str | None, help_text: str = "a config file with get_config()"):
    """The --config flag (ml_collections), whose default file is read, like a given one, while
    the flags are parsed under run()'s error handling (absl would read it at import)."""
    _CONFIG_FLAGS["config"] = default
    return config_flags.DEFINE_config_file("config", None, f"{help_text}; default {default}")


def run(main) -> None:
    """absl's app.run(main), with the errors people can fix as one line and exit status 2."""
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS["debug"])  # in --help
    threading.excepthook = _thread_error
    sys.unraisablehook = _unraisable
    app.run(functools.partial(_guarded, main), flags_parser=_parse_flags)


def debugging() -> bool:
    """Whether errors show their traceback: --debug or $CNNJAX_DEBUG (not "" or "0")."""
    if os.environ.get("CNNJAX_DEBUG", "0") not in ("", "0"):
        return True
    if flags.FLAGS.is_parsed():
        return _DEBUG.value
    return any(arg in ("--debug", "-debug", "--debug=true", "--debug=1") for arg in sys.argv)


def _fail(error: BaseException, message: str):
    """Print the one line (after the traceback when debugging) and exit with status 2. The line
    is stderr's last: what libraries print as they are torn down after it (asyncio's "exception
    was never retrieved" of the very error the line reports, as a traceback) goes nowhere."""
    if debugging():
        traceback.print_exception(error)
    print(f"error: {message}", file=sys.stderr, flush=True)
    if not debugging():
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    sys.exit(2)


def _thread_error(args) -> None:
    """threading.excepthook: a worker thread's error that the main thread reports as one line
    (orbax saves in threads and raises their errors again in the caller) is not printed before
    it as a traceback; any other goes to Python's own hook."""
    if debugging() or args.exc_value is None or explain(args.exc_value) is None:
        threading.__excepthook__(args)


def _unraisable(unraisable) -> None:
    """sys.unraisablehook: after a failed checkpoint read or write, an asyncio callback of the
    checkpointing library can outlive its event loop ("Event loop is closed"), and Python prints
    that as an ignored exception among the run's lines (seen under load on the newest lock).
    It says nothing about the run, so it is dropped unless --debug; any other goes to Python's
    own hook."""
    exc = unraisable.exc_value
    closed_loop = isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
    if debugging() or not closed_loop:
        sys.__unraisablehook__(unraisable)


def _parse_flags(argv):
    for name, default in _CONFIG_FLAGS.items():
        if default and not any(re.match(rf"^--?{name}(=|$)", arg) for arg in argv[1:]):
            argv = [argv[0], f"--{name}={default}", *argv[1:]]
    names = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--config.")]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # some ml_collections releases refuse it, others take the last: refuse it
        _fail(ValueError(repeated), f"{repeated[0]} is given twice: give it once")
    sys.argv = argv  # ml_collections reads the overrides from sys.argv
    try:
        parsed = flags.FLAGS(argv)
    except SystemExit as done:  # absl's --help prints the usage and exits 1
        if done.code == 1 and _HELP.intersection(arg.split("=")[0] for arg in argv[1:]):
            sys.exit(0)
        raise
    except flags.DuplicateFlagError as error:  # ml_collections defines a flag per override
        flag = re.search(r"flag '([^']+)'", str(error))
        _fail(error, f"--{flag[1] if flag else '...'} is given twice: give it once")
    except flags.Error as error:
        _fail(error, f"{_one_line(error)}; see --help")
    except Exception as error:  # ml_collections: an override of a field the config lacks
        _fail(error, _override_error(argv, error))
    for name in _CONFIG_FLAGS:
        _check_loaded(name)
    return parsed


def _check_loaded(name: str) -> None:
    """A config flag whose file did not load: its value raises OSError on any use."""
    value = flags.FLAGS[name].value
    try:
        value is not None and value.keys()
    except OSError as error:
        path = config_flags.get_config_filename(flags.FLAGS[name])
        _fail(error, _config_problem(name, path, error))


def _override_error(argv, error: Exception) -> str:
    """The line for overrides ml_collections refused: of a field the config lacks (with the
    closest field), or of a config file that did not load."""
    for name in _CONFIG_FLAGS:
        given = [a.split("=", 1)[1] for a in argv if re.match(rf"^--?{name}=", a)]
        given += [v for a, v in itertools.pairwise(argv) if a in (f"-{name}", f"--{name}")]
        if not given:
            continue
        from cnnjax.training import settings  # jax: loaded only on this error's path

        try:
            fields = settings.dotted_fields(flags.FLAGS[name].parser.parse(given[-1]))
        except Exception as cause:  # whatever loading the file raised
            return _config_problem(name, given[-1], cause)
        for arg in argv:
            field = re.sub(rf"^--?{name}\.", "", arg.split("=")[0], count=1)
            if field != arg.split("=")[0] and field not in fields:
                close = difflib.get_close_matches(field, fields, n=1)
                hint = f"; did you mean --{name}.{close[0]}?" if close else ""
                return f"--{name}.{field}: the config has no field {field}{hint}"
    return f"the config overrides: {_one_line(error)}; see --help"


def _config_problem(name: str, path: str, error: BaseException) -> str:
    missing = not Path(path.split(":")[0]).is_file()
    problem = "no such file" if missing else f"it did not load: {_one_line(error)}"
    return f"--{name}={path}: {problem}; pass --{name}=FILE, a config file (configs/*.py)"


def _guarded(main, argv):
    try:
        return main(argv)
    except Exception as error:  # a bug keeps its traceback; see explain()
        message = explain(error)
        if message is None:
            raise
        _fail(error, message)


def explain(error: BaseException) -> str | None:
    """The one line for an error a person can fix (see the module docstring), else None."""
    if isinstance(error, RunError):
        return _one_line(error)
    number, path = _os_error(error)
    if number is None or path is None:
        return None
    checkpoint = _CHECKPOINT_TMP.match(path)
    if number in _NO_SPACE:
        where = "".join(checkpoint.groups()) if checkpoint else None
        what = f"saving checkpoint {where}" if checkpoint else f"writing {path}"
        again = "rerun with --resume" if "resume" in flags.FLAGS else "run it again"
        return (
            f"{what} failed: {os.strerror(number)}; everything saved before it is intact: "
            f"free space (or raise `ulimit -f`), then {again}"
        )
    problem = f"{path}: {os.strerror(number)}"
    if _in_workdir(path):
        return f"cannot write {problem}; pass a writable --workdir"
    return f"{problem}; check its permissions" if number in _NO_ACCESS else problem


def _in_workdir(path: str) -> bool:
    """Whether `path` is --workdir, inside it or one of the directories above it."""
    if "workdir" not in flags.FLAGS or not flags.FLAGS["workdir"].value:
        return False
    workdir, path = Path(flags.FLAGS["workdir"].value).absolute(), Path(path).absolute()
    return path == workdir or workdir in path.parents or path in workdir.parents


def _os_error(error: BaseException):
    """(errno, path or None) of the first OS error in `error`'s chain (its causes and
    contexts), including tensorstore's (orbax's) ValueErrors that carry one as text; (None,
    None) if there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno:
            return error.errno, error.filename
        found = _TENSORSTORE.search(str(error)) if isinstance(error, ValueError) else None
        if found:
            paths = _QUOTED_PATH.findall(str(error))
            return int(found.group(1)), paths[-1] if paths else None
        error = error.__cause__ or error.__context__
    return None, None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
