"""steer merge: stacking single-layer files, --mean over seeds, and --fold into a stock checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import one_line_error
from tiny_models import make_model, sample_ids
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.errors import SteerError
from steer_cli.patching.fold import fold_vectors
from steer_cli.patching.steering import attach_steering
from steer_cli.vectors.file import load_vectors, save_vectors

_register()
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])




def single_layer_files(tmp_path, layers, num_layers=4, width=8, **meta):
    """One vectors file per layer, each with noise in the rows it does not claim (never read)."""
    g = torch.Generator().manual_seed(0)
    files, full = [], torch.zeros(num_layers, width)
    for layer in layers:
        v = torch.randn(num_layers, width, generator=g)
        full[layer] = v[layer]
        path = tmp_path / f"layer-{layer}.safetensors"
        save_vectors(path, v, layers=[layer], base_model="tiny", place="layer_output", seed=0, **meta)
        files.append(path)
    return files, full


def test_stack_takes_each_row_from_the_file_that_claims_it(tmp_path):
    files, want = single_layer_files(tmp_path, [2, 0, 3, 1])
    out = tmp_path / "merged.safetensors"
    result = invoke("merge", *files, "-o", out)
    assert result.exit_code == 0, result.output
    got, meta = load_vectors(out)
    torch.testing.assert_close(got, want)
    assert meta["layers"] == [0, 1, 2, 3] and meta["base_model"] == "tiny" and meta["setup"] == "steering"
    assert meta["merge"] == "stack" and len(meta["merged_from"]) == 4 and meta["seed"] == 0


def test_reference_single_layer_npy_exports_stack(tmp_path):
    """The reference's single-layer runs export [L, d] with one non-zero row; merge stacks them."""
    import numpy as np

    want = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    files = []
    for layer in range(3):
        m = np.zeros_like(want)
        m[layer] = want[layer]
        files.append(tmp_path / f"steering-layer-{layer}.npy")
        np.save(files[-1], m)
    out = tmp_path / "merged.npy"
    result = invoke("merge", *files, "-o", out)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(out), want)


def test_a_layer_claimed_twice_names_both_files(tmp_path):
    files, _ = single_layer_files(tmp_path, [0, 1])
    twin = tmp_path / "again-1.safetensors"
    save_vectors(twin, torch.ones(4, 8), layers=[1], base_model="tiny", place="layer_output")
    one_line_error(invoke("merge", *files, twin, "-o", tmp_path / "m.safetensors"),
                   "layer 1", "layer-1.safetensors", "again-1.safetensors", "--mean")
    assert not (tmp_path / "m.safetensors").exists()


def test_missing_layers_are_an_error_or_zeros(tmp_path):
    files, want = single_layer_files(tmp_path, [0, 3])
    out = tmp_path / "m.safetensors"
    one_line_error(invoke("merge", *files, "-o", out), "layer(s) 1, 2", "--fill-zeros")
    assert not out.exists()
    result = invoke("merge", *files, "-o", out, "--fill-zeros")
    assert result.exit_code == 0, result.output
    got, meta = load_vectors(out)
    torch.testing.assert_close(got, want)
    assert got[1].abs().sum() == 0 and meta["layers"] == [0, 3]


def test_mean_averages_seeds(tmp_path):
    runs = []
    for seed in (0, 1, 2):
        path = tmp_path / f"seed{seed}.safetensors"
        save_vectors(path, torch.full((3, 5), float(seed)) + torch.arange(5.0), base_model="tiny", seed=seed,
                     place="layer_output", dataset="gsm8k")
        runs.append(path)
    out = tmp_path / "mean.safetensors"
    result = invoke("merge", "--mean", *runs, "-o", out)
    assert result.exit_code == 0, result.output
    got, meta = load_vectors(out)
    torch.testing.assert_close(got, torch.full((3, 5), 1.0) + torch.arange(5.0))
    assert meta["merge"] == "mean" and meta["seeds"] == [0, 1, 2] and meta["dataset"] == "gsm8k"
    assert "seed" not in meta


def test_inputs_must_agree(tmp_path):
    a = tmp_path / "a.safetensors"
    save_vectors(a, torch.zeros(2, 4), layers=[0], base_model="model-a", place="layer_output")
    for name, vectors, meta, needle in [
        ("shape", torch.zeros(2, 5), {"base_model": "model-a"}, "shape"),
        ("base", torch.zeros(2, 4), {"base_model": "model-b"}, "model-b"),
        ("place", torch.zeros(2, 4), {"base_model": "model-a", "place": "down_proj_bias"}, "down_proj_bias"),
    ]:
        b = tmp_path / f"{name}.safetensors"
        save_vectors(b, vectors, layers=[1], **{"place": "layer_output", **meta})
        one_line_error(invoke("merge", a, b, "-o", tmp_path / "m.safetensors"), needle)
    assert not (tmp_path / "m.safetensors").exists()


def test_merge_needs_files_and_refuses_existing_output(tmp_path):
    one_line_error(invoke("merge", "-o", tmp_path / "m.safetensors"), "give the vectors files")
    files, _ = single_layer_files(tmp_path, [0, 1, 2, 3])
    out = tmp_path / "m.safetensors"
    out.write_text("keep")
    one_line_error(invoke("merge", *files, "-o", out), "--overwrite")
    assert out.read_text() == "keep"


# -- folding ---------------------------------------------------------------------------------------

FOLDABLE = [
    ("llama", {}, "layer_output"),
    ("qwen2", {}, "layer_output"),
    ("qwen2", {"tie_word_embeddings": True}, "down_proj_bias"),
    ("mistral", {"sliding_window": None}, "layer_output"),
    ("gpt2", {}, "layer_output"),
    ("gpt_neox", {}, "down_proj_bias"),
    ("granite", {"residual_multiplier": 0.5}, "layer_output"),
    ("granite", {"residual_multiplier": 0.5}, "down_proj_bias"),
    ("starcoder2", {}, "layer_output"),
]


@pytest.mark.parametrize("model_type,overrides,place", FOLDABLE)
def test_folded_checkpoint_loads_stock_and_equals_the_steered_model(tmp_path, model_type, overrides, place):
    from transformers import AutoModelForCausalLM

    model = make_model(model_type, **overrides)
    located_layers = model.config.num_hidden_layers
    vectors = torch.randn(located_layers, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    layers = [0, 2]
    ids = sample_ids()
    with torch.no_grad():
        base_logits = model(ids).logits
        with attach_steering(model, vectors, layers=layers, place=place, trainable=False):
            want = model(ids).logits
    assert (want - base_logits).abs().max() > 1e-2  # the vectors do change the logits

    folded = fold_vectors(model, vectors, place, layers=layers)
    folded.save_pretrained(tmp_path / "folded")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "folded", dtype=torch.float32).eval()
    with torch.no_grad():
        got = reloaded(ids).logits
        torch.testing.assert_close(model(ids).logits, base_logits)  # the input model is unchanged
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_qwen2_becomes_a_stock_llama_with_biases(tmp_path):
    folded = fold_vectors(make_model("qwen2"), torch.randn(3, 32), "layer_output")
    assert type(folded).__name__ == "LlamaForCausalLM"
    assert folded.config.attention_bias and folded.config.mlp_bias
    layer = folded.model.layers[1]
    assert layer.self_attn.o_proj.bias.abs().sum() == 0 and layer.mlp.gate_proj.bias.abs().sum() == 0
    assert layer.mlp.up_proj.bias.abs().sum() == 0 and layer.self_attn.q_proj.bias.abs().sum() > 0


UNFOLDABLE = [
    ("qwen3", {}, "layer_output", "q/k norms"),
    ("gemma2", {}, "layer_output", "follows the MLP"),
    ("olmo2", {}, "down_proj_bias", "no bias switch"),
    ("phi3", {}, "layer_output", "phi3"),
    ("qwen2", {"use_sliding_window": True, "max_window_layers": 1}, "layer_output", "sliding-window"),
    ("mistral", {"sliding_window": 16}, "layer_output", "sliding_window=16"),
]


@pytest.mark.parametrize("model_type,overrides,place,reason", UNFOLDABLE)
def test_unfoldable_architectures_say_why(model_type, overrides, place, reason):
    from tiny_models import make_config

    from steer_cli.patching.fold import fold_plan

    with pytest.raises(SteerError, match="folding is unsupported") as err:
        fold_plan(make_config(model_type, **overrides), place)
    assert reason in str(err.value) and "steer eval" in str(err.value)


def test_fold_cli_writes_a_stock_checkpoint(tmp_path, tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steer_cli.models import load_causal_lm

    vectors = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    vfile = tmp_path / "v.safetensors"
    save_vectors(vfile, vectors, base_model=str(tiny_lm), place="layer_output", layers=[0, 1])
    out = tmp_path / "folded"
    result = invoke("merge", "--fold", "--vectors", vfile, "-o", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert AutoTokenizer.from_pretrained(out).encode("2+2") == AutoTokenizer.from_pretrained(tiny_lm).encode("2+2")

    base = load_causal_lm(str(tiny_lm), dtype="float32")
    ids = sample_ids(vocab=200)
    with torch.no_grad(), attach_steering(base, vectors, place="layer_output", trainable=False):
        want = base(ids).logits
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    one_line_error(invoke("merge", "--fold", "--vectors", vfile, "-o", out), "--overwrite")
    assert invoke("merge", "--fold", "--vectors", vfile, "--model", str(tiny_lm), "-o", out,
                  "--overwrite").exit_code == 0


def test_fold_cli_bad_inputs_write_nothing(tmp_path, tiny_lm):
    out = tmp_path / "folded"
    wrong = tmp_path / "wrong.safetensors"
    save_vectors(wrong, torch.zeros(2, 48), base_model=str(tiny_lm))
    one_line_error(invoke("merge", "--fold", "--vectors", wrong, "-o", out), "[2, 48]", "[2, 64]")
    nometa = tmp_path / "m.npy"
    import numpy as np

    np.save(nometa, np.zeros((2, 64), dtype=np.float32))
    one_line_error(invoke("merge", "--fold", "--vectors", nometa, "-o", out), "--model")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    one_line_error(invoke("merge", "--fold", "--vectors", nometa, "--model", str(tiny_lm), "-o", precious,
                          "--overwrite"), "not a model checkpoint")
    assert not out.exists() and (precious / "thesis.tex").read_text() == "x"
    one_line_error(invoke("merge", "--fold", "-o", out), "--vectors")
