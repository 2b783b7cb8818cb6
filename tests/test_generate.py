"""steer generate: base and steered completions side by side (hf backend; vLLM in test_vllm_e2e)."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import one_line_error
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.errors import SteerError
from steer_cli.evaluate.generate import read_prompt_file
from steer_cli.settings import Layer, build_settings
from steer_cli.vectors.file import save_vectors

_register()
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def rows(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def vfile(tmp_path, tiny_lm):
    v = 2.0 * torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    return save_vectors(tmp_path / "v.safetensors", v, base_model=str(tiny_lm), place="layer_output")


def greedy(tiny_lm, prompts, vectors=None, max_new_tokens=8, **attach):
    """The reference: render with the default template, generate greedily with HFBackend directly."""
    from steer_cli.data.prompts import completion_stop_ids, render_prompt
    from steer_cli.models import load_causal_lm, load_tokenizer
    from steer_cli.patching.steering import attach_steering
    from steer_cli.rollout.base import SamplingSpec, content_text
    from steer_cli.rollout.hf import HFBackend

    tok = load_tokenizer(str(tiny_lm))
    model = load_causal_lm(str(tiny_lm), dtype="float32")
    spec = SamplingSpec(n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                        stop_token_ids=completion_stop_ids(tok, [], str(tiny_lm)))
    ids = [render_prompt(tok, p) for p in prompts]
    backend = HFBackend(model, tok)
    if vectors is None:
        return [content_text(g[0], tok) for g in backend.generate(ids, spec)]
    with attach_steering(model, vectors, trainable=False, **attach):
        return [content_text(g[0], tok) for g in backend.generate(ids, spec)]


def test_read_prompt_file(tmp_path):
    lines = tmp_path / "p.txt"
    lines.write_text("What is 2+2?\n\n  Name a colour.\n")
    assert read_prompt_file(lines) == ["What is 2+2?", "  Name a colour."]
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"problem": "a"}\n{"prompt": "b", "id": 3}\n"c"\n')
    assert read_prompt_file(jl) == ["a", "b", "c"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(SteerError, match="line 1: no prompt text"):
        read_prompt_file(bad)
    with pytest.raises(SteerError, match="does not exist"):
        read_prompt_file(tmp_path / "missing.txt")


def test_vectors_side_by_side_json(tiny_lm, vfile):
    prompts = ["What is 2+2?", "What is 7-3?"]
    out = rows(invoke("generate", *prompts, "--vectors", vfile, "--json", "--max-new-tokens", "8"))
    assert [set(r) for r in out] == [{"prompt", "base", "steered"}] * 2
    assert [r["prompt"] for r in out] == prompts
    from steer_cli.vectors.file import load_vectors

    v, _ = load_vectors(vfile)
    assert [r["base"] for r in out] == greedy(tiny_lm, prompts)
    assert [r["steered"] for r in out] == greedy(tiny_lm, prompts, v)
    assert [r["steered"] for r in out] != [r["base"] for r in out]


def test_scale_sweep_and_layers(tiny_lm, vfile):
    from steer_cli.vectors.file import load_vectors

    v, _ = load_vectors(vfile)
    out = rows(invoke("generate", "What is 2+2?", "--vectors", vfile, "--json", "--max-new-tokens", "8",
                      "--scale", "0,0.5", "--layers", "1"))
    assert [(r["scale"], set(r)) for r in out] == [(0.0, {"prompt", "scale", "base", "steered"}),
                                                   (0.5, {"prompt", "scale", "base", "steered"})]
    assert out[0]["steered"] == out[0]["base"]  # scale 0 is the base model
    assert [out[1]["steered"]] == greedy(tiny_lm, ["What is 2+2?"], v, scale=0.5, subset=[1])


def test_most_recent_run_and_its_dataset(tiny_lm, tmp_path, monkeypatch):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(5)))
    run = tmp_path / "runs" / "r"
    (run / "final").mkdir(parents=True)
    settings = build_settings([Layer({"model": {"name": str(tiny_lm)}, "data": {"dataset": str(data)},
                                      "generate": {"max_new_tokens": 5, "num_prompts": 2}}, "test")])
    (run / "settings.yaml").write_text(settings.to_yaml())
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    save_vectors(run / "final" / "vectors.safetensors", torch.randn(2, 64), base_model=str(tiny_lm))
    monkeypatch.chdir(tmp_path)
    result = invoke("generate", "--json")
    out = rows(result)
    assert "most recent training run: runs/r (final)" in " ".join(result.stderr.split())
    assert [r["prompt"] for r in out] == ["What is 0+1?", "What is 1+1?"]  # the run's data and settings
    assert [r["base"] for r in out] == greedy(tiny_lm, ["What is 0+1?", "What is 1+1?"], max_new_tokens=5)
    table = invoke("generate", "--run", run, "What is 3+3?")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()  # off a terminal: a header, then one line per prompt
    assert lines[0].split() == ["Prompt", "Base", "Steered"] and len(lines) == 2
    assert lines[1].startswith("What is 3+3?  ")


def test_adapter(tiny_lm, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm),
                           LoraConfig(r=2, lora_alpha=64, target_modules=["down_proj"], init_lora_weights=False))
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    out = rows(invoke("generate", "What is 2+2?", "What is 5+5?", "--adapter", adapter, "--model", tiny_lm,
                      "--json", "--max-new-tokens", "8"))
    assert [r["base"] for r in out] == greedy(tiny_lm, ["What is 2+2?", "What is 5+5?"])
    assert [r["steered"] for r in out] != [r["base"] for r in out]
    one_line_error(invoke("generate", "x", "--adapter", adapter, "--model", tiny_lm, "--scale", "2"),
                   "--scale and --layers apply to steering vectors; this is a lora adapter")


@pytest.mark.parametrize(("extra", "needle"), [
    (["--run", "r", "--vectors", "v"], "give one of --run, --vectors and --adapter"),
    (["--model", "m"], "--model alone leaves nothing to compare with"),
    (["--layers", "5"], "layer(s) 5 do not exist"),
    (["--layers", "x"], "bad layer spec 'x'"),
    (["--scale", "a"], "'a' is not a number"),
    (["--temperature", "-1"], "generate.temperature"),
    (["--file", "nope.txt"], "prompt file nope.txt does not exist"),
])
def test_bad_input_is_one_line(tiny_lm, vfile, extra, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["generate", "x", *extra]
    if "--run" not in extra and "--model" not in extra:
        args += ["--vectors", str(vfile)]
    one_line_error(invoke(*args), needle)
