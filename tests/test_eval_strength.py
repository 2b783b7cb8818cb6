"""steer eval --scale / --layers (one result per strength) and --reward (mean reward beside accuracy)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from cli_helpers import one_line_error
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.vectors.file import load_vectors, save_vectors

_register()
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def texts(out, label, bench):
    lines = (out / label / "seed-0" / f"{bench}.jsonl").read_text().splitlines()
    return [s["text"] for line in lines for s in json.loads(line)["samples"]]


@pytest.fixture
def vec(tmp_path, tiny_lm):
    v = 1.0 * torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    return save_vectors(tmp_path / "vec.safetensors", v, base_model=str(tiny_lm))


@pytest.fixture
def common(tiny_lm, tiny_problems):
    """steer eval arguments: greedy, 4 problems of the tiny set, 8 tokens, the tiny model named
    (so no "base model from ..." note joins a one-line error on stderr)."""
    def args(*extra):
        model = [] if "--model" in extra else ["--model", tiny_lm]
        return ["eval", *model, "--benchmarks", tiny_problems, "--limit", "4", "--max-new-tokens", "8",
                "--temperature", "0", "--set", "train.grader_workers=0", *extra]
    return args


def test_scale_sweep_keeps_one_result_per_scale(tiny_lm, tiny_problems, vec, tmp_path, common):
    bench = tiny_problems.stem
    plain = tmp_path / "plain"
    assert invoke(*common("--vectors", vec, "--base", "-o", plain)).exit_code == 0
    out = tmp_path / "sweep"
    result = invoke(*common("--vectors", vec, "--base", "-o", out, "--scale", "0,1,0.5"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["base", "vec", "vec-scale-0", "vec-scale-0.5"]
    # scale 0: the base model; scale 1 on every layer: today's results, in today's directory name
    assert texts(out, "vec-scale-0", bench) == texts(plain, "base", bench)
    assert texts(out, "vec", bench) == texts(plain, "vec", bench)
    assert texts(out, "vec-scale-0.5", bench) not in (texts(plain, "vec", bench), texts(plain, "base", bench))
    summaries = {p.name: json.loads((p / "summary.json").read_text()) for p in out.iterdir()}
    assert [(summaries[k]["scale"], summaries[k]["layers"]) for k in ("vec", "vec-scale-0", "vec-scale-0.5")] == [
        (1.0, None), (0.0, None), (0.5, None)]
    target = json.loads((out / "vec" / "target.json").read_text())["identity"]
    assert "inference_scale" not in target  # unchanged identity: earlier outputs still match
    assert json.loads((out / "vec-scale-0.5" / "target.json").read_text())["identity"]["inference_scale"] == 0.5
    header = next(line for line in result.stdout.splitlines() if "Benchmark" in line)
    assert header.index("vec-scale-0 ") < header.index("vec ") < header.index("vec-scale-0.5")

    # the same directory again: nothing to redo
    again = invoke(*common("--vectors", vec, "--base", "-o", out, "--scale", "0,1,0.5"))
    assert again.exit_code == 0 and again.output.count("finished earlier, skipped") == 4
    # steer report: accuracy against scale
    report = invoke("report", out)
    assert report.exit_code == 0, report.output
    assert "Accuracy (%) against steering scale" in report.stdout
    assert "| x0 " in report.stdout and "| x0.5 " in report.stdout and "| x1 " in report.stdout


def test_layers_subset(tiny_lm, tiny_problems, vec, tmp_path, common):
    bench = tiny_problems.stem
    only1 = tmp_path / "only1.safetensors"
    v, _ = load_vectors(vec)
    save_vectors(only1, torch.stack([torch.zeros(64), v[1]]), base_model=str(tiny_lm))
    out = tmp_path / "out"
    result = invoke(*common("--vectors", vec, "-o", out, "--layers", "1"))
    assert result.exit_code == 0, result.output
    ref = invoke(*common("--vectors", only1, "-o", tmp_path / "ref"))
    assert ref.exit_code == 0, ref.output
    assert (out / "summary.json").is_file()  # one target: the output directory itself
    assert json.loads((out / "summary.json").read_text())["layers"] == [1]
    assert json.loads((out / "summary.json").read_text())["label"] == "vec-layers-1"
    assert texts(out.parent, out.name, bench) == texts(tmp_path, "ref", bench)


@pytest.mark.parametrize(("extra", "needle"), [
    (["--layers", "5"], "layer(s) 5 do not exist"),
    (["--scale", "1,x"], "'x' is not a number"),
    (["--layers", "1-0"], "runs backwards"),
])
def test_bad_scale_or_layers_write_nothing(tiny_lm, tiny_problems, vec, tmp_path, extra, needle, common):
    out = tmp_path / "out"
    one_line_error(invoke(*common("--vectors", vec, "-o", out, *extra)), needle)
    assert not out.exists()


def test_layers_that_keep_no_steered_layer(tiny_lm, tiny_problems, tmp_path, common):
    single = save_vectors(tmp_path / "l1.safetensors", torch.randn(2, 64), base_model=str(tiny_lm), layers=[1])
    out = tmp_path / "out"
    one_line_error(invoke(*common("--vectors", single, "-o", out, "--layers", "0")),
                   "keeps none of the steered layers (1)")
    assert not out.exists()


def test_scale_on_an_adapter_is_refused(tiny_lm, tiny_problems, tmp_path, common):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm),
                           LoraConfig(r=2, target_modules=["down_proj"]))
    adapter = tmp_path / "ad"
    model.save_pretrained(adapter)
    out = tmp_path / "out"
    one_line_error(invoke(*common("--adapter", adapter, "--model", tiny_lm, "-o", out,
                                  "--scale", "0.5")), "apply to steering vectors; ad is a lora adapter")
    assert not out.exists()


REWARD = textwrap.dedent('''
    def length(completions, answers, rows):
        if any(c == "boom" for c in completions):
            raise RuntimeError("boom")
        return [float(len(c)) + (100.0 if r.get("problem") == "What is 2+2?" else 0.0)
                for c, r in zip(completions, rows)]
''')


def test_reward_beside_accuracy(tiny_lm, tiny_problems, vec, tmp_path, common):
    plugin = tmp_path / "rw.py"
    plugin.write_text(REWARD)
    out = tmp_path / "out"
    result = invoke(*common("--vectors", vec, "-o", out, "--reward", f"{plugin}:length",
                            "--set", "train.grader_workers=1"))
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "seed-0" / f"{tiny_problems.stem}.jsonl").read_text().splitlines()]
    rewards = [s["reward"] for line in lines for s in line["samples"]]
    # the plug-in saw the text without its stop token, and the benchmark row's fields
    from steer_cli.models import load_tokenizer

    tok = load_tokenizer(str(tiny_lm))
    want = []
    for line in lines:
        s = line["samples"][0]
        text = s["text"]
        if s["stopped"]:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            text = tok.decode(ids[:-1], skip_special_tokens=False)
        want.append(len(text) + (100.0 if line["problem"] == "What is 2+2?" else 0.0))
    assert rewards == want
    summary = json.loads((out / "summary.json").read_text())
    entry = summary["benchmarks"][tiny_problems.stem]["reward"]
    assert entry["mean"] == pytest.approx(sum(want) / len(want)) and entry["errors"] == 0
    assert summary["reward"]["name"] == f"{plugin}:length" and len(summary["reward"]["sha256"]) == 64
    assert "mean reward" in " ".join(result.stdout.split())

    # another reward into the same directory is another evaluation
    one_line_error(invoke(*common("--vectors", vec, "-o", out, "--reward", "exact")), "--overwrite")
    exact = invoke(*common("--vectors", vec, "-o", tmp_path / "exact", "--reward", "exact"))
    assert exact.exit_code == 0, exact.output
    s = json.loads((tmp_path / "exact" / "summary.json").read_text())
    assert s["benchmarks"][tiny_problems.stem]["reward"]["mean"] == 0.0 and s["reward"]["sha256"] is None


def test_broken_reward_fails_before_writing(tiny_lm, tiny_problems, vec, tmp_path, common):
    bad = tmp_path / "bad.py"
    bad.write_text("def fn(c, a, r):\n    return [1.0]\n")
    out = tmp_path / "out"
    one_line_error(invoke(*common("--vectors", vec, "-o", out, "--reward", f"{bad}:fn")),
                   "returned 1 value(s) for 2")
    assert not out.exists()
    one_line_error(invoke(*common("--vectors", vec, "-o", out, "--reward", "nope.py:fn")),
                   "does not exist")
    assert not out.exists()
