"""Checkpoints: ``checkpoint-<step>/`` directories written atomically, and ``final/``.

A checkpoint holds what trains (``vectors.safetensors``, a peft ``adapter/``, or the full
``model/``) and the trainer's state: optimizer and scheduler (``optimizer.pt``, read back with
``torch.load(weights_only=True)``), RNG states and counters (``trainer_state.json``,
``rng.pt``). Each directory is built under a temporary name and renamed into place, so a kill
during a save leaves the previous checkpoint intact; only complete ones carry the final name.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from steer_cli.errors import SteerError
from steer_cli.faults import maybe_die
from steer_cli.io import atomic_dir, atomic_write_text
from steer_cli.train.fsdp import load_model_state, load_optimizer_state, save_pretrained_gathered
from steer_cli.vectors.file import load_vectors, save_vectors

_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"
PISSA_RESUME_DIR = "adapter-pissa"  # a PiSSA adapter as trained (adapter/ holds it converted)


def write_trained(directory: Path, trainable: Any, *, vectors_meta: dict[str, Any], tokenizer: Any = None,
                  model_state: dict[str, torch.Tensor] | None = None) -> None:
    """Write what the setup trains into ``directory`` (which exists). ``model_state``: the gathered
    weights of a sharded (FSDP) model."""
    if trainable.kind == "steering":
        save_vectors(directory / "vectors.safetensors", trainable.steering.vectors, **vectors_meta)
    elif trainable.kind == "lora":
        # adapter/ applies to the original base weights (a PiSSA adapter converted, rank 2r);
        # a PiSSA run also keeps its adapter as trained (for W - B0 A0), which --resume loads.
        trainable.save_adapter(directory / "adapter")
        if getattr(trainable, "pissa", False):
            trainable.model.save_pretrained(str(directory / PISSA_RESUME_DIR), safe_serialization=True)
    elif model_state is not None:
        save_pretrained_gathered(trainable.model, model_state, directory / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory / "model"))
    else:
        trainable.model.save_pretrained(str(directory / "model"), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory / "model"))


def save_checkpoint(
    out_dir: Path,
    step: int,
    trainable: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    *,
    vectors_meta: dict[str, Any],
    tokenizer: Any = None,
    name: str | None = None,
    model_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """``model_state``/``optimizer_state``: gathered from a sharded (FSDP) model; the optimizer's is
    then keyed by parameter name (``torch.distributed.checkpoint`` form)."""
    target = out_dir / (name or f"checkpoint-{step}")

    def extra(tmp: Path) -> None:
        optim = optimizer_state if optimizer_state is not None else optimizer.state_dict()
        torch.save({"optimizer": optim, "scheduler": scheduler.state_dict(), "fsdp": optimizer_state is not None},
                   tmp / "optimizer.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")

    state = dict(state, python_rng=_py_rng_state(), numpy_rng=_np_rng_state())
    return _write_dir(target, step, trainable, state, vectors_meta, tokenizer, extra, model_state)


def save_final(out_dir: Path, step: int, trainable: Any, state: dict[str, Any], *,
               vectors_meta: dict[str, Any], tokenizer: Any = None,
               model_state: dict[str, torch.Tensor] | None = None) -> Path:
    """``final/``: what was trained and the trainer's counters (no optimizer state)."""
    return _write_dir(out_dir / "final", step, trainable, state, vectors_meta, tokenizer, None, model_state)


def _write_dir(target: Path, step: int, trainable: Any, state: dict[str, Any], vectors_meta: dict[str, Any],
               tokenizer: Any, extra: Any, model_state: dict[str, torch.Tensor] | None = None) -> Path:
    try:
        with atomic_dir(target) as tmp:
            write_trained(tmp, trainable, vectors_meta=vectors_meta, tokenizer=tokenizer, model_state=model_state)
            if extra is not None:
                extra(tmp)
            (tmp / STATE_FILE).write_text(json.dumps(dict(state, step=step), indent=2))
            maybe_die("checkpoint", step)
    except OSError as err:
        raise SteerError(
            f"could not write {target}: {err.strerror or err}; earlier checkpoints are intact "
            "(free some space, then continue with --resume)"
        ) from None
    return target


def remove_partial_checkpoints(out_dir: Path) -> None:
    """Temporary directories of checkpoint writes that a kill interrupted."""
    for tmp in out_dir.glob(".checkpoint-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    for tmp in out_dir.glob(".final.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def list_checkpoints(out_dir: Path, *, resumable: bool = True) -> list[tuple[int, Path]]:
    """(step, dir) of ``checkpoint-N`` directories, oldest first; ``resumable`` keeps only those
    with trainer state (all of ours; hand-made ones may hold just vectors)."""
    found = []
    if out_dir.is_dir():
        for child in out_dir.iterdir():
            m = _CKPT_RE.match(child.name)
            if m and child.is_dir() and (not resumable or (child / STATE_FILE).exists()):
                found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def run_vectors_file(path: Path) -> Path | None:
    """``vectors.safetensors`` of a checkpoint directory, or of a run's ``final/`` (else its newest
    ``checkpoint-N/``); None when there is none. A LoRA or full run is a clear error."""
    if (path / "vectors.safetensors").is_file():
        return path / "vectors.safetensors"
    candidates = ([path / "final"] if (path / "final").is_dir() else [])
    candidates += [c for _, c in reversed(list_checkpoints(path, resumable=False))]
    for checkpoint in candidates:
        if (checkpoint / "vectors.safetensors").is_file():
            return checkpoint / "vectors.safetensors"
    for checkpoint in candidates:
        for sub, what in (("adapter", "a LoRA adapter"), ("model", "the full model")):
            if (checkpoint / sub).is_dir():
                raise SteerError(f"{checkpoint} holds {what} ({sub}/), not steering vectors; "
                                 "only steering runs have vectors")
    return None


def prune_checkpoints(out_dir: Path, keep_last: int) -> None:
    for _, path in list_checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: Path, trainable: Any, optimizer: torch.optim.Optimizer, scheduler: Any, *,
                    sharded: bool = False, main: bool = True) -> dict[str, Any]:
    """Restore trained parameters, optimizer, scheduler and RNG; returns the trainer state.

    ``sharded``: the model is FSDP-sharded; every process calls this, the ``main`` one reads the
    gathered weights and optimizer state and they are scattered to all."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    except (OSError, json.JSONDecodeError, RuntimeError) as err:
        raise SteerError(f"checkpoint {path} is unreadable ({err}); delete it to resume from an earlier one") from None
    if trainable.kind == "steering":
        vectors, _ = load_vectors(path / "vectors.safetensors")
        trainable.steering.set(vectors)
    elif trainable.kind == "lora":
        sub = PISSA_RESUME_DIR if (path / PISSA_RESUME_DIR).is_dir() else "adapter"
        weights = load_file(str(path / sub / "adapter_model.safetensors"))
        set_peft_model_state_dict(trainable.model, weights)
    elif sharded:
        if not opt.get("fsdp"):
            raise SteerError(f"checkpoint {path} was written without FSDP; resume it without --fsdp")
        load_model_state(trainable.model, _read_model_dir(path / "model") if main else {})
        load_optimizer_state(trainable.model, optimizer, opt["optimizer"] if main else {})
    else:
        if opt.get("fsdp"):
            raise SteerError(f"checkpoint {path} was written with FSDP; resume it with --fsdp")
        merged = _read_model_dir(path / "model")
        missing, unexpected = trainable.model.load_state_dict(merged, strict=False)
        real_missing = [k for k in missing if k not in getattr(trainable.model, "_tied_weights_keys", {})]
        if unexpected or (real_missing and not merged):
            raise SteerError(f"checkpoint {path} does not match the model (unexpected {unexpected[:3]})")
    if not sharded:
        optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    torch.set_rng_state(rng["torch"])
    _set_py_rng_state(state.get("python_rng"))
    _set_np_rng_state(state.get("numpy_rng"))
    return state


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines of steps after the checkpoint (they are redone) and a line torn by a kill."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _read_model_dir(model_dir: Path) -> dict[str, torch.Tensor]:
    merged: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        merged.update(load_file(str(f)))
    return merged


def _py_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_py_rng_state(state: list[Any] | None) -> None:
    if state:
        random.setstate((state[0], tuple(state[1]), state[2]))


def _np_rng_state() -> list[Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _set_np_rng_state(state: list[Any] | None) -> None:
    if state:
        np.random.set_state((state[0], np.array(state[1], dtype=np.uint32), state[2], state[3], state[4]))
