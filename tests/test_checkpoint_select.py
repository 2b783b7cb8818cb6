"""Checkpoint selection as the paper's code does it (issue 23, item 3): ``steer eval RUN
--checkpoints``, ``steer report --select final|best|mean`` and ``steer merge --select best``, on
a real demo run with checkpoints and on small crafted summaries."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from cli_helpers import one_line_error
from test_report import find, github_tables, row
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.errors import SteerError
from steer_cli.report.collect import collect
from steer_cli.report.run import report
from steer_cli.report.select import best_checkpoint, best_checkpoint_of_run, checkpoint_scores
from steer_cli.vectors.file import load_vectors, save_vectors

_register()
runner = CliRunner()
PAPER = ("aime25", "aime24", "amc23", "math500", "minerva_math", "olympiadbench")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def summary_at(path: Path, run: str, checkpoint: str | None, step: int | None, values: dict[str, list[float]],
               setup: str = "steering") -> None:
    """A summary.json of one evaluated checkpoint: values[bench] = the primary metric per eval seed."""
    seeds = range(len(next(iter(values.values()))))
    benches = {b: {"display": b.upper(), "metric": "avg@32" if b in PAPER[:3] else "pass@1",
                   "samples": 32 if b in PAPER[:3] else 1, "problems": 10,
                   "per_seed": {str(s): {("avg@32" if b in PAPER[:3] else "pass@1"): v[s]} for s in seeds},
                   "mean": statistics.mean(v), "std": statistics.pstdev(v)} for b, v in values.items()}
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps({
        "kind": "steer-eval", "format_version": 1, "model": "Qwen/Qwen2.5-Math-7B", "setup": setup,
        "run": run, "checkpoint": checkpoint, "step": step, "train_dataset": "deepscaler",
        "temperature": 1.0 if setup != "base" else 0.0, "seeds": list(seeds), "benchmarks": benches}))


def six(math500: list[float], rest: float = 0.2) -> dict[str, list[float]]:
    return {b: (math500 if b == "math500" else [rest] * len(math500)) for b in PAPER}


def paper_avg(values: dict[str, list[float]]) -> float:
    """Mean over eval seeds of the per-seed mean over the six benchmarks (the reference's Average)."""
    n = len(values["math500"])
    return statistics.mean(statistics.mean(values[b][s] for b in PAPER) for s in range(n))


@pytest.fixture
def two_runs(tmp_path):
    """Run a: checkpoint-2 (best), checkpoint-4, final; run b: checkpoint-2, final (best); a base."""
    root = tmp_path / "results"
    a, b = "/runs/qwen/steering/seed-0", "/runs/qwen/steering/seed-1"
    vals = {("a", "checkpoint-2", 2): six([0.60, 0.70]), ("a", "checkpoint-4", 4): six([0.40, 0.50]),
            ("a", "final", 6): six([0.30, 0.30]), ("b", "checkpoint-2", 2): six([0.20, 0.20]),
            ("b", "final", 6): six([0.50, 0.50])}
    for (run, ckpt, step), v in vals.items():
        summary_at(root / run / ckpt, a if run == "a" else b, ckpt, step, v)
    summary_at(root / "base", None, None, None, six([0.10]), setup="base")
    return root, vals


def steering_math500(text: str) -> str:
    return row(find(github_tables(text), "Table 1"), Setup="Steering")["MATH500"]


def test_report_selects_the_final_checkpoint_by_default(two_runs):
    root, _ = two_runs
    text = report([root]).text
    # per eval seed: mean over the two runs' final/ (0.3, 0.5) and (0.3, 0.5); not all five checkpoints
    assert steering_math500(text) == "40.0 ± 0.0"
    assert steering_math500(report([root], select="final").text) == "40.0 ± 0.0"


def test_report_select_best_is_the_per_run_maximum_of_the_average_and_says_so(two_runs):
    root, vals = two_runs
    out = report([root], select="best").text
    # a: checkpoint-2 (0.6, 0.7); b: final (0.5, 0.5) -> per seed (0.55, 0.6)
    assert steering_math500(out) == "57.5 ± 2.5"
    steer = row(find(github_tables(out), "Table 1"), Setup="Steering")
    best = {r: max((v for k, v in vals.items() if k[0] == r), key=paper_avg) for r in "ab"}
    per_seed = [statistics.mean(statistics.mean(best[r][bench][s] for bench in PAPER) for r in "ab") for s in (0, 1)]
    assert steer["Avg."] == f"{100 * statistics.mean(per_seed):.1f} ± {100 * statistics.pstdev(per_seed):.1f}"
    title = next(t for t in github_tables(out) if t and t.startswith("Table 1"))
    assert "selected on the test set" in title
    assert "selected on the test set" not in next(t for t in github_tables(report([root]).text)
                                                    if t and t.startswith("Table 1"))
    assert "seed-0: checkpoint-2" in out and "seed-1: final" in out  # which checkpoint each run got


def test_report_select_mean_averages_a_runs_checkpoints_first(two_runs):
    root, _ = two_runs
    # a: mean of its three checkpoints per seed (0.4333, 0.5); b: (0.35, 0.35); then over the runs
    a = [statistics.mean(x) for x in ((0.6, 0.4, 0.3), (0.7, 0.5, 0.3))]
    per_seed = [statistics.mean((a[s], 0.35)) for s in (0, 1)]
    assert steering_math500(report([root], select="mean").text) == (
        f"{100 * statistics.mean(per_seed):.1f} ± {100 * statistics.pstdev(per_seed):.1f}")


def test_report_select_bad_value(two_runs):
    root, _ = two_runs
    one_line_error(invoke("report", root, "--select", "first"), "final, best or mean")
    result = invoke("report", root, "--select", "best")
    assert result.exit_code == 0 and "selected on the test set" in result.output


def test_best_checkpoint_api_ties_and_errors(tmp_path):
    run = "/runs/x"
    summary_at(tmp_path / "c2", run, "checkpoint-2", 2, six([0.5]))
    summary_at(tmp_path / "c4", run, "checkpoint-4", 4, six([0.5]))
    summary_at(tmp_path / "fin", run, "final", 6, six([0.4]))
    (scores,) = checkpoint_scores(collect([tmp_path]).evals).values()
    assert [(s.checkpoint, s.step) for s in scores] == [("checkpoint-2", 2), ("checkpoint-4", 4), ("final", 6)]
    assert scores[0].average == pytest.approx(paper_avg(six([0.5])))
    assert scores[0].benchmarks == PAPER
    chosen = best_checkpoint(scores)
    assert (chosen.checkpoint, chosen.step) == ("checkpoint-2", 2)  # a tie goes to the earlier, as the reference
    # checkpoints that share no benchmark cannot be compared
    summary_at(tmp_path / "odd", run, "checkpoint-8", 8, {"gsm8k": [0.9]})
    with pytest.raises(SteerError, match="share no benchmark"):
        best_checkpoint(next(iter(checkpoint_scores(collect([tmp_path]).evals).values())))


# -- a real run: steer eval --checkpoints, then report and merge ----------------------------------


def test_eval_checkpoints_each_into_its_own_directory(uninterrupted_demo_run, tmp_path):
    run = uninterrupted_demo_run  # 6 steps, checkpoints every 2 (checkpoint-2, checkpoint-4, final at 6)
    common = ["--limit", "3", "--max-new-tokens", "8", "--set", "train.grader_workers=0"]
    out = tmp_path / "all"
    result = invoke("eval", run, "--checkpoints", "all", "-o", out, *common)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["base", "checkpoint-2", "checkpoint-4", "final"]
    for name, step in (("checkpoint-2", 2), ("checkpoint-4", 4), ("final", 6)):
        s = json.loads((out / name / "summary.json").read_text())
        assert (s["run"], s["checkpoint"], s["step"]) == (str(run.resolve()), name, step)
    assert json.loads((out / "base" / "summary.json").read_text())["step"] is None

    # steps by number; final/ stands for its own step
    some = tmp_path / "some"
    result = invoke("eval", run, "--checkpoints", "4,6", "--no-base", "-o", some, *common)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in some.iterdir()) == ["checkpoint-4", "final"]
    for name in ("checkpoint-4", "final"):  # the same protocol and seeds: the same samples as before
        assert (some / name / "seed-0" / "demo.jsonl").read_text() == (out / name / "seed-0" / "demo.jsonl").read_text()

    # report on the evaluation: final by default, the best Average with --select best
    scores = {n: json.loads((out / n / "summary.json").read_text())["average"]["mean"]
              for n in ("checkpoint-2", "checkpoint-4", "final")}
    best = max(scores, key=lambda n: (scores[n], -list(scores).index(n)))
    text = report([out], select="best").text
    assert f": {best}" in text
    assert steering_demo(text) == f"{100 * scores[best]:.1f}"
    assert steering_demo(report([out]).text) == f"{100 * scores['final']:.1f}"

    # errors: a step the run lacks, --checkpoints with one checkpoint named, 'all' among others; nothing written
    none = tmp_path / "none"
    for target, spec, needle in ((run, "3", "has no checkpoint at step 3; it has 2, 4, final (step 6)"),
                                 (run / "checkpoint-2", "all", "is one checkpoint"),
                                 (run, "all,2", "give it alone")):
        one_line_error(invoke("eval", target, "--checkpoints", spec, "-o", none, *common), needle)
        assert not none.exists()


def steering_demo(text: str) -> str:
    return row(find(github_tables(text), "Table 1"), Setup="Steering")["Demo"].split(" ")[0]


def _layer_run(root: Path, layer: int, averages: dict[str, float]) -> Path:
    """A single-layer steering run (vectors on ``layer`` only, a different value per checkpoint) with
    an eval summary per checkpoint under <run>/eval/."""
    run = root / f"steering-layer-{layer}" / "seed-0"
    run.mkdir(parents=True)
    (run / "settings.yaml").write_text("setup:\n  kind: steering\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    for i, (ckpt, avg) in enumerate(averages.items()):
        vectors = torch.zeros(3, 4)
        vectors[layer] = float(10 * layer + i + 1)
        (run / ckpt).mkdir()
        save_vectors(run / ckpt / "vectors.safetensors", vectors, base_model="m", layers=[layer])
        summary_at(run / "eval" / ckpt, str(run.resolve()), ckpt, 2 * (i + 1), six([avg]))
    return run


def test_merge_select_best_takes_each_layers_best_checkpoint(tmp_path):
    r0 = _layer_run(tmp_path, 0, {"checkpoint-2": 0.9, "checkpoint-4": 0.1, "final": 0.5})
    r1 = _layer_run(tmp_path, 1, {"checkpoint-2": 0.1, "checkpoint-4": 0.2, "final": 0.8})
    r2 = _layer_run(tmp_path, 2, {"checkpoint-2": 0.1, "checkpoint-4": 0.7, "final": 0.3})
    assert best_checkpoint_of_run(r0).checkpoint == "checkpoint-2"
    assert best_checkpoint_of_run(r0).path == (r0 / "checkpoint-2").resolve()
    result = invoke("merge", r0, r1, r2, "--select", "best", "-o", tmp_path / "best.safetensors")
    assert result.exit_code == 0, result.output
    merged, _ = load_vectors(tmp_path / "best.safetensors")
    assert merged[:, 0].tolist() == [1.0, 13.0, 22.0]  # checkpoint-2, final, checkpoint-4
    assert "checkpoint-2" in result.output and "Avg." in result.output
    result = invoke("merge", r0, r1, r2, "-o", tmp_path / "final.safetensors")  # default: final/
    assert result.exit_code == 0, result.output
    assert load_vectors(tmp_path / "final.safetensors")[0][:, 0].tolist() == [3.0, 13.0, 23.0]

    # no summaries of a run, or a vectors file with --select best: one line, nothing written
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "settings.yaml").write_text("setup:\n  kind: steering\n")
    (bare / "metrics.jsonl").write_text("{}\n")
    (bare / "final").mkdir()
    for args in ((r0, bare), (r0, r1 / "final" / "vectors.safetensors")):
        one_line_error(invoke("merge", *args, "--select", "best", "-o", tmp_path / "x.safetensors"))
        assert not (tmp_path / "x.safetensors").exists()
