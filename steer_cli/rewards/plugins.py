"""Which reward a run trains on (``train.reward`` / ``--reward``), and user reward plug-ins.

- ``math`` (default): math-verify on the last ``\\boxed{}`` (``rewards.grading``); a correct
  completion earns ``train.reward_correct``, any other ``train.reward_wrong``.
- ``exact``: the extracted answer (last ``\\boxed{}``, ``<answer>`` for r1; else the whole
  completion) equals the gold answer after normalisation (``normalise_text``); same two rewards.
- ``path/to/file.py:function`` or ``package.module:function``: a plug-in. It is called as
  ``function(completions, answers, rows)`` with lists of equal length (completion texts without
  the stop token, the gold answers as strings, the data file's records with all their fields) and
  returns one finite float per completion, which is the reward itself.

Plug-ins run inside the grader's worker processes (``rewards.pool.Grader``), imported there from the
spec string, so nothing is pickled but the spec; each call is bounded by the grader's hard timeout.
Standard library only at top level: worker processes import this module.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from steer_cli.errors import SteerError

BUILTIN_REWARDS = ("math", "exact")
BOOLEAN_REWARDS = BUILTIN_REWARDS  # correct / wrong, mapped to train.reward_correct / reward_wrong

_MODULE_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_ATTR_RE = _MODULE_RE  # function, or Class.method
_USAGE = "use math, exact, path/to/file.py:function or package.module:function"


@dataclass(frozen=True)
class RewardSpec:
    """A parsed ``--reward``: kind is math | exact | file | module."""

    text: str
    kind: str
    target: str = ""  # the file (absolute) or the module name
    function: str = ""

    @property
    def plugin(self) -> bool:
        return self.kind in ("file", "module")


def parse_reward(text: str) -> RewardSpec:
    """``math`` | ``exact`` | ``file.py:fn`` | ``pkg.module:fn``; a one-line SteerError otherwise.

    A file path is made absolute here (the spec travels to worker processes)."""
    text = str(text).strip()
    if text in BUILTIN_REWARDS:
        return RewardSpec(text, text)
    where, sep, function = text.rpartition(":")
    if not sep or not where or not function:
        raise SteerError(f"unknown reward {text!r} (train.reward / --reward); {_USAGE}")
    if not _ATTR_RE.match(function):
        raise SteerError(f"reward {text!r}: {function!r} is not a function name; {_USAGE}")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser()
        if not path.is_file():
            raise SteerError(f"reward file {where} does not exist (--reward {text}); pass an existing .py file")
        return RewardSpec(text, "file", str(path.resolve()), function)
    if not _MODULE_RE.match(where):
        raise SteerError(f"reward {text!r}: {where!r} is neither a .py file nor a module name; {_USAGE}")
    return RewardSpec(text, "module", where, function)


def _module_file(spec: RewardSpec) -> Path | None:
    if spec.kind == "file":
        return Path(spec.target)
    if spec.kind == "module":
        try:
            found = importlib.util.find_spec(spec.target)
        except (ImportError, ValueError) as err:
            raise SteerError(f"cannot import module {spec.target} for --reward {spec.text} ({err}); install "
                             "it or put it on PYTHONPATH, or give the file: path/to/file.py:function") from None
        if found is None:
            raise SteerError(f"no module named {spec.target} for --reward {spec.text}; install it or put it on "
                             "PYTHONPATH, or give the file: path/to/file.py:function")
        if found.origin and Path(found.origin).is_file():
            return Path(found.origin)
    return None


def reward_sha256(spec: RewardSpec) -> str | None:
    """SHA-256 of a plug-in's source file (recorded in settings.yaml, compared on --resume); None
    for the built-ins."""
    path = _module_file(spec)
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as err:
        raise SteerError(f"cannot read reward file {path}: {err.strerror or err}") from None


def load_function(spec: RewardSpec) -> Callable[..., Any]:
    """Import a plug-in and return its function; a one-line SteerError naming what went wrong."""
    if spec.kind == "file":
        path = Path(spec.target)
        name = "steer_reward_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        module = sys.modules.get(name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise SteerError(f"cannot import reward file {path}: not a Python source file")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module  # dataclasses and pickling inside the plug-in look it up
            try:
                loader_spec.loader.exec_module(module)
            except BaseException as err:  # noqa: BLE001  (user code: SystemExit too)
                sys.modules.pop(name, None)
                raise SteerError(f"reward file {path} failed to import: {_describe(err)}") from None
        where = str(path)
    elif spec.kind == "module":
        try:
            module = importlib.import_module(spec.target)
        except BaseException as err:  # noqa: BLE001
            raise SteerError(f"cannot import module {spec.target} for --reward {spec.text}: {_describe(err)}; "
                             "install it or put it on PYTHONPATH, or give the file: path/to/file.py:function"
                             ) from None
        where = f"module {spec.target}"
    else:
        raise SteerError(f"reward {spec.text} is built in, not a plug-in")
    fn: Any = module
    for part in spec.function.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise SteerError(f"{where} has no function {spec.function} (--reward {spec.text})")
    if not callable(fn):
        raise SteerError(f"{spec.function} in {where} is not callable (--reward {spec.text})")
    return fn


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def check_values(values: Any, count: int) -> list[float]:
    """The plug-in's return value as ``count`` finite floats; ValueError saying what is wrong."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or not hasattr(values, "__iter__"):
        raise ValueError(f"returned {type(values).__name__}, not a list of one float per completion")
    values = list(values)
    if len(values) != count:
        raise ValueError(f"returned {len(values)} value(s) for {count} completion(s)")
    out = []
    for v in values:
        if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
            v = v.item()
        if isinstance(v, (bool, int, float)):
            f = float(v)
        else:
            raise ValueError(f"returned a {type(v).__name__} ({v!r:.40}), not a number")
        if not math.isfinite(f):
            raise ValueError(f"returned a non-finite value ({f})")
        out.append(f)
    return out


def call(fn: Callable[..., Any], completions: Sequence[str], answers: Sequence[Any],
         rows: Sequence[Any]) -> tuple[str, Any]:
    """``("ok", [floats])`` or ``("error", message)``: what a worker sends back for one call."""
    try:
        values = fn(list(completions), list(answers), list(rows))
    except BaseException as err:  # noqa: BLE001  (user code: SystemExit too)
        return "error", f"raised {_describe(err)}"
    try:
        return "ok", check_values(values, len(completions))
    except ValueError as err:
        return "error", str(err)
