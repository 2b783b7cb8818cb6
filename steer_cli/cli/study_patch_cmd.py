"""steer study patch: a layer's vector through the next layer's heads and paths (skip/steer-head ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from steer_cli.cli.common import doc, parse_int_list, parse_str_list, run_command
from steer_cli.cli.study_cmd import study_app
from steer_cli.cli.study_common import (
    FORCED_CONFIG_HELP,
    FORCED_JSON_HELP,
    FORCED_OUTPUT_HELP,
    FORCED_OVERWRITE_HELP,
    FORCED_PLOT_HELP,
    FORCED_SET_HELP,
    MODEL_HELP,
    VECTORS_HELP,
    print_json,
    say,
    study_inputs,
)

HELP = (
    "Through which paths of the next layer does a vector act? (companion paper, section 7)\n\n"
    "The vector of --source-layer S (default: the penultimate layer) enters layer S+1 on two branches, the "
    "input without it (vanilla) and with it (steered); each mode decides which branch feeds which part: "
    "no-patch, base, skip-attn (attention blind to the vector), skip-layer (only later layers see it), "
    "skip-head H (steered attention, heads H vanilla), steer-head H (vanilla attention, heads H steered), "
    "skip-q/k/v and steer-q/k/v (q, k or v slices; k and v per key-value head). --path residual|mlp sends "
    "a patched head's output to one path only. --metric kl (default) teacher-forces sampled completions and "
    "measures KL(--reference || patch) per position; --metric accuracy runs one ordinary eval per patch "
    "(eval flags) under cells/. Writes study.json and figures/*.png; a stopped study continues."
)


@study_app.command("patch", help=HELP)
def patch_command(
    vectors: Optional[str] = typer.Argument(None, metavar="VECTORS", help=VECTORS_HELP, show_default=False),
    source_layer: Optional[int] = typer.Option(None, "--source-layer", help=doc("study.patch.source_layer")),
    modes: Optional[str] = typer.Option(None, "--modes", help=doc("study.patch.modes") + " (comma-separated)"),
    heads: Optional[str] = typer.Option(None, "--heads", help=doc("study.patch.heads")),
    paths: Optional[str] = typer.Option(None, "--path", "--paths", help=doc("study.patch.paths") + " (comma-separated)"),
    metric: Optional[str] = typer.Option(None, "--metric", help=doc("study.patch.metric")),
    reference: Optional[str] = typer.Option(None, "--reference", help=doc("study.patch.reference")),
    prompts: Optional[int] = typer.Option(None, "--prompts", help=doc("study.patch.prompts")),
    seed: Optional[int] = typer.Option(None, "--seed", help=doc("study.patch.seed")),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (metric kl: of "
                                                "the completions; accuracy: of the evaluation)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Completion budget (kl: of the "
                                                 "sampled completions; accuracy: eval.max_new_tokens)."),
    batch: Optional[int] = typer.Option(None, "--batch", help=doc("study.patch.batch")),
    benchmarks: Optional[str] = typer.Option(None, "--benchmarks", help=doc("eval.benchmarks")),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=doc("eval.data_dir")),
    samples: Optional[int] = typer.Option(None, "--samples", help=doc("eval.samples")),
    seeds: Optional[str] = typer.Option(None, "--seeds", help=doc("eval.seeds")),
    limit: Optional[int] = typer.Option(None, "--limit", help=doc("eval.limit")),
    model: Optional[str] = typer.Option(None, "--model", help=MODEL_HELP),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help=FORCED_OUTPUT_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=FORCED_OVERWRITE_HELP),
    plot: bool = typer.Option(True, "--plot/--no-plot", help=FORCED_PLOT_HELP),
    as_json: bool = typer.Option(False, "--json", help=FORCED_JSON_HELP),
    config: Optional[Path] = typer.Option(None, "--config", help=FORCED_CONFIG_HELP),
    sets: Optional[list[str]] = typer.Option(None, "--set", help=FORCED_SET_HELP),
) -> None:
    raw = {"modes": modes, "paths": paths, "benchmarks": benchmarks, "seeds": seeds}
    flags = {"study.patch.source_layer": source_layer, "study.patch.heads": heads, "study.patch.metric": metric,
             "study.patch.reference": reference, "study.patch.prompts": prompts, "study.patch.seed": seed,
             "study.patch.temperature": temperature, "eval.temperature": temperature,
             "study.patch.max_new_tokens": max_new_tokens, "eval.max_new_tokens": max_new_tokens,
             "study.patch.batch": batch, "eval.data_dir": data_dir, "eval.samples": samples, "eval.limit": limit,
             "output.overwrite": overwrite or None}
    out = run_command(_patch, vectors, model=model, config=config, sets=sets, flags=flags, raw=raw,
                      output_dir=output_dir, plot=plot)
    if as_json:
        print_json(out)
    else:
        from steer_cli.study.render import render_patch
        from steer_cli.terminal import stdout_console

        render_patch(out, stdout_console())


def _patch(target: Optional[str], *, model: Optional[str], config: Optional[Path], sets: Optional[list[str]],
           flags: dict[str, Any], raw: dict[str, Optional[str]], output_dir: Optional[Path], plot: bool) -> Any:
    from steer_cli.cli.common import is_interactive
    from steer_cli.study.patch import run_patch

    full = dict(flags, **{"study.patch.modes": parse_str_list(raw["modes"]),
                          "study.patch.paths": parse_str_list(raw["paths"]),
                          "eval.benchmarks": parse_str_list(raw["benchmarks"]),
                          "eval.seeds": parse_int_list(raw["seeds"], "--seeds")})
    path, run, settings = study_inputs(target, model=model, config=config, sets=sets, flags=full)
    doc_, out = run_patch(settings, path, run, output_dir=output_dir, interactive=is_interactive(), plot=plot)
    say(f"results in {out}")
    return doc_
