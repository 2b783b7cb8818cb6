"""``steer lens train-tuned``: train a tuned lens on a frozen model, on completions.

The reference's recipe (``train/tuned_lens.py`` with ``configs/train/tuned_lens/*.yml``): one
epoch over prompt + completion sequences, batch 1 with 32 sequences of gradient accumulation,
AdamW at lr 1e-3 without weight decay, linear warm-up over 3 % of the updates then linear decay
(transformers' ``get_linear_schedule_with_warmup``), gradients clipped to norm 1.0 per
translator, loss KL(p_model || p_lens) averaged over a sequence's tokens (a sequence's loss is
divided by 32, as accelerate divides an accumulated loss, also in a last shorter group). The
reference trains one layer per run; here one forward pass feeds every layer's translator, each
with its own clipping, which AdamW (elementwise) makes the same as separate runs.

The data: rows of ``--data`` (``input_ids``, or ``text``, or a problem rendered with the prompt
template plus a ``completion``), or else ``lens.tuned.prompts`` problems of the dataset completed
by the model itself (greedy by default: the reference's ``deepscaler_greedy``). The held-out
check is ``--eval-data`` when given, else the first ``lens.tuned.eval_sequences`` training
sequences, as in the reference (then it is in-sample, and steer_lens.json says so).

Long runs resume: the generated sequences are kept in ``partial/sequences.jsonl`` and the
translators, optimizer and scheduler in ``partial/state.pt`` every ``lens.tuned.save_every``
updates; ``--resume`` continues from there.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from steer_cli.data.datasets import sample_problems
from steer_cli.data.files import read_rows
from steer_cli.data.prompts import completion_stop_ids, render_prompt
from steer_cli.errors import SteerError
from steer_cli.io import append_jsonl, atomic_path, atomic_write_text
from steer_cli.lens.tuned import (
    CONFIG_FILE,
    TunedLens,
    forward_layers,
    kl_rows,
    library_unembed_hash,
    save_tuned_lens,
    sequence_kls,
    translated_logits,
)
from steer_cli.lens.tuned_plot import plot_training
from steer_cli.models import load_causal_lm, load_tokenizer, model_slug, resolve_model
from steer_cli.patching.archs import locate
from steer_cli.rollout.base import SampleRequest, SamplingSpec, completion_budgets
from steer_cli.rollout.hf import HFBackend, chunk_seed

PARTIAL_DIR = "partial"
SEQUENCES_FILE = "sequences.jsonl"
STATE_FILE = "state.pt"
_PROMPT_FIELDS = ("problem", "prompt", "question")
_COMPLETION_FIELDS = ("completion", "response", "generation", "output")

Progress = Callable[[int, int], None]


def default_output_dir(runs_dir: str | Path, model: str) -> Path:
    return Path(runs_dir) / "tuned-lens" / model_slug(model)


# -- data --------------------------------------------------------------------------------------
def sequences_from_file(path: str | Path, tokenizer: Any, prompt: Any, max_len: Optional[int]) -> list[list[int]]:
    """Token sequences of a data file's rows (see the module docstring), cut to ``max_len``."""
    rows = read_rows(path)
    out = []
    for n, row in enumerate(rows, 1):
        if isinstance(row.get("input_ids"), list):
            ids = [int(t) for t in row["input_ids"]]
        elif isinstance(row.get("text"), str):
            ids = list(tokenizer(row["text"], add_special_tokens=False)["input_ids"])
        else:
            problem = next((row[k] for k in _PROMPT_FIELDS if isinstance(row.get(k), str)), None)
            if problem is None:
                raise SteerError(f"{path}, row {n}: no input_ids, text or problem/prompt field to train the lens on")
            ids = render_prompt(tokenizer, problem, prompt.template, system_prompt=prompt.system_prompt,
                                fmt=prompt.format, append_to=prompt.append_to)
            completion = next((row[k] for k in _COMPLETION_FIELDS if isinstance(row.get(k), str)), "")
            ids += list(tokenizer(completion, add_special_tokens=False)["input_ids"])
        if max_len:
            ids = ids[:max_len]
        if len(ids) >= 2:
            out.append(ids)
    if not out:
        raise SteerError(f"{path} holds no sequence of two or more tokens")
    return out


def generated_sequences(model: Any, tokenizer: Any, settings: Any, partial: Path,
                        progress: Optional[Progress] = None) -> list[list[int]]:
    """The dataset's problems completed by the model, kept chunk by chunk in ``partial`` (a
    resumed run reads them back instead of generating again)."""
    s, p, m = settings.lens.tuned, settings.prompt, settings.model
    problems = sample_problems(settings.data, s.prompts, s.seed)
    prompts = [render_prompt(tokenizer, pr.problem, p.template, system_prompt=p.system_prompt, fmt=p.format,
                             append_to=p.append_to) for pr in problems]
    stop_ids = completion_stop_ids(tokenizer, p.stop, m.name, revision=m.revision, trust_remote_code=m.trust_remote_code)
    path = partial / SEQUENCES_FILE
    done: dict[int, list[int]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:  # a line torn by a kill: that chunk is generated again
                continue
            done.update({int(k): v for k, v in item.items()})
    greedy = s.temperature == 0.0
    r = settings.rollout
    budgets = completion_budgets([len(x) for x in prompts], s.max_new_tokens or r.max_new_tokens,
                                 r.max_seq_length) if prompts else ()
    spec = SamplingSpec(n=1, temperature=s.temperature, top_p=1.0, max_new_tokens=max(budgets, default=1),
                        stop_token_ids=stop_ids)
    backend = HFBackend(model, tokenizer, batch_prompts=settings.rollout.batch_prompts)
    batch = settings.rollout.batch_prompts
    for start in range(0, len(prompts), batch):
        todo = [i for i in range(start, min(start + batch, len(prompts))) if i not in done]
        if todo:
            requests = [SampleRequest(tuple(prompts[i]), None if greedy else chunk_seed(s.seed, i), budgets[i],
                                      group=n) for n, i in enumerate(todo)]
            chunk = {}
            for j, c in backend.stream_samples(requests, spec):
                ids = prompts[todo[j]] + list(c.token_ids[:-1] if c.stopped else c.token_ids)
                chunk[todo[j]] = ids[:s.max_seq_length] if s.max_seq_length else ids
            append_jsonl(path, {str(k): v for k, v in chunk.items()})
            done.update(chunk)
        if progress is not None:
            progress(min(start + batch, len(prompts)), len(prompts))
    return [done[i] for i in range(len(prompts)) if len(done[i]) >= 2]


# -- training ----------------------------------------------------------------------------------
@dataclass
class TrainState:
    position: int = 0  # sequences consumed (over all epochs)
    updates: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # per update: lr, mean KL per layer


def trainable_layers(layers: Optional[Sequence[int]], num_layers: int) -> list[int]:
    """Decoder layers whose translators train: every layer but the last by default (the last
    one's lens is the model's head itself)."""
    if layers is None:
        return list(range(num_layers - 1))
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise SteerError(f"--layers {bad[0]} is out of range: the model has layers 0..{num_layers - 1}")
    return sorted({i for i in layers if i < num_layers - 1})


def train_translators(model: Any, sequences: Sequence[Sequence[int]], layers: Sequence[int], s: Any, *,
                      state_path: Optional[Path] = None, progress: Optional[Progress] = None,
                      ) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], TrainState]:
    """Train the translators of decoder ``layers`` (library index layer + 1) on ``sequences``;
    ``s`` is the ``lens.tuned`` settings. Returns {layer: (W, b)} and the final state."""
    located = locate(model)
    hidden = int(located.unembed.weight.shape[1])
    device = next(model.parameters()).device
    model.requires_grad_(False)
    weights = {i: torch.zeros(hidden, hidden, device=device, requires_grad=True) for i in layers}
    biases = {i: torch.zeros(hidden, device=device, requires_grad=True) for i in layers}
    params = [p for i in layers for p in (weights[i], biases[i])]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay) if params else None
    n = len(sequences)
    total_updates = s.epochs * math.ceil(n / s.sequences_per_step)
    scheduler = (get_linear_schedule_with_warmup(optimizer, s.warmup_ratio * total_updates, total_updates)
                 if optimizer else None)
    state = TrainState()
    if state_path is not None and state_path.exists() and optimizer is not None:
        saved = torch.load(state_path, map_location=device, weights_only=False)
        if saved.get("sequences") != n or saved.get("layers") != list(layers):
            raise SteerError(f"{state_path} was saved by a run on other data or layers; resume with the same "
                             "ones, or pass --overwrite")
        with torch.no_grad():
            for i in layers:
                weights[i].copy_(saved["weights"][i])
                biases[i].copy_(saved["biases"][i])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = TrainState(saved["position"], saved["updates"], saved["history"])
    orders = [np.random.default_rng([s.seed, epoch]).permutation(n) for epoch in range(s.epochs)]
    group_kl = {i: 0.0 for i in layers}
    in_group = 0
    last = s.epochs * n - 1
    for position in range(state.position, s.epochs * n):
        ids = sequences[int(orders[position // n][position % n])]
        if optimizer is not None:
            teacher, outputs = forward_layers(model, located, ids, layers)
            rows_total = teacher.shape[0]
            for i in layers:
                for start in range(0, rows_total, s.position_chunk):
                    rows = slice(start, start + s.position_chunk)
                    kl = kl_rows(teacher[rows], translated_logits(located, model.config, outputs[i][rows],
                                                                  weights[i], biases[i]))
                    (kl.sum() / rows_total / s.sequences_per_step).backward()
                    group_kl[i] += float(kl.detach().sum()) / rows_total
        in_group += 1
        if optimizer is not None and (in_group == s.sequences_per_step or position == last):
            if s.max_grad_norm is not None:
                for i in layers:
                    torch.nn.utils.clip_grad_norm_([weights[i], biases[i]], s.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.updates += 1
            state.history.append({"update": state.updates, "lr": lr,
                                  "kl": {str(i): group_kl[i] / in_group for i in layers}})
            group_kl = {i: 0.0 for i in layers}
            in_group = 0
            state.position = position + 1
            if state_path is not None and s.save_every and state.updates % s.save_every == 0 and position != last:
                _save_state(state_path, weights, biases, optimizer, scheduler, state, n, layers)
        if progress is not None:
            progress(position + 1, s.epochs * n)
    state.position = s.epochs * n
    return {i: (weights[i].detach().cpu(), biases[i].detach().cpu()) for i in layers}, state


def _save_state(path: Path, weights: dict, biases: dict, optimizer: Any, scheduler: Any, state: TrainState,
                sequences: int, layers: Sequence[int]) -> None:
    blob = {"sequences": sequences, "layers": list(layers),"weights": {i: w.detach().cpu() for i, w in weights.items()},
            "biases": {i: b.detach().cpu() for i, b in biases.items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "position": state.position, "updates": state.updates, "history": state.history}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def evaluate_lens(model: Any, sequences: Sequence[Sequence[int]], lens: TunedLens, chunk: int,
                  progress: Optional[Progress] = None) -> dict[str, list[float]]:
    """Token-weighted mean KL to the model at every layer, through the tuned lens and the logit
    lens (identity translators), over ``sequences``."""
    located = locate(model)
    layers = list(range(located.num_layers))
    sums = {"tuned": np.zeros(len(layers)), "logit": np.zeros(len(layers))}
    tokens = 0
    for k, ids in enumerate(sequences):
        kls = sequence_kls(model, located, ids, {"tuned": lens, "logit": None}, layers, chunk)
        for name in sums:
            sums[name] += np.array([kls[name][i] for i in layers]) * len(ids)
        tokens += len(ids)
        if progress is not None:
            progress(k + 1, len(sequences))
    return {name: (v / max(tokens, 1)).tolist() for name, v in sums.items()}


# -- the command -------------------------------------------------------------------------------
def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_output(out: Path, *, overwrite: bool, resume: bool) -> None:
    if overwrite and resume:
        raise SteerError("--overwrite and --resume exclude each other")
    if out.exists() and not out.is_dir():
        raise SteerError(f"--output-dir {out} is a file; give a directory")
    if (out / CONFIG_FILE).exists() and not overwrite:
        raise SteerError(f"{out} already holds a tuned lens ({CONFIG_FILE}); pass --overwrite to replace it")
    if (out / PARTIAL_DIR).exists() and not (overwrite or resume):
        raise SteerError(f"{out} holds an unfinished tuned lens ({PARTIAL_DIR}/); pass --resume to continue it "
                         "or --overwrite to start again")


def train_tuned_lens(settings: Any, *, output_dir: str | Path, data: Optional[str | Path] = None,
                     eval_data: Optional[str | Path] = None, layers: Optional[Sequence[int]] = None,
                     overwrite: bool = False, resume: bool = False, plot: bool = True,
                     say: Callable[[str], None] = lambda msg: None,
                     progress: Callable[[str], Any] = lambda what: None) -> tuple[TunedLens, Path, list[Path]]:
    """Train, evaluate and write a tuned lens; returns it, its directory and its figures.

    ``progress(description)`` gives a ``Progress`` callback (done, total) per phase."""
    s, m = settings.lens.tuned, settings.model
    out = Path(output_dir)
    for f in (data, eval_data):
        if f is not None and not Path(f).is_file():
            raise SteerError(f"data file {f} does not exist")
    _check_output(out, overwrite=overwrite, resume=resume)
    started = time.perf_counter()
    tokenizer = load_tokenizer(m.name, revision=m.revision, trust_remote_code=m.trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_causal_lm(m.name, dtype=m.dtype, device=device, revision=m.revision,
                           trust_remote_code=m.trust_remote_code, attn_implementation=m.attn_implementation)
    located = locate(model)
    chosen = trainable_layers(layers, located.num_layers)
    if overwrite and out.exists():
        for name in (PARTIAL_DIR, "figures"):
            shutil.rmtree(out / name, ignore_errors=True)
    partial = out / PARTIAL_DIR
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "settings.yaml", settings.to_yaml())
    if data is not None:
        sequences = sequences_from_file(data, tokenizer, settings.prompt, s.max_seq_length)
        source: dict[str, Any] = {"file": str(Path(data).resolve()), "sha256": _sha256(data)}
    else:
        sequences = generated_sequences(model, tokenizer, settings, partial, progress("completions"))
        source = {"dataset": settings.data.dataset, "prompts": len(sequences), "temperature": s.temperature,
                  "max_new_tokens": s.max_new_tokens or settings.rollout.max_new_tokens, "file": SEQUENCES_FILE}
    if eval_data is not None:
        held_out = sequences_from_file(eval_data, tokenizer, settings.prompt, s.max_seq_length)
        eval_source: dict[str, Any] = {"file": str(Path(eval_data).resolve()), "sha256": _sha256(eval_data)}
    else:
        held_out = sequences[:s.eval_sequences]
        eval_source = {"in_sample": True, "sequences": len(held_out),
                       "note": "the first training sequences, as the reference evaluates"}
    say(f"training {len(chosen)} translator(s) of {m.name} on {len(sequences)} sequence(s) "
        f"({sum(map(len, sequences))} tokens), {s.epochs} epoch(s)")
    trained, state = train_translators(model, sequences, chosen, s, state_path=partial / STATE_FILE,
                                       progress=progress("train-tuned"))
    lens = TunedLens.identity(resolve_model(m.name) if m.name != "demo" else "demo", located.num_layers,
                              int(located.unembed.weight.shape[1]), unembed_hash=library_unembed_hash(located.unembed.weight),
                              revision=m.revision)
    for i, (w, b) in trained.items():
        lens.weight[i + 1] = w
        lens.bias[i + 1] = b
    kl = evaluate_lens(model, held_out, lens, s.position_chunk, progress("eval"))
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    lens.info = {
        "kind": "steer-tuned-lens", "format_version": 1, "model": m.name, "trained_layers": chosen,
        "translator_of_layer": {str(i): i + 1 for i in range(located.num_layers - 1)},
        "identity_layers": [i for i in range(located.num_layers) if i not in chosen],
        "data": source, "eval_data": eval_source, "sequences": len(sequences),
        "tokens": int(sum(map(len, sequences))), "updates": state.updates,
        "eval_kl": {"tuned": kl["tuned"], "logit_lens": kl["logit"]},
        "train_kl": [h["kl"] for h in state.history], "lr": [h["lr"] for h in state.history],
        "settings": settings.to_dict()["lens"]["tuned"],
        "cost": {"seconds": time.perf_counter() - started, "device": device,
                 "peak_gpu_bytes": peak},
    }
    figures: list[Path] = []
    if plot:
        figures.append(plot_training(lens, out / "figures" / "tuned_lens.png"))
    if data is None:  # the generated training data stays beside the lens, readable by --data
        atomic_write_text(out / SEQUENCES_FILE, "".join(json.dumps({"input_ids": ids}) + "\n" for ids in sequences))
    save_tuned_lens(out, lens)
    shutil.rmtree(partial)
    return lens, out, figures
