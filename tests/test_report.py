"""steer report: the paper's tables from fixture results in every format, merging, plots, errors."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
from cli_helpers import one_line_error
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.report.collect import collect
from steer_cli.report.run import report
from steer_cli.report.tables import human_bytes, human_count, human_seconds

_register()
runner = CliRunner()
RESULTS = Path(__file__).parent / "fixtures" / "results"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAPER = ("aime25", "aime24", "amc23", "math500", "minerva_math", "olympiadbench")


def github_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Title line -> rows as {header: cell} of each github table in the output."""
    tables, title, header, rows = {}, None, None, None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header, rows = cells, []
            elif not set(line) <= set("|-: "):
                rows.append(dict(zip(header, cells)))
        else:
            if header is not None:
                tables[title] = rows
                header = None
            if line.strip():  # the last text line before a table is its title
                title = line
    if header is not None:
        tables[title] = rows
    return tables


def find(tables, prefix):
    return next(rows for title, rows in tables.items() if title and title.startswith(prefix))


def row(rows, **match):
    hits = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(hits) == 1, (match, rows)
    return hits[0]


def _summary(name: str) -> dict:
    return json.loads((RESULTS / "eval" / name / "summary.json").read_text())


def _paper_avg(summary: dict) -> tuple[float, float]:
    """The paper's Avg. computed straight from a summary's per-seed numbers."""
    per_seed = []
    for seed in map(str, summary["seeds"]):
        vals = []
        for b in PAPER:
            d = summary["benchmarks"][b]["per_seed"][seed]
            vals.append(d.get("avg@32", d.get("avg@k", d.get("pass@1"))) if b in ("aime25", "aime24", "amc23") else d["pass@1"])
        per_seed.append(statistics.mean(vals))
    return statistics.mean(per_seed), statistics.pstdev(per_seed)


def test_collect_finds_every_kind_of_result():
    results = collect([RESULTS])
    assert len(results.evals) == 11 and len(results.runs) == 1 and len(results.benches) == 1
    assert not results.skipped
    assert results.runs[0].model == "demo" and len(results.runs[0].metrics) == 10


def test_github_tables_have_the_papers_numbers():
    text = report([RESULTS]).text
    tables = github_tables(text)
    t1 = find(tables, "Table 1")
    steer = row(t1, Model="Qwen2.5-Math-7B", Setup="Steering")
    assert steer["AIME24"] == "25.0 ± 0.8" and steer["Train"] == "DeepScaleR"
    mean, std = _paper_avg(_summary("qwen2.5-math-7b/steering"))
    assert steer["Avg."] == f"{100 * mean:.1f} ± {100 * std:.1f}"
    assert mean == pytest.approx(_summary("qwen2.5-math-7b/steering")["average"]["mean"])
    # Full-Tune comes from two summaries (three benchmarks each) merged into one row
    full = row(t1, Model="Qwen2.5-Math-7B", Setup="Full-Tune")
    assert full["AIME24"] == "25.7 ± 0.5" and full["MATH500"] == "79.3 ± 0.5" and full["Avg."] != "—"
    assert row(t1, Model="Qwen2.5-Math-7B", Setup="Base")["Avg."] == "24.8 ± 0.0"
    llama = row(t1, Model="Llama-3.1-8B", Setup="LoRA")
    assert llama["GSM8K"] == "74.2 ± 2.0" and llama["AIME24"] == "—" and llama["Avg."] == "—"
    headers = list(t1[0])
    assert headers[3:10] == ["AIME25", "AIME24", "AMC23", "MATH500", "MinervaMath", "OlympiadBench", "GSM8K"]
    assert [r["Setup"] for r in t1 if r["Model"] == "Llama-3.1-8B"] == ["Base", "Steering", "Full-Tune", "LoRA"]

    t4 = find(tables, "Table 4")
    gsm = [r for r in t4[:4]]
    assert gsm[0]["Train / Test"] == "GSM8K / GSM8K" and [r["Setup"] for r in gsm] == ["Base", "Full-Tune", "Steering", "LoRA"]
    assert gsm[2]["Qwen2.5-1.5B"] == "73.84 (-5.07)" and gsm[2]["Llama-3.1-8B"] == "70.36 (-6.13)"
    assert gsm[1]["Llama-3.1-8B"] == "76.49" and gsm[3]["Qwen2.5-1.5B"] == "—"
    math = t4[4:8]
    assert math[0]["Train / Test"] == "GSM8K / MATH500" and math[2]["Llama-3.1-8B"] == "22.81 (+5.95)"
    assert math[0]["Qwen2.5-Math-7B"] == "—"  # that model was not trained on GSM8K

    t3 = find(tables, "Table 3")
    assert row(t3, Metric="Number of Parameters") == {"Metric": "Number of Parameters", "Full-Tune": "14.7 B",
                                                      "LoRA": "16 M", "Steering": "246 K"}
    assert row(t3, Metric="Optimizer Memory")["Steering"] == "240 KB"
    assert row(t3, Metric="Per-step Time")["Full-Tune"] == "9.94 s"
    assert row(t3, Metric="Peak Memory")["LoRA"] == "—"
    assert "vectors 2.1 ms, full reload 12.5 s" in text

    runs = find(tables, "Training runs")
    assert runs[0]["Reward"] == "0.150 → 0.950" and runs[0]["Steps"] == "10" and runs[0]["Setup"] == "Steering"


def test_latex_format():
    text = report([RESULTS], fmt="latex").text
    assert text.count(r"\begin{tabular}") == 4
    assert r"25.0 $\pm$ 0.8" in text and "73.84 (-5.07)" in text and "14.7 B" in text
    assert "% Table 1 form" in text
    body = [line for line in text.splitlines() if not line.startswith("%")]
    assert not any("±" in line or "—" in line for line in body)  # LaTeX markup instead
    assert r"0.150 $\to$ 0.950" in text


def test_csv_format_has_numbers_in_separate_columns():
    text = report([RESULTS], fmt="csv").text
    blocks = [b for b in text.strip().split("\n\n")]
    assert len(blocks) == 4 and all(b.startswith("# Table") or b.startswith("# Training") for b in blocks)
    t1 = list(csv.DictReader(line for line in blocks[0].splitlines() if not line.startswith("#")))
    steer = next(r for r in t1 if r["Model"] == "Qwen2.5-Math-7B" and r["Setup"] == "Steering")
    assert steer["AIME24"] == "25.00" and steer["AIME24 std"] == "0.82"
    assert next(r for r in t1 if r["Setup"] == "Base")["Train"] == ""
    t4 = list(csv.DictReader(line for line in blocks[1].splitlines() if not line.startswith("#")))
    lora = next(r for r in t4 if r["Train / Test"] == "GSM8K / GSM8K" and r["Setup"] == "LoRA")
    assert lora["Llama-3.1-8B"] == "74.24" and lora["Llama-3.1-8B vs Full-Tune"] == "-2.25"


def _write_summary(path: Path, run: str, values: dict[str, float], seeds=(0, 1), model="Qwen/Qwen2.5-7B",
                   setup="steering", **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    benches = {"math500": {"display": "MATH500", "metric": "pass@1", "samples": 1, "problems": 500,
                           "per_seed": {str(s): {"pass@1": values[str(s)]} for s in seeds},
                           "mean": None, "std": None}}
    path.write_text(json.dumps({"kind": "steer-eval", "format_version": 1, "model": model, "setup": setup,
                                "run": run, "checkpoint": "final", "train_dataset": "deepscaler",
                                "temperature": 1.0, "seeds": list(seeds), "benchmarks": benches, **extra}))


def test_reruns_replace_and_training_seeds_average(tmp_path):
    import os

    _write_summary(tmp_path / "a-old" / "summary.json", "runs/s0", {"0": 0.10, "1": 0.10})
    _write_summary(tmp_path / "a-new" / "summary.json", "runs/s0", {"0": 0.50, "1": 0.70})
    os.utime(tmp_path / "a-old" / "summary.json", (1, 1))  # the re-run of the same run is newer
    _write_summary(tmp_path / "b" / "summary.json", "runs/s1", {"0": 0.30, "1": 0.30})
    t1 = find(github_tables(report([tmp_path]).text), "Table 1")
    # per eval seed: mean over the two training runs (0.4, 0.5); then mean ± std over seeds
    assert row(t1, Setup="Steering")["MATH500"] == "45.0 ± 5.0"


def test_lora_ranks_are_separate_rows(tmp_path):
    _write_summary(tmp_path / "r4" / "summary.json", "runs/r4", {"0": 0.40, "1": 0.40}, setup="lora", lora_rank=4)
    _write_summary(tmp_path / "r1" / "summary.json", "runs/r1", {"0": 0.20, "1": 0.30}, setup="lora", lora_rank=1)
    _write_summary(tmp_path / "old" / "summary.json", "runs/old", {"0": 0.40, "1": 0.40}, setup="lora")  # no rank
    text = report([tmp_path]).text
    t1 = find(github_tables(text), "Table 1")
    assert row(t1, Setup="LoRA")["MATH500"] == "40.0 ± 0.0"  # r4 and the rank-less summary: one row
    assert row(t1, Setup="LoRA r1")["MATH500"] == "25.0 ± 5.0"
    t4 = find(github_tables(text), "Table 4")
    assert {r["Setup"] for r in t4} == {"LoRA", "LoRA r1"}
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "settings.yaml").write_text("setup:\n  kind: lora\n  lora:\n    rank: 1\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward_mean": 0.1}) + "\n")
    runs = find(github_tables(report([tmp_path / "runs"]).text), "Training runs")
    assert row(runs, Run="r1")["Setup"] == "LoRA r1"


def test_scale_sweep_table_and_plot(tmp_path):
    for scale, values in ((0.0, {"0": 0.10, "1": 0.20}), (1.0, {"0": 0.50, "1": 0.70}), (2.0, {"0": 0.30, "1": 0.30})):
        _write_summary(tmp_path / f"s{scale}" / "summary.json", "runs/r", values, scale=scale, layers=None)
    _write_summary(tmp_path / "sub" / "summary.json", "runs/r", {"0": 0.40, "1": 0.40}, scale=1.0, layers=[0, 1, 2, 7])
    out = report([tmp_path], plot_dir=tmp_path / "plots")
    tables = github_tables(out.text)
    sweep = find(tables, "Accuracy (%) against steering scale: Qwen2.5-7B · Steering · r · final")
    assert row(sweep, Benchmark="MATH500") == {"Benchmark": "MATH500", "Metric": "pass@1", "x0": "15.0 ± 5.0",
                                              "x1": "60.0 ± 10.0", "x2": "30.0 ± 0.0"}
    subset = find(tables, "Accuracy (%) against steering scale: Qwen2.5-7B · Steering · r · final · layers 0-2,7")
    assert row(subset, Benchmark="MATH500")["x1"] == "40.0 ± 0.0"
    # Table 1 holds the vectors as trained only (scale 1, every layer), not an average over the sweep
    assert row(find(tables, "Table 1"), Setup="Steering")["MATH500"] == "60.0 ± 10.0"
    assert "scale.png" in [p.name for p in out.plots]
    assert (tmp_path / "plots" / "scale.png").read_bytes()[:8] == PNG_MAGIC
    # no sweep, no sweep table
    assert "against steering scale" not in report([tmp_path / "s1.0"]).text


def test_plots_are_written(tmp_path):
    out = report([RESULTS], plot_dir=tmp_path / "plots")
    names = sorted(p.name for p in out.plots)
    assert names == ["accuracy.png", "train-train_demo_demo_steering_seed-0.png"]
    for p in out.plots:
        assert p.read_bytes()[:8] == PNG_MAGIC


def test_human_units():
    assert human_count(245_760) == "246 K" and human_count(14.7e9) == "14.7 B" and human_count(12) == "12"
    assert human_bytes(240_000) == "240 KB" and human_bytes(13.8e9) == "13.8 GB" and human_bytes(512) == "512 B"
    assert human_seconds(9.94) == "9.94 s" and human_seconds(0.0021) == "2.1 ms" and human_seconds(3120) == "3120 s"


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_prints_tables_and_writes_plots(tmp_path):
    result = runner.invoke(app, ["report", str(RESULTS / "eval"), str(RESULTS / "bench"), "--format", "github",
                                 "--plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Table 1 form" in result.stdout and "Table 3 form" in result.stdout and "Training runs" not in result.stdout
    assert (tmp_path / "accuracy.png").exists() and "wrote" in result.stderr


def test_cli_defaults_to_runs_and_says_so(tmp_path, monkeypatch):
    shutil.copytree(RESULTS / "train", tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["report"])
    assert result.exit_code == 0, result.output
    assert "reading runs/" in result.stderr and "Training runs" in result.stdout and "Table 1" not in result.stdout




def test_cli_bad_inputs(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    one_line_error(runner.invoke(app, ["report", str(tmp_path / "empty")]), "no results under", "summary.json")
    one_line_error(runner.invoke(app, ["report", str(tmp_path / "missing")]), "does not exist")
    one_line_error(runner.invoke(app, ["report", str(RESULTS), "--format", "html"]), "--format")
    monkeypatch.chdir(tmp_path / "empty")
    one_line_error(runner.invoke(app, ["report"]), "runs/")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    result = runner.invoke(app, ["report", str(broken)])
    assert result.exit_code == 2 and "skipped" in result.stderr and "no results under" in result.stderr
    shutil.copytree(RESULTS / "bench", broken / "bench")
    result = runner.invoke(app, ["report", str(broken)])
    assert result.exit_code == 0 and "Table 3 form" in result.stdout and "skipped" in result.stderr
