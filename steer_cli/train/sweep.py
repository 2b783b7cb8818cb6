"""Several steering runs in one ``steer train`` job: repeated ``--preset`` and ``--sweep KEY=V1,V2``.

The runs of a job share one model copy, one rollout engine and every batch, so they may differ
only in what is a run's own (``PER_RUN_KEYS``: its seed, learning rate and schedule, optimizer
constants, steered layers, starting vectors, output directory); any other difference is refused
before anything is loaded, naming the key. Each run is an ordinary run directory.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from steer_cli.errors import SteerError
from steer_cli.settings import Layer, Settings, all_keys, flatten, unflatten

# What a run of a job owns; everything else must be equal across the job's runs.
PER_RUN_KEYS = frozenset({
    "train.seed", "train.lr", "train.schedule", "train.warmup_ratio", "train.weight_decay",
    "train.adam_beta1", "train.adam_beta2", "train.adam_eps", "train.max_grad_norm",
    "setup.steering.layers", "setup.steering.init_vectors", "output.output_dir", "preset",
})
EACH = "each"  # --sweep setup.steering.layers=each: one run per layer, that layer alone

# Directory names of swept keys (under --output-dir DIR): DIR/<name>-<value>/...
_SHORT = {"train.seed": "seed", "train.lr": "lr", "setup.steering.layers": "layer"}


@dataclass(frozen=True)
class Sweep:
    key: str
    values: tuple[Any, ...]  # parsed; (EACH,) for one run per layer


@dataclass
class RunSpec:
    """One run of a job: its settings and the name of its subdirectory under --output-dir."""

    settings: Settings
    name: str


def parse_sweep(text: str) -> Sweep:
    """``KEY=V1,V2,...`` (numbers as numbers, ``1e-3`` included; other values read as YAML, so
    ``[0,1]`` is a list)."""
    if "=" not in text:
        raise SteerError(f"--sweep expects KEY=V1,V2,... (e.g. --sweep train.seed=0,1,2), got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    if key not in set(all_keys()):
        raise SteerError(f"--sweep {key}: unknown setting; see `steer train --help` for settings")
    if key not in PER_RUN_KEYS or key in ("output.output_dir", "preset"):
        allowed = ", ".join(sorted(PER_RUN_KEYS - {"output.output_dir", "preset"}))
        raise SteerError(f"--sweep {key}: runs of one job share the model, data and rollouts, so they may "
                         f"differ only in {allowed}; run other values as separate jobs")
    if key == "setup.steering.layers" and raw == EACH:
        return Sweep(key, (EACH,))
    values = tuple(_value(v) for v in _split(raw))
    if not values or any(v is None or v == "" for v in values):
        raise SteerError(f"--sweep {text}: give at least one value, comma-separated")
    if key == "setup.steering.layers":
        values = tuple(v if isinstance(v, list) else [v] for v in values)
    if len(set(map(repr, values))) != len(values):
        raise SteerError(f"--sweep {text}: a value is given twice")
    return Sweep(key, values)


def _split(raw: str) -> list[str]:
    """Split at commas outside brackets (``[0,1],[2]`` is two values)."""
    parts, depth, cur = [], 0, ""
    for ch in raw:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return parts


def _value(raw: str) -> Any:
    for number in (int, float):  # YAML reads 1e-3 (no dot) as a string
        try:
            return number(raw)
        except ValueError:
            pass
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _format(value: Any) -> str:
    if isinstance(value, list):
        return "-".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def expand_runs(
    presets: Sequence[str],
    sweeps: Sequence[Sweep],
    build: Callable[[Optional[str], Optional[Layer]], Settings],
    *,
    num_layers: Callable[[Settings], int],
    preset_exists: Callable[[str], bool],
) -> list[RunSpec]:
    """The runs of a job: each preset (or none) times the product of the sweeps.

    ``build(preset, layer)`` resolves one run's settings with ``layer`` (the swept values) on top
    of every other source. ``setup.steering.layers=each`` takes, for a run of preset ``P``, the
    preset ``P-layer-<l>`` where it exists (its own learning rate), else ``P`` with that layer.
    """
    runs: list[RunSpec] = []
    each = {sw.key for sw in sweeps if sw.values == (EACH,)}
    for preset in (list(presets) or [None]):
        first = build(preset, None)
        axes: list[list[tuple[str, Any]]] = []
        for sw in sweeps:
            values = (list(range(num_layers(first))) if sw.values == (EACH,) else list(sw.values))
            axes.append([(sw.key, v) for v in values])
        for combo in itertools.product(*axes):
            run_preset, flat, names = preset, {}, []
            for key, value in combo:
                if key in each:
                    layer = int(value)
                    own = f"{preset}-layer-{layer}" if preset else None
                    if own and preset_exists(own):
                        run_preset = own
                    else:
                        flat[key] = [layer]
                    names.append(f"layer-{layer}")
                    continue
                flat[key] = value
                names.append(f"{_SHORT.get(key, key.rsplit('.', 1)[-1])}-{_format(value)}")
            origin = "--sweep " + ", ".join(f"{k}={_format(v)}" for k, v in combo)
            layer = Layer(unflatten(flat), origin) if flat else None
            settings = build(run_preset, layer)
            prefix = [preset.rsplit("/", 1)[-1]] if preset and len(presets) > 1 else []
            runs.append(RunSpec(settings, "/".join(prefix + names) or "run"))
    return runs


def check_compatible(runs: Sequence[RunSpec]) -> None:
    """One line naming the first key two runs differ in that a run cannot own; LoRA/full refused."""
    if len(runs) < 2:
        return
    for run in runs:
        if run.settings.setup.kind != "steering":
            raise SteerError(f"setup.kind = {run.settings.setup.kind} ({run.name}): several runs in one job share "
                             "one copy of the model, which only steering vectors allow (a LoRA or full run needs "
                             "its own); train those runs one at a time")
    first = flatten(runs[0].settings.to_dict())
    for run in runs[1:]:
        other = flatten(run.settings.to_dict())
        for key in sorted(set(first) | set(other)):
            if key in PER_RUN_KEYS or key == "train.reward_sha256":
                continue
            if first.get(key) != other.get(key):
                raise SteerError(
                    f"{key} differs between runs {runs[0].name} ({first.get(key)!r}) and {run.name} "
                    f"({other.get(key)!r}): runs of one job share the model, data and rollouts; make it equal "
                    "or train them as separate jobs")


def assign_output_dirs(runs: Sequence[RunSpec], output_dir: Optional[str],
                       default: Callable[[Settings], Path]) -> list[Path]:
    """Each run's directory: ``DIR/<name>`` under --output-dir DIR, else its settings' default path;
    two runs in one directory are refused."""
    if len(runs) == 1:
        s = runs[0].settings
        return [Path(output_dir) if output_dir else default(s)]
    dirs = [Path(output_dir) / r.name if output_dir else default(r.settings) for r in runs]
    seen: dict[Path, str] = {}
    for run, path in zip(runs, dirs):
        if path in seen:
            raise SteerError(f"runs {seen[path]} and {run.name} would both write to {path}: pass --output-dir DIR "
                             "(each run then goes to DIR/<what it varies>)")
        seen[path] = run.name
    return dirs
