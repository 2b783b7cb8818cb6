"""``steer study transfer --vectors A,B --models A,B``: the vectors trained on each model applied to
each sibling model of the same geometry (mechanistic paper §9, Table 1).

Rows are target models, columns the models whose vectors are applied, plus a last "base" column
(no vectors). The row-normalised table is (v - base) / (own - base): 1 for a model's own vectors, 0
for no gain over its base. One grid (one model load) per target model, cells
``<model>/from-<source>`` and ``<model>/base``; every vectors file must fit every model's
[num_layers, hidden] (checked before anything is written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from steer_cli.data.records import FieldMap
from steer_cli.errors import SteerError
from steer_cli.evaluate.parallel import Coordinator
from steer_cli.models import model_slug
from steer_cli.settings import Settings
from steer_cli.study.figures import benchmark_displays, heatmap, panels
from steer_cli.study.grid import AVERAGE, Cell, benchmark_names, cell_value, run_grid
from steer_cli.study.inputs import VectorsSource, geometry, slug, vectors_meta
from steer_cli.study.maths import nan_to_none, row_normalised
from steer_cli.study.outdir import finish_study, holding_study_dir

EXPERIMENT = "transfer"
BASE = "base"


def model_keys(models: Sequence[str]) -> list[str]:
    """A directory name per model (its slug; made unique by position where two share one)."""
    slugs = [slug(model_slug(m)) for m in models]
    return [s if slugs.count(s) == 1 else f"{i}-{s}" for i, s in enumerate(slugs)]


def transfer_cells(target: int, keys: Sequence[str], sources: Sequence[VectorsSource],
                   temperature: float) -> list[Cell]:
    """The cells of target model ``target``: every source's vectors, then the base model (sampled
    like the others, for the base column)."""
    me = keys[target]
    cells = [Cell(f"{me}/from-{keys[j]}", vectors=s.path, run=s.run, checkpoint=s.checkpoint,
                  temperature=temperature) for j, s in enumerate(sources)]
    return cells + [Cell(f"{me}/{BASE}", temperature=temperature)]


def transfer_results(models: Sequence[str], keys: Sequence[str],
                     summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    benches = benchmark_names(list(summaries.values()))
    names = [*benches, AVERAGE]
    matrix: dict[str, list[list[Optional[float]]]] = {}
    normalized = {}
    for b in names:
        rows = [[cell_value(summaries.get(f"{keys[i]}/from-{keys[j]}"), b) for j in range(len(models))]
                for i in range(len(models))]
        base = [cell_value(summaries.get(f"{keys[i]}/{BASE}"), b) for i in range(len(models))]
        matrix[b] = [row + [base[i]] for i, row in enumerate(rows)]
        normalized[b] = row_normalised(rows, base)
    return nan_to_none({"models": list(models), "sources": list(models), "benchmarks": benches,
                        "matrix": matrix, "normalized": normalized,
                        "cells": {k: f"cells/{k}" for k in summaries}})


def transfer_figures(results: Mapping[str, Any], folder: Path, displays: Mapping[str, str]) -> list[Path]:
    names = panels(results["benchmarks"])
    rows = [model_slug(m) for m in results["models"]]
    return [
        heatmap(folder / "transfer-accuracy.png", {b: results["matrix"][b] for b in names}, rows=rows,
                cols=rows + ["base"], title="Accuracy (%): target model (rows) with the vectors of (columns)",
                xlabel="vectors of", ylabel="applied to", displays=displays),
        heatmap(folder / "transfer-normalized.png", {b: results["normalized"][b] for b in names}, rows=rows,
                cols=rows, percent=False, title="(v - base) / (own - base) per target model",
                xlabel="vectors of", ylabel="applied to", displays=displays),
    ]


def check_transfer(settings_of: Sequence[Settings], sources: Sequence[VectorsSource]) -> tuple[int, int]:
    """Every model's geometry, and every vectors file's shape against it: one line on a mismatch."""
    dims = [geometry(s) for s in settings_of]
    first = dims[0]
    for s, d in zip(settings_of, dims):
        if d != first:
            raise SteerError(f"{s.model.name} has [{d[0]}, {d[1]}] (layers x hidden) but {settings_of[0].model.name} "
                             f"[{first[0]}, {first[1]}]: transfer needs sibling models of one geometry")
    for src in sources:
        tensor, _ = vectors_meta(src.path)
        if tuple(int(x) for x in tensor.shape) != first:
            raise SteerError(f"{src.path} holds vectors of shape {list(tensor.shape)} but the models need "
                             f"[{first[0]}, {first[1]}]; transfer needs vectors of the models' geometry")
    return first


def transfer_study(settings_of: Sequence[Settings], sources: Sequence[VectorsSource], *, out: Path,
                   fields: Optional[FieldMap] = None, interactive: Optional[bool] = None,
                   coord: Optional[Coordinator] = None, plot_dir: Optional[Path] = None) -> Optional[dict[str, Any]]:
    """``settings_of[i]``: the grid settings of target model i (its ``model.name``); ``sources[i]``:
    the vectors trained on model i."""
    coord = coord or Coordinator()
    if len(settings_of) != len(sources):
        raise SteerError(f"{len(sources)} vectors files for {len(settings_of)} models: give one per model, "
                         "in the same order")
    if len(sources) < 2:
        raise SteerError("a transfer study needs at least two models (and their vectors)")
    coord.agree("study-check", lambda: check_transfer(settings_of, sources))
    models = [s.model.name for s in settings_of]
    keys = model_keys(models)
    first = settings_of[0]
    temperature = first.eval.temperature if first.eval.temperature is not None else 1.0
    with holding_study_dir(out, EXPERIMENT, first, coord,
                           interrupt=f"finished cells in {out} are kept: run the same command to continue"):
        summaries: dict[str, Any] = {}
        for i, settings in enumerate(settings_of):  # one model load per target model
            cells = transfer_cells(i, keys, sources, temperature)
            summaries.update(run_grid(settings, cells, out, fields=fields, interactive=interactive, coord=coord))
        if not coord.main:
            return None
        results = transfer_results(models, keys, summaries)
        displays = benchmark_displays(list(summaries.values()))
        doc, _ = finish_study(
            out, EXPERIMENT, settings=first, inputs={"vectors": [s.path for s in sources]},
            study_settings={"models": models, "temperature": temperature, "backend": first.rollout.backend},
            results=results, figures=lambda r, folder: transfer_figures(r, folder, displays), plot_dir=plot_dir)
    return doc
