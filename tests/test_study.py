"""steer study layers / pairs / transfer / magnitude on the built-in demo (4 layers: small grids),
with exact checks against steer eval: a pair (i, i) is vector i alone, a self-transfer is the
model's own eval, scale 0 is the base model; cells resume and re-runs skip them."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch
from cli_helpers import one_line_error
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.study.record import read_study
from steer_cli.vectors.file import save_vectors

_register()
runner = CliRunner()
LAYERS, HIDDEN = 4, 128
# Few problems, short completions, one grader in-process: seconds per cell on 2 cores.
FAST = ["--limit", "2", "--max-new-tokens", "12", "--set", "train.grader_workers=0"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def texts(cell):
    lines = (cell / "seed-0" / "demo.jsonl").read_text().splitlines()
    return [s["text"] for line in lines for s in json.loads(line)["samples"]]


def rows(seed, scale=0.6):
    return scale * torch.randn(LAYERS, HIDDEN, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Vectors of the demo's geometry: a merged [4, 128] file (row l as if trained alone at l),
    row 1 alone, and an all-layer file."""
    d = tmp_path_factory.mktemp("vectors")
    merged = rows(0)
    single = torch.zeros(LAYERS, HIDDEN)
    single[1] = merged[1]
    return {
        "merged": save_vectors(d / "merged.safetensors", merged, base_model="demo", layers=[0, 1, 2, 3]),
        "single1": save_vectors(d / "single1.safetensors", single, base_model="demo", layers=[1]),
        "all": save_vectors(d / "all.safetensors", rows(1, 0.3), base_model="demo"),
    }


def test_pairs_grid_equals_single_vectors_and_resumes(files, tmp_path):
    out = tmp_path / "pairs"
    args = ["study", "pairs", files["merged"], "--layers", "0,1", "--full", files["all"], "-o", out, *FAST]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    doc = read_study(out, "pairs")
    r = doc["results"]
    assert r["layers"] == [0, 1] and r["benchmarks"] == ["demo"]
    assert sorted(r["cells"]) == ["full", "pair-0-0", "pair-0-1", "pair-1-1"]
    grid = r["grid"]["average"]
    assert grid[0][1] == grid[1][0] and all(v is not None for row in grid for v in row)
    summary = json.loads((out / "cells" / "pair-0-1" / "summary.json").read_text())
    assert summary["layers"] == [0, 1] and summary["vectors"] == str(files["merged"].resolve())
    assert r["full"]["average"] == json.loads((out / "cells" / "full" / "summary.json").read_text())["average"]["mean"]
    assert set(r["relative"]) == {"prev", "next", "max"}
    assert doc["inputs"]["vectors"]["sha256"] and (out / "figures" / "pairs-accuracy.png").is_file()
    assert (out / "figures" / "pairs-relative-max.png").is_file()

    # (i, i) is vector i alone: the same samples as steer eval of a file holding row 1 only
    alone = tmp_path / "alone"
    assert invoke("eval", "--vectors", files["single1"], "--benchmarks", "demo", "-o", alone, *FAST).exit_code == 0
    assert texts(out / "cells" / "pair-1-1") == texts(alone)

    # a re-run skips every cell and writes the same results; steer report reads the cells
    again = invoke(*args, "--json")
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier, skipped") == 4
    assert json.loads(again.stdout)["results"] == r
    report = invoke("report", out)
    assert report.exit_code == 0 and "merged.safetensors · layers 0-1" in report.stdout, report.output


def test_magnitude_scale_zero_is_the_base_model(files, tmp_path):
    out = tmp_path / "mag"
    result = invoke("study", "magnitude", files["all"], "--scale", "0,2", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    r = read_study(out, "magnitude")["results"]
    assert r["scales"] == [0.0, 1.0, 2.0]  # scale 1 joins as the reference line
    assert texts(out / "cells" / "scale-0") == texts(out / "cells" / "base")
    assert r["accuracy"]["average"][0] == r["references"]["base"]["average"]
    assert r["references"]["scale_1"]["average"] == r["accuracy"]["average"][1]
    assert all(isinstance(x, float) for x in r["length"]["mean"])
    assert json.loads((out / "cells" / "base" / "summary.json").read_text())["temperature"] == 1.0
    assert {p.name for p in (out / "figures").iterdir()} == {"magnitude-accuracy.png", "magnitude-length.png"}


@pytest.fixture(scope="module")
def sibling(tmp_path_factory):
    """A second model of the demo's geometry: the demo with its MLPs perturbed (tokenizer kept)."""
    from steer_cli.demo.sibling import make_demo_sibling

    return make_demo_sibling(tmp_path_factory.mktemp("sibling") / "demo-sibling")


def test_transfer_self_transfer_is_the_models_own_eval(files, sibling, tmp_path):
    theirs = save_vectors(tmp_path / "sib.safetensors", rows(2), base_model=str(sibling))
    out = tmp_path / "transfer"
    result = invoke("study", "transfer", "--vectors", f"{files['all']},{theirs}", "--benchmarks", "demo",
                    "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    r = read_study(out, "transfer")["results"]
    assert r["models"] == ["demo", str(sibling)]
    assert len(r["matrix"]["average"]) == 2 and len(r["matrix"]["average"][0]) == 3  # + the base column
    own = tmp_path / "own"
    assert invoke("eval", "--vectors", files["all"], "--benchmarks", "demo", "-o", own, *FAST).exit_code == 0
    assert texts(out / "cells" / "demo" / "from-demo") == texts(own)
    for i, row in enumerate(r["normalized"]["average"]):
        assert row[i] in (1.0, None)  # None where own == base (0 / 0)


def test_transfer_refuses_vectors_of_another_geometry(files, tiny_lm, tmp_path):
    other = save_vectors(tmp_path / "tiny.safetensors", torch.ones(2, 64), base_model=str(tiny_lm))
    out = tmp_path / "t"
    one_line_error(invoke("study", "transfer", "--vectors", f"{files['all']},{other}", "--models", "demo,demo",
                          "-o", out, *FAST), "shape [2, 64]", "[4, 128]")
    assert not out.exists()


def fake_run(root, layer, vectors, steps=(2,)):
    """A single-layer steering run on disk: settings, metrics and checkpoints holding its vectors."""
    from steer_cli.settings import Layer, build_settings

    run = root / f"layer-{layer}"
    run.mkdir(parents=True)
    settings = build_settings([Layer({"preset": "demo", "model": {"name": "demo"}, "data": {"dataset": "demo"},
                                      "eval": {"benchmarks": ["demo"]},
                                      "setup": {"steering": {"layers": [layer]}}}, "test")])
    (run / "settings.yaml").write_text(settings.to_yaml())
    (run / "metrics.jsonl").write_text("")
    one = torch.zeros(LAYERS, HIDDEN)
    for k, name in enumerate([*(f"checkpoint-{s}" for s in steps), "final"]):
        one[layer] = vectors[layer] * (0.5 if name != "final" else 1.0) * (k + 1)
        (run / name).mkdir()
        save_vectors(run / name / "vectors.safetensors", one, base_model="demo", layers=[layer])
    return run


def test_layers_with_references_and_best_checkpoint(tmp_path):
    v = rows(4)
    runs = [fake_run(tmp_path / "runs", layer, v) for layer in (3, 1)]
    out = tmp_path / "layers"
    result = invoke("study", "layers", *runs, "--select", "best", "--prefill", "8", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    r = read_study(out, "layers")["results"]
    assert r["layers"] == [1, 3] and len(r["checkpoints"]) == 2
    assert set(r["references"]) == {"base_greedy", "base_sampled", "prefill"}
    for layer, ckpt, acc in zip(r["layers"], r["checkpoints"], r["accuracy"]["average"]):
        scores = {c: json.loads((out / "cells" / f"layer-{layer}-{c}" / "summary.json").read_text())["average"]["mean"]
                  for c in ("checkpoint-2", "final")}
        assert acc == max(scores.values()) and scores[ckpt] == acc
    greedy = json.loads((out / "cells" / "base-greedy" / "summary.json").read_text())
    prefill = json.loads((out / "cells" / "base-prefill" / "summary.json").read_text())
    assert greedy["temperature"] == 0.0 and prefill["prefill"] == "8" and prefill["temperature"] == 1.0
    line = json.loads((out / "cells" / "base-prefill" / "seed-0" / "demo.jsonl").read_text().splitlines()[0])
    plain = json.loads((out / "cells" / "base-sampled" / "seed-0" / "demo.jsonl").read_text().splitlines()[0])
    assert line["prompt_length"] == plain["prompt_length"] + 1
    assert (out / "figures" / "layers-accuracy.png").is_file()

    # an all-layer run where a single-layer one is needed: refused, nothing written
    both = tmp_path / "runs" / "both"
    shutil.copytree(runs[0], both)
    save_vectors(both / "final" / "vectors.safetensors", v, base_model="demo", layers=[0, 1, 2, 3])
    bad = tmp_path / "bad"
    one_line_error(invoke("study", "layers", runs[1], both, "-o", bad, *FAST), "is not a single-layer run")
    assert not bad.exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["pairs", "{merged}", "--model", "demo", "--layers", "0,7"], "layer(s) 7 do not exist"),
    (["pairs", "{single1}", "--model", "demo", "--layers", "0,1"], "steers layers 1, not 0"),
    (["pairs", "{merged}", "--model", "no-such-model"], "is not a local directory"),
    (["magnitude", "{all}", "--model", "demo", "--scale", "1,x"], "'x' is not a number"),
    (["magnitude", "{all}", "--model", "demo", "--layers", "9"], "layer(s) 9 do not exist"),
    (["layers", "{merged}"], "is a file, not a training run"),
    (["layers", "{runs}/layer-2", "--select", "worst"], "--select must be final or best"),
])
def test_bad_input_is_refused_before_anything_is_written(files, tmp_path, args, needle):
    run = fake_run(tmp_path / "runs", 2, rows(5))
    names = {k: str(v) for k, v in files.items()} | {"runs": str(run.parent)}
    out = tmp_path / "out"
    one_line_error(invoke("study", *[a.format(**names) for a in args], "-o", out, *FAST), needle)
    assert not out.exists()


def test_a_stopped_study_resumes_cell_by_cell(files, tmp_path, monkeypatch):
    """SIGTERM after the first finished shard: exit 75, that cell's work kept; the same command
    finishes the grid, equal to an uninterrupted one."""
    import steer_cli.evaluate.generation as generation
    from steer_cli.preempt import EXIT_PREEMPTED

    args = ["study", "pairs", files["merged"], "--layers", "2,3", *FAST]
    whole = tmp_path / "whole"
    assert invoke(*args, "-o", whole).exit_code == 0
    out = tmp_path / "out"
    write = generation.write_results

    def write_then_sigterm(path, lines):
        write(path, lines)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(generation, "write_results", write_then_sigterm)
    stopped = invoke(*args, "-o", out)
    assert stopped.exit_code == EXIT_PREEMPTED, stopped.output
    assert "run the same command to continue" in stopped.stderr and "Traceback" not in stopped.output
    assert not (out / "study.json").exists() and len([p for p in out.rglob("*.jsonl") if p.parent.name == ".shards"]) == 1
    monkeypatch.setattr(generation, "write_results", write)
    again = invoke(*args, "-o", out)
    assert again.exit_code == 0, again.output
    assert read_study(out)["results"]["grid"] == read_study(whole)["results"]["grid"]
    for cell in ("pair-2-2", "pair-2-3", "pair-3-3"):
        assert texts(out / "cells" / cell) == texts(whole / "cells" / cell)


def test_a_long_figure_title_is_wrapped_inside_the_figure(tmp_path):
    """transfer's title ran past both edges of its 2 x 3 heatmap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from steer_cli.study.figures import suptitle

    fig = Figure(figsize=(4.3, 3.2))
    suptitle(fig, "Accuracy (%): target model (rows) with the vectors of (columns), and then some more words")
    renderer = FigureCanvasAgg(fig).get_renderer()
    box = fig._suptitle.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)
