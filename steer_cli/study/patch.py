"""``steer study patch``: through which paths of the next layer does a vector act? (the companion
paper's section 7, Figures 5, 6, 20, 21; the reference's ``patch_head`` and
``pre_last_layer_steering``).

The vector of ``--source-layer`` S (default L-2, the penultimate layer) enters layer S + 1 on two
branches (``branches.py``: modes, the one Steer-Head semantics, paths, GQA). Two metrics:

- ``kl`` (teacher-forced, cheap): one completion per prompt is sampled with the vector (no-patch),
  teacher-forced once up to the patched layer, and the patched layer and those after it are
  recomputed per patch (``LayerReplay``); per patch, KL(reference || patch) per position (float64,
  chunked), at the first generated position and the rest, and the tokens the patch promotes and
  suppresses against the reference (``--reference``, default no-patch). Resumable per batch.
- ``accuracy`` (generation): one ordinary ``steer eval`` output per patch under ``cells/<patch>``
  (eval.* benchmarks, samples, seeds; its per-sample seeds), the model loaded once; the vanilla
  branch keeps its own KV cache. The no-patch cell equals ``steer eval --vectors
  source-vector.safetensors`` (the vector at S alone, written beside). Resumable per cell.

Output: ``study.json`` (per patch: the metric, and for kl the tokens), ``figures/heads.png``
(per-head curves with dashed baselines), for kl ``figures/baseline_tokens.png``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from steer_cli.errors import SteerError
from steer_cli.evaluate.run import evaluate
from steer_cli.evaluate.targets import Target
from steer_cli.lens.tokens import TokenRenderer
from steer_cli.lock import hold_dir
from steer_cli.patching.archs import locate
from steer_cli.rollout.hf import HFBackend
from steer_cli.settings import Settings
from steer_cli.study import inputs as I
from steer_cli.study.branches import BASELINES, BranchedLayer, Patch, plan_patches
from steer_cli.study.forced import LayerReplay, head_logits, model_device, pad_right, sample_completions
from steer_cli.study.partial import append_lines, read_lines, read_partial, write_partial
from steer_cli.study.patch_plots import plot_baseline_tokens, plot_heads
from steer_cli.study.position_stats import quantiles, stream_rows
from steer_cli.study.progress import StudyProgress
from steer_cli.study.record import read_study, write_study
from steer_cli.study.tokens import stats_temperature
from steer_cli.vectors.file import save_vectors

EXPERIMENT = "patch"
SOURCE_VECTOR = "source-vector.safetensors"
_PARTIAL_EVERY = 60.0  # seconds between writes of the running sums ([patches, vocabulary] floats)


def source_layer(settings: Settings, num_layers: int) -> int:
    s = settings.study.patch.source_layer
    layer = num_layers - 2 if s is None else s
    if not 0 <= layer <= num_layers - 2:
        raise SteerError(f"--source-layer {layer} is out of range: the patched layer is the one after it, so the "
                         f"source must be 0..{num_layers - 2} (this model has {num_layers} layers)")
    return layer


def source_vector(vectors: I.LoadedVectors, layer: int, path: Path) -> torch.Tensor:
    if vectors.layers is not None and layer not in vectors.layers:
        raise SteerError(f"{path} steers layers {list(vectors.layers)}, not --source-layer {layer}")
    v = vectors.tensor[layer]
    if not bool(v.abs().sum() > 0):
        raise SteerError(f"row {layer} of {path} is zero: nothing to patch; pass the --source-layer of a steered layer")
    return v


def run_patch(settings: Settings, vectors: Path, run: Optional[Path], *, output_dir: Optional[Path] = None,
              interactive: Optional[bool] = None, plot: bool = True) -> tuple[dict[str, Any], Path]:
    """The patch study of one vector of ``vectors``; returns study.json and the output directory."""
    s = settings.study.patch
    if s.reference not in BASELINES:
        raise SteerError(f"--reference {s.reference!r} must be one of {', '.join(BASELINES)}")
    if settings.inference.scale != [1.0] or settings.inference.layers is not None:
        raise SteerError("study patch takes the vector of --source-layer as trained; drop --scale/--layers")
    loaded = I.load_vectors_for(vectors, settings)
    source = source_layer(settings, loaded.tensor.shape[0])
    v = source_vector(loaded, source, vectors)
    out = Path(output_dir) if output_dir is not None else I.default_output_dir(settings, EXPERIMENT, vectors, run)
    study = s.model_dump(mode="json") | {"source_layer": source}
    if s.metric == "accuracy":
        study["eval"] = settings.eval.model_dump(mode="json")
    ident = I.identity(EXPERIMENT, {"vectors": vectors}, settings, study)
    finished = I.finished_study(out, EXPERIMENT, ident, settings.output.overwrite)
    if finished is not None:
        return finished, out
    model, tokenizer = I.load_model(settings)
    with BranchedLayer(model, source, v) as branched:
        patches = plan_patches(s.modes, s.heads, s.paths, branched.parts)  # bad heads fail before any write
        with hold_dir(out, f"steer study {EXPERIMENT}"):
            d = I.check_study_dir(out, EXPERIMENT, ident, settings.output.overwrite)
            if d.finished:
                return read_study(out, EXPERIMENT), out
            I.init_study_dir(d, settings, ident)
            geometry = {"source_layer": source, "target_layer": source + 1, "heads": branched.parts.heads,
                        "kv_heads": branched.parts.kv_heads, "head_dim": branched.parts.head_dim,
                        "vector_norm": float(v.norm())}
            if s.metric == "kl":
                results = _run_kl(model, tokenizer, branched, patches, settings, out, interactive)
            else:
                results = _run_accuracy(model, tokenizer, branched, patches, settings, vectors, out, source)
            results = {**geometry, "metric": s.metric, **results}
            if plot:
                figures = out / "figures"
                figures.mkdir(exist_ok=True)
                plot_heads(results, figures / "heads.png")
                if s.metric == "kl":
                    plot_baseline_tokens(results, figures / "baseline_tokens.png")
            write_study(out, EXPERIMENT, inputs={"vectors": vectors},
                        settings={"study": study, "model": settings.model.name}, results=results)
            return read_study(out, EXPERIMENT), out


# -- metric kl ---------------------------------------------------------------------------------
def _run_kl(model: Any, tokenizer: Any, branched: BranchedLayer, patches: list[Patch], settings: Settings,
            out: Path, interactive: Optional[bool]) -> dict[str, Any]:
    s = settings.study.patch
    located = locate(model)
    device = model_device(model)
    problems = I.study_problems(settings, s.prompts, s.seed)
    prompts = I.render(settings, tokenizer, problems)
    stops = I.stop_ids(settings, tokenizer)
    budget = I.completion_budget(settings, s.max_new_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    vocab = int(located.unembed.weight.shape[0])
    temperature = stats_temperature(s.temperature)
    reference = Patch(s.reference)
    keys = [p.key for p in patches]
    tensors, units, meta = read_partial(out)
    read_lines(out, units)  # lines past the last written sums: redone
    delta = tensors.get("delta", torch.zeros(len(patches), vocab, dtype=torch.float64))
    kl_sums = tensors.get("kl", torch.zeros(len(patches), 4, dtype=torch.float64))  # first, n first, rest, n rest
    tops: dict[str, dict[str, list[float]]] = meta.get("tops", {k: {} for k in keys})
    batches = [list(range(i, min(i + s.batch, len(prompts)))) for i in range(0, len(prompts), s.batch)]
    replay = LayerReplay(model, branched.target, located)
    last_write = time.perf_counter()
    with StudyProgress(f"study patch · {len(patches)} patches · {len(prompts)} prompts", len(prompts),
                       done=sum(len(b) for b in batches[:units]), interactive=interactive) as bar:
        for unit in range(units, len(batches)):
            idx = batches[unit]
            branched.set(Patch("no-patch"))
            samples = sample_completions(model, tokenizer, [prompts[i] for i in idx], indices=idx,
                                         temperature=s.temperature, top_p=s.top_p, max_new_tokens=budget,
                                         stop_ids=stops, seed=s.seed, batch=s.batch)
            ids, mask = pad_right([x.ids for x in samples], pad_id, device)
            branched.set(None)
            replay.capture(ids, mask)
            branched.set(reference)
            h_ref = replay.run()
            lines = [{"unit": unit, **x.to_json(), "kl_mean": {}, "kl_first": {}} for x in samples]
            for j, patch in enumerate(patches):
                branched.set(patch)
                h = replay.run()
                for row, sample in enumerate(samples):
                    rows = slice(sample.offset, sample.offset + sample.positions)

                    def sink(first: int, d: torch.Tensor, j: int = j) -> None:
                        delta[j] += d.sum(0).to("cpu", torch.float64)

                    st = stream_rows(h_ref[row, rows], h[row, rows], lambda x: head_logits(model, x, located),
                                     vocab=vocab, temperature=temperature, k=1, delta_sink=sink)
                    kl_sums[j] += torch.tensor([st.kl[0], 1.0, st.kl[1:].sum(), len(st.kl) - 1], dtype=torch.float64)
                    lines[row]["kl_mean"][patch.key] = float(np.mean(st.kl))
                    lines[row]["kl_first"][patch.key] = float(st.kl[0])
                    for tok, dv in zip(st.top_ids[:, 0].tolist(), st.top_delta[:, 0].tolist()):
                        entry = tops[patch.key].setdefault(str(tok), [0, 0.0])
                        entry[0] += 1
                        entry[1] += dv
            branched.set(None)
            append_lines(out, lines)
            now = time.perf_counter()
            if now - last_write >= _PARTIAL_EVERY or unit == len(batches) - 1:
                write_partial(out, {"delta": delta, "kl": kl_sums}, unit + 1, {"tops": tops})
                last_write = now
            bar.advance(len(idx))
    lines = read_lines(out, len(batches))
    return _kl_results(patches, reference, lines, delta, kl_sums, tops, TokenRenderer(tokenizer), s.summary_tokens)


def _kl_results(patches: list[Patch], reference: Patch, lines: list[dict[str, Any]], delta: torch.Tensor,
                kl_sums: torch.Tensor, tops: dict[str, dict[str, list[float]]], renderer: TokenRenderer,
                show: int) -> dict[str, Any]:
    positions = sum(len(x["completion"]) for x in lines)
    out = []
    for j, patch in enumerate(patches):
        first, n_first, rest, n_rest = (float(x) for x in kl_sums[j])
        mean_delta = delta[j] / max(1, positions)

        def listed(largest: bool) -> list[dict[str, Any]]:
            vals, ids = torch.topk(mean_delta, min(show, mean_delta.numel()), largest=largest)
            return [{"id": int(i), "token": renderer.text(int(i)), "mean_delta": float(x)} for x, i in zip(vals, ids)]

        ranked = sorted(tops.get(patch.key, {}).items(), key=lambda kv: -kv[1][0])[:show]
        out.append({**patch.to_json(),
                    "kl": {"mean": (first + rest) / max(1.0, n_first + n_rest),
                           "first": first / n_first if n_first else None,
                           "rest": rest / n_rest if n_rest else None,
                           "per_sample": quantiles([x["kl_mean"][patch.key] for x in lines])},
                    "promoted": listed(True), "suppressed": listed(False),
                    "top_promoted_tokens": [{"id": int(i), "token": renderer.text(int(i)), "count": int(c),
                                             "mean_delta": s / c} for i, (c, s) in ranked]})
    return {"reference": reference.to_json(), "samples": len(lines),
            "truncated": sum(not x["stopped"] for x in lines), "positions": positions, "patches": out}


# -- metric accuracy ---------------------------------------------------------------------------
class PatchedModels:
    """Stands in for the evaluation's ``EvalModels``: every target is the loaded model under the
    branched layer's current patch."""

    def __init__(self, model: Any, tokenizer: Any, batch: int) -> None:
        self.model, self.tokenizer, self.batch = model, tokenizer, batch

    @contextmanager
    def backend(self, target: Any, vectors: Any) -> Iterator[HFBackend]:
        yield HFBackend(self.model, self.tokenizer, batch_prompts=self.batch)


def _run_accuracy(model: Any, tokenizer: Any, branched: BranchedLayer, patches: list[Patch], settings: Settings,
                  vectors: Path, out: Path, source: int) -> dict[str, Any]:
    if settings.rollout.backend != "hf":
        raise SteerError("study patch --metric accuracy generates with the hf backend (the two branches are hooks); "
                         "drop --backend vllm")
    v = branched.vector
    rows = torch.zeros(locate(model).num_layers, v.shape[0])
    rows[source] = v
    single = out / SOURCE_VECTOR
    if not single.exists():
        save_vectors(single, rows, base_model=settings.model.name, layers=[source], place="layer_output",
                     setup="steering", source=str(vectors))
    models = PatchedModels(model, tokenizer, settings.rollout.batch_prompts)
    cells: dict[str, Any] = {}
    for n, patch in enumerate(patches):
        cell = out / "cells" / patch.key
        target = Target(patch.key, "steering", settings.model.name, cell, vectors=single)
        branched.set(patch)
        try:
            (summary,) = evaluate(settings, [target], models=models)
        finally:
            branched.set(None)
        cells[patch.key] = {**patch.to_json(), "cell": f"cells/{patch.key}",
                            "average": summary["average"],
                            "benchmarks": {b: {"metric": x["metric"], "mean": x.get("mean"), "std": x.get("std")}
                                           for b, x in summary["benchmarks"].items()}}
    return {"patches": list(cells.values()), "cells": {k: c["cell"] for k, c in cells.items()}}
