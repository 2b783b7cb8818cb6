"""steer study adaptive (E13): rank-1 LoRA adapters as token-wise steering; exact checks on tiny
random Qwen2 and Llama models, and one run on the demo."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import one_line_error
from peft import LoraConfig, get_peft_model
from tiny_models import make_model, make_tokenizer, sample_ids, save_tiny_lm
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.errors import SteerError
from steer_cli.models import load_causal_lm
from steer_cli.patching.archs import locate
from steer_cli.study.adaptive import SEGMENTS, LoraCapture, forced_stats, inspect_adapters, token_segments
from steer_cli.study.record import read_study

runner = CliRunner()
_register()


def _rank1(model, layer, *, alpha=3.0, zero_b=False, seed=0, rank=1, targets=None):
    config = LoraConfig(r=rank, lora_alpha=alpha, bias="none",
                        target_modules=targets or [f"model.layers.{layer}.mlp.down_proj"])
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: no effect to measure
            p.data.zero_() if zero_b else p.data.normal_(0, 0.5)
    return peft_model.eval()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_adapter_delta_is_magnitude_times_direction_at_every_token(family):
    model = _rank1(make_model(family), 1)
    ids = sample_ids(batch=1, length=9)
    down = locate(model).down_proj(1)
    outputs = {}
    handle = down.register_forward_hook(lambda m, i, o: outputs.__setitem__("on" if "on" not in outputs else "off", o))
    capture = LoraCapture(model, "default", [1])
    stats = forced_stats(model, ids[0].tolist(), capture)
    with model.disable_adapter():
        model(input_ids=ids, use_cache=False)
    handle.remove()
    magnitude, cosine, norms = (torch.from_numpy(x) for x in stats[1])
    delta = (outputs["on"] - outputs["off"])[0]
    u = capture.direction[1]
    torch.testing.assert_close(delta, magnitude[:, None] * u[None, :], rtol=1e-5, atol=1e-6)
    # the hooked base_layer output is the adapter-free MLP output
    mlp = outputs["off"][0]
    torch.testing.assert_close(norms, mlp.norm(dim=-1))
    torch.testing.assert_close(cosine, (mlp @ u) / mlp.norm(dim=-1))
    assert capture.scaling[1] == 3.0  # alpha / r: left out by the reference
    capture.remove()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_zero_lora_b_gives_zero_magnitude_and_the_base_logits(family):
    base = make_model(family)
    ids = sample_ids(batch=1, length=8)
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    model = _rank1(base, 2, zero_b=True)
    capture = LoraCapture(model, "default", [2])
    stats = forced_stats(model, ids[0].tolist(), capture)
    assert (stats[2][0] == 0).all()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=0)
    capture.remove()


def test_segments_mark_the_system_prompt_the_problem_and_the_template():
    tok = make_tokenizer()
    problem, system = "What is 12 + 30?", "Think step by step."
    ids, labels = token_segments(tok, problem, template="qwen_math", system_prompt=system, fmt=None, append_to=False)
    assert ids == tok(tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": problem}],
                                              tokenize=False, add_generation_prompt=True),
                      add_special_tokens=False)["input_ids"]
    pick = lambda seg: [i for i, lab in zip(ids, labels) if lab == SEGMENTS.index(seg)]  # noqa: E731
    assert tok.decode(pick("problem")) == problem and tok.decode(pick("system")) == system
    template = tok.decode(pick("template"))
    assert "<|im_start|>" in template and "assistant" in template and problem not in template
    # the problem's tokens are one run, the generation prompt after it
    runs = [lab for k, lab in enumerate(labels) if k == 0 or labels[k - 1] != lab]
    assert runs == [0, 1, 0, 2, 0]


def test_adapters_that_are_not_rank_1_down_proj_of_this_model_are_refused(tmp_path):
    lm = save_tiny_lm(tmp_path / "lm", num_hidden_layers=3)
    config = load_causal_lm(str(lm)).config
    good = tmp_path / "good"
    _rank1(load_causal_lm(str(lm)), 1).save_pretrained(good)
    assert [i.layers for i in inspect_adapters([good], config)] == [[1]]
    cases = {
        "rank 2": lambda: _rank1(load_causal_lm(str(lm)), 1, rank=2),
        "not only the MLP down": lambda: _rank1(load_causal_lm(str(lm)), 1, targets=["q_proj", "down_proj"]),
    }
    for needle, build in cases.items():
        build().save_pretrained(tmp_path / needle)
        with pytest.raises(SteerError, match=needle):
            inspect_adapters([tmp_path / needle], config)
    with pytest.raises(SteerError, match="both"):
        inspect_adapters([good, good], config)
    wide = save_tiny_lm(tmp_path / "wide", hidden_size=96)
    _rank1(load_causal_lm(str(wide)), 0).save_pretrained(tmp_path / "other")
    with pytest.raises(SteerError, match="another model"):
        inspect_adapters([tmp_path / "other"], config)
    deep = save_tiny_lm(tmp_path / "deep", num_hidden_layers=6)
    _rank1(load_causal_lm(str(deep)), 5).save_pretrained(tmp_path / "deep-adapter")
    with pytest.raises(SteerError, match="out of range"):
        inspect_adapters([tmp_path / "deep-adapter"], config)


def test_cli_on_the_demo_writes_the_study_resumes_and_refuses_bad_input(tmp_path):
    adapters = tmp_path / "adapters"
    for layer in (1, 3):
        _rank1(load_causal_lm("demo"), layer, seed=layer).save_pretrained(adapters / f"lora-1-layer-{layer}")
    out = tmp_path / "out"
    args = ["study", "adaptive", str(adapters), "--prompts", "2", "--max-new-tokens", "5", "-o", str(out)]
    first = runner.invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    printed = json.loads(first.stdout)
    assert [ls["layer"] for ls in printed["layers"]] == [1, 3] and printed["prompts"] == 2
    doc = read_study(out, "adaptive")
    layer1 = doc["results"]["layers"][0]
    assert set(layer1["by_segment"]) == set(SEGMENTS) and layer1["tokens"] > 0
    assert sum(layer1["by_segment"][s]["tokens"] for s in SEGMENTS) == layer1["tokens"]
    assert doc["results"]["figures"] == ["figures/adaptive.png", "figures/sample-0.png"]
    assert all((out / f).stat().st_size > 0 for f in doc["results"]["figures"])
    assert len(doc["inputs"]["adapters"]) == 2 and doc["inputs"]["adapters"][0]["sha256"]
    # the unit directions as a vectors file the logit lens reads
    lens = runner.invoke(app, ["lens", str(out / "directions.safetensors"), "--json", "--top-k", "2"])
    assert lens.exit_code == 0, lens.output
    assert [ll["layer"] for ll in json.loads(lens.stdout)["layers"]] == [1, 3]
    assert [round(n, 5) for n in json.loads(lens.stdout)["norms"]] == [0.0, 1.0, 0.0, 1.0]
    # an interrupted study (one chunk and study.json gone) resumes to the same numbers
    chunks = sorted((out / "partial").glob("adapter-*.safetensors"))
    assert len(chunks) == 2
    chunks[1].unlink()
    (out / "study.json").unlink()
    one_line_error(runner.invoke(app, args), "--resume")
    again = runner.invoke(app, [*args, "--resume", "--json", "--no-plot"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["layers"] == printed["layers"]
    one_line_error(runner.invoke(app, args), "--overwrite")
    (out / "study.json").unlink()  # unfinished again: resuming it with other settings is refused
    one_line_error(runner.invoke(app, [*args, "--prompts", "3", "--resume"]), "other", "--overwrite")
    # adapters of another model, and a layer the demo does not have
    wide = save_tiny_lm(tmp_path / "wide", hidden_size=96)
    _rank1(load_causal_lm(str(wide)), 0).save_pretrained(tmp_path / "other")
    one_line_error(runner.invoke(app, ["study", "adaptive", str(tmp_path / "other"), "--model", "demo",
                                       "-o", str(tmp_path / "o2")]), "another model")
    one_line_error(runner.invoke(app, ["study", "adaptive", str(tmp_path / "nowhere"), "--model", "demo"]),
                   "does not exist")
    assert not (tmp_path / "o2").exists()
