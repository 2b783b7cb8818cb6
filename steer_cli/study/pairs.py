"""``steer study pairs MERGED``: every pair of single-layer vectors applied together (mechanistic
paper, Appendix D and Figure 13).

MERGED is an [L, d] file whose row l is the vector trained alone at layer l (``steer merge`` of
single-layer runs). Cell ``pair-i-j`` (i <= j) applies rows i and j together, each at its own layer
(``--layers i,j`` of ``steer eval``); ``pair-i-i`` is row i alone. With ``--full`` (the all-layer
run: a run or vectors file evaluated in the same grid, or its eval output read back) the three
relative-improvement maps are drawn against its accuracy P, read from results, never typed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from steer_cli.data.records import FieldMap
from steer_cli.evaluate.parallel import Coordinator
from steer_cli.patching.strength import format_layers
from steer_cli.settings import Settings
from steer_cli.study.figures import benchmark_displays, heatmap, panels
from steer_cli.study.grid import AVERAGE, Cell, benchmark_names, cell_std, cell_value, run_grid
from steer_cli.study.inputs import (
    check_geometry,
    check_layers_in,
    geometry,
    read_reference,
    steered_layers,
    vectors_source,
)
from steer_cli.study.maths import mirrored, nan_to_none, relative_maps
from steer_cli.study.outdir import finish_study, holding_study_dir

EXPERIMENT = "pairs"
FULL = "full"
MAPS = ("prev", "next", "max")


def pair_key(i: int, j: int) -> str:
    return f"pair-{min(i, j)}-{max(i, j)}"


def pair_cells(vectors: Path, layers: Sequence[int]) -> list[Cell]:
    """One cell per pair i <= j of ``layers`` (rows of ``vectors``; (i, i) is row i alone)."""
    layers = sorted(set(int(i) for i in layers))
    return [Cell(pair_key(i, j), vectors=vectors, layers=(i,) if i == j else (i, j))
            for a, i in enumerate(layers) for j in layers[a:]]


def pairs_results(summaries: Mapping[str, Mapping[str, Any]], layers: Sequence[int],
                  full: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """``results`` of study.json (format in STUDY1_FORMATS.md) from the cells' summaries and the
    all-layer run's summary (None: no relative maps)."""
    pairs = {k: v for k, v in summaries.items() if k != FULL}
    benches = benchmark_names(list(pairs.values()))
    names = [*benches, AVERAGE]
    n = len(layers)
    where = {pair_key(layers[a], layers[b]): (a, b) for a in range(n) for b in range(a, n)}
    grid = {b: mirrored(n, {where[k]: cell_value(s, b) for k, s in pairs.items() if k in where}) for b in names}
    std = {b: mirrored(n, {where[k]: cell_std(s, b) for k, s in pairs.items() if k in where}) for b in names}
    full_values = {b: cell_value(full, b) for b in names} if full is not None else None
    relative = None
    if full_values is not None:
        per = {b: relative_maps(grid[b], full_values[b]) for b in names}
        relative = {kind: {b: per[b][kind] for b in names} for kind in MAPS}
    return nan_to_none({
        "layers": list(layers), "benchmarks": benches, "grid": grid, "std": std,
        "full": full_values, "relative": relative,
        "cells": {k: f"cells/{k}" for k in summaries},
    })


def pairs_figures(results: Mapping[str, Any], folder: Path, displays: Mapping[str, str]) -> list[Path]:
    layers = results["layers"]
    names = panels(results["benchmarks"])
    made = [heatmap(folder / "pairs-accuracy.png", {b: results["grid"][b] for b in names}, rows=layers, cols=layers,
                    title="Accuracy (%) of single-layer vectors applied in pairs", xlabel="layer j",
                    ylabel="layer i", displays=displays)]
    rel = results.get("relative")
    if rel:
        titles = {"prev": "(A_ij - A_jj) / (P - A_jj)", "next": "(A_ij - A_ii) / (P - A_ii)",
                  "max": "(A_ij - max(A_ii, A_jj)) / (P - max(A_ii, A_jj))"}
        for kind in MAPS:
            made.append(heatmap(folder / f"pairs-relative-{kind}.png", {b: rel[kind][b] for b in names},
                                rows=layers, cols=layers, diverging=True, cross_above=0.99,
                                title=f"Relative improvement {titles[kind]}, P = the all-layer run",
                                xlabel="layer j", ylabel="layer i", displays=displays))
    return made


def pairs_study(settings: Settings, merged: Path, *, out: Path, layers: Optional[Sequence[int]] = None,
                full: Optional[Path] = None, fields: Optional[FieldMap] = None,
                interactive: Optional[bool] = None, coord: Optional[Coordinator] = None,
                plot_dir: Optional[Path] = None) -> Optional[dict[str, Any]]:
    """Run (or continue) the pair grid into ``out``; the study document on the main process."""
    coord = coord or Coordinator()

    def check() -> tuple[Any, ...]:
        source = vectors_source(merged)
        dims = geometry(settings)
        check_geometry(source.path, dims, settings.model.name)
        steered = steered_layers(source.path)
        chosen = sorted(set(int(i) for i in layers)) if layers else steered
        check_layers_in(chosen, steered, dims[0], source.path.name)
        reference = read_reference(full) if full is not None else None
        full_source = None
        if full is not None and reference is None:
            full_source = vectors_source(full)
            check_geometry(full_source.path, dims, settings.model.name)
        return source, chosen, reference, full_source

    source, chosen, reference, full_source = coord.agree("study-check", check)
    cells = pair_cells(source.path, chosen)
    if full_source is not None:
        cells.append(Cell(FULL, vectors=full_source.path, run=full_source.run, checkpoint=full_source.checkpoint))
    with holding_study_dir(out, EXPERIMENT, settings, coord,
                           interrupt=f"finished cells in {out} are kept: run the same command to continue"):
        summaries = run_grid(settings, cells, out, fields=fields, interactive=interactive, coord=coord)
        if not coord.main:
            return None
        full_summary = summaries.get(FULL) if full_source is not None else reference
        results = pairs_results(summaries, chosen, full_summary)
        inputs: dict[str, Any] = {"vectors": source.path}
        if full is not None:
            inputs["full"] = full_source.path if full_source is not None else Path(full)
        displays = benchmark_displays(list(summaries.values()))
        doc, _ = finish_study(
            out, EXPERIMENT, settings=settings, inputs=inputs,
            study_settings={"model": settings.model.name, "layers": format_layers(chosen),
                            "cells": len(cells), "backend": settings.rollout.backend},
            results=results, figures=lambda r, folder: pairs_figures(r, folder, displays), plot_dir=plot_dir)
    return doc
