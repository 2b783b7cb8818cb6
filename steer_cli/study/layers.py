"""``steer study layers RUN...``: accuracy by layer of single-layer runs (mechanistic paper §4,
Figures 1 and 9-11), with reference lines: the base model greedy and sampled, the all-layer run
(``--all``), and the prompt-prefill baseline (``--prefill To``: the base model with that token
appended after the generation prompt, the reference's "Base Model. Append To").

Each RUN trained one layer's vector alone (``setup.steering.layers=[l]``; its vectors file says
which). ``--select final`` evaluates each run's final checkpoint; ``--select best`` evaluates every
checkpoint and keeps the one with the best Average per run (the reference's
``select_best_ckpt_per_name``, which picks on the test benchmarks: say so when you report it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from steer_cli.data.records import FieldMap
from steer_cli.errors import SteerError
from steer_cli.evaluate.parallel import Coordinator
from steer_cli.settings import Settings
from steer_cli.study.figures import benchmark_displays, curves
from steer_cli.study.grid import AVERAGE, Cell, benchmark_names, cell_std, cell_value, cell_values, run_grid
from steer_cli.study.inputs import VectorsSource, check_geometry, geometry, run_checkpoints, steered_layers
from steer_cli.study.maths import nan_to_none
from steer_cli.study.outdir import finish_study, holding_study_dir

EXPERIMENT = "layers"
SELECT = ("final", "best")
REFERENCES = {"base_greedy": "base (greedy)", "base_sampled": "base (sampled)", "all_layers": "all-layer run",
              "prefill": "base + prefill"}


@dataclass(frozen=True)
class LayerRun:
    """A single-layer run: its layer and the checkpoints to evaluate (their vectors files)."""

    run: Path
    layer: Optional[int]  # None: the all-layer run
    checkpoints: tuple[tuple[str, Path], ...]


def layer_run(run: Path, select: str, *, single: bool = True) -> LayerRun:
    """The checkpoints of ``run`` that ``select`` evaluates; with ``single``, refuse a run whose
    vectors steer more than one layer."""
    names = run_checkpoints(run)
    if not names:
        raise SteerError(f"training run {run} has no checkpoint holding vectors.safetensors; is it a steering run?")
    chosen = ["final" if "final" in names else names[-1]] if select == "final" else names
    ckpts = tuple((n, run / n / "vectors.safetensors") for n in chosen)
    layers = steered_layers(ckpts[-1][1])
    if single and len(layers) != 1:
        raise SteerError(f"{run} is not a single-layer run: its vectors steer layers "
                         f"{','.join(map(str, layers[:8]))}{' ...' if len(layers) > 8 else ''} "
                         "(train one with --set setup.steering.layers=[L])")
    return LayerRun(run, layers[0] if single else None, ckpts)


def pick_checkpoint(scores: Mapping[str, Optional[float]], select: str) -> Optional[str]:
    """The checkpoint ``select`` keeps of those evaluated (name -> Average): ``final`` the final one
    (else the last), ``best`` the highest Average, a tie going to the earlier checkpoint, as
    ``steer report --select best`` (``report.select.best_checkpoint``) picks."""
    names = list(scores)
    if not names:
        return None
    if select == "final":
        return "final" if "final" in scores else names[-1]
    valued = [(v, i) for i, (n, v) in enumerate(scores.items()) if v is not None]
    return names[max(valued, key=lambda vi: (vi[0], -vi[1]))[1]] if valued else names[-1]


def run_key(run: LayerRun, checkpoint: str) -> str:
    return f"{'all' if run.layer is None else f'layer-{run.layer}'}-{checkpoint}"


def layers_cells(runs: Sequence[LayerRun], full: Optional[LayerRun], prefill: Optional[str],
                 temperature: float) -> list[Cell]:
    cells = [Cell("base-greedy", temperature=0.0), Cell("base-sampled", temperature=temperature)]
    if prefill is not None:
        cells.append(Cell("base-prefill", prefill=prefill, temperature=temperature))
    for r in [*runs, *([full] if full else [])]:
        cells += [Cell(run_key(r, name), vectors=path, run=r.run, checkpoint=name, temperature=temperature)
                  for name, path in r.checkpoints]
    return cells


def layers_results(runs: Sequence[LayerRun], full: Optional[LayerRun], prefill: Optional[str], select: str,
                   summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    benches = benchmark_names(list(summaries.values()))
    names = [*benches, AVERAGE]

    def chosen(r: LayerRun) -> tuple[Optional[str], Optional[Mapping[str, Any]]]:
        scores = {n: cell_value(summaries.get(run_key(r, n)), AVERAGE) for n, _ in r.checkpoints}
        pick = pick_checkpoint(scores, select)
        return pick, summaries.get(run_key(r, pick)) if pick else None

    ordered = sorted(runs, key=lambda r: r.layer)
    picks = [chosen(r) for r in ordered]
    refs: dict[str, Any] = {"base_greedy": cell_values(summaries.get("base-greedy"), benches),
                            "base_sampled": cell_values(summaries.get("base-sampled"), benches)}
    if full is not None:
        refs["all_layers"] = cell_values(chosen(full)[1], benches)
    if prefill is not None:
        refs["prefill"] = cell_values(summaries.get("base-prefill"), benches)
    return nan_to_none({
        "layers": [r.layer for r in ordered], "runs": [str(r.run) for r in ordered],
        "checkpoints": [p for p, _ in picks], "benchmarks": benches,
        "accuracy": {b: [cell_value(s, b) for _, s in picks] for b in names},
        "std": {b: [cell_std(s, b) for _, s in picks] for b in names},
        "references": refs, "prefill": prefill,
        "all_layers_run": str(full.run) if full else None,
        "all_layers_checkpoint": chosen(full)[0] if full else None,
        "cells": {k: f"cells/{k}" for k in summaries},
    })


def layers_figures(results: Mapping[str, Any], folder: Path, displays: Mapping[str, str]) -> list[Path]:
    refs = {REFERENCES[k] + (f" '{results['prefill']}'" if k == "prefill" else ""): v
            for k, v in results["references"].items()}
    return [curves(folder / "layers-accuracy.png", results["layers"], {"single-layer vector": results["accuracy"]},
                   refs, results["benchmarks"], xlabel="layer", integer_x=True, displays=displays,
                   title="Accuracy of vectors trained on one layer")]


def layers_study(settings: Settings, runs: Sequence[Path], *, out: Path, select: str = "final",
                 full: Optional[Path] = None, prefill: Optional[str] = None, fields: Optional[FieldMap] = None,
                 interactive: Optional[bool] = None, coord: Optional[Coordinator] = None,
                 plot_dir: Optional[Path] = None) -> Optional[dict[str, Any]]:
    """``runs``: training run directories of single-layer runs, all of ``settings.model.name``."""
    coord = coord or Coordinator()
    if select not in SELECT:
        raise SteerError(f"--select must be final or best, got {select!r}")

    def check() -> tuple[list[LayerRun], Optional[LayerRun]]:
        dims = geometry(settings)
        found = [layer_run(Path(r), select) for r in runs]
        for r in found:
            for _, path in r.checkpoints:
                check_geometry(path, dims, settings.model.name)
        seen: dict[int, Path] = {}
        for r in found:
            if r.layer in seen:
                raise SteerError(f"{seen[r.layer]} and {r.run} both train layer {r.layer}; pass one run per layer")
            seen[r.layer] = r.run
        all_run = layer_run(Path(full), select, single=False) if full is not None else None
        if all_run is not None:
            for _, path in all_run.checkpoints:
                check_geometry(path, dims, settings.model.name)
        return found, all_run

    if not runs:
        raise SteerError("no runs given; pass the single-layer training runs (one per layer)")
    found, all_run = coord.agree("study-check", check)
    temperature = settings.eval.temperature if settings.eval.temperature is not None else 1.0
    cells = layers_cells(found, all_run, prefill, temperature)
    with holding_study_dir(out, EXPERIMENT, settings, coord,
                           interrupt=f"finished cells in {out} are kept: run the same command to continue"):
        summaries = run_grid(settings, cells, out, fields=fields, interactive=interactive, coord=coord)
        if not coord.main:
            return None
        results = layers_results(found, all_run, prefill, select, summaries)
        displays = benchmark_displays(list(summaries.values()))
        inputs: dict[str, Any] = {"runs": [VectorsSource(p).path for r in found for _, p in r.checkpoints]}
        if all_run is not None:
            inputs["all_layers"] = [p for _, p in all_run.checkpoints]
        doc, _ = finish_study(
            out, EXPERIMENT, settings=settings, inputs=inputs,
            study_settings={"model": settings.model.name, "select": select, "prefill": prefill,
                            "temperature": temperature, "backend": settings.rollout.backend},
            results=results, figures=lambda r, folder: layers_figures(r, folder, displays), plot_dir=plot_dir)
    return doc
