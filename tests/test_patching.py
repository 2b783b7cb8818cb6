"""The patching layer on a tiny random model of every family in the architecture table."""

from __future__ import annotations

import pytest
import torch
from tiny_models import CONFIGS, make_model, sample_ids
from torch import nn

from steer_cli.errors import SteerError
from steer_cli.patching.archs import ARCHITECTURES, locate
from steer_cli.patching.setups import prepare_setup
from steer_cli.patching.steering import attach_steering

MODEL_TYPES = list(CONFIGS)


def test_table_is_covered_by_tests():
    table = {mt for spec in ARCHITECTURES for mt in spec.model_types}
    assert table - {"olmo3"} == set(MODEL_TYPES)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _random_vectors(model, scale=0.5, seed=3):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(model.config.num_hidden_layers, model.config.hidden_size, generator=g)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_zero_vectors_are_bit_identical(model_type):
    model = make_model(model_type)
    ids = sample_ids()
    base = _logits(model, ids)
    with attach_steering(model):
        steered = _logits(model, ids)
    assert torch.equal(base, steered)


def _layer_outputs(model, ids):
    """Each decoder layer's output, captured by hooks that run after any steering hook."""
    outputs = []

    def grab(module, args, output):
        outputs.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    hooks = [layer.register_forward_hook(grab) for layer in locate(model).layers]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return outputs


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_vector_adds_to_that_layers_output(model_type):
    model = make_model(model_type)
    ids = sample_ids()
    layer = 1
    vec = torch.zeros(model.config.num_hidden_layers, model.config.hidden_size)
    vec[layer] = torch.randn(model.config.hidden_size)
    base = _layer_outputs(model, ids)
    with attach_steering(model, vec):
        steered = _layer_outputs(model, ids)
    torch.testing.assert_close(steered[0], base[0], rtol=0, atol=0)
    torch.testing.assert_close(steered[layer], base[layer] + vec[layer])
    assert not torch.allclose(steered[layer + 1], base[layer + 1])


def _add_real_bias(model, vectors):
    """The reference implementation's form: give each down_proj a bias holding the vector."""
    located = locate(model)
    for i in range(located.num_layers):
        proj = located.down_proj(i)
        if getattr(proj, "bias", None) is None:
            proj.bias = nn.Parameter(vectors[i].clone())
        else:
            proj.bias = nn.Parameter(proj.bias.detach() + vectors[i])


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_down_proj_bias_form_gives_same_logits(model_type):
    model = make_model(model_type)
    ids = sample_ids()
    vec = _random_vectors(model)
    with attach_steering(model, vec, place="down_proj_bias"):
        hooked = _logits(model, ids)
    with attach_steering(model, vec, place="layer_output"):
        layer_out = _logits(model, ids)
    biased = make_model(model_type)
    _add_real_bias(biased, vec)
    reference = _logits(biased, ids)
    torch.testing.assert_close(hooked, reference)
    if locate(model).spec.mlp_output_is_residual:
        torch.testing.assert_close(layer_out, reference)
    else:  # a norm after the MLP: the two places are different interventions
        assert not torch.allclose(layer_out, reference, atol=1e-4)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_remove_restores_model_exactly(model_type):
    model = make_model(model_type)
    ids = sample_ids()
    base = _logits(model, ids)
    handle = attach_steering(model, _random_vectors(model))
    assert not torch.equal(_logits(model, ids), base)
    handle.remove()
    assert torch.equal(_logits(model, ids), base)
    assert not handle.attached
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_gradients_reach_only_the_vectors(model_type):
    model = make_model(model_type)
    trainable = prepare_setup(model, "steering")
    loss = model(sample_ids()).logits.logsumexp(-1).mean()
    loss.backward()
    assert trainable.steering.vectors.grad is not None
    assert trainable.steering.vectors.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    cfg = model.config
    assert trainable.num_trainable == cfg.num_hidden_layers * cfg.hidden_size


def test_single_layer_steering_only_touches_that_layer():
    model = make_model("qwen2")
    handle = attach_steering(model, _random_vectors(model), layers=[2])
    model(sample_ids()).logits.sum().backward()
    grad = handle.vectors.grad
    assert grad[2].abs().sum() > 0
    assert torch.equal(grad[:2], torch.zeros_like(grad[:2]))


def test_disabled_runs_the_base_model():
    model = make_model("llama")
    ids = sample_ids()
    base = _logits(model, ids)
    handle = attach_steering(model, _random_vectors(model))
    with handle.disabled():
        assert torch.equal(_logits(model, ids), base)
    assert not torch.equal(_logits(model, ids), base)


def test_lora_setup_targets_only_down_proj():
    model = make_model("qwen2")
    trainable = prepare_setup(model, "lora", lora_rank=4, lora_alpha=4)
    names = [n for n, p in trainable.model.named_parameters() if p.requires_grad]
    assert names and all("down_proj" in n and "lora_" in n for n in names)
    cfg = model.config
    per_layer = 4 * (cfg.intermediate_size + cfg.hidden_size)
    assert trainable.num_trainable == cfg.num_hidden_layers * per_layer


def test_lora_on_gpt2_skips_attention_c_proj():
    model = make_model("gpt2")
    trainable = prepare_setup(model, "lora")
    names = [n for n, p in trainable.model.named_parameters() if p.requires_grad]
    assert names and all(".mlp.c_proj." in n for n in names)


def test_full_setup_trains_everything():
    model = make_model("llama")
    trainable = prepare_setup(model, "full")
    assert trainable.num_trainable == sum(p.numel() for p in model.parameters())


def test_unknown_architecture_is_a_clear_error():
    from transformers import BertConfig, BertLMHeadModel

    model = BertLMHeadModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32, is_decoder=True))
    with pytest.raises(SteerError, match="'bert' is not in steer's patching table.*supported: .*llama"):
        attach_steering(model)


def test_missing_layer_path_fails_loudly():
    model = make_model("llama")
    del model.model.layers
    with pytest.raises(SteerError, match="could not find the decoder layers.*model.layers"):
        attach_steering(model)


def test_wrong_shape_and_bad_layers_are_errors():
    model = make_model("qwen2")
    with pytest.raises(SteerError, match=r"shape \[2, 32\].*\[3, 32\]"):
        attach_steering(model, torch.zeros(2, 32))
    with pytest.raises(SteerError, match="layers \\[5\\] do not exist"):
        attach_steering(model, layers=[5])


def test_bfloat16_model_keeps_float32_vectors():
    model = make_model("qwen2").to(torch.bfloat16)
    handle = attach_steering(model, _random_vectors(model))
    out = model(sample_ids()).logits
    assert handle.vectors.dtype == torch.float32 and out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert handle.vectors.grad.dtype == torch.float32


def test_vectors_cast_once_for_generation_follow_in_place_updates():
    """Without autograd the hooks add a cached cast of the vectors; a change of the vectors in place
    (``set``, an optimizer step) must reach the next forward pass."""
    model = make_model("qwen2").to(torch.bfloat16)
    ids = sample_ids()
    handle = attach_steering(model, _random_vectors(model, scale=0.5, seed=3), trainable=True)
    with torch.no_grad():
        first = _logits(model, ids)
        handle.set(_random_vectors(model, scale=0.5, seed=4))
        after_set = _logits(model, ids)
        handle.vectors.mul_(2.0)  # as AdamW does, in place
        after_step = _logits(model, ids)
    for vectors, got in ((_random_vectors(model, scale=0.5, seed=4), after_set),
                         (2.0 * _random_vectors(model, scale=0.5, seed=4), after_step)):
        fresh = attach_steering(make_model("qwen2").to(torch.bfloat16), vectors, trainable=False)
        with torch.no_grad():
            torch.testing.assert_close(got, _logits(fresh.model, ids))
    assert not torch.equal(first, after_set)
