"""study patch's two-branch layer: the exact identities of the companion paper's patching (E7/E8)
on tiny random models (Qwen2 and Llama with GQA; every family of the table for the unions)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import CONFIGS, make_model, sample_ids

from steer_cli.errors import SteerError
from steer_cli.patching.attention import locate_attention
from steer_cli.patching.steering import attach_steering
from steer_cli.study.branches import BranchedLayer, Patch, _Recipe, parse_heads, plan_patches
from steer_cli.study.forced import LayerReplay, final_hidden, head_logits

SOURCE = 1  # 3-layer tiny models: the vector of layer 1 enters layer 2, the last


def _vector(model, seed=3, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(model.config.hidden_size, generator=g)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _steered(model, ids, vector, layer):
    rows = torch.zeros(model.config.num_hidden_layers, model.config.hidden_size)
    rows[layer] = vector
    with attach_steering(model, rows, layers=[layer], trainable=False):
        return _logits(model, ids)


def _patched(model, ids, vector, patch, source=SOURCE):
    with BranchedLayer(model, source, vector) as branched:
        branched.set(patch)
        return _logits(model, ids)


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def gqa_model(request):
    # 4 query heads over 2 key-value heads: k/v slices change whole query groups.
    return make_model(request.param, num_attention_heads=4, num_key_value_heads=2, hidden_size=32)


def test_baselines_are_the_models_they_name(gqa_model):
    ids, v = sample_ids(), _vector(gqa_model)
    base = _logits(gqa_model, ids)
    torch.testing.assert_close(_patched(gqa_model, ids, v, Patch("base")), base)
    torch.testing.assert_close(_patched(gqa_model, ids, v, Patch("no-patch")), _steered(gqa_model, ids, v, SOURCE))
    # skip-layer: v after the target layer, i.e. the final norm and head see h_base + v
    torch.testing.assert_close(_patched(gqa_model, ids, v, Patch("skip-layer")), _steered(gqa_model, ids, v, SOURCE + 1))
    with BranchedLayer(gqa_model, SOURCE, v):
        pass  # removed again: the model is the base model
    torch.testing.assert_close(_logits(gqa_model, ids), base)


def test_unions_over_all_heads(gqa_model):
    ids, v = sample_ids(), _vector(gqa_model)
    heads = tuple(range(4))
    skip_attn = _patched(gqa_model, ids, v, Patch("skip-attn"))
    torch.testing.assert_close(_patched(gqa_model, ids, v, Patch("skip-head", heads)), skip_attn)
    torch.testing.assert_close(_patched(gqa_model, ids, v, Patch("steer-head", heads)),
                               _patched(gqa_model, ids, v, Patch("no-patch")))
    # q of every query head, k and v of every key-value head from the vanilla pass = skip-attn
    with BranchedLayer(gqa_model, SOURCE, v) as branched:
        branched.set(Patch("no-patch"))
        branched._recipe = _Recipe(True, True, (("q", heads), ("k", (0, 1)), ("v", (0, 1))))
        torch.testing.assert_close(_logits(gqa_model, ids), skip_attn)
    # one head patched differs from both ends
    one = _patched(gqa_model, ids, v, Patch("skip-head", (1,)))
    assert not torch.allclose(one, skip_attn) and not torch.allclose(one, _patched(gqa_model, ids, v, Patch("no-patch")))


def test_zero_vector_makes_every_mode_the_base_model(gqa_model):
    ids = sample_ids()
    base = _logits(gqa_model, ids)
    zero = torch.zeros(gqa_model.config.hidden_size)
    parts = locate_attention(gqa_model, SOURCE + 1)
    for patch in plan_patches(["no-patch", "skip-attn", "skip-layer", "skip-head", "steer-head", "skip-k", "steer-v"],
                              "0,all", ["all", "residual", "mlp"], parts):
        torch.testing.assert_close(_patched(gqa_model, ids, zero, patch), base, msg=patch.label)


def _z_seen(model, ids, v, patch):
    """The output projection's input in the main pass of the target layer."""
    parts = locate_attention(model, SOURCE + 1)
    seen = []
    with BranchedLayer(model, SOURCE, v) as branched:
        branched.set(patch)
        handle = parts.out_proj.register_forward_pre_hook(
            lambda m, a: seen.append(a[0].clone()) if branched._phase == "main" else None)
        try:
            _logits(model, ids)
        finally:
            handle.remove()
    return seen[-1], parts


def test_head_swaps_change_only_their_columns_and_kv_groups(gqa_model):
    ids, v = sample_ids(), _vector(gqa_model)
    z_st, parts = _z_seen(gqa_model, ids, v, Patch("no-patch"))
    z_van, _ = _z_seen(gqa_model, ids, v, Patch("skip-attn"))
    z_one, _ = _z_seen(gqa_model, ids, v, Patch("skip-head", (2,)))
    want = z_st.clone()
    want[..., parts.columns("z", 2)] = z_van[..., parts.columns("z", 2)]
    torch.testing.assert_close(z_one, want)
    # head additivity: W_O z_st - W_O z_patched = W_O[:, h] (z_st,h - z_van,h)
    w = parts.out_proj.weight
    cols = parts.columns("z", 2)
    torch.testing.assert_close(z_st @ w.T - z_one @ w.T, (z_st[..., cols] - z_van[..., cols]) @ w[:, cols].T)
    # k of key-value head 1 changes the query heads 2 and 3 of its group, not 0 and 1
    z_k, _ = _z_seen(gqa_model, ids, v, Patch("skip-k", (1,)))
    assert parts.group(1) == [2, 3]
    for h in range(4):
        same = torch.allclose(z_k[..., parts.columns("z", h)], z_st[..., parts.columns("z", h)])
        assert same == (h not in parts.group(1)), h


def test_paths_with_the_target_mlp_silenced(gqa_model):
    """g = 0: path mlp equals the unpatched reference, path residual equals path all."""
    import copy

    model = copy.deepcopy(gqa_model)
    with torch.no_grad():
        model.model.layers[SOURCE + 1].mlp.down_proj.weight.zero_()
    ids, v = sample_ids(), _vector(model)
    for mode, reference in (("skip-head", "no-patch"), ("steer-head", "skip-attn")):
        patch_all = _patched(model, ids, v, Patch(mode, (1,)))
        torch.testing.assert_close(_patched(model, ids, v, Patch(mode, (1,), "residual")), patch_all)
        torch.testing.assert_close(_patched(model, ids, v, Patch(mode, (1,), "mlp")),
                                   _patched(model, ids, v, Patch(reference)))
    # E8: skip-layer against skip-attn isolates v's effect through the MLP: none when it is silent
    torch.testing.assert_close(_patched(model, ids, v, Patch("skip-layer")), _patched(model, ids, v, Patch("skip-attn")))
    # with the MLP on, the three paths differ
    a, b, c = (_patched(gqa_model, ids, v, Patch("skip-head", (1,), p)) for p in ("all", "residual", "mlp"))
    assert not torch.allclose(a, b) and not torch.allclose(a, c) and not torch.allclose(b, c)


def _greedy_cached(model, ids, steps):
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[:, ids.shape[1]:]


def _greedy_recomputed(model, ids, steps):
    seq = ids
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq[:, ids.shape[1]:]


@pytest.mark.parametrize("patch", [Patch("steer-head", (0, 3), "residual"), Patch("steer-k", (1,))],
                         ids=lambda p: p.key)
def test_cached_generation_equals_recomputing_the_prefix(patch):
    """Both branch caches (vanilla; unpatched reference of a path patch) and patched k/v in the
    model's cache: greedy generation with the cache equals recomputing the prefix every step."""
    model = make_model("llama", num_attention_heads=4, num_key_value_heads=2, hidden_size=32)
    ids, v = sample_ids(batch=2, length=5), _vector(model, scale=4.0)
    with BranchedLayer(model, SOURCE, v) as branched:
        branched.set(patch)
        cached = _greedy_cached(model, ids, 12)
        again = _greedy_cached(model, ids, 12)  # a second generate starts fresh branch caches
        recomputed = _greedy_recomputed(model, ids, 12)
    assert torch.equal(cached, recomputed)
    assert torch.equal(again, cached)
    assert not torch.equal(cached, _greedy_cached(model, ids, 12))  # the patch did something


def test_bad_patches_are_one_line_errors(gqa_model):
    v = _vector(gqa_model)
    with BranchedLayer(gqa_model, SOURCE, v) as branched:
        with pytest.raises(SteerError, match="head 4 is out of range: skip-head takes query heads 0..3"):
            branched.set(Patch("skip-head", (4,)))
        with pytest.raises(SteerError, match="key-value heads 0..1 of layer 2 \\(2 key-value heads for 4"):
            branched.set(Patch("skip-v", (2,)))
        with pytest.raises(SteerError, match="applies to head modes"):
            branched.set(Patch("skip-attn", (), "mlp"))
        with pytest.raises(SteerError, match="unknown patch mode"):
            branched.set(Patch("swap-head", (0,)))
    with pytest.raises(SteerError, match="--source-layer 2 is out of range"):
        BranchedLayer(gqa_model, 2, v)
    assert parse_heads(None, 3) == [(0,), (1,), (2,)]
    assert parse_heads("1,0+2,all", 3) == [(1,), (0, 2), (0, 1, 2)]
    with pytest.raises(SteerError, match="--heads expects"):
        parse_heads("x", 3)


# -- every family of the architecture table ---------------------------------------------------
@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_every_family(model_type):
    model = make_model(model_type)
    ids, v = sample_ids(), _vector(model)
    layers = model.config.num_hidden_layers
    base = _logits(model, ids)
    # the final norm's rows through head_logits are the model's logits; replaying the last
    # layers on their recorded arguments gives the same rows
    mask = torch.ones_like(ids)
    torch.testing.assert_close(head_logits(model, final_hidden(model, ids, mask)), base)
    replay = LayerReplay(model, 1)
    captured = replay.capture(ids, mask)
    torch.testing.assert_close(replay.run(), captured)
    parts = locate_attention(model, SOURCE + 1)
    heads = tuple(range(parts.heads))
    at_source, after_target = _steered(model, ids, v, SOURCE), _steered(model, ids, v, SOURCE + 1)
    with BranchedLayer(model, SOURCE, v) as branched:
        branched.set(Patch("no-patch"))
        torch.testing.assert_close(_logits(model, ids), at_source)
        branched.set(Patch("skip-attn"))
        skip_attn = _logits(model, ids)
        branched.set(Patch("skip-head", heads))
        torch.testing.assert_close(_logits(model, ids), skip_attn)
        branched.set(Patch("steer-head", heads))
        torch.testing.assert_close(_logits(model, ids), at_source)
        branched.set(Patch("skip-q", heads))
        q_all = _logits(model, ids)
        branched.set(Patch("skip-layer"))
        torch.testing.assert_close(_logits(model, ids), after_target)
        if parts.parallel:
            with pytest.raises(SteerError, match="parallel-residual"):
                branched.set(Patch("skip-head", (0,), "mlp"))
        else:
            branched.set(Patch("steer-head", heads, "mlp"))
            _logits(model, ids)
    assert layers == 3 and not torch.allclose(q_all, base)
