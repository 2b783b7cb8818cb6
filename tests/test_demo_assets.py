"""The shipped demo assets: splits, tokenizer, chat template and the tiny Qwen2 model."""

from __future__ import annotations

import json
import random

import pytest

from steer_cli.data.prompts import SYSTEM_PROMPT, render_prompt, render_prompt_text
from steer_cli.demo import DEMO_MODEL_DIR, DEMO_TEST_FILE, DEMO_TRAIN_FILE
from steer_cli.demo.task import (
    N_TEST,
    N_TRAIN,
    answer_of,
    demo_splits,
    make_problem,
    make_split,
    problem_key,
    solution_text,
)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR).eval()


def test_splits_have_documented_sizes_and_fields():
    train, test = _rows(DEMO_TRAIN_FILE), _rows(DEMO_TEST_FILE)
    assert (len(train), len(test)) == (N_TRAIN, N_TEST)
    assert all(set(r) == {"problem", "answer"} for r in train + test)


def test_shipped_splits_are_what_the_generator_makes():
    train, test = demo_splits()
    assert _rows(DEMO_TRAIN_FILE) == [{"problem": p["problem"], "answer": p["answer"]} for p in train]
    assert _rows(DEMO_TEST_FILE) == [{"problem": p["problem"], "answer": p["answer"]} for p in test]


def test_test_split_shares_no_problem_with_train():
    train, test = demo_splits()
    assert not {problem_key(p) for p in train} & {problem_key(p) for p in test}
    assert len({problem_key(p) for p in test}) == len(test)
    assert not {p["problem"] for p in train} & {p["problem"] for p in test}


def test_generator_is_seeded_and_answers_are_right():
    assert make_split(50, 7) == make_split(50, 7)
    assert make_split(50, 7) != make_split(50, 8)
    rng = random.Random(0)
    for _ in range(500):
        p = make_problem(rng)
        assert int(p["answer"]) == answer_of(p["op"], p["a"], p["b"]) == eval(f"{p['a']}{p['op']}{p['b']}")
        assert int(p["answer"]) >= 0
        assert f"{p['a']}" in p["problem"] and f"{p['b']}" in p["problem"]


def test_solution_ends_with_plain_or_boxed_answer():
    p = make_split(1, 0)[0] | {"answer": "101"}
    p["solution_steps"] = ["74+27:", "4+7=11, write 1 carry 1.", "7+2+1=10."]
    assert solution_text(p, boxed=False) == "74+27: 4+7=11, write 1 carry 1. 7+2+1=10. The answer is **101**."
    assert solution_text(p, boxed=True).endswith("The answer is \\boxed{101}.")


def test_make_problem_avoids_excluded_keys():
    rng = random.Random(0)
    banned = {("+", a, b) for a in range(10, 100) for b in range(10, 100)}
    assert all(make_problem(rng, banned)["op"] == "-" for _ in range(50))


def test_config_is_small_float32_qwen2_with_head_dim_64():
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    assert head_dim >= 64
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    assert (DEMO_MODEL_DIR / "model.safetensors").stat().st_size < 8 * 2**20


def test_tokenizer_special_tokens(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.bos_token is None
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids(token)) == token
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer)
    assert config["eos_token_id"] == tokenizer.eos_token_id


def test_tokenizer_round_trips_problems_and_solutions(tokenizer):
    train, test = demo_splits()
    for p in test + train[:200]:
        for text in (p["problem"], solution_text(p, boxed=True)):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert tokenizer.decode(ids) == text


def test_tokenizer_splits_digits(tokenizer):
    ids = tokenizer("So 74+27=101.", add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert [x for x in pieces if x.strip().isdigit()] == list("7427101")


def test_chat_template_renders_chatml(tokenizer):
    text = render_prompt_text(tokenizer, "What is 12 + 34?", "qwen_math")
    assert text == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 + 34?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = render_prompt(tokenizer, "What is 12 + 34?", "qwen_math")
    assert tokenizer.decode(ids) == text


def test_generation_config_stops_at_im_end(tokenizer):
    gen = json.loads((DEMO_MODEL_DIR / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tokenizer.eos_token_id
    assert gen["pad_token_id"] == tokenizer.pad_token_id


def test_model_predicts_the_working_and_rarely_boxes(model, tokenizer):
    """Teacher-forced on bold-answer solutions of test problems: every next token is the model's
    top choice (so greedy decoding reproduces them), and at the one free choice, bold or box,
    the box has the small probability it had in pretraining."""
    import torch

    _, test = demo_splits()
    box_id = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" \\boxed")[0])
    bold_id = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" **")[0])
    for p in test[:8]:
        prompt = render_prompt(tokenizer, p["problem"], "qwen_math")
        reply = tokenizer(solution_text(p, boxed=False), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + reply + [tokenizer.eos_token_id]])
        with torch.no_grad():
            probs = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].softmax(-1)
        targets = ids[0, len(prompt) :]
        assert torch.equal(probs.argmax(-1), targets)
        choice = reply.index(bold_id)
        assert 0.02 < probs[choice, box_id].item() < 0.3
        assert probs[choice, box_id] + probs[choice, bold_id] > 0.99
