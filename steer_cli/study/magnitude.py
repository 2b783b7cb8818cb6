"""``steer study magnitude VECTORS --scale ...``: accuracy and completion length against the
steering strength (the reference's magnitude sweep, ``visualize/magnitude``), with the base model
and the unscaled vectors as reference lines.

Cell ``scale-<s>`` is ``steer eval --vectors VECTORS --scale s`` (optionally on ``--layers``); cell
``base`` is the base model sampled like the scaled cells (same temperature); scale 1 is always in
the grid (the reference line). Scale 0 is the base model exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from steer_cli.data.records import FieldMap
from steer_cli.evaluate.parallel import Coordinator
from steer_cli.patching.strength import format_layers, format_scale, kept_layers
from steer_cli.settings import Settings
from steer_cli.study.figures import benchmark_displays, curves, panels
from steer_cli.study.grid import (
    AVERAGE,
    Cell,
    benchmark_names,
    cell_dir,
    cell_lengths,
    cell_std,
    cell_value,
    cell_values,
    run_grid,
)
from steer_cli.study.inputs import check_geometry, geometry, steered_layers, vectors_source
from steer_cli.study.maths import nan_to_none
from steer_cli.study.outdir import finish_study, holding_study_dir

EXPERIMENT = "magnitude"
BASE = "base"


def scale_key(scale: float) -> str:
    return f"scale-{format_scale(scale)}"


def sampled_temperature(settings: Settings) -> float:
    """The temperature of trained cells (eval.temperature, else 1.0): the base line is sampled alike."""
    return settings.eval.temperature if settings.eval.temperature is not None else 1.0


def magnitude_cells(vectors: Path, scales: Sequence[float], layers: Optional[Sequence[int]],
                    temperature: float) -> list[Cell]:
    subset = tuple(layers) if layers is not None else None
    grid = sorted(set(float(s) for s in scales) | {1.0})
    return [Cell(BASE, temperature=temperature)] + [
        Cell(scale_key(s), vectors=vectors, scale=s, layers=subset, temperature=temperature) for s in grid]


def magnitude_results(summaries: Mapping[str, Mapping[str, Any]], scales: Sequence[float],
                      lengths: Mapping[str, Mapping[str, Optional[float]]]) -> dict[str, Any]:
    grid = sorted(set(float(s) for s in scales) | {1.0})
    cells = [summaries.get(scale_key(s)) for s in grid]
    benches = benchmark_names([c for c in cells if c])
    names = [*benches, AVERAGE]
    base = dict(cell_values(summaries.get(BASE), benches), length=lengths.get(BASE, {}).get("mean"))
    one = dict(cell_values(summaries.get(scale_key(1.0)), benches), length=lengths.get(scale_key(1.0), {}).get("mean"))
    return nan_to_none({
        "scales": grid, "benchmarks": benches,
        "accuracy": {b: [cell_value(c, b) for c in cells] for b in names},
        "std": {b: [cell_std(c, b) for c in cells] for b in names},
        "length": {kind: [lengths.get(scale_key(s), {}).get(kind) for s in grid]
                   for kind in ("mean", "correct", "incorrect")},
        "references": {"base": base, "scale_1": one},
        "cells": {k: f"cells/{k}" for k in summaries},
    })


def magnitude_figures(results: Mapping[str, Any], folder: Path, displays: Mapping[str, str]) -> list[Path]:
    scales = results["scales"]
    refs = results["references"]
    names = panels(results["benchmarks"])
    accuracy = curves(folder / "magnitude-accuracy.png", scales, {"scaled vectors": results["accuracy"]},
                      {"base model": refs["base"], "scale 1": refs["scale_1"]}, results["benchmarks"],
                      xlabel="scale", title="Accuracy against steering strength", displays=displays)
    length = curves(folder / "magnitude-length.png", scales,
                    {"all": {n: results["length"]["mean"] for n in names},
                     "correct": {n: results["length"]["correct"] for n in names},
                     "incorrect": {n: results["length"]["incorrect"] for n in names}},
                    {"base model": {n: refs["base"]["length"] for n in names},
                     "scale 1": {n: refs["scale_1"]["length"] for n in names}},
                    [], xlabel="scale", ylabel="completion tokens", percent=False,
                    title="Mean completion length against steering strength")
    return [accuracy, length]


def magnitude_study(settings: Settings, vectors: Path, scales: Sequence[float], *, out: Path,
                    layers: Optional[Sequence[int]] = None, fields: Optional[FieldMap] = None,
                    interactive: Optional[bool] = None, coord: Optional[Coordinator] = None,
                    plot_dir: Optional[Path] = None) -> Optional[dict[str, Any]]:
    coord = coord or Coordinator()

    def check() -> Any:
        source = vectors_source(vectors)
        dims = geometry(settings)
        check_geometry(source.path, dims, settings.model.name)
        if layers is not None:
            kept_layers(steered_layers(source.path), layers, dims[0])
        return source

    source = coord.agree("study-check", check)
    cells = magnitude_cells(source.path, scales, layers, sampled_temperature(settings))
    with holding_study_dir(out, EXPERIMENT, settings, coord,
                           interrupt=f"finished cells in {out} are kept: run the same command to continue"):
        summaries = run_grid(settings, cells, out, fields=fields, interactive=interactive, coord=coord)
        if not coord.main:
            return None
        lengths = {c.key: cell_lengths(cell_dir(out, c.key)) for c in cells}
        results = magnitude_results(summaries, scales, lengths)
        displays = benchmark_displays(list(summaries.values()))
        doc, _ = finish_study(
            out, EXPERIMENT, settings=settings, inputs={"vectors": source.path},
            study_settings={"model": settings.model.name, "scales": results["scales"],
                            "layers": format_layers(layers) if layers is not None else None,
                            "temperature": sampled_temperature(settings), "backend": settings.rollout.backend},
            results=results, figures=lambda r, folder: magnitude_figures(r, folder, displays), plot_dir=plot_dir)
    return doc
