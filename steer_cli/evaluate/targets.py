"""What ``steer eval`` evaluates: targets (base, vectors, adapter, a run's checkpoint) and where
their results go."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from steer_cli.errors import SteerError
from steer_cli.models import model_slug
from steer_cli.patching.strength import format_layers, format_scale
from steer_cli.runs import CHECKPOINT_DIR_RE, is_training_run
from steer_cli.settings import Layer, Settings, read_yaml_file
from steer_cli.vectors.file import load_vectors


@dataclass
class Target:
    """One evaluated thing: a column of the results table and one output directory."""

    label: str  # "base", "final", "checkpoint-20", a vectors file's stem ...
    setup: str  # base | steering | lora | full
    model: str  # the base model (settings.model.name)
    output_dir: Path
    vectors: Optional[Path] = None
    adapter: Optional[Path] = None
    weights: Optional[Path] = None  # a full checkpoint's model directory
    run: Optional[Path] = None
    checkpoint: Optional[str] = None
    train_dataset: Optional[str] = None
    lora_rank: Optional[int] = None  # for lora: told apart in reports (the paper has r4 and r1 rows)
    scale: float = 1.0  # steering strength at evaluation (--scale); 1 = as trained
    layers: Optional[tuple[int, ...]] = None  # apply the vectors only on these layers (--layers)

    @property
    def trained(self) -> bool:
        return self.setup != "base"

    @property
    def as_trained(self) -> bool:
        return self.scale == 1.0 and self.layers is None


def _adapter_rank(adapter: Path) -> Optional[int]:
    try:
        rank = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("r")
    except (OSError, ValueError, AttributeError):
        return None
    return rank if isinstance(rank, int) else None


def resolve_run(path: str | Path) -> tuple[Path, Path]:
    """``(run_dir, checkpoint_dir)`` from a run directory (its ``final/``, else its latest
    checkpoint), a checkpoint directory, or a file/folder inside one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SteerError(f"{path} does not exist; pass a training run directory (or one of its checkpoints), "
                         "or --model")
    if path.is_file():
        if path.name == "vectors.safetensors" and CHECKPOINT_DIR_RE.match(path.parent.name):
            path = path.parent
        else:
            raise SteerError(f"{path} is a file, not a training run; evaluate a vectors file with "
                             "--model M --vectors FILE")
    if path.name in ("model", "adapter") and CHECKPOINT_DIR_RE.match(path.parent.name):
        path = path.parent
    if CHECKPOINT_DIR_RE.match(path.name) and is_training_run(path.parent):
        return path.parent, path
    if is_training_run(path):
        final = path / "final"
        if final.is_dir():
            return path, final
        ckpts = sorted((int(c.name.split("-")[1]), c) for c in path.iterdir()
                       if c.is_dir() and re.match(r"^checkpoint-\d+$", c.name))
        if ckpts:
            return path, ckpts[-1][1]
        raise SteerError(f"training run {path} has no final/ or checkpoint-N/ yet; wait for its first "
                         "checkpoint, or evaluate the base model with --model")
    if (path / "target.json").is_file():
        raise SteerError(f"{path} is an evaluation output, not a training run; pass the run it came from")
    raise SteerError(f"{path} is not a steer training run (no settings.yaml with metrics.jsonl or "
                     "checkpoints); pass a run directory, one of its checkpoint directories, or --model")


def run_settings_layer(run_dir: Path) -> Layer:
    """A run's settings.yaml as the lowest settings layer (its output keys dropped: they were
    the training run's)."""
    path = run_dir / "settings.yaml"
    values = read_yaml_file(path, "run settings")
    output = values.get("output")
    if isinstance(output, dict):
        values["output"] = {k: v for k, v in output.items() if k not in ("output_dir", "overwrite", "resume")}
    return Layer(values, f"run settings {path}")


def checkpoint_artifact(ckpt: Path) -> tuple[str, Path]:
    """What a checkpoint trained: ("steering", vectors file) | ("lora", adapter dir) | ("full", model dir)."""
    if (ckpt / "vectors.safetensors").is_file():
        return "steering", ckpt / "vectors.safetensors"
    if (ckpt / "adapter" / "adapter_config.json").is_file():
        return "lora", ckpt / "adapter"
    if (ckpt / "model" / "config.json").is_file():
        return "full", ckpt / "model"
    raise SteerError(f"checkpoint {ckpt} holds no vectors.safetensors, adapter/ or model/; "
                     "is it complete? Pass another checkpoint")


def base_model_of(*, vectors: Optional[Path] = None, adapter: Optional[Path] = None) -> str:
    """The base model a vectors file or adapter records, for ``--vectors``/``--adapter`` without ``--model``."""
    if vectors is not None:
        _, meta = load_vectors(vectors)
        name = meta.get("base_model")
        if not name:
            raise SteerError(f"{vectors} does not record its base model; pass --model")
        return str(name)
    if adapter is not None:
        config = Path(adapter) / "adapter_config.json"
        try:
            name = json.loads(config.read_text()).get("base_model_name_or_path")
        except (OSError, json.JSONDecodeError) as err:
            raise SteerError(f"cannot read {config} ({err}); pass a PEFT adapter directory") from None
        if not name:
            raise SteerError(f"{config} does not record its base model; pass --model")
        return str(name)
    raise SteerError("no model given; pass --model M")


def _file_label(path: Path, generic: str) -> str:
    stem = path.stem if path.is_file() else path.name
    return path.parent.name if stem == generic and path.parent.name else stem


def plan_targets(
    settings: Settings,
    *,
    run: Optional[Path] = None,
    checkpoint: Optional[Path] = None,
    vectors: Optional[Path] = None,
    adapter: Optional[Path] = None,
    with_base: Optional[bool] = None,
    strengths: bool = True,
) -> list[Target]:
    """What ``steer eval`` evaluates, in table order (base first), each with its output directory.

    With a run: its checkpoint's vectors/adapter/model, plus the base model unless
    ``with_base`` is False. Otherwise ``settings.model.name``, with ``vectors`` or ``adapter``
    attached; the base model beside them only when ``with_base`` is True. With ``strengths``,
    trained vectors become one target per ``inference.scale`` (on ``inference.layers``), labelled
    ``final-scale-0.5``, ``final-layers-0-10,17`` ...; scale 1 on every layer keeps the plain label.
    """
    if vectors is not None and adapter is not None:
        raise SteerError("--vectors and --adapter together: evaluate one trained thing at a time")
    model = settings.model.name
    trained: Optional[Target] = None
    if run is not None:
        if vectors is not None or adapter is not None:
            raise SteerError("a training run already names what to evaluate; drop --vectors/--adapter, or drop RUN")
        assert checkpoint is not None
        setup, artifact = checkpoint_artifact(checkpoint)
        trained = Target(checkpoint.name, setup, model, Path(), run=run, checkpoint=checkpoint.name,
                         train_dataset=settings.data.dataset,
                         vectors=artifact if setup == "steering" else None,
                         adapter=artifact if setup == "lora" else None,
                         weights=artifact if setup == "full" else None,
                         lora_rank=settings.setup.lora.rank if setup == "lora" else None)
        with_base = True if with_base is None else with_base
    elif vectors is not None:
        vectors = Path(vectors).expanduser()
        if not vectors.exists():
            raise SteerError(f"vectors file {vectors} does not exist")
        trained = Target(_file_label(vectors, "vectors"), "steering", model, Path(), vectors=vectors,
                         train_dataset=_vectors_dataset(vectors))
    elif adapter is not None:
        adapter = Path(adapter).expanduser()
        if not (adapter / "adapter_config.json").is_file():
            raise SteerError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json)")
        trained = Target(_file_label(adapter, "adapter"), "lora", model, Path(), adapter=adapter,
                         lora_rank=_adapter_rank(adapter))
    targets = []
    if trained is None or with_base:
        targets.append(Target("base", "base", model, Path()))
    if trained is not None:
        if trained.label == "base":
            trained.label = f"base-{trained.setup}"
        targets.extend(_strengths(trained, settings) if strengths else [trained])
    root = settings.output.output_dir
    for t in targets:
        if root:
            t.output_dir = Path(root) / t.label if len(targets) > 1 else Path(root)
        elif run is not None:
            t.output_dir = run / "eval" / t.label
        else:
            t.output_dir = Path(settings.output.runs_dir) / "eval" / model_slug(model) / t.label
    return targets


def _strengths(trained: Target, settings: Settings) -> list[Target]:
    """One target per steering scale (and the layer subset), in the order given."""

    scales, layers = list(settings.inference.scale), settings.inference.layers
    if scales == [1.0] and layers is None:
        return [trained]
    if trained.setup != "steering":
        what = "adapter" if trained.setup == "lora" else "checkpoint"
        raise SteerError(f"--scale and --layers apply to steering vectors; {trained.label} is a {trained.setup} "
                         f"{what}; drop them")
    out = []
    for scale in scales:
        label = trained.label
        if scale != 1.0:
            label += f"-scale-{format_scale(scale)}"
        if layers is not None:
            label += f"-layers-{format_layers(layers)}"
        out.append(replace(trained, label=label, scale=scale, layers=None if layers is None else tuple(layers)))
    return out


def _vectors_dataset(path: Path) -> Optional[str]:
    _, meta = load_vectors(path)
    value = meta.get("dataset")
    return str(value) if value else None
