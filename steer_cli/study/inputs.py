"""What the studies read: vectors files, training runs and their checkpoints, and eval results of a
reference (the all-layer run); every problem is a one-line SteerError before anything is written."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from steer_cli.errors import SteerError
from steer_cli.evaluate.models import model_dims
from steer_cli.evaluate.outputs import SUMMARY_KIND
from steer_cli.evaluate.targets import checkpoint_artifact, resolve_run
from steer_cli.patching.strength import format_layers
from steer_cli.runs import CHECKPOINT_DIR_RE, is_training_run
from steer_cli.settings import Settings
from steer_cli.vectors.file import load_vectors


@dataclass(frozen=True)
class VectorsSource:
    """A vectors file, and the run and checkpoint it belongs to (when it is a run's)."""

    path: Path
    run: Optional[Path] = None
    checkpoint: Optional[str] = None

    @property
    def name(self) -> str:
        if self.run is not None:
            return self.run.name if self.checkpoint == "final" else f"{self.run.name}/{self.checkpoint}"
        return self.path.stem


def vectors_source(path: Union[str, Path]) -> VectorsSource:
    """A vectors file, or a training run / checkpoint directory (its vectors.safetensors; the run's
    final/ or latest checkpoint)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SteerError(f"{p} does not exist; pass a vectors file or a steering run")
    if p.is_file():
        parent = p.parent
        if p.name == "vectors.safetensors" and CHECKPOINT_DIR_RE.match(parent.name) and is_training_run(parent.parent):
            return VectorsSource(p, parent.parent, parent.name)
        return VectorsSource(p)
    run, ckpt = resolve_run(p)
    setup, artifact = checkpoint_artifact(ckpt)
    if setup != "steering":
        raise SteerError(f"{ckpt} is a {setup} checkpoint; the studies apply steering vectors")
    return VectorsSource(artifact, run, ckpt.name)


def run_checkpoints(run: Path) -> list[str]:
    """The checkpoints of a run holding vectors, in step order (checkpoint-N ..., then final)."""
    names = []
    for c in run.iterdir():
        if c.is_dir() and CHECKPOINT_DIR_RE.match(c.name) and (c / "vectors.safetensors").is_file():
            names.append(c.name)
    return sorted(names, key=lambda n: (n == "final", int(n.split("-")[1]) if n != "final" else 0))


def vectors_meta(path: Path) -> tuple[Any, dict[str, Any]]:
    try:
        return load_vectors(path)
    except SteerError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged file: one line
        raise SteerError(f"cannot read vectors file {path}: {err}") from None


def steered_layers(path: Path) -> list[int]:
    """The layers a vectors file steers (its metadata; every row when it says nothing)."""
    tensor, meta = vectors_meta(path)
    layers = meta.get("layers")
    return sorted(int(i) for i in layers) if layers is not None else list(range(int(tensor.shape[0])))


def check_geometry(path: Path, dims: tuple[int, int], model: str) -> None:
    """One line when a vectors file is not [num_layers, hidden] of ``model``."""
    tensor, _ = vectors_meta(path)
    if tuple(int(x) for x in tensor.shape) != tuple(dims):
        raise SteerError(f"{path} holds vectors of shape {list(tensor.shape)} but {model} needs "
                         f"[{dims[0]}, {dims[1]}] (num_layers x hidden_size); use vectors made for this geometry")


def geometry(settings: Settings, model: Optional[str] = None) -> tuple[int, int]:
    """(num_layers, hidden_size) of a model from its config; one line for an unknown model."""
    return model_dims(settings, model)


def check_layers_in(layers: Sequence[int], allowed: Sequence[int], num_layers: int, what: str) -> None:
    bad = [i for i in layers if not 0 <= int(i) < num_layers]
    if bad:
        raise SteerError(f"--layers: layer(s) {format_layers(bad)} do not exist: the model has layers "
                         f"0-{num_layers - 1}")
    missing = [i for i in layers if int(i) not in set(allowed)]
    if missing:
        raise SteerError(f"--layers: {what} steers layers {format_layers(allowed)}, not {format_layers(missing)}")


def read_reference(path: Union[str, Path]) -> Optional[dict[str, Any]]:
    """The eval summary at ``path`` (a summary.json, or an eval output directory holding one), or
    None when ``path`` is something else (a run or a vectors file, to evaluate in the grid)."""
    p = Path(path).expanduser()
    file = p if p.is_file() and p.name == "summary.json" else p / "summary.json" if p.is_dir() else None
    if file is None or not file.is_file():
        return None
    if is_training_run(p):
        return None
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SteerError(f"cannot read {file}: {err}") from None
    if not isinstance(doc, dict) or doc.get("kind") != SUMMARY_KIND:
        raise SteerError(f"{file} is not a steer eval summary.json")
    return doc


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "-", text).strip("-.") or "x"
