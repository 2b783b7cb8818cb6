"""Steering places (setup.steering.place) on transformers models: the equivalences each place must
satisfy, checked on tiny random models of several families (the vLLM side: test_vllm_backend)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_model, sample_ids

from steer_cli.patching.archs import locate
from steer_cli.patching.steering import PLACES, attach_steering

FAMILIES = ("qwen2", "llama", "gemma2", "gpt2", "gpt_neox")


def logits(model, ids=None):
    with torch.no_grad():
        return model(sample_ids() if ids is None else ids).logits


def steered(model, vectors, place, layers=None):
    with attach_steering(model, vectors, place=place, layers=layers, trainable=False):
        return logits(model)


def one_row(model, index, seed=0, scale=1.0):
    loc = locate(model)
    hidden = model.config.hidden_size
    v = torch.zeros(loc.num_layers, hidden)
    v[index] = scale * torch.randn(hidden, generator=torch.Generator().manual_seed(seed))
    return v


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_vector_at_any_place_is_the_base_model(family):
    model = make_model(family)
    base = logits(model)
    for place in PLACES:
        assert torch.equal(steered(model, torch.zeros(3, model.config.hidden_size), place), base), place
        v = one_row(model, 1)
        assert not torch.allclose(steered(model, v, place), base), f"{place}: the vector changed nothing"
    assert torch.equal(logits(model), base)  # every hook removed


@pytest.mark.parametrize("family", ("qwen2", "llama", "gpt2"))
def test_mlp_output_is_the_layer_output_and_the_down_proj_bias(family):
    """No norm follows the MLP here: the three places are the same point of the residual stream."""
    model = make_model(family)
    for i in range(3):
        v = one_row(model, i, seed=i)
        mlp = steered(model, v, "mlp_output")
        torch.testing.assert_close(mlp, steered(model, v, "layer_output"))
        assert torch.equal(mlp, steered(model, v, "down_proj_bias"))


def test_with_a_norm_after_the_mlp_the_output_places_differ():
    model = make_model("gemma2")
    v = one_row(model, 1)
    mlp = steered(model, v, "mlp_output")
    assert torch.equal(mlp, steered(model, v, "down_proj_bias"))  # the MLP ends in down_proj
    assert not torch.allclose(mlp, steered(model, v, "layer_output"), atol=1e-4)


def test_layer_output_at_i_is_the_input_residual_of_layer_i_plus_1():
    model = make_model("qwen2")
    v = one_row(model, 0)
    loc = locate(model)
    handle = loc.layers[1].register_forward_pre_hook(
        lambda module, args, kwargs: ((args[0] + v[0],) + args[1:], kwargs) if args else
        (args, {**kwargs, "hidden_states": kwargs["hidden_states"] + v[0]}), with_kwargs=True)
    try:
        moved = logits(model)
    finally:
        handle.remove()
    torch.testing.assert_close(steered(model, v, "layer_output"), moved)


@pytest.mark.parametrize("place", ["mlp_output", "layer_output"])
def test_last_layer_output_is_the_final_norm_input(place):
    model = make_model("qwen2")
    v = one_row(model, 2)
    loc = locate(model)
    handle = loc.final_norm.register_forward_pre_hook(lambda module, args: (args[0] + v[2],))
    try:
        want = logits(model)
    finally:
        handle.remove()
    torch.testing.assert_close(steered(model, v, place), want)


def test_attention_input_only_reaches_attention():
    """With layer i's o_proj zeroed the attention block outputs 0 whatever its input: a vector at its
    input changes nothing; the same holds for the MLP input with down_proj zeroed."""
    model = make_model("qwen2")
    loc = locate(model)
    v = one_row(model, 1, scale=3.0)
    with torch.no_grad():
        loc.attn(1).o_proj.weight.zero_()
        loc.down_proj(1).weight.zero_()
    base = logits(model)
    assert torch.equal(steered(model, v, "attn_input"), base)
    assert torch.equal(steered(model, v, "mlp_input"), base)
    assert not torch.allclose(steered(model, v, "attn_output"), base)


def test_attention_output_with_the_mlp_off_is_the_layer_output():
    """attn_output joins the residual stream before the MLP; with the MLP's down_proj zeroed the MLP
    adds nothing whatever it reads, so the layer's output is the same as with the vector at its end."""
    model = make_model("llama")
    loc = locate(model)
    with torch.no_grad():
        loc.down_proj(0).weight.zero_()
    v = one_row(model, 0)
    torch.testing.assert_close(steered(model, v, "attn_output"), steered(model, v, "layer_output"))


def test_places_are_single_layer_and_differentiable():
    model = make_model("qwen2")
    for place in PLACES:
        handle = attach_steering(model, one_row(model, 1), place=place, layers=[1])
        try:
            logits_ = model(sample_ids()).logits
            logits_.square().mean().backward()
            grad = handle.vectors.grad
            assert grad is not None and grad[1].abs().sum() > 0, place
            assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0, place
        finally:
            handle.remove()


def test_unknown_place_is_refused():
    from steer_cli.errors import SteerError

    with pytest.raises(SteerError, match="unknown steering place 'residual'"):
        attach_steering(make_model("qwen2"), place="residual")


@pytest.mark.parametrize("place", ["attn_input", "mlp_input", "attn_output"])
def test_bank_rows_at_a_place_equal_each_vector_alone(place):
    """The per-row vector bank works at every place: row b steered by entry idx[b] equals the batch
    steered by that entry's vectors."""
    model = make_model("qwen2")
    a, b = one_row(model, 1, seed=1), one_row(model, 2, seed=2)
    ids = sample_ids()
    with attach_steering(model, place=place, trainable=False) as handle:
        with handle.using_bank(torch.stack([a, b]), torch.tensor([1, 0])):
            banked = logits(model, ids)
    torch.testing.assert_close(banked[0], steered_one(model, b, place, ids[:1])[0])
    torch.testing.assert_close(banked[1], steered_one(model, a, place, ids[1:])[0])


def steered_one(model, vectors, place, ids):
    with attach_steering(model, vectors, place=place, trainable=False):
        return logits(model, ids)
