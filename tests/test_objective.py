"""The RL objective's pure functions against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import make_model

from steer_cli.train.batch import completion_logprobs, pack_left
from steer_cli.train.objective import group_advantages, k3_kl, kl_penalty, policy_loss, token_logprobs


def test_rloo_is_leave_one_out_mean():
    r = torch.tensor([[1.0, -1.0, -1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = group_advantages(r, "rloo")
    for g in range(2):
        for i in range(4):
            others = [r[g, j].item() for j in range(4) if j != i]
            assert adv[g, i].item() == pytest.approx(r[g, i].item() - sum(others) / 3)
    assert torch.equal(adv[1], torch.zeros(4))


def test_mean_and_rloo_differ_by_n_over_n_minus_1():
    r = torch.tensor([[1.0, -1.0, -1.0, -1.0, 1.0]])
    mean = group_advantages(r, "mean")
    torch.testing.assert_close(mean, r - r.mean())
    torch.testing.assert_close(group_advantages(r, "rloo"), mean * 5 / 4)


def test_mean_std_is_grpo():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0]])
    values = r[0].tolist()
    mu = sum(values) / 5
    sd = math.sqrt(sum((v - mu) ** 2 for v in values) / 4)
    expected = torch.tensor([[(v - mu) / (sd + 1e-4) for v in values]])
    torch.testing.assert_close(group_advantages(r, "mean_std"), expected)
    assert torch.equal(group_advantages(torch.ones(1, 3), "mean_std"), torch.zeros(1, 3))


def test_rloo_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(torch.ones(3, 1), "rloo")


def test_token_logprobs_match_softmax():
    logits = torch.randn(2, 3, 5)
    targets = torch.randint(0, 5, (2, 3))
    got = token_logprobs(logits, targets, temperature=0.7)
    probs = torch.softmax(logits / 0.7, dim=-1)
    expected = torch.log(torch.gather(probs, -1, targets.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(got, expected)


def test_policy_loss_is_token_mean_of_advantage_weighted_logprobs():
    seq_lp = torch.tensor([-3.0, -5.0, -1.0])
    adv = torch.tensor([0.5, -1.0, 2.0])
    got = policy_loss(seq_lp, adv, total_tokens=10)
    assert got.item() == pytest.approx(-(0.5 * -3 + -1 * -5 + 2 * -1) / 10)


def test_k3_kl():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    got = k3_kl(logp, ref)
    d = -0.5
    assert got[0, 0].item() == pytest.approx(math.exp(d) - d - 1)
    assert got[0, 1].item() == 0.0
    assert (k3_kl(torch.randn(50), torch.randn(50)) >= 0).all()
    mask = torch.tensor([[1.0, 0.0]])
    assert kl_penalty(logp, ref, mask, 4).item() == pytest.approx((math.exp(d) - d - 1) / 4)


def test_left_packed_logprobs_equal_unpadded_forward():
    """Left padding with position ids from the mask reproduces each sequence's own forward pass."""
    model = make_model("qwen2")
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    completions = [[12, 13], [14, 15, 16, 17]]
    packed = pack_left(prompts, completions, pad_id=0)
    with torch.no_grad():
        got = completion_logprobs(model, packed, temperature=1.0)
        for row, (p, c) in enumerate(zip(prompts, completions)):
            ids = torch.tensor([p + c])
            logits = model(ids).logits[0, len(p) - 1:-1]
            direct = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c).unsqueeze(-1)).squeeze(-1)
            width = packed.targets.shape[1]
            torch.testing.assert_close(got[row, width - len(c):], direct, rtol=1e-5, atol=1e-5)
            assert packed.completion_mask[row].sum().item() == len(c)
            assert packed.targets[row, width - len(c):].tolist() == c


@pytest.mark.parametrize("temperature,chunk", [(1.0, 3), (0.7, 4), (1.3, 64)])
def test_chunked_logprobs_equal_the_direct_computation_with_gradients(temperature, chunk):
    from steer_cli.train.objective import chunked_token_logprobs, token_logprobs

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    upstream = torch.randn(2, 5, generator=g, dtype=torch.float64)

    direct = token_logprobs(hidden @ weight.T, targets, temperature)
    (direct * upstream).sum().backward()
    expected = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad, weight.grad = None, None
    chunked = chunked_token_logprobs(hidden, weight, targets, temperature, chunk)
    (chunked * upstream).sum().backward()

    torch.testing.assert_close(chunked, direct.float())
    torch.testing.assert_close(hidden.grad, expected[0])
    torch.testing.assert_close(weight.grad, expected[1])



@pytest.mark.parametrize("model_type,overrides", [("llama", {}), ("qwen2", {}), ("gemma", {}), ("gemma2", {}),
                                                  ("granite", {"logits_scaling": 4.0}), ("gpt_neox", {}),
                                                  ("gpt2", {})])
def test_chunked_completion_logprobs_equal_the_models_logits(model_type, overrides):
    """For every architecture: the body + unembedding split (or the fallback where logits are
    soft-capped or scaled) gives the model's own log-probs, and the same gradients to the vectors."""
    from steer_cli.patching.steering import attach_steering

    model = make_model(model_type, **overrides)
    vocab = model.config.vocab_size
    packed = pack_left([[5, 6, 7], [8, 9]], [[10, 11, 12, 13], [14, 15]], pad_id=0)
    packed.targets.clamp_(max=vocab - 1)
    handle = attach_steering(model, 0.1 * torch.randn(model.config.num_hidden_layers, model.config.hidden_size))
    grads = []
    for chunk in (0, 3):
        handle.vectors.grad = None
        logp = completion_logprobs(model, packed, 0.9, chunk_tokens=chunk)
        (logp * packed.completion_mask).sum().backward()
        grads.append((logp.detach(), handle.vectors.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    torch.testing.assert_close(grads[1][1], grads[0][1])


def test_split_unembedding_only_where_logits_are_a_plain_matmul():
    from steer_cli.train.batch import split_unembedding

    assert split_unembedding(make_model("llama")) is not None
    assert split_unembedding(make_model("gpt2")) is not None
    assert split_unembedding(make_model("gemma2")) is None  # final logit soft-capping
    assert split_unembedding(make_model("granite")) is not None  # logits_scaling 1.0
    assert split_unembedding(make_model("granite", logits_scaling=4.0)) is None  # logits divided by it


def test_chunked_logprobs_through_a_lora_wrapped_model():
    from steer_cli.patching.setups import prepare_setup

    model = make_model("qwen2")
    trainable = prepare_setup(model, "lora", lora_rank=2, lora_alpha=2.0)
    for p in trainable.params:  # non-zero B so the adapter changes the logits
        torch.nn.init.normal_(p, std=0.1)
    packed = pack_left([[5, 6, 7], [8, 9]], [[10, 11, 12], [14, 15]], pad_id=0)
    results = []
    for chunk in (0, 2):
        for p in trainable.params:
            p.grad = None
        logp = completion_logprobs(trainable.model, packed, 1.0, chunk_tokens=chunk)
        (logp * packed.completion_mask).sum().backward()
        results.append((logp.detach(), [p.grad.clone() for p in trainable.params]))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b)
