"""Rank-1 LoRA adapters as token-wise steering (the reference's ``metrics/lora1_plots``, E13; the
companion paper's §10 and Appendix S).

A rank-1 LoRA on a layer's MLP down projection adds ``scaling * (A x_t) * B`` to the MLP output at
token t: a fixed direction u = B / |B| with a magnitude that depends on the token,

    m_t = scaling * (A x_t) * |B|        (the reference leaves out ``scaling`` = alpha / r)

For each problem and adapter, the model (that adapter on) completes the prompt; prompt plus
completion is then run once more, teacher-forced, with hooks on the adapter's ``lora_A`` (giving
A x_t) and on the base down projection (the MLP output without the adapter). Per token and layer
this gives m_t and the cosine of the MLP output with u; each token is marked with the segment of
the prompt it belongs to (chat template, system prompt, problem, completion), the borders of the
reference's figures. Results are streamed to one file per chunk of problems (``partial/``), so an
interrupted study resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from peft import PeftModel
from rich.table import Table
from rich.text import Text
from safetensors import safe_open
from safetensors.torch import save_file

from steer_cli.data.datasets import sample_problems
from steer_cli.data.prompts import completion_stop_ids, render_prompt_text
from steer_cli.errors import SteerError
from steer_cli.io import atomic_path, atomic_write_json
from steer_cli.lens.logit import stable_rank
from steer_cli.lens.tokens import TokenRenderer
from steer_cli.models import demo_model_dir, load_causal_lm, load_config, load_tokenizer, resolve_model
from steer_cli.patching.archs import arch_for_config, locate
from steer_cli.patching.setups import is_pissa_adapter
from steer_cli.rollout.base import SampleRequest, SamplingSpec, completion_budgets
from steer_cli.rollout.hf import HFBackend, chunk_seed
from steer_cli.study.adaptive_plot import plot_adaptive, plot_sample
from steer_cli.study.outputs import FIGURES_DIR, Progress, prepare_output_dir, write_settings
from steer_cli.study.record import describe_input, write_study
from steer_cli.terminal import print_table, print_text
from steer_cli.vectors.file import save_vectors

SEGMENTS = ("template", "system", "problem", "completion")
PARTIAL_DIR = "partial"
DIRECTIONS_FILE = "directions.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


# -- adapters ----------------------------------------------------------------------------------
@dataclass
class AdapterInfo:
    path: Path
    layers: list[int]
    base_model: Optional[str]
    name: str = ""


def find_adapter_dirs(targets: Sequence[str | Path]) -> list[Path]:
    """Adapter directories named by the arguments: an adapter itself (``adapter_config.json``), a
    directory of adapters (e.g. the reference's ``lora-1-layer-<l>/``), or a LoRA training run
    (its ``final/adapter``, else its newest checkpoint's)."""
    out: list[Path] = []
    for target in targets:
        p = Path(target).expanduser()
        if not p.exists():
            raise SteerError(f"{p} does not exist; pass PEFT adapter directories (adapter_config.json)")
        if (p / ADAPTER_CONFIG).is_file():
            out.append(p)
            continue
        run = _run_adapter(p)
        if run is not None:
            out.append(run)
            continue
        children = sorted((c for c in p.iterdir() if (c / ADAPTER_CONFIG).is_file()), key=_natural_key)
        if not children:
            raise SteerError(f"{p} is not a PEFT adapter directory (no {ADAPTER_CONFIG}) and holds none")
        out.extend(children)
    seen: set[Path] = set()
    unique = []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _run_adapter(run: Path) -> Optional[Path]:
    if (run / "final" / "adapter" / ADAPTER_CONFIG).is_file():
        return run / "final" / "adapter"
    checkpoints = sorted(run.glob("checkpoint-*/adapter"), key=lambda c: _natural_key(c.parent))
    return checkpoints[-1] if checkpoints and (checkpoints[-1] / ADAPTER_CONFIG).is_file() else None


def model_name_of(path: Optional[str]) -> Optional[str]:
    """An adapter's ``base_model_name_or_path`` as a steer model name ("demo" for the demo's dir)."""
    if not path:
        return None
    try:
        if Path(path).resolve() == demo_model_dir().resolve():
            return "demo"
    except OSError:
        pass
    return path


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise SteerError(f"cannot read {path / ADAPTER_CONFIG}: {err}") from None


def base_model_of(adapters: Sequence[Path]) -> Optional[str]:
    """The base model all adapters name (a one-line error if they name different ones)."""
    names = {model_name_of(_read_config(a).get("base_model_name_or_path")) for a in adapters} - {None}
    if len(names) > 1:
        raise SteerError(f"the adapters name different base models ({', '.join(sorted(names))}); "
                         "pass --model to read them all on one")
    return names.pop() if names else None


def inspect_adapter(path: Path, config: Any) -> AdapterInfo:
    """Check one adapter is rank-1 LoRA on MLP down projections of ``config``'s model; its layers."""
    spec = arch_for_config(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_layers, hidden = int(text.num_hidden_layers), int(text.hidden_size)
    inter = getattr(text, "intermediate_size", None)
    cfg = _read_config(path)
    if str(cfg.get("peft_type", "")).upper() != "LORA" or cfg.get("use_dora"):
        raise SteerError(f"{path} is a {cfg.get('peft_type')}{' DoRA' if cfg.get('use_dora') else ''} adapter; "
                         "study adaptive reads plain LoRA adapters")
    if is_pissa_adapter(path):
        raise SteerError(f"{path} is a PiSSA adapter saved as trained (it applies to W - B0 A0); use the "
                         "converted adapter/ of the run")
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise SteerError(f"{path} has no {ADAPTER_WEIGHTS}")
    layer_paths = "|".join(re.escape(p) for p in spec.layers)
    down = "|".join(re.escape(p) for p in spec.down_proj)
    pattern = re.compile(rf"(?:^|\.)(?:{layer_paths})\.(\d+)\.(?:{down})\.lora_([AB])(?:\.[^.]+)?\.weight$")
    layers: dict[int, dict[str, tuple[int, ...]]] = defaultdict(dict)
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            if ".lora_" not in key:
                continue
            m = pattern.search(key)
            if m is None:
                raise SteerError(f"{path} adapts {key.split('.lora_')[0]}, not only the MLP down projections; "
                                 "study adaptive reads rank-1 adapters of down_proj")
            layers[int(m.group(1))][m.group(2)] = tuple(f.get_slice(key).get_shape())
    if not layers:
        raise SteerError(f"{path} holds no LoRA weights")
    for layer, shapes in sorted(layers.items()):
        a, b = shapes.get("A"), shapes.get("B")
        if a is None or b is None:
            raise SteerError(f"{path}: layer {layer} has only lora_{'A' if a else 'B'}")
        if a[0] != 1:
            raise SteerError(f"{path} has rank {a[0]} at layer {layer}; study adaptive reads rank-1 adapters "
                             "(one direction per layer: train with --set setup.lora.rank=1)")
        if b[0] != hidden or (inter is not None and a[1] != int(inter)):
            raise SteerError(f"{path} was made for another model: its layer-{layer} down_proj adapter is "
                             f"[{b[0]} x {a[1]}] but this model's down_proj is [{hidden} x {inter}]")
        if not 0 <= layer < num_layers:
            raise SteerError(f"{path} adapts layer {layer}, out of range: the model has layers 0..{num_layers - 1}")
    return AdapterInfo(path, sorted(layers), model_name_of(cfg.get("base_model_name_or_path")))


def inspect_adapters(paths: Sequence[Path], config: Any) -> list[AdapterInfo]:
    infos = [inspect_adapter(p, config) for p in paths]
    owner: dict[int, Path] = {}
    for k, info in enumerate(infos):
        info.name = f"adapter-{k}"
        for layer in info.layers:
            if layer in owner:
                raise SteerError(f"layer {layer} is adapted by both {owner[layer]} and {info.path}; "
                                 "give one adapter per layer")
            owner[layer] = info.path
    return infos


# -- pure pieces -------------------------------------------------------------------------------
def token_segments(tokenizer: Any, problem: str, *, template: str, system_prompt: Optional[str],
                   fmt: Optional[str], append_to: bool) -> tuple[list[int], list[int]]:
    """Prompt token ids (as ``render_prompt`` gives them) and each token's segment index into
    ``SEGMENTS``: a token is "problem" (or "system") when it starts inside that text's span of the
    rendered prompt, "template" otherwise (role markers, special tokens, the template's words)."""
    text = render_prompt_text(tokenizer, problem, template, system_prompt=system_prompt, fmt=fmt, append_to=append_to)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    spans = []
    start = text.rfind(problem) if problem else -1
    if start >= 0:
        spans.append((start, start + len(problem), SEGMENTS.index("problem")))
    if system_prompt:
        s = text.find(system_prompt)
        if s >= 0 and (start < 0 or s + len(system_prompt) <= start):
            spans.append((s, s + len(system_prompt), SEGMENTS.index("system")))
    labels = []
    for lo, _hi in offsets:
        label = SEGMENTS.index("template")
        for a, b, seg in spans:
            if a <= lo < b:
                label = seg
        labels.append(label)
    return ids, labels


def borders(labels: Sequence[int]) -> list[tuple[int, int, int]]:
    """Runs of one segment as (start, stop, segment index)."""
    runs = []
    for i, lab in enumerate(labels):
        if runs and runs[-1][2] == lab and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1, lab)
        else:
            runs.append((i, i + 1, lab))
    return runs


def pearson(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    """Pearson r, ignoring NaN pairs; None with fewer than 3 pairs or no spread."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok].astype(np.float64), y[ok].astype(np.float64)
    if x.size < 3 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


# -- teacher-forced capture --------------------------------------------------------------------
class LoraCapture:
    """Hooks on one adapter's LoRA down projections: per layer, the magnitude m_t and the base
    (adapter-free) MLP output of the last forward."""

    def __init__(self, model: Any, adapter_name: str, layers: Sequence[int]) -> None:
        located = locate(model)
        self.layers = list(layers)
        self.handles: list[Any] = []
        self.a: dict[int, torch.Tensor] = {}
        self.mlp: dict[int, torch.Tensor] = {}
        self.direction: dict[int, torch.Tensor] = {}
        self.norm_b: dict[int, float] = {}
        self.scaling: dict[int, float] = {}
        for layer in self.layers:
            module = located.down_proj(layer)
            if not hasattr(module, "lora_A") or adapter_name not in module.lora_A:
                raise SteerError(f"layer {layer}'s down projection carries no adapter {adapter_name!r}")
            b = module.lora_B[adapter_name].weight.detach().to(torch.float32)[:, 0]
            norm = float(b.norm())
            self.norm_b[layer] = norm
            self.scaling[layer] = float(module.scaling[adapter_name])
            self.direction[layer] = b / norm if norm > 0 else b
            self.handles.append(module.lora_A[adapter_name].register_forward_hook(self._keep(self.a, layer)))
            self.handles.append(module.base_layer.register_forward_hook(self._keep(self.mlp, layer)))

    @staticmethod
    def _keep(store: dict[int, torch.Tensor], layer: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            store[layer] = output.detach()

        return hook

    def stats(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(magnitude, cosine with u, MLP-output norm), each [T], of row 0 of the last forward."""
        a = self.a[layer][0, :, 0].to(torch.float32)
        mlp = self.mlp[layer][0].to(torch.float32)
        u = self.direction[layer].to(mlp.device)
        magnitude = a * (self.scaling[layer] * self.norm_b[layer])
        norms = mlp.norm(dim=-1)
        cosine = (mlp @ u) / torch.where(norms > 0, norms, torch.ones_like(norms))
        return magnitude.cpu().numpy(), cosine.cpu().numpy(), norms.cpu().numpy()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def forced_stats(model: Any, ids: Sequence[int], capture: LoraCapture) -> dict[int, tuple[np.ndarray, ...]]:
    """Run ``ids`` once (no cache, only the last logits) and return ``capture.stats`` per layer."""
    device = next(model.parameters()).device
    with torch.no_grad():
        model(input_ids=torch.tensor([list(ids)], device=device), use_cache=False, logits_to_keep=1)
    return {layer: capture.stats(layer) for layer in capture.layers}


# -- the study ---------------------------------------------------------------------------------
def load_with_adapters(settings: Any, infos: Sequence[AdapterInfo]) -> Any:
    """The base model with every adapter loaded under its ``name`` (one active at a time)."""
    m = settings.model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = load_causal_lm(m.name, dtype=m.dtype, device=device, revision=m.revision,
                          trust_remote_code=m.trust_remote_code, attn_implementation=m.attn_implementation)
    model = PeftModel.from_pretrained(base, str(infos[0].path), adapter_name=infos[0].name, is_trainable=False)
    for info in infos[1:]:
        model.load_adapter(str(info.path), adapter_name=info.name, is_trainable=False)
    return model.eval()


def merge_sample(samples: dict[int, dict[str, Any]], row: dict[str, Any], layers: Sequence[int]) -> None:
    """Gather one problem's rows of several adapters (each with its own completion) for a figure."""
    sample = samples.setdefault(row["index"], {"index": row["index"], "prompt_len": row["prompt_len"],
                                               "ids": row["ids"], "segments": row["segments"], "magnitude": {}})
    if len(row["ids"]) > len(sample["ids"]):  # the longest completion labels the token axis
        sample["ids"], sample["segments"] = row["ids"], row["segments"]
    for layer in layers:
        sample["magnitude"][layer] = row["magnitude"][layer]


@dataclass
class LayerStats:
    layer: int
    adapter: str
    norm_b: float
    scaling: float
    tokens: int
    sign: int  # +1 / -1: the sign that makes the mean magnitude positive (the reference's flip)
    mean: float
    median: float
    mean_abs: float
    std: float
    mean_mlp_norm: float
    r_cosine: Optional[float]
    by_segment: dict[str, dict[str, Optional[float]]]
    top_tokens: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AdaptiveResult:
    model: str
    adapters: list[AdapterInfo]
    prompts: int
    layers: list[LayerStats]
    direction_cosines: list[list[float]]
    samples: list[dict[str, Any]]  # the first few prompts' per-token arrays, for the figures
    notes: list[str] = field(default_factory=list)
    stable_rank: Optional[float] = None  # of the unit directions stacked

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "prompts": self.prompts, "segments": list(SEGMENTS),
                "adapters": [{"path": str(a.path), "name": a.name, "layers": a.layers} for a in self.adapters],
                "layers": [ls.to_json() for ls in self.layers],
                "direction_cosines": self.direction_cosines, "stable_rank": self.stable_rank,
                "directions": DIRECTIONS_FILE}


def _work_settings(settings: Any) -> dict[str, Any]:
    """The settings that decide what the chunk files hold (a resumed study must share them)."""
    d = settings.to_dict()
    return {"study.adaptive": d["study"]["adaptive"], "model": d["model"], "data": d["data"], "prompt": d["prompt"],
            "rollout": {k: d["rollout"][k] for k in ("batch_prompts", "max_new_tokens", "max_seq_length")}}


def _start_partial(partial: Path, manifest: dict[str, Any], *, fresh: bool) -> None:
    """Create ``partial/`` with its manifest, or check a resumed one was made by the same study."""
    path = partial / "manifest.json"
    if fresh and partial.exists():
        shutil.rmtree(partial)
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if old != json.loads(json.dumps(manifest)):
            changed = [k for k in manifest if old is None or old.get(k) != json.loads(json.dumps(manifest[k]))]
            raise SteerError(f"{partial.parent} holds an unfinished study of other {', '.join(changed) or 'inputs'}; "
                             "resume it with the same adapters and settings, or pass --overwrite")
        return
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, manifest)


def _seed(seed: int, adapter: int) -> int:
    return int.from_bytes(hashlib.sha256(f"adaptive:{seed}:{adapter}".encode()).digest()[:4], "little")


def _chunk_file(out: Path, adapter: int, start: int) -> Path:
    return out / PARTIAL_DIR / f"adapter-{adapter}-prompts-{start:06d}.safetensors"


def _write_chunk(path: Path, rows: list[dict[str, Any]], layers: Sequence[int]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    meta = []
    for r in rows:
        i = r["index"]
        tensors[f"{i}.ids"] = torch.tensor(r["ids"], dtype=torch.int64)
        tensors[f"{i}.segment"] = torch.tensor(r["segments"], dtype=torch.int8)
        for name in ("magnitude", "cosine", "mlp_norm"):
            tensors[f"{i}.{name}"] = torch.from_numpy(np.stack([r[name][layer] for layer in layers]).astype(np.float32))
        meta.append({"index": i, "prompt_len": r["prompt_len"], "stopped": r["stopped"]})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"rows": json.dumps(meta), "layers": json.dumps(list(layers))})


def _read_chunk(path: Path) -> list[dict[str, Any]]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        layers = json.loads(meta["layers"])
        rows = []
        for m in json.loads(meta["rows"]):
            i = m["index"]
            row = dict(m, ids=f.get_tensor(f"{i}.ids").tolist(), segments=f.get_tensor(f"{i}.segment").tolist())
            for name in ("magnitude", "cosine", "mlp_norm"):
                stack = f.get_tensor(f"{i}.{name}").numpy()
                row[name] = {layer: stack[k] for k, layer in enumerate(layers)}
            rows.append(row)
    return rows


def _layer_stats(layer: int, info: AdapterInfo, norm_b: float, scaling: float, rows: list[dict[str, Any]],
                 renderer: Any, top_k: int, min_count: int = 2) -> LayerStats:
    m = np.concatenate([r["magnitude"][layer] for r in rows])
    cos = np.concatenate([r["cosine"][layer] for r in rows])
    mlp = np.concatenate([r["mlp_norm"][layer] for r in rows])
    seg = np.concatenate([np.asarray(r["segments"]) for r in rows])
    ids = np.concatenate([np.asarray(r["ids"]) for r in rows])
    sign = 1 if m.mean() >= 0 else -1
    flipped = sign * m
    overall_abs = float(np.abs(m).mean()) if m.size else 0.0
    by_segment: dict[str, dict[str, Optional[float]]] = {}
    for k, name in enumerate(SEGMENTS):
        sel = seg == k
        n = int(sel.sum())
        by_segment[name] = {
            "tokens": n,
            "mean": float(flipped[sel].mean()) if n else None,
            "mean_abs": float(np.abs(m[sel]).mean()) if n else None,
            # how much stronger the segment's tokens are steered than the average token
            "relative": float(np.abs(m[sel]).mean() / overall_abs) if n and overall_abs > 0 else None,
        }
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
    for token, value in zip(ids.tolist(), flipped.tolist()):
        sums[token][0] += value
        sums[token][1] += 1
    means = [(s / c, c, t) for t, (s, c) in sums.items() if c >= min_count]
    means.sort(reverse=True)
    top = [{"id": t, "token": renderer.text(t), "mean": v, "count": c} for v, c, t in means[:top_k]]
    return LayerStats(layer, info.name, norm_b, scaling, int(m.size), sign, float(m.mean()), float(np.median(m)),
                      overall_abs, float(m.std()), float(mlp.mean()), pearson(cos, flipped), by_segment, top)


def adaptive_study(adapter_targets: Sequence[str | Path], settings: Any, *, output_dir: str | Path,
                   overwrite: bool = False, resume: bool = False, plot: bool = True,
                   quiet: bool = False) -> tuple[AdaptiveResult, list[Path]]:
    """``steer study adaptive``: every adapter, on ``study.adaptive.prompts`` problems of the dataset."""
    s = settings.study.adaptive
    m = settings.model
    paths = find_adapter_dirs(adapter_targets)
    model_name = m.name
    config = load_config(model_name, revision=m.revision, trust_remote_code=m.trust_remote_code)
    infos = inspect_adapters(paths, config)
    notes = []
    named = {i.base_model for i in infos} - {None}
    if named and model_name_of(resolve_model(model_name)) not in named and model_name not in named:
        notes.append(f"the adapters name {', '.join(sorted(named))} as their base model; read on {model_name}")
    out = prepare_output_dir(output_dir, overwrite=overwrite, resume=resume, partial=[PARTIAL_DIR])
    manifest = {"adapters": [describe_input(i.path) for i in infos], "model": model_name,
                "settings": _work_settings(settings)}
    _start_partial(out / PARTIAL_DIR, manifest, fresh=overwrite)
    write_settings(out, settings)

    tokenizer = load_tokenizer(model_name, revision=m.revision, trust_remote_code=m.trust_remote_code)
    problems = [pr.problem for pr in sample_problems(settings.data, s.prompts, s.seed)]
    if len(problems) < s.prompts:
        notes.append(f"the dataset has {len(problems)} usable problems, fewer than study.adaptive.prompts={s.prompts}")
    p = settings.prompt
    prompts = [token_segments(tokenizer, problem, template=p.template, system_prompt=p.system_prompt,
                              fmt=p.format, append_to=p.append_to) for problem in problems]
    stop_ids = completion_stop_ids(tokenizer, p.stop, model_name, revision=m.revision,
                                   trust_remote_code=m.trust_remote_code)
    batch, r = settings.rollout.batch_prompts, settings.rollout
    budgets = completion_budgets([len(ids) for ids, _ in prompts], s.max_new_tokens or r.max_new_tokens,
                                 r.max_seq_length)
    chunks = [(k, start) for k in range(len(infos)) for start in range(0, len(prompts), batch)]

    capture_meta: dict[int, tuple[float, float]] = {}
    directions: dict[int, torch.Tensor] = {}
    model = load_with_adapters(settings, infos)
    with Progress("study adaptive", unit="problems x adapters", quiet=quiet) as bar:
        done = sum(len(prompts[start:start + batch]) for k, start in chunks if _chunk_file(out, k, start).exists())
        total = len(prompts) * len(infos)
        bar.update(done, total)
        for k, info in enumerate(infos):
            model.set_adapter(info.name)
            capture = LoraCapture(model, info.name, info.layers)
            for layer in info.layers:
                capture_meta[layer] = (capture.norm_b[layer], capture.scaling[layer])
                directions[layer] = capture.direction[layer].cpu()
            try:
                backend = HFBackend(model, tokenizer, batch_prompts=batch)
                for start in range(0, len(prompts), batch):
                    path = _chunk_file(out, k, start)
                    if path.exists():
                        continue
                    part = prompts[start:start + batch]
                    greedy = s.temperature == 0.0
                    requests = [SampleRequest(tuple(ids), None if greedy else chunk_seed(_seed(s.seed, k), start + j),
                                              budgets[start + j], group=j) for j, (ids, _) in enumerate(part)]
                    sampling = SamplingSpec(n=1, temperature=s.temperature, top_p=s.top_p,
                                            max_new_tokens=max(budgets), stop_token_ids=stop_ids)
                    completions: list[Any] = [None] * len(part)
                    for j, c in backend.stream_samples(requests, sampling):
                        completions[j] = c
                    rows = []
                    for j, ((ids, labels), c) in enumerate(zip(part, completions)):
                        gen = list(c.token_ids[:-1] if c.stopped else c.token_ids)
                        seq = list(ids) + gen
                        stats = forced_stats(model, seq, capture)
                        rows.append({"index": start + j, "ids": seq, "prompt_len": len(ids),
                                     "segments": list(labels) + [SEGMENTS.index("completion")] * len(gen),
                                     "stopped": c.stopped,
                                     "magnitude": {l: v[0] for l, v in stats.items()},
                                     "cosine": {l: v[1] for l, v in stats.items()},
                                     "mlp_norm": {l: v[2] for l, v in stats.items()}})
                    _write_chunk(path, rows, info.layers)
                    done += len(part)
                    bar.update(done, total)
            finally:
                capture.remove()
    del model  # the statistics below read the chunk files only
    renderer = TokenRenderer(tokenizer)
    layer_stats: list[LayerStats] = []
    samples: dict[int, dict[str, Any]] = {}
    for k, info in enumerate(infos):
        rows = [r for start in range(0, len(prompts), batch) for r in _read_chunk(_chunk_file(out, k, start))]
        rows.sort(key=lambda r: r["index"])
        for layer in info.layers:
            norm_b, scaling = capture_meta[layer]
            layer_stats.append(_layer_stats(layer, info, norm_b, scaling, rows, renderer, s.top_tokens))
        for r in rows[:s.plot_samples]:
            merge_sample(samples, r, info.layers)
    layer_stats.sort(key=lambda x: x.layer)
    u = torch.stack([directions[ls.layer] for ls in layer_stats])
    result = AdaptiveResult(model_name, infos, len(prompts), layer_stats, (u @ u.T).tolist(),
                            [samples[i] for i in sorted(samples)], notes)
    result.stable_rank = stable_rank(u)
    # the unit directions as a vectors file, so `steer lens` reads them like trained vectors
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    rows = torch.zeros(int(text.num_hidden_layers), int(text.hidden_size))
    for ls in layer_stats:
        rows[ls.layer] = directions[ls.layer]
    save_vectors(out / DIRECTIONS_FILE, rows, base_model=model_name, layers=[ls.layer for ls in layer_stats],
                 place="down_proj_bias", setup="lora rank-1 directions (unit B columns)")
    figures: list[Path] = []
    if plot:
        figures.append(plot_adaptive(result, out / FIGURES_DIR / "adaptive.png"))
        for sample in result.samples:
            figures.append(plot_sample(sample, renderer, out / FIGURES_DIR / f"sample-{sample['index']}.png"))
    doc = result.to_json()
    doc["notes"] = notes
    doc["figures"] = [str(f.relative_to(out)) for f in figures]
    write_study(out, "adaptive", inputs={"adapters": [str(i.path) for i in infos], "model": resolve_model(model_name)},
                settings=settings.to_dict(), results=doc)
    return result, figures


def render_adaptive(result: AdaptiveResult, console: Any) -> None:
    """One row per layer: |B|, magnitude statistics, r(cosine, magnitude), and per segment the mean
    |magnitude| relative to the layer's average token."""
    table = Table(title=Text(f"rank-1 adapters on {result.model}: token-wise magnitude m_t = scaling * (A x_t) * |B| "
                             f"over {result.prompts} problem(s)"), title_justify="left")
    for name in ("layer", "|B|·scaling", "tokens", "mean", "median", "mean |m|", "r(cos, m)"):
        table.add_column(name, justify="right")
    for seg in SEGMENTS:
        table.add_column(f"{seg} ×", justify="right")

    def fmt(x: Optional[float], spec: str = ".3g") -> str:
        return "—" if x is None else format(x, spec)

    for ls in result.layers:
        cells = [str(ls.layer), fmt(ls.norm_b * ls.scaling), str(ls.tokens), fmt(ls.sign * ls.mean),
                 fmt(ls.sign * ls.median), fmt(ls.mean_abs), fmt(ls.r_cosine, "+.3f")]
        cells += [fmt(ls.by_segment[seg]["relative"], ".2f") for seg in SEGMENTS]
        table.add_row(*cells)
    print_table(console, table)
    print_text(console, Text("mean and median have the sign that makes the mean positive (as the reference flips it); "
                             "'<segment> ×' = mean |m| of the segment's tokens / mean |m| of all tokens"))
