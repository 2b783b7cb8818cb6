"""``steer study persistence``: does an early vector's effect persist, and reproduce the vectors
trained for later layers? (the companion paper's section 5, Figures 2, 4, 14, 15, 17, 18; the
reference's ``match_effect``).

MERGED is the [L, d] stack whose row l is s_l, the vector trained alone at layer l. For each prompt
and each injection layer i: a completion is sampled with s_i alone at layer i, and prompt +
completion is teacher-forced with and without it, in one batch (the vanilla and the steered copy
side by side; ``forced.RowVector``). Every layer's output difference D_l = h_steered - h_vanilla
(zero for l < i: causality, checked and reported) is reduced on the spot, never stored:

- token_cos[i, l]: mean over positions of cos(D_l,t, s_l): does injecting s_i produce, at layer l,
  the vector trained for l?
- diff_cos[i, l]: mean over positions of cos(D_l,t, mean_t D_l): how uniform across positions;
- layer_cos[i, l]: cos(mean over all positions of D_l, s_l).

Means are over every teacher-forced position (the reference) or the generated ones
(``--positions generated``), weighted by position across samples. With ``--pairs`` (a ``steer study
pairs`` directory), the upper triangles (i < j) are correlated with the pair grid: accuracy, the
normalised accuracy (A_ij - max(A_ii, A_jj)) / (P - max), and the layer distance |i - j| / (L - 1),
over the cells where both are finite (NaN-safe). The last layer's mean differences go through the
logit lens (cosine with the unembedding rows, and the dot product; no norm).

Output: ``study.json``, ``samples.jsonl``, ``figures/persistence.png`` (the three matrices and
the last-difference cosines), ``figures/vs_distance.png``, with --pairs ``figures/vs_pairs.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from steer_cli.errors import SteerError
from steer_cli.lens.logit import lens_scores, top_tokens
from steer_cli.lens.tokens import TokenRenderer
from steer_cli.lock import hold_dir
from steer_cli.patching.archs import locate
from steer_cli.patching.steering import attach_steering
from steer_cli.settings import Settings
from steer_cli.study import inputs as I
from steer_cli.study.forced import RowVector, layer_outputs, model_device, pad_right, sample_completions
from steer_cli.study.partial import append_lines, read_lines, read_partial, write_partial
from steer_cli.study.persistence_plots import plot_matrices, plot_scatter
from steer_cli.study.position_stats import nan_pearson
from steer_cli.study.progress import StudyProgress
from steer_cli.study.record import read_study, write_study

EXPERIMENT = "persistence"
MATRICES = ("token_cos", "diff_cos", "layer_cos")
_PARTIAL_EVERY = 60.0


def injection_layers(settings: Settings, merged: torch.Tensor) -> list[int]:
    n = merged.shape[0]
    wanted = settings.study.persistence.layers
    if wanted is None:
        layers = [i for i in range(n) if bool(merged[i].abs().sum() > 0)]
        if not layers:
            raise SteerError("every row of the merged vectors is zero: nothing to inject")
        return layers
    bad = [i for i in wanted if not 0 <= i < n]
    if bad:
        raise SteerError(f"--layers {bad[0]} is out of range: the merged vectors have layers 0..{n - 1}")
    zero = [i for i in wanted if not bool(merged[i].abs().sum() > 0)]
    if zero:
        raise SteerError(f"row {zero[0]} of the merged vectors is zero: nothing to inject at layer {zero[0]}")
    return sorted(set(wanted))


def _safe_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of [n, d] with [n, d] or [d]; 0 where either side is zero."""
    num = (a * b).sum(-1)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


class Accumulator:
    """Running sums of one study: per (injection i, layer l) cosine sums and difference sums."""

    def __init__(self, num_layers: int, hidden: int, tensors: Optional[dict[str, torch.Tensor]] = None) -> None:
        L = num_layers
        t = tensors or {}
        self.token = t.get("token_cos", torch.zeros(L, L, dtype=torch.float64))
        self.diff = t.get("diff_cos", torch.zeros(L, L, dtype=torch.float64))
        self.layer_sum = t.get("layer_sum", torch.zeros(L, L, hidden, dtype=torch.float64))
        self.count = t.get("count", torch.zeros(L, dtype=torch.float64))
        self.causal = t.get("causality", torch.zeros(L, dtype=torch.float64))  # max |D_l| over l < i

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"token_cos": self.token, "diff_cos": self.diff, "layer_sum": self.layer_sum, "count": self.count,
                "causality": self.causal}

    def matrices(self, merged: torch.Tensor, injected: list[int]) -> dict[str, np.ndarray]:
        """The L x L matrices (rows: injection layer; NaN where not measured: rows not injected,
        columns before the row, and columns whose trained vector is zero)."""
        L = merged.shape[0]
        out = {name: np.full((L, L), np.nan) for name in MATRICES}
        zero_col = merged.abs().sum(-1) == 0
        for i in injected:
            n = float(self.count[i])
            if n == 0:
                continue
            mean = self.layer_sum[i] / n
            layer_cos = _safe_cos(mean, merged.to(torch.float64))
            for l in range(i, L):
                if not bool(zero_col[l]):
                    out["token_cos"][i, l] = float(self.token[i, l]) / n
                    out["layer_cos"][i, l] = float(layer_cos[l])
                out["diff_cos"][i, l] = float(self.diff[i, l]) / n
        return out


def reduce_differences(acc: Accumulator, i: int, merged: torch.Tensor, diff: torch.Tensor, layer: int,
                       keep: list[slice]) -> list[tuple[float, float]]:
    """Fold one layer's differences [B, T, d] of injection ``i`` into ``acc``; returns each
    sample's (mean token cos, mean diff cos) at this layer."""
    per_sample = []
    s_l = merged[layer].to(diff.device, torch.float64)
    for row, positions in enumerate(keep):
        d = diff[row, positions].to(torch.float64)
        if layer < i:
            acc.causal[i] = max(float(acc.causal[i]), float(d.abs().max()) if d.numel() else 0.0)
            per_sample.append((float("nan"), float("nan")))
            continue
        tok = _safe_cos(d, s_l)
        uni = _safe_cos(d, d.mean(0))
        acc.token[i, layer] += float(tok.sum())
        acc.diff[i, layer] += float(uni.sum())
        acc.layer_sum[i, layer] += d.sum(0).cpu()
        per_sample.append((float(tok.mean()), float(uni.mean())))
    return per_sample


def read_pairs(path: Path, num_layers: int) -> dict[str, np.ndarray]:
    """The pair grid of a ``steer study pairs`` output as L x L arrays (NaN where missing):
    "accuracy" (the Average) and, when the study has them, "normalized" (relative max)."""
    doc = read_study(path, "pairs")
    r = doc.get("results", {})
    layers = r.get("layers")
    grid = (r.get("grid") or {}).get("average")
    if not isinstance(layers, list) or not isinstance(grid, list):
        raise SteerError(f"{path}: a pairs study.json needs results.layers and results.grid.average")
    bad = [x for x in layers if not isinstance(x, int) or not 0 <= x < num_layers]
    if bad:
        raise SteerError(f"{path}: layer {bad[0]} of the pair grid does not exist in this model (layers 0..{num_layers - 1})")
    out = {}
    rel = ((r.get("relative") or {}).get("max") or {}).get("average")
    for name, matrix in (("accuracy", grid), ("normalized", rel)):
        if matrix is None:
            continue
        full = np.full((num_layers, num_layers), np.nan)
        for a, la in enumerate(layers):
            for b, lb in enumerate(layers):
                value = matrix[a][b]
                full[la, lb] = np.nan if value is None else float(value)
        out[name] = full
    return out


def correlations(matrices: dict[str, np.ndarray], pairs: Optional[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Pearson r and the fit slope of each matrix (upper triangle, i < j) against the pair grid
    and against the layer distance |i - j| / (L - 1)."""
    L = next(iter(matrices.values())).shape[0]
    iu = np.triu_indices(L, k=1)
    idx = np.arange(L, dtype=np.float64)
    distance = np.abs(idx[None, :] - idx[:, None]) / max(1, L - 1)
    out: dict[str, Any] = {}
    for name, m in matrices.items():
        entry = {"distance": nan_pearson(distance[iu], m[iu])}
        for kind, grid in (pairs or {}).items():
            entry[f"pair_{kind}"] = nan_pearson(m[iu], grid[iu])  # x: the matrix, y: the grid (as plotted)
        out[name] = entry
    return out


def _json_matrix(m: np.ndarray) -> list[list[Optional[float]]]:
    return [[None if not np.isfinite(x) else float(x) for x in row] for row in m]


def run_persistence(settings: Settings, merged_path: Path, run: Optional[Path], *, pairs: Optional[Path] = None,
                    output_dir: Optional[Path] = None, interactive: Optional[bool] = None,
                    plot: bool = True) -> tuple[dict[str, Any], Path]:
    s = settings.study.persistence
    if settings.inference.scale != [1.0] or settings.inference.layers is not None:
        raise SteerError("study persistence injects each row of MERGED as trained; drop --scale and inference.layers "
                         "(choose the injection layers with --layers)")
    loaded = I.load_vectors_for(merged_path, settings)
    merged = loaded.tensor
    injected = injection_layers(settings, merged)
    grid = read_pairs(pairs, merged.shape[0]) if pairs is not None else None
    out = Path(output_dir) if output_dir is not None else I.default_output_dir(settings, EXPERIMENT, merged_path, run)
    inputs = {"merged": merged_path, **({"pairs": pairs / "study.json" if pairs.is_dir() else pairs} if pairs else {})}
    study = s.model_dump(mode="json") | {"layers": injected}
    ident = I.identity(EXPERIMENT, {"merged": merged_path}, settings, study)
    with hold_dir(out, f"steer study {EXPERIMENT}"):
        d = I.check_study_dir(out, EXPERIMENT, ident, settings.output.overwrite)
        if d.finished and pairs is None:
            return read_study(out, EXPERIMENT), out
        model, tokenizer = I.load_model(settings)
        I.init_study_dir(d, settings, ident)
        acc, lines = _run(model, tokenizer, merged, injected, settings, out, interactive)
        results = _results(model, tokenizer, merged, injected, acc, lines, grid, s.lens_top_k)
        if plot:
            figures = out / "figures"
            figures.mkdir(exist_ok=True)
            plot_matrices(results, figures / "persistence.png")
            plot_scatter(results, "distance", figures / "vs_distance.png")
            if grid is not None:
                plot_scatter(results, "pair_accuracy", figures / "vs_pairs.png")
        write_study(out, EXPERIMENT, inputs=inputs, settings={"study": study, "model": settings.model.name},
                    results=results)
        return read_study(out, EXPERIMENT), out


def _run(model: Any, tokenizer: Any, merged: torch.Tensor, injected: list[int], settings: Settings, out: Path,
         interactive: Optional[bool]) -> tuple[Accumulator, list[dict[str, Any]]]:
    s = settings.study.persistence
    located = locate(model)
    device = model_device(model)
    L, hidden = merged.shape
    problems = I.study_problems(settings, s.prompts, s.seed)
    prompts = I.render(settings, tokenizer, problems)
    stops = I.stop_ids(settings, tokenizer)
    budget = I.completion_budget(settings, s.max_new_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    batches = [list(range(b, min(b + s.batch, len(prompts)))) for b in range(0, len(prompts), s.batch)]
    units = [(batch, i) for batch in batches for i in injected]
    tensors, done, _ = read_partial(out)
    read_lines(out, done)  # lines past the last written sums: redone
    acc = Accumulator(L, hidden, tensors if done else None)
    last_write = time.perf_counter()
    with StudyProgress(f"study persistence · {len(injected)} layers · {len(prompts)} prompts", len(units),
                       unit="completions x layer", done=done, interactive=interactive) as bar:
        for unit in range(done, len(units)):
            idx, i = units[unit]
            rows = torch.zeros_like(merged)
            rows[i] = merged[i]
            with attach_steering(model, rows, layers=[i], trainable=False):
                samples = sample_completions(model, tokenizer, [prompts[k] for k in idx], indices=idx,
                                             temperature=s.temperature, top_p=s.top_p, max_new_tokens=budget,
                                             stop_ids=stops, seed=s.seed * 1_000_003 + i, batch=s.batch)
            seqs = [x.ids for x in samples]
            ids, mask = pad_right(seqs + seqs, pad_id, device)
            B = len(samples)
            keep = [slice(0, len(x.ids)) if s.positions == "all" else slice(x.offset, len(x.ids))
                    for x in samples]
            per_layer: list[list[tuple[float, float]]] = [[] for _ in range(L)]

            def fold(layer: int, hidden_states: torch.Tensor) -> None:
                per_layer[layer] = reduce_differences(acc, i, merged, hidden_states[B:] - hidden_states[:B], layer, keep)

            with torch.no_grad(), RowVector(model, i, merged[i], range(B, 2 * B), located), \
                    layer_outputs(model, fold, located):
                model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
            for n, x in enumerate(samples):
                acc.count[i] += keep[n].stop - keep[n].start
            lines = [{"unit": unit, "layer": i, **x.to_json(),
                      "token_cos": [None if np.isnan(per_layer[l][n][0]) else per_layer[l][n][0] for l in range(L)],
                      "diff_cos": [None if np.isnan(per_layer[l][n][1]) else per_layer[l][n][1] for l in range(L)]}
                     for n, x in enumerate(samples)]
            append_lines(out, lines)
            now = time.perf_counter()
            if now - last_write >= _PARTIAL_EVERY or unit == len(units) - 1:
                write_partial(out, acc.tensors(), unit + 1)
                last_write = now
            bar.advance()
    return acc, read_lines(out, len(units))


def _results(model: Any, tokenizer: Any, merged: torch.Tensor, injected: list[int], acc: Accumulator,
             lines: list[dict[str, Any]], grid: Optional[dict[str, np.ndarray]], top_k: int) -> dict[str, Any]:
    L = merged.shape[0]
    matrices = acc.matrices(merged, injected)
    renderer = TokenRenderer(tokenizer)
    unembed = locate(model).unembed.weight.detach().to("cpu")
    last = torch.stack([(acc.layer_sum[i, L - 1] / max(1.0, float(acc.count[i]))).to(torch.float32) for i in injected])
    cos = lens_scores(last, unembed, "cosine")
    dot = lens_scores(last, unembed, "dot")
    lens = []
    for n, i in enumerate(injected):
        def tokens(pairs: list[tuple[int, float]], n: int = n) -> list[dict[str, Any]]:
            return [{"id": t, "token": renderer.text(t), "cosine": c, "dot": float(dot[n, t])} for t, c in pairs]

        lens.append({"layer": i, "norm": float(last[n].norm()), "top": tokens(top_tokens(cos[n], top_k)),
                     "bottom": tokens(top_tokens(cos[n], top_k, largest=False))})
    unit_last = last / torch.where(last.norm(dim=-1, keepdim=True) > 0, last.norm(dim=-1, keepdim=True),
                                   torch.ones(1))
    lengths = {i: [len(x["completion"]) for x in lines if x["layer"] == i] for i in injected}
    return {
        "layers": list(range(L)), "injected": injected, "samples": len({x["index"] for x in lines}),
        "completions": len(lines), "truncated": sum(not x["stopped"] for x in lines),
        "positions": {str(i): int(acc.count[i]) for i in injected},
        "mean_length": {str(i): float(np.mean(v)) if v else None for i, v in lengths.items()},
        "causality_max_abs": {str(i): float(acc.causal[i]) for i in injected},
        **{name: _json_matrix(m) for name, m in matrices.items()},
        "correlations": correlations(matrices, grid),
        "pairs": {k: _json_matrix(v) for k, v in grid.items()} if grid else None,
        "last_layer_lens": lens,
        "last_diff_cos": (unit_last @ unit_last.T).tolist(),
    }
