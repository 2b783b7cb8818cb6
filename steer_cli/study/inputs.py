"""What the studies read: vectors files, training runs and their checkpoints, eval results of a
reference (the all-layer run), and the prompts, model and output directory of the token-level
studies (tokens, patch, persistence); every problem is a one-line SteerError before anything is
written.

Token-level studies. Settings: a vectors file inside a training run
(``<run>/final/vectors.safetensors``, a checkpoint, or the run directory itself) starts from that
run's ``settings.yaml`` (model, prompt template, stop tokens, training set), as ``steer eval RUN``
does; a loose file starts from the defaults with ``model.name`` from its metadata. Flags,
``--config`` and ``--set`` go on top. Output directory: ``identity.json`` says what the study
computes (inputs' hashes, settings); a directory with the same identity is continued (or, with
``study.json``, is finished and is read back), one with another identity is refused unless
``--overwrite``. One writer at a time (a lock).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from steer_cli.data.datasets import load_train_set
from steer_cli.data.prompts import completion_stop_ids, render_prompt
from steer_cli.data.records import FieldMap, Problem
from steer_cli.errors import SteerError
from steer_cli.evaluate.models import LoadedVectors, load_target_vectors, model_dims
from steer_cli.evaluate.outputs import SUMMARY_KIND, identity_changes, is_new_output_dir
from steer_cli.evaluate.targets import base_model_of, checkpoint_artifact, resolve_run, run_settings_layer
from steer_cli.io import atomic_write_json, atomic_write_text, clear_dir
from steer_cli.lens.logit import find_vectors
from steer_cli.lock import hold_dir
from steer_cli.models import load_causal_lm, load_tokenizer
from steer_cli.patching.strength import format_layers
from steer_cli.runs import CHECKPOINT_DIR_RE, is_training_run
from steer_cli.settings import Layer, Settings
from steer_cli.study.record import STUDY_FILE, describe_input, read_study
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


# -- token-level studies: vectors, settings, model, prompts ------------------------------------
IDENTITY_FILE = "identity.json"


def vectors_and_run(target: str | Path) -> tuple[Path, Optional[Path]]:
    """The vectors file of an argument and the training run it belongs to (None for a loose file)."""
    path, _ = find_vectors(target)
    for candidate in (path.parent.parent, path.parent):
        if is_training_run(candidate):
            return path, candidate
    return path, None


def base_layer(vectors: Path, run: Optional[Path]) -> Optional[Layer]:
    """The run's settings as the lowest layer, or None for a loose vectors file."""
    return run_settings_layer(run) if run is not None else None


def model_name_flag(vectors: Path, run: Optional[Path], model: Optional[str]) -> Optional[str]:
    """``--model``, else (for a loose file) the base model its metadata records."""
    if model is not None or run is not None:
        return model
    return base_model_of(vectors=vectors)


def load_vectors_for(path: Path, settings: Settings) -> LoadedVectors:
    """The vectors, checked against the model's [num_layers, hidden] (a one-line error otherwise)."""
    return load_target_vectors(path, settings, model_dims(settings))


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer_for(settings: Settings) -> Any:
    m = settings.model
    return load_tokenizer(m.name, revision=m.revision, trust_remote_code=m.trust_remote_code)


def load_model(settings: Settings) -> tuple[Any, Any]:
    """The base model (eval mode, no gradients needed) and its tokenizer."""
    m = settings.model
    tokenizer = load_tokenizer_for(settings)
    model = load_causal_lm(m.name, dtype=m.dtype, device=device(), revision=m.revision,
                           trust_remote_code=m.trust_remote_code, attn_implementation=m.attn_implementation)
    model.requires_grad_(False)
    return model, tokenizer


def stop_ids(settings: Settings, tokenizer: Any) -> tuple[int, ...]:
    m, p = settings.model, settings.prompt
    return tuple(completion_stop_ids(tokenizer, p.stop, m.name, revision=m.revision,
                                     trust_remote_code=m.trust_remote_code))


def study_problems(settings: Settings, count: int, seed: int) -> list[Problem]:
    """The first ``count`` problems of the training set (data.*) after a shuffle with ``seed``
    (no shuffle with ``data.shuffle`` false), as the reference takes them."""
    d = settings.data
    fields = None
    if d.problem_field or d.answer_field or d.answer_format:
        fields = FieldMap(problem=d.problem_field or "problem", answer=d.answer_field or "answer",
                          answer_kind=d.answer_format or "plain")
    problems, _ = load_train_set(d.dataset, data_dir=d.data_dir, fields=fields, split=d.split, limit=d.limit)
    if d.shuffle:
        random.Random(seed).shuffle(problems)
    if len(problems) < count:
        raise SteerError(f"the training set {d.dataset} has {len(problems)} usable problems; --prompts {count} "
                         "asks for more")
    return problems[:count]


def render(settings: Settings, tokenizer: Any, problems: list[Problem]) -> list[list[int]]:
    p = settings.prompt
    return [render_prompt(tokenizer, x.problem, p.template, system_prompt=p.system_prompt, fmt=p.format,
                          append_to=p.append_to) for x in problems]


def completion_budget(settings: Settings, requested: Optional[int]) -> int:
    return int(requested if requested is not None else settings.rollout.max_new_tokens)


def default_output_dir(settings: Settings, experiment: str, vectors: Path, run: Optional[Path]) -> Path:
    """runs/study/<experiment>/<the run's path under runs/, or the run's name, or the file's stem>."""
    root = Path(settings.output.runs_dir)
    if run is None:
        return root / "study" / experiment / vectors.stem
    try:
        label = run.resolve().relative_to(root.resolve())
    except ValueError:
        label = Path(run.name)
    return root / "study" / experiment / label


def single_token(tokenizer: Any, text: str, flag: str = "--token") -> int:
    """The id of ``text`` as one token of the tokenizer; a one-line error listing its pieces."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise SteerError(f"{flag} {text!r} is {len(ids)} tokens for this tokenizer ({pieces}); give a single "
                         "token (mind a leading space)")
    return int(ids[0])


# -- the output directory ----------------------------------------------------------------------
@dataclass
class StudyDir:
    path: Path
    mode: str  # new | continue | finished | overwrite

    @property
    def finished(self) -> bool:
        return self.mode == "finished"


def check_study_dir(out: Path, experiment: str, identity: dict[str, Any], overwrite: bool) -> StudyDir:
    """What to do with ``out`` for a study of this identity; reads only."""
    if is_new_output_dir(out):  # the checks of an evaluation's output directory
        return StudyDir(out, "new")
    ident_file = out / IDENTITY_FILE
    if not ident_file.is_file():
        raise SteerError(f"output directory {out} exists and is not a steer study (no {IDENTITY_FILE}); refusing "
                         "to write into it, choose another --output-dir")
    if overwrite:
        return StudyDir(out, "overwrite")
    try:
        previous = json.loads(ident_file.read_text())
    except (OSError, ValueError):
        raise SteerError(f"{ident_file} is unreadable; pass --overwrite to redo the study in {out}") from None
    if previous.get("experiment") != experiment:
        raise SteerError(f"{out} holds a '{previous.get('experiment')}' study; choose another --output-dir")
    shown = identity_changes(previous, identity, 6)
    if shown:
        raise SteerError(f"{out} holds a {experiment} study with other inputs or settings ({shown}); pass "
                         "--overwrite to redo it, or another --output-dir")
    if (out / STUDY_FILE).is_file():
        read_study(out, experiment)
        return StudyDir(out, "finished")
    return StudyDir(out, "continue")


def finished_study(out: Path, experiment: str, identity: dict[str, Any], overwrite: bool) -> Optional[dict[str, Any]]:
    """study.json of a finished study of this identity in ``out`` (read under its lock), else None:
    a finished study is read back without loading the model."""
    if overwrite or not (out / IDENTITY_FILE).is_file():
        return None
    with hold_dir(out, f"steer study {experiment}"):
        d = check_study_dir(out, experiment, identity, overwrite)
        return read_study(out, experiment) if d.finished else None


def init_study_dir(d: StudyDir, settings: Settings, identity: dict[str, Any]) -> None:
    try:
        if d.mode == "overwrite":
            clear_dir(d.path)
        d.path.mkdir(parents=True, exist_ok=True)
        if d.mode in ("new", "overwrite"):
            atomic_write_text(d.path / "settings.yaml", settings.to_yaml())
            atomic_write_json(d.path / IDENTITY_FILE, identity)
    except OSError as err:
        raise SteerError(f"cannot write to output directory {d.path}: {err.strerror or err}") from None


def identity(experiment: str, inputs: dict[str, Any], settings: Settings, study: dict[str, Any]) -> dict[str, Any]:
    """What the results depend on: the inputs' hashes, the model and prompt settings, the study's
    own settings (runtime keys such as the batch size excluded)."""
    described = {k: (describe_input(v) if isinstance(v, (str, Path)) else v) for k, v in inputs.items()}
    run = settings.to_dict()
    return {
        "experiment": experiment,
        "inputs": {k: v.get("sha256") if isinstance(v, dict) else v for k, v in described.items()},
        "model": run["model"]["name"], "dtype": run["model"]["dtype"], "prompt": run["prompt"],
        "data": {k: run["data"][k] for k in ("dataset", "split", "limit", "shuffle", "problem_field",
                                              "answer_field", "answer_format")},
        "inference": run["inference"],
        "study": {k: v for k, v in study.items() if k != "batch"},
    }
