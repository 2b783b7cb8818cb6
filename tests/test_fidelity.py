"""Where steer follows the paper's code to the letter (issue 17), on CPU with tiny models: prompt
text, the stop set, per-prompt completion budgets in train and eval, the KL reference of every
setup, and PiSSA adapters saved in the form that applies to the original weights.
(The vLLM halves are in test_vllm_backend.py and test_vllm_e2e.py.)"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from cli_helpers import interrupted_at_step
from conftest import CoinGrader
from tiny_models import make_model, sample_ids, save_tiny_lm
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.data.prompts import render_prompt_text, stop_token_ids
from steer_cli.errors import SteerError
from steer_cli.patching import setups
from steer_cli.patching.setups import prepare_setup
from steer_cli.rollout import base
from steer_cli.rollout.base import SamplingSpec
from steer_cli.settings import Layer, build_settings

_register()
runner = CliRunner()
EOS_TEXT = "<|endoftext|>"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


# -- 6. prompt text ----------------------------------------------------------------------------------


def test_text_templates_match_the_reference_word_for_word():
    tok = SimpleNamespace(chat_template=None, bos_token="<s>")
    assert render_prompt_text(tok, "What is 1+1?", "qwen_math") == (
        "<s>A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "Please reason step by step, and put your final answer within \\boxed{}.\n\nUser: What is 1+1? Assistant:")
    assert render_prompt_text(tok, "What is 1+1?", "r1") == (
        "<s>A conversation between User and Assistant. The User asks a question, and the Assistant solves it. "
        "The Assistant first thinks about the reasoning process in the mind and then provides the User with the "
        "answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within "
        "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer "
        "here </answer>.\nUser: What is 1+1?\nAssistant: <think>")


# -- 2. the stop set ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_base_dir(tmp_path_factory):
    """Qwen-base-like tokenizer: EOS <|endoftext|> (256), <|im_end|> (257) a plain special token."""
    return save_tiny_lm(tmp_path_factory.mktemp("qwen-base"), qwen_base=True)


def test_stop_set_is_stops_plus_tokenizer_eos_plus_generation_config_eos(qwen_base_dir, tmp_path):
    from transformers import AutoTokenizer

    from steer_cli.data.prompts import completion_stop_ids, model_eos_ids

    tok = AutoTokenizer.from_pretrained(qwen_base_dir)
    assert (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) == (256, 257)
    assert stop_token_ids(tok, ["<|im_end|>"]) == (257, 256)  # EOS stays a stop beside <|im_end|>
    assert stop_token_ids(tok) == (256,)
    assert stop_token_ids(tok, ["<|im_end|>"], eos_ids=(258, 256)) == (257, 256, 258)
    # every id of generation_config.eos_token_id (Llama-3.1-Instruct lists three)
    gen = json.loads((qwen_base_dir / "generation_config.json").read_text())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((qwen_base_dir / name).read_bytes())
    (model_dir / "generation_config.json").write_text(json.dumps(dict(gen, eos_token_id=[256, 258])))
    assert model_eos_ids(str(model_dir)) == (256, 258)
    assert completion_stop_ids(tok, ["<|im_end|>"], str(model_dir)) == (257, 256, 258)
    (model_dir / "generation_config.json").unlink()  # then the config's eos_token_id
    assert model_eos_ids(str(model_dir)) == (256,)
    with pytest.raises(SteerError, match="not a single token"):
        stop_token_ids(tok, ["</answer>"])


@pytest.fixture(scope="module")
def eos_lm(qwen_base_dir, tmp_path_factory):
    """The Qwen-base-like model made to emit EOS often: the EOS row of its unembedding is 20x that
    of a byte it likes, so sampled completions hit EOS after a few tokens and go on past it unless
    EOS stops them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("eos-lm")
    model = AutoModelForCausalLM.from_pretrained(qwen_base_dir).eval()
    tok = AutoTokenizer.from_pretrained(qwen_base_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True)
    prompt = torch.tensor([list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0)
        liked = int(out[0, -1])
        model.lm_head.weight[tok.eos_token_id] = 20 * model.lm_head.weight[liked]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


class RecordingGrader(CoinGrader):
    """Grades as conftest's CoinGrader and keeps every text it saw."""

    seen: list[str] = []

    def grade(self, items):
        RecordingGrader.seen.extend(text for text, _ in items)
        return super().grade(items)


def test_training_completions_end_at_eos_beside_a_stop_token(eos_lm, tiny_problems, tmp_path, monkeypatch):
    import steer_cli.rewards.pool

    monkeypatch.setattr(steer_cli.rewards.pool, "Grader", RecordingGrader)
    RecordingGrader.seen = []
    out = tmp_path / "run"
    result = invoke("train", "--model", eos_lm, "--dataset", tiny_problems, "--output-dir", out,
                    "--prompts-per-step", "4", "--num-generations", "4", "--max-new-tokens", "24", "--max-steps", "1",
                    "--set", "prompt.stop=['<|im_end|>']", "--set", "train.grader_workers=0")
    assert result.exit_code == 0, result.output
    texts = RecordingGrader.seen
    assert len(texts) == 16 and sum(EOS_TEXT in t for t in texts) >= 8
    # nothing after EOS reaches the grader (and so the reward, the loss or the token count)
    assert all(t.count(EOS_TEXT) == 1 and t.endswith(EOS_TEXT) for t in texts if EOS_TEXT in t)
    metrics = json.loads((out / "metrics.jsonl").read_text())
    assert metrics["frac_truncated"] < 0.5 and metrics["completion_len_max"] <= 24


# -- 3 and 5. completion budgets -----------------------------------------------------------------


def test_completion_budgets_are_per_prompt():
    assert base.completion_budgets([10, 50], 1024, 100) == (90, 50)
    assert base.completion_budgets([10, 50], 20, 100) == (20, 20)
    assert base.completion_budgets([10, 50], None, 100) == (90, 50)
    assert base.completion_budgets([10, 50], 30, None) == (30, 30)
    assert base.completion_budgets([120], None, 100) == (1,)


def test_training_budget_is_each_prompts_own():
    from steer_cli.train.run import Trainer

    s = build_settings([Layer({"rollout": {"max_seq_length": 100, "max_new_tokens": 1000, "num_generations": 2}},
                              "test")])
    assert Trainer(s)._budgets([[1] * 10, [1] * 60]) == (90, 40)


def test_eval_budget_is_the_rest_of_the_eval_context_not_the_training_budget():
    from steer_cli.cli.common import settings_from_cli
    from steer_cli.evaluate.protocol import resolve_protocol
    from steer_cli.evaluate.targets import Target

    s = settings_from_cli(preset="qwen2.5-7b/deepscaler/steering", config=None, sets=[], flags={})
    assert (s.rollout.max_new_tokens, s.eval.max_seq_length) == (8192, 32768)
    proto = resolve_protocol(s, Target("final", "steering", s.model.name, output_dir=None))
    assert (proto.max_new_tokens, proto.max_seq_length) == (None, 32768)
    assert base.completion_budgets([200, 1200], proto.max_new_tokens, proto.max_seq_length) == (32568, 31568)
    # eval.max_new_tokens still caps it when given; with neither, the training budget is the fallback
    capped = build_settings([Layer({"eval": {"max_seq_length": 4096, "max_new_tokens": 3000}}, "test")])
    assert resolve_protocol(capped, Target("base", "base", "m", output_dir=None)).max_new_tokens == 3000
    bare = build_settings([Layer({"rollout": {"max_new_tokens": 77}}, "test")])
    assert resolve_protocol(bare, Target("base", "base", "m", output_dir=None)).max_new_tokens == 77


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_hf_rows_of_one_batch_get_their_own_budgets(tiny_lm, temperature):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steer_cli.rollout.hf import HFBackend

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    backend = HFBackend(AutoModelForCausalLM.from_pretrained(tiny_lm).eval(), tok, batch_prompts=8)
    prompts = [[40] * 5, [41] * 30, [42] * 12]
    budgets = base.completion_budgets([len(p) for p in prompts], None, 45)
    assert budgets == (40, 15, 33)
    spec = SamplingSpec(n=2, temperature=temperature, max_new_tokens=max(budgets), budgets=budgets,
                        stop_token_ids=(tok.convert_tokens_to_ids("<|im_start|>"),), seed=3)
    groups = backend.generate(prompts, spec)
    for group, budget in zip(groups, budgets):
        for c in group:
            assert len(c.token_ids) == budget and c.finish_reason == "length"
    # what the reference does: generate for the largest budget, then cut each at its own
    longest = backend.generate(prompts, replace(spec, budgets=()))
    assert [[c.token_ids for c in g] for g in groups] == [[c.token_ids[:b] for c in g]
                                                          for g, b in zip(longest, budgets)]


def test_eval_gives_each_prompt_the_rest_of_its_context(tiny_lm, tmp_path):
    bench = tmp_path / "mixed.jsonl"
    rows = [{"problem": "1+1?", "answer": "2"},
            {"problem": "What is the sum of seventeen and twenty-five, written in digits?", "answer": "42"},
            {"problem": "2+3?", "answer": "5"}]
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = invoke("eval", "--model", tiny_lm, "--benchmarks", bench, "--temperature", "0", "-o", out,
                    "--set", "eval.max_seq_length=240", "--set", "train.grader_workers=0",
                    "--set", "prompt.stop=['<|im_start|>']")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "seed-0" / "mixed.jsonl").read_text().splitlines()]
    lengths = [line["prompt_length"] for line in lines]
    assert len(set(lengths)) == 2
    for line in lines:
        assert line["max_new_tokens"] == 240 - line["prompt_length"]
        (sample,) = line["samples"]
        assert sample["stopped"] or sample["length"] == line["max_new_tokens"]
    short = [line for line in lines if line["prompt_length"] == min(lengths)]
    assert any(not line["samples"][0]["stopped"] and line["samples"][0]["length"] > 240 - max(lengths)
               for line in short)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["max_new_tokens"], summary["max_seq_length"]) == (None, 240)


# -- 4. the KL reference -----------------------------------------------------------------------------


def _kl_and_grads(trainable, seqs):
    from steer_cli.train.update import accumulate_policy_gradients

    for p in trainable.params:
        p.grad = None
    _, kl = accumulate_policy_gradients(trainable, seqs, global_tokens=5.0, temperature=1.0, micro_batch_size=1,
                                        pad_id=0, device="cpu", kl_coef=1.0)
    return kl, [p.grad for p in trainable.params if p.grad is not None]


SEQS = [([5, 6, 7], [8, 9, 10], 0.0), ([5, 6], [11, 12], 0.0)]  # zero advantages: only the KL pulls


def test_full_fine_tuning_keeps_a_frozen_reference_so_kl_moves():
    model = make_model("qwen2")
    trainable = prepare_setup(model, "full", kl_reference=True)
    kl, grads = _kl_and_grads(trainable, SEQS)
    assert kl == 0.0 and all(float(g.abs().sum()) == 0.0 for g in grads)  # policy == reference
    with torch.no_grad():  # one update moves the weights
        for p in trainable.params:
            p.add_(0.02 * torch.randn_like(p))
    kl, grads = _kl_and_grads(trainable, SEQS)
    assert kl > 0 and sum(float(g.abs().sum()) for g in grads) > 0
    ids = sample_ids()
    torch.testing.assert_close(logits(trainable.reference_model, ids), logits(make_model("qwen2"), ids))
    with pytest.raises(SteerError, match="reference copy"):
        _kl_and_grads(prepare_setup(make_model("qwen2"), "full"), SEQS)


def test_offloaded_reference_copy_is_frozen_on_cpu_and_keeps_tied_weights():
    model = make_model("llama", tie_word_embeddings=True)
    ref = setups.frozen_reference_copy(model, offload=True)
    assert ref.lm_head.weight is ref.model.embed_tokens.weight
    assert all(p.device.type == "cpu" and not p.requires_grad for p in ref.parameters()) and not ref.training
    ids = sample_ids()
    before = logits(model, ids)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    torch.testing.assert_close(logits(ref, ids), before)
    low = setups.frozen_reference_copy(model, dtype=torch.bfloat16)  # a float32-master policy's copy
    assert {p.dtype for p in low.parameters()} == {torch.bfloat16}
    assert {b.dtype for b in low.buffers()} == {b.dtype for b in model.buffers()}
    trainable = prepare_setup(make_model("qwen2"), "full", kl_reference=True, reference_offload=True)
    with trainable.reference() as reference:
        assert reference is trainable.reference_model
    assert trainable.reference_offload and next(trainable.reference_model.parameters()).device.type == "cpu"


def test_pissa_reference_is_the_original_model_not_the_residual():
    ids = sample_ids()
    original = logits(make_model("qwen2"), ids)
    trainable = prepare_setup(make_model("qwen2"), "lora", lora_rank=4, lora_alpha=4, lora_init="pissa")
    with torch.no_grad():
        for p in trainable.params:
            p.add_(0.05 * torch.randn_like(p))
    trained = logits(trainable.model, ids)
    with trainable.reference() as reference:
        torch.testing.assert_close(logits(reference, ids), original)
    assert torch.equal(logits(trainable.model, ids), trained)  # the trained adapter is back


@pytest.mark.parametrize("setup,lr", [("full", "1e-2"), ("lora-pissa", "1e-2")])
def test_kl_is_logged_and_nonzero_after_an_update(tiny_lm, tiny_problems, tmp_path, coin_grader, setup, lr):
    extra = ["--setup", "lora", "--set", "setup.lora.init=pissa"] if setup == "lora-pissa" else ["--setup", setup]
    out = tmp_path / setup
    result = invoke("train", "--model", tiny_lm, "--dataset", tiny_problems, "--output-dir", out,
                    "--prompts-per-step", "2", "--num-generations", "3", "--max-new-tokens", "6", "--max-steps", "2",
                    "--lr", lr, "--set", "train.kl_coef=0.1", "--set", "train.warmup_ratio=0",
                    "--set", "train.grader_workers=0", *extra)
    assert result.exit_code == 0, result.output
    m = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert m[0]["kl"] == 0.0  # the policy starts as the reference
    assert m[1]["kl"] > 0.0


# -- 1. PiSSA adapters -------------------------------------------------------------------------------


def test_pissa_adapter_is_saved_converted_for_the_original_weights(tmp_path):
    ids = sample_ids()
    trainable = prepare_setup(make_model("qwen2"), "lora", lora_rank=4, lora_alpha=4, lora_init="pissa")
    with torch.no_grad():
        for p in trainable.params:
            p.add_(0.05 * torch.randn_like(p))
    trained = logits(trainable.model, ids)
    trainable.save_adapter(tmp_path / "converted")
    config = json.loads((tmp_path / "converted" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (8, 8, True)
    assert not setups.is_pissa_adapter(tmp_path / "converted")

    from peft import PeftModel

    on_original = PeftModel.from_pretrained(make_model("qwen2"), str(tmp_path / "converted"))
    torch.testing.assert_close(logits(on_original, ids), trained)
    # an adapter saved as trained converts the same way (what eval does for vLLM)
    trainable.model.save_pretrained(str(tmp_path / "raw"))
    assert setups.is_pissa_adapter(tmp_path / "raw")
    setups.convert_pissa_adapter(make_model("qwen2"), tmp_path / "raw", tmp_path / "again")
    torch.testing.assert_close(logits(PeftModel.from_pretrained(make_model("qwen2"), str(tmp_path / "again")), ids),
                               trained)


def test_pissa_run_checkpoints_convert_and_resume_exactly(tiny_lm, tiny_problems, tmp_path, coin_grader,
                                                          monkeypatch):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM


    common = ["train", "--model", tiny_lm, "--dataset", tiny_problems, "--prompts-per-step", "2",
              "--num-generations", "3", "--max-new-tokens", "6", "--max-steps", "3", "--save-every", "2",
              "--lr", "1e-2", "--setup", "lora", "--set", "setup.lora.init=pissa", "--set", "train.grader_workers=0"]
    whole = tmp_path / "whole"
    assert invoke(*common, "--output-dir", whole).exit_code == 0
    ckpt = whole / "checkpoint-2"
    assert not setups.is_pissa_adapter(ckpt / "adapter") and setups.is_pissa_adapter(ckpt / "adapter-pissa")
    ids = sample_ids(vocab=256)
    converted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), str(ckpt / "adapter"))
    as_trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), str(ckpt / "adapter-pissa"))
    torch.testing.assert_close(logits(converted, ids), logits(as_trained, ids))

    part = tmp_path / "part"
    with interrupted_at_step(monkeypatch, 2):
        assert invoke(*common, "--output-dir", part).exit_code != 0
    result = invoke(*common, "--output-dir", part, "--resume")
    assert result.exit_code == 0, result.output
    a = load_file(str(whole / "final" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(part / "final" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
