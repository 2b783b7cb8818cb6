"""What the study commands share.

Accuracy studies (layers, pairs, transfer, magnitude): the eval flags, settings from the command
line, the output directory, running under torchrun like ``steer eval``, and printing the result.
Token-level studies (tokens, patch, persistence): the vectors argument, settings built on the
run's own, their output flags and --json. Their help texts differ where the flags do (``-o`` and
``--plot DIR`` there, ``--output-dir`` and ``--plot/--no-plot`` here)."""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from steer_cli.cli.common import (
    CONFIG_HELP,
    PRESET_HELP,
    SET_HELP,
    doc,
    fail,
    is_interactive,
    parse_int_list,
    parse_str_list,
    run_command,
    settings_from_cli,
)
from steer_cli.errors import SteerError

OUTPUT_HELP = "Study directory: study.json, figures/, cells/<cell>/ (default: runs/study/<study>/<model>)."
PLOT_HELP = "Also write the study's PNG figures into this directory."
JSON_HELP = "Print study.json to stdout instead of a table."
OVERWRITE_HELP = "Redo the study (every cell) in an existing study directory."


def _options() -> list[inspect.Parameter]:
    """The options every accuracy study takes (eval's, the study directory, output), in --help order."""
    def opt(name: str, annotation: Any, default: Any) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    return [
        opt("benchmarks", Optional[str], typer.Option(None, "--benchmarks", help=doc("eval.benchmarks"))),
        opt("data_dir", Optional[str], typer.Option(None, "--data-dir", help=doc("eval.data_dir"))),
        opt("samples", Optional[int], typer.Option(None, "--samples", help=doc("eval.samples"))),
        opt("temperature", Optional[float], typer.Option(None, "--temperature", help=doc("eval.temperature"))),
        opt("seeds", Optional[str], typer.Option(None, "--seeds", help=doc("eval.seeds"))),
        opt("limit", Optional[int], typer.Option(None, "--limit", help=doc("eval.limit"))),
        opt("max_new_tokens", Optional[int], typer.Option(None, "--max-new-tokens", help=doc("eval.max_new_tokens"))),
        opt("backend", Optional[str], typer.Option(None, "--backend", help=doc("rollout.backend"))),
        opt("reward", Optional[str], typer.Option(None, "--reward", help=doc("eval.reward"))),
        opt("fields", Optional[str], typer.Option(None, "--fields", help="Columns of benchmark files given as "
                                                  "paths: problem=COL,answer=COL[,id=COL][,kind=...].")),
        opt("output_dir", Optional[str], typer.Option(None, "--output-dir", "-o", help=OUTPUT_HELP)),
        opt("overwrite", bool, typer.Option(False, "--overwrite", help=OVERWRITE_HELP)),
        opt("plot", Optional[Path], typer.Option(None, "--plot", help=PLOT_HELP)),
        opt("as_json", bool, typer.Option(False, "--json", help=JSON_HELP)),
        opt("preset", Optional[str], typer.Option(None, "--preset", help=PRESET_HELP)),
        opt("trust_remote_code", bool, typer.Option(False, "--trust-remote-code", help=doc("model.trust_remote_code"))),
        opt("config", Optional[Path], typer.Option(None, "--config", help=CONFIG_HELP)),
        opt("sets", Optional[list[str]], typer.Option(None, "--set", help=SET_HELP)),
    ]


EVAL_OPTION_NAMES = ("benchmarks", "data_dir", "samples", "temperature", "seeds", "limit", "max_new_tokens",
                     "backend", "reward", "fields", "output_dir", "overwrite", "plot", "as_json", "preset",
                     "trust_remote_code", "config", "sets")


def with_eval_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a study command the shared options; the command gets them as one ``opts`` dict."""
    sig = inspect.signature(fn)
    own = [p for name, p in sig.parameters.items() if name != "opts"]

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        opts = {k: kwargs.pop(k) for k in EVAL_OPTION_NAMES}
        return fn(opts=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*own, *_options()])  # type: ignore[attr-defined]
    return wrapper


def flags_of(opts: dict[str, Any], model: Optional[str] = None) -> dict[str, Any]:
    """Settings keys of the shared options (None: not given)."""
    return eval_flags(benchmarks=opts["benchmarks"], data_dir=opts["data_dir"], samples=opts["samples"],
                      temperature=opts["temperature"], seeds=opts["seeds"], limit=opts["limit"],
                      max_new_tokens=opts["max_new_tokens"], backend=opts["backend"], reward=opts["reward"],
                      output_dir=opts["output_dir"], overwrite=opts["overwrite"],
                      trust_remote_code=opts["trust_remote_code"], model=model)


def eval_flags(*, benchmarks: Optional[str], data_dir: Optional[str], samples: Optional[int],
               temperature: Optional[float], seeds: Optional[str], limit: Optional[int],
               max_new_tokens: Optional[int], backend: Optional[str], reward: Optional[str],
               output_dir: Optional[str], overwrite: bool, trust_remote_code: bool,
               model: Optional[str] = None) -> dict[str, Any]:
    """Settings keys of the eval flags every accuracy study takes (None: not given)."""
    return {
        "model.name": model, "eval.benchmarks": parse_str_list(benchmarks), "eval.data_dir": data_dir,
        "eval.samples": samples, "eval.temperature": temperature, "eval.seeds": parse_int_list(seeds, "--seeds"),
        "eval.limit": limit, "eval.max_new_tokens": max_new_tokens, "rollout.backend": backend,
        "eval.reward": reward, "output.output_dir": output_dir, "output.overwrite": overwrite or None,
        "model.trust_remote_code": trust_remote_code or None,
    }


def study_settings(*, preset: Optional[str], config: Optional[Path], sets: Optional[list[str]],
                   flags: dict[str, Any], run: Optional[Path] = None) -> Any:
    """Settings of a grid: a run's settings.yaml below the preset and flags when the study reads a
    run (its protocol: template, stop tokens, budgets), else the preset found from the model."""
    if run is not None:
        from steer_cli.evaluate.targets import run_settings_layer

        return settings_from_cli(preset=preset, config=config, sets=sets, flags=flags,
                                 base=run_settings_layer(run), infer_preset=False)
    return settings_from_cli(preset=preset, config=config, sets=sets, flags=flags)


def study_dir(settings: Any, experiment: str, model: Optional[str] = None) -> Path:
    from steer_cli.models import model_slug

    if settings.output.output_dir:
        return Path(settings.output.output_dir)
    return Path(settings.output.runs_dir) / "study" / experiment / model_slug(model or settings.model.name)


def fields_of(spec: Optional[str]) -> Any:
    from steer_cli.data.records import FieldMap

    return FieldMap.from_spec(spec) if spec else None


def say(message: str) -> None:
    """One line on stderr, printed as is (no rich markup: paths may hold brackets)."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(message, markup=False)


def run_study(body: Callable[[Any], Optional[tuple[dict[str, Any], Path]]], *, as_json: bool,
              show: Callable[[dict[str, Any]], None]) -> None:
    """``body(coord)`` -> (study document, study directory) on every process of a launch (as
    ``steer eval``; None on the others); the main process prints the study (JSON with
    ``as_json``, else ``show`` and where it is)."""

    def go() -> Optional[tuple[dict[str, Any], Path]]:
        from steer_cli.evaluate.parallel import Coordinator, ReportedByMain

        coord = Coordinator.connect()
        try:
            return body(coord)
        except ReportedByMain:
            coord.wait_reported()
            raise typer.Exit(2) from None  # the main process prints the error
        except SteerError as err:
            if not coord.main:
                raise
            try:
                fail(str(err))
            finally:
                coord.reported()
        return None

    done = run_command(go)
    if not done or not done[0]:
        return
    doc, out = done
    if as_json:
        print(json.dumps(doc, indent=1))
    else:
        show(doc)
        figures = sorted((out / "figures").glob("*.png"))
        say(f"study in {out / 'study.json'}" + (f"; figures in {out / 'figures'}" if figures else ""))


def interactive() -> bool:
    return is_interactive()


def percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def print_grid(title: str, rows: list[str], cols: list[str], matrix: list[list[Any]],
               fmt: Callable[[Any], str] = percent, corner: str = "") -> None:
    from rich.table import Table

    from steer_cli.terminal import print_table, stdout_console

    table = Table(title=title)
    table.add_column(corner)
    for c in cols:
        table.add_column(str(c), justify="right")
    for r, row in zip(rows, matrix):
        table.add_row(str(r), *[fmt(v) for v in row])
    print_table(stdout_console(), table)


# -- token-level studies (tokens, patch, persistence) -------------------------------------------
VECTORS_HELP = ("Vectors file (.safetensors/.npy) or training run directory; default: the most recent training "
                "run under runs/. A run's settings (model, prompt template, stop tokens, training set) are used.")
MODEL_HELP = "Model to study the vectors on; default: the run's model, or base_model in the file's metadata."
FORCED_OUTPUT_HELP = ("Where study.json, figures/ and the work in progress go (default: "
                      "runs/study/<experiment>/<run>).")
FORCED_OVERWRITE_HELP = "Redo the study in --output-dir even if it holds one with other inputs or settings."
FORCED_JSON_HELP = "Print study.json on stdout instead of the summary."
FORCED_PLOT_HELP = "Write the figures (figures/*.png)."
FORCED_CONFIG_HELP = "YAML file of settings, applied over the run's."
FORCED_SET_HELP = "Override any setting: --set study.tokens.top_k=10 (repeatable)."


def study_inputs(target: Optional[str], *, model: Optional[str], config: Optional[Path], sets: Optional[list[str]],
                 flags: dict[str, Any]) -> tuple[Path, Optional[Path], Any]:
    """(vectors file, its training run or None, settings) from the command line; reads only."""
    from steer_cli.runs import latest_run
    from steer_cli.study.inputs import base_layer, model_name_flag, vectors_and_run

    if target is None:
        runs_dir = settings_from_cli(preset=None, config=None, sets=sets, flags={}, infer_preset=False).output.runs_dir
        target = str(latest_run(runs_dir, kind="train"))
        say(f"using the most recent training run {target}")
    vectors, run = vectors_and_run(target)
    name = model_name_flag(vectors, run, model)
    settings = settings_from_cli(preset=None, config=config, sets=sets, flags=dict(flags, **{"model.name": name}),
                                 base=base_layer(vectors, run), infer_preset=False)
    return vectors, run, settings


def other_vectors(text: Optional[str], flag: str) -> Optional[Path]:
    """A second vectors file or run (``--against``), or None for 'base'."""
    from steer_cli.study.inputs import vectors_and_run

    if text is None or text == "base":
        return None
    if not Path(text).expanduser().exists():
        raise SteerError(f"{flag} {text!r} is neither 'base' nor an existing vectors file or training run")
    return vectors_and_run(text)[0]


def print_json(doc: dict[str, Any]) -> None:
    """study.json on stdout; a NaN or an object JSON cannot hold is an error, not invalid JSON."""
    print(json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False, default=_not_serialisable))


def _not_serialisable(value: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
