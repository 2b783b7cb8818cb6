"""Presets: YAML settings files under ``steer_cli/presets/``, named by their relative path.

``qwen2.5-math-7b/deepscaler/steering`` is ``presets/qwen2.5-math-7b/deepscaler/steering.yaml``.
A preset may ``include:`` other presets (a name or a list); included files are merged first, in
order, then the preset's own keys on top. Files and directories starting with ``_`` are building
blocks, not listed. Each file starts with a comment showing the command that uses it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer_cli.errors import SteerError
from steer_cli.models import DEMO, known_model
from steer_cli.settings import Layer, read_yaml_file

PRESETS_DIR = Path(__file__).parent / "presets"
_META_KEYS = ("include", "description")


@dataclass(frozen=True)
class PresetInfo:
    name: str
    path: Path
    description: str
    command: str


def _path_of(name: str) -> Path:
    return PRESETS_DIR / f"{name}.yaml"


def preset_exists(name: str) -> bool:
    return _path_of(name.removesuffix(".yaml")).is_file()


def preset_names(*, include_private: bool = False) -> list[str]:
    names = []
    for path in sorted(PRESETS_DIR.rglob("*.yaml")):
        name = path.relative_to(PRESETS_DIR).with_suffix("").as_posix()
        if not include_private and any(part.startswith("_") for part in name.split("/")):
            continue
        names.append(name)
    return names


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _unknown(name: str) -> SteerError:
    names = preset_names()
    hint = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    tail = f"; did you mean {hint[0]}?" if hint else "; `steer presets` lists them"
    return SteerError(f"unknown preset {name!r}{tail}")


def load_preset_values(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset's settings with its includes resolved (no validation)."""
    name = name.removesuffix(".yaml")
    if name in _seen:
        raise SteerError(f"preset include cycle: {' -> '.join((*_seen, name))}")
    path = _path_of(name)
    if not path.is_file():
        if _seen:
            raise SteerError(f"preset {_seen[-1]!r} includes {name!r}, which does not exist")
        raise _unknown(name)
    data = read_yaml_file(path, "preset")
    includes = data.get("include") or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = _deep_merge(merged, load_preset_values(str(inc), (*_seen, name)))
    own = {k: v for k, v in data.items() if k not in _META_KEYS}
    return _deep_merge(merged, own)


def preset_layer(name: str) -> Layer:
    values = load_preset_values(name)
    values["preset"] = name.removesuffix(".yaml")
    return Layer(values, f"preset {name}")


def preset_info(name: str) -> PresetInfo:
    path = _path_of(name)
    text = path.read_text(encoding="utf-8")
    command = ""
    for line in text.splitlines():
        if line.startswith("#"):
            stripped = line.lstrip("# ").strip()
            if stripped.startswith(("steer ", "accelerate ")):
                command = stripped
                break
        elif line.strip():
            break
    data = read_yaml_file(path, "preset")
    return PresetInfo(name=name, path=path, description=str(data.get("description", "")), command=command)


def find_preset(model: str | None, dataset: str | None, setup: str | None) -> str | None:
    """The preset for ``--model`` + ``--dataset`` + ``--setup`` when no ``--preset`` is given.

    Returns None when the model is not in the paper's table (then defaults apply); raises when the
    model is known but the dataset/setup combination has no preset.
    """
    if model in (None, DEMO):
        # The demo keeps its task, lengths and step count for every setup (demo/demo/<setup>).
        if dataset in (None, "demo") and setup in (None, "steering", "lora", "full"):
            return f"demo/demo/{setup or 'steering'}"
        return None
    known = known_model(model)
    if known is None:
        return None
    dataset = dataset or "deepscaler"
    if "/" in dataset or "." in Path(dataset).name or Path(dataset).exists():
        # A dataset of the user's own: start from the model's DeepScaleR settings (template, stop
        # token, lengths, learning rate); --dataset itself overrides the preset's dataset.
        dataset = "deepscaler"
    name = f"{known.preset}/{dataset}/{setup or 'steering'}"
    if not _path_of(name).is_file():
        available = [n for n in preset_names() if n.startswith(f"{known.preset}/")]
        raise SteerError(
            f"no preset {name!r} for {known.short}; available: {', '.join(available)} "
            "(pass --preset, or --config with your own settings)"
        )
    return name
