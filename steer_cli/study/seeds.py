"""Seed alignment (the reference's ``visualize/seed_alignment``, E10): do runs that differ only in
their seed find the same direction at each layer, and how many coordinates carry what they share?

Per layer and pair of vectors files: the cosine of the two rows, the accuracy difference of the two
seeds' single-layer results when they are given, and greedy axis removal: drop, one coordinate at a
time, the one whose removal raises the cosine most, down to one coordinate. The number of
coordinates left when the cosine first reaches 0.9 (or 0.99) says how concentrated the shared
signal is; the same curve for the second vector with its coordinates shuffled (same values, no
alignment) is the null that number should beat.

Pure numpy/torch: no model is loaded.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from rich.table import Table
from rich.text import Text

from steer_cli.errors import SteerError
from steer_cli.study.outputs import FIGURES_DIR, Progress, prepare_output_dir, write_settings
from steer_cli.study.record import STUDY_KIND, write_study
from steer_cli.study.seeds_plot import plot_seeds
from steer_cli.terminal import print_table, print_text
from steer_cli.vectors.file import load_vectors


# -- pure math ---------------------------------------------------------------------------------
def row_cosines(a: torch.Tensor, b: torch.Tensor) -> list[Optional[float]]:
    """Cosine of row l of ``a`` and row l of ``b`` in float64; None where either row is zero."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    na, nb = a64.norm(dim=-1), b64.norm(dim=-1)
    dots = (a64 * b64).sum(-1)
    return [float(dots[i] / (na[i] * nb[i])) if na[i] > 0 and nb[i] > 0 else None for i in range(a.shape[0])]


@dataclass
class AxisRemoval:
    """Greedy axis removal of one pair of vectors: after step k, ``dims[k]`` coordinates remain and
    the two vectors restricted to them have cosine ``cosines[k]``; ``removed[k]`` is the coordinate
    dropped to get from step k to k+1 (so ``removed`` has one entry fewer)."""

    dims: list[int]
    cosines: list[float]
    removed: list[int]

    def kept(self, k: int) -> list[int]:
        """The last ``k`` coordinates standing, the one left at the end first."""
        total = self.dims[0]
        survivors = sorted(set(range(total)) - set(self.removed))
        return (survivors + self.removed[::-1])[:k]

    def dims_reaching(self, threshold: float) -> Optional[int]:
        """Coordinates left when the cosine first reaches ``threshold`` (None if it never does)."""
        for d, c in zip(self.dims, self.cosines):
            if c >= threshold:
                return d
        return None

    def sampled(self, points: int = 64) -> list[list[float]]:
        """[[dims, cosine], ...] at about ``points`` log-spaced counts of remaining coordinates
        (always including the first and the last step), for study.json and the plot."""
        n = len(self.dims)
        if n <= points:
            idx = list(range(n))
        else:
            # dims fall by one per step, so step k leaves dims[0] - k: log-space the counts left
            wanted = np.unique(np.geomspace(1, self.dims[0], points).round().astype(int))
            idx = sorted({self.dims[0] - int(w) for w in wanted if self.dims[0] - int(w) < n} | {0, n - 1})
        return [[self.dims[i], self.cosines[i]] for i in idx]


def greedy_axis_removal(a: Any, b: Any) -> AxisRemoval:
    """Remove coordinates one at a time, each time the one that leaves the highest cosine.

    Each step scores every remaining coordinate at once from |a|^2, |b|^2 and a.b over the
    coordinates left, so a step is O(coordinates left) and a d-dimensional pair O(d^2). A removal that would leave either vector all zero is never
    taken; the walk stops when no other is possible (one coordinate left, in general). For a
    pair with cosine >= 0 the curve never falls (some removal never lowers it); a negative
    cosine can fall (e.g. (1, 1) against (-1, -2)).
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"vectors differ in length: {x.shape[0]} vs {y.shape[0]}")
    xx, yy, xy = x * x, y * y, x * y
    if not xx.any() or not yy.any():
        raise ValueError("greedy axis removal needs two non-zero vectors")
    alive = np.ones(x.shape[0], dtype=bool)
    dims, cosines, removed = [], [], []
    while True:
        idx = np.flatnonzero(alive)
        # sums taken afresh each step (same O(d) as updating them): no drift over thousands of steps
        n1, n2, dot = xx[idx].sum(), yy[idx].sum(), xy[idx].sum()
        dims.append(int(idx.size))
        cosines.append(float(dot / np.sqrt(n1 * n2)))
        if idx.size <= 1:
            break
        left1, left2 = n1 - xx[idx], n2 - yy[idx]
        # relative tolerance: a removal that empties a vector leaves only rounding behind
        ok = (left1 > n1 * 1e-12) & (left2 > n2 * 1e-12)
        if not ok.any():
            break
        cand = np.full(idx.shape[0], -np.inf)
        cand[ok] = (dot - xy[idx][ok]) / np.sqrt(left1[ok] * left2[ok])
        j = int(idx[int(np.argmax(cand))])
        alive[j] = False
        removed.append(j)
    return AxisRemoval(dims, cosines, removed)


# -- inputs ------------------------------------------------------------------------------------
def read_layer_accuracies(path: str | Path) -> dict[int, float]:
    """Per-layer accuracy of one seed's single-layer runs: a ``steer study layers`` study.json (its
    Average), or a JSON file holding ``{"0": 0.31, ...}``, ``[0.31, ...]`` or
    ``[{"layer": 0, "accuracy": 0.31}, ...]`` (also under a top-level ``"layers"`` or ``"results"``
    key). Accuracies are fractions, as in every study.json."""
    p = Path(path)
    if p.is_dir():
        p = p / "study.json"
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise SteerError(f"accuracy file {p} does not exist") from None
    except (OSError, ValueError) as err:
        raise SteerError(f"cannot read accuracy file {p}: {err}") from None
    found = _accuracies_in(doc)
    if found is None:
        raise SteerError(f"{p} holds no per-layer accuracies (expected a 'study layers' study.json or "
                         "{\"layer\": accuracy, ...})")
    return found


_ACC_KEYS = ("accuracy", "average", "mean", "acc", "value")


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        for key in _ACC_KEYS:
            if key in value:
                return _number(value[key])
    return None


def _accuracies_in(doc: Any) -> Optional[dict[int, float]]:
    if isinstance(doc, Mapping) and doc.get("kind") == STUDY_KIND:
        results = doc.get("results") or {}
        if doc.get("experiment") != "layers" or not isinstance(results.get("accuracy"), Mapping):
            return None
        # results.layers[k] is the layer of run k; results.accuracy.average[k] its Average
        values = results["accuracy"].get("average") or []
        return {int(layer): float(v) for layer, v in zip(results.get("layers") or [], values) if v is not None}
    if isinstance(doc, Mapping):
        for key in ("results", "layers", "per_layer"):
            if key in doc:
                inner = _accuracies_in(doc[key])
                if inner is not None:
                    return inner
        try:
            out = {int(k): _number(v) for k, v in doc.items()}
        except (TypeError, ValueError):
            return None
        return {k: v for k, v in out.items() if v is not None} or None
    if isinstance(doc, list):
        out: dict[int, float] = {}
        for i, item in enumerate(doc):
            layer = item.get("layer", i) if isinstance(item, Mapping) else i
            value = _number(item)
            if value is not None and isinstance(layer, int):
                out[int(layer)] = value
        return out or None
    return None


# -- the study ---------------------------------------------------------------------------------
@dataclass
class PairLayer:
    layer: int
    norm_a: float
    norm_b: float
    cosine: Optional[float]
    acc_a: Optional[float] = None
    acc_b: Optional[float] = None
    removal: Optional[AxisRemoval] = None
    null_removal: Optional[AxisRemoval] = None

    @property
    def acc_diff(self) -> Optional[float]:
        return abs(self.acc_a - self.acc_b) if self.acc_a is not None and self.acc_b is not None else None


@dataclass
class SeedsResult:
    paths: list[str]
    num_layers: int
    hidden_size: int
    layers: list[int]
    pairs: dict[tuple[int, int], list[PairLayer]]
    thresholds: tuple[float, ...]
    curve_points: int
    kept_coordinates: int
    notes: list[str] = field(default_factory=list)

    def mean_cosine(self, pair: tuple[int, int]) -> Optional[float]:
        vals = [pl.cosine for pl in self.pairs[pair] if pl.cosine is not None]
        return sum(vals) / len(vals) if vals else None

    def to_json(self) -> dict[str, Any]:
        def removal_json(r: Optional[AxisRemoval]) -> Optional[dict[str, Any]]:
            if r is None:
                return None
            return {"dims_at": {str(t): r.dims_reaching(t) for t in self.thresholds},
                    "kept": r.kept(self.kept_coordinates), "curve": r.sampled(self.curve_points)}

        pairs = []
        for (i, j), rows in self.pairs.items():
            pairs.append({
                "a": i, "b": j, "mean_cosine": self.mean_cosine((i, j)),
                "layers": [{
                    "layer": pl.layer, "norm_a": pl.norm_a, "norm_b": pl.norm_b, "cosine": pl.cosine,
                    "acc_a": pl.acc_a, "acc_b": pl.acc_b, "acc_diff": pl.acc_diff,
                    "axis_removal": removal_json(pl.removal), "null": removal_json(pl.null_removal),
                } for pl in rows],
            })
        return {"vectors": self.paths, "num_layers": self.num_layers, "hidden_size": self.hidden_size,
                "layers": self.layers, "thresholds": list(self.thresholds), "pairs": pairs}


def _check_same_model(tensors: Sequence[torch.Tensor], metas: Sequence[Mapping[str, Any]],
                      paths: Sequence[Path]) -> list[str]:
    first = tensors[0]
    for t, p in zip(tensors[1:], paths[1:]):
        if tuple(t.shape) != tuple(first.shape):
            raise SteerError(f"{p} is [{t.shape[0]}, {t.shape[1]}] but {paths[0]} is "
                             f"[{first.shape[0]}, {first.shape[1]}]; seeds must be vectors of the same model")
    hashes = {str(p): m.get("unembed_sha256") for p, m in zip(paths, metas) if m.get("unembed_sha256")}
    if len(set(hashes.values())) > 1:
        names = [f"{p} ({m.get('base_model', '?')})" for p, m in zip(paths, metas)]
        raise SteerError(f"the vectors were trained on different models (their unembed_sha256 differ): {', '.join(names)}")
    models = {str(m.get("base_model")) for m in metas if m.get("base_model")}
    return [f"the files name different base models ({', '.join(sorted(models))}) with the same shape; "
            "compared anyway"] if len(models) > 1 else []


def _pick_layers(requested: Optional[Sequence[int]], num_layers: int) -> list[int]:
    if requested is None:
        return list(range(num_layers))
    bad = [i for i in requested if not 0 <= i < num_layers]
    if bad:
        raise SteerError(f"--layers {bad[0]} is out of range: the vectors have layers 0..{num_layers - 1}")
    return sorted(set(requested))


def run_seeds(paths: Sequence[str | Path], *, accuracies: Optional[Sequence[str | Path]] = None,
              layers: Optional[Sequence[int]] = None, axis_removal: bool = True, null: bool = True,
              thresholds: Sequence[float] = (0.9, 0.99), curve_points: int = 64, kept_coordinates: int = 16,
              seed: int = 0, progress: Any = None) -> SeedsResult:
    """Compare every pair of the vectors files (seeds of one configuration) layer by layer.

    ``accuracies``: one file per vectors file (``read_layer_accuracies``), for the |ΔAcc| column.
    ``progress(done, total)`` is called after each layer's axis removal."""
    if len(paths) < 2:
        raise SteerError("study seeds needs at least two vectors files (two seeds of one configuration)")
    if accuracies is not None and len(accuracies) != len(paths):
        raise SteerError(f"--accuracy was given {len(accuracies)} time(s) for {len(paths)} vectors files; "
                         "give one per vectors file, in the same order")
    resolved = [Path(p).expanduser() for p in paths]
    loaded = [load_vectors(p) for p in resolved]
    tensors = [t for t, _ in loaded]
    notes = _check_same_model(tensors, [m for _, m in loaded], resolved)
    num_layers, hidden = int(tensors[0].shape[0]), int(tensors[0].shape[1])
    chosen = _pick_layers(layers, num_layers)
    accs = [read_layer_accuracies(a) for a in accuracies] if accuracies is not None else None
    rng = np.random.default_rng(seed)
    pairs: dict[tuple[int, int], list[PairLayer]] = {}
    combos = list(itertools.combinations(range(len(paths)), 2))
    total, done = len(combos) * len(chosen), 0
    for i, j in combos:
        a, b = tensors[i], tensors[j]
        cos = row_cosines(a, b)
        rows = []
        for layer in chosen:
            pl = PairLayer(layer, float(a[layer].norm()), float(b[layer].norm()), cos[layer],
                           accs[i].get(layer) if accs else None, accs[j].get(layer) if accs else None)
            if axis_removal and cos[layer] is not None:
                va, vb = a[layer].numpy(), b[layer].numpy()
                pl.removal = greedy_axis_removal(va, vb)
                if null:
                    pl.null_removal = greedy_axis_removal(va, rng.permutation(vb))
            rows.append(pl)
            done += 1
            if progress is not None:
                progress(done, total)
        pairs[(i, j)] = rows
    zero = sorted({pl.layer for rows in pairs.values() for pl in rows if pl.cosine is None})
    if zero:
        notes.append(f"layer(s) {', '.join(map(str, zero))} have a zero vector in some file: no cosine there")
    if accs is not None:
        missing = sorted({pl.layer for rows in pairs.values() for pl in rows if pl.acc_diff is None})
        if missing:
            notes.append(f"no accuracy for layer(s) {', '.join(map(str, missing))} in some --accuracy file")
    return SeedsResult([str(p) for p in resolved], num_layers, hidden, chosen, pairs, tuple(thresholds),
                       curve_points, kept_coordinates, notes)


def seeds_study(paths: Sequence[str | Path], settings: Any, *, output_dir: str | Path,
                accuracies: Optional[Sequence[str | Path]] = None, layers: Optional[Sequence[int]] = None,
                overwrite: bool = False, plot: bool = True, quiet: bool = False) -> tuple[SeedsResult, list[Path]]:
    """``steer study seeds``: compare, write ``study.json``, ``settings.yaml`` and the figure.

    Returns the result and the figures written. Bad input fails before anything is written."""
    s = settings.study.seeds
    out = Path(output_dir)
    if (out / "study.json").exists() and not overwrite:
        prepare_output_dir(out, overwrite=False)  # the one-line refusal, before any work
    with Progress("study seeds: axis removal", unit="layers", quiet=quiet or not s.axis_removal) as bar:
        result = run_seeds(paths, accuracies=accuracies, layers=layers, axis_removal=s.axis_removal,
                           null=s.null, thresholds=s.thresholds, curve_points=s.curve_points,
                           kept_coordinates=s.kept_coordinates, seed=s.seed, progress=bar.update)
    out = prepare_output_dir(out, overwrite=overwrite)
    write_settings(out, settings)
    figures = []
    if plot:
        figures.append(plot_seeds(result, out / FIGURES_DIR / "seeds.png"))
    inputs: dict[str, Any] = {"vectors": list(result.paths)}
    if accuracies is not None:
        inputs["accuracy"] = [str(a) for a in accuracies]
    doc = result.to_json()
    doc["notes"] = result.notes
    doc["figures"] = [str(f.relative_to(out)) for f in figures]
    write_study(out, "seeds", inputs=inputs, settings=settings.to_dict()["study"]["seeds"], results=doc)
    return result, figures


def render_seeds(result: SeedsResult, console: Any) -> None:
    """One table per pair: layer, norms, cosine, |ΔAcc|, coordinates left at each threshold (null)."""
    def fmt(x: Optional[float], spec: str) -> str:
        return "—" if x is None else format(x, spec)

    for (i, j), rows in result.pairs.items():
        table = Table(title=Text(f"{result.paths[i]} vs {result.paths[j]}"), title_justify="left")
        for name in ("layer", "norm A", "norm B", "cosine", "|ΔAcc|"):
            table.add_column(name, justify="right")
        for t in result.thresholds:
            table.add_column(f"dims@{t:g} (null)", justify="right")
        for pl in rows:
            cells = [str(pl.layer), f"{pl.norm_a:.4g}", f"{pl.norm_b:.4g}", fmt(pl.cosine, "+.4f"),
                     fmt(pl.acc_diff, ".3f")]
            for t in result.thresholds:
                if pl.removal is None:
                    cells.append("—")
                    continue
                got = pl.removal.dims_reaching(t)
                null = pl.null_removal.dims_reaching(t) if pl.null_removal is not None else None
                cells.append(f"{fmt(got, 'd')} ({fmt(null, 'd')})" if pl.null_removal is not None else fmt(got, "d"))
            table.add_row(*cells)
        print_table(console, table)
        mean = result.mean_cosine((i, j))
        print_text(console, Text(f"mean cosine over layers with both vectors non-zero: {fmt(mean, '+.4f')} "
                                 f"(of {result.hidden_size} coordinates)"))
