"""Steering strength and layer subsets at inference: --scale, --layers (hooks, extract, fold)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.errors import SteerError
from steer_cli.patching.steering import attach_steering
from steer_cli.patching.strength import (
    describe,
    format_layers,
    kept_layers,
    parse_layer_spec,
    parse_scales,
    scaled_vectors,
)
from steer_cli.vectors.file import save_vectors

_register()
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# -- pure functions ------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "want"), [
    ("0-10,17", list(range(11)) + [17]), (" 3 , 1-2 ", [1, 2, 3]), ("5", [5]), ("2-2,2", [2]),
    ([4, 1, 4], [1, 4]), (7, [7]),
])
def test_parse_layer_spec(spec, want):
    assert parse_layer_spec(spec) == want


@pytest.mark.parametrize(("spec", "needle"), [
    ("", "is not an index or a range"), ("a", "'a' is not an index"), ("1,,2", "'' is not an index"),
    ("-1", "is not an index"), ("3-1", "runs backwards; write 1-3"), ("1-2-3", "is not an index"),
    ([], "is empty"), ([1, -2], "is not a layer index"), ([True], "is not a layer index"),
])
def test_bad_layer_specs_are_one_line_errors(spec, needle):
    with pytest.raises(SteerError, match=needle.replace("(", r"\(")):
        parse_layer_spec(spec)


def test_format_layers_inverts_the_parser():
    for layers in ([0, 1, 2, 3, 7], [5], [0, 2, 4], list(range(28))):
        assert parse_layer_spec(format_layers(layers)) == layers
    assert format_layers([7, 0, 1, 2, 3]) == "0-3,7"


def test_parse_scales():
    assert parse_scales("0,0.5,1,1.5,2") == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert parse_scales("1,1.0, -0.5") == [1.0, -0.5]
    assert str(parse_scales("-0")[0]) == "0.0"  # one label per value
    for bad, needle in [("x", "'x' is not a number"), ("1,inf", "not a finite"), ("", "'' is not a number"),
                        ([], "is empty")]:
        with pytest.raises(SteerError, match=needle):
            parse_scales(bad)


def test_kept_layers():
    assert kept_layers(None, None, 4) == (0, 1, 2, 3)
    assert kept_layers([1, 3], None, 4) == (1, 3)
    assert kept_layers(None, [0, 2], 4) == (0, 2)
    assert kept_layers([1, 3], [0, 1, 2], 4) == (1,)
    with pytest.raises(SteerError, match="keeps none of the steered layers"):
        kept_layers([3], [0, 1], 4)
    with pytest.raises(SteerError, match="layer\\(s\\) 4-5 do not exist: the model has layers 0-3"):
        kept_layers(None, [1, 4, 5], 4)


def test_scaled_vectors_against_a_direct_computation():
    v = torch.randn(4, 6)
    out = scaled_vectors(v, 0.5, [1, 3])
    want = torch.zeros(4, 6)
    want[1], want[3] = 0.5 * v[1], 0.5 * v[3]
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    assert torch.equal(scaled_vectors(v), v) and scaled_vectors(v) is not v
    assert scaled_vectors(v, 0.0).abs().max() == 0
    assert describe(1.0, None) == "" and describe(0.5, [0, 1, 2, 7]) == "scale 0.5, layers 0-2,7"


# -- hooks ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_lm):
    from steer_cli.models import load_causal_lm

    return load_causal_lm(str(tiny_lm), dtype="float32")


def _logits(model, ids, **attach):
    with torch.no_grad():
        if not attach:
            return model(ids).logits
        with attach_steering(model, trainable=False, **attach):
            return model(ids).logits


IDS = torch.tensor([[3, 17, 42, 99, 5, 8, 120, 64]])


def test_scale_0_equals_the_base_model(model):
    v = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    base = _logits(model, IDS)
    steered = _logits(model, IDS, vectors=v)
    assert (steered - base).abs().max() > 1e-3  # the vectors do something
    torch.testing.assert_close(_logits(model, IDS, vectors=v, scale=0.0), base, rtol=0, atol=0)


def test_scale_1_on_all_layers_is_todays_steering(model):
    v = torch.randn(2, 64, generator=torch.Generator().manual_seed(1))
    today = _logits(model, IDS, vectors=v)
    torch.testing.assert_close(_logits(model, IDS, vectors=v, scale=1.0, subset=[0, 1]), today, rtol=0, atol=0)
    torch.testing.assert_close(_logits(model, IDS, vectors=v, layers=[1], scale=1.0, subset=[0, 1]),
                               _logits(model, IDS, vectors=v, layers=[1]), rtol=0, atol=0)


def test_scale_and_subset_equal_the_scaled_matrix_on_those_layers(model):
    v = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    got = _logits(model, IDS, vectors=v, scale=-1.5, subset=[1])
    want = _logits(model, IDS, vectors=torch.stack([torch.zeros(64), -1.5 * v[1]]))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(SteerError, match="not to trainable ones"):
        attach_steering(model, v, scale=0.5, trainable=True)


# -- extract and fold ----------------------------------------------------------------------------


def test_extract_gguf_with_scale_and_layers(tmp_path):
    from test_extract import read_gguf

    v = torch.randn(4, 6)
    src = tmp_path / "v.safetensors"
    save_vectors(src, v, base_model="tiny-base", place="layer_output")
    out = tmp_path / "cv.gguf"
    result = invoke("extract", src, "-o", out, "--scale", "0.5", "--layers", "1-2")
    assert result.exit_code == 0, result.output
    fields, tensors = read_gguf(out)
    assert sorted(tensors) == ["direction.1", "direction.2"] and fields["controlvector.layer_count"] == 2
    for n in (1, 2):
        np.testing.assert_array_equal(tensors[f"direction.{n}"][2], (0.5 * v[n]).numpy())
    # layer 0 left out by --layers: no --drop-layer-0 needed even though row 0 is non-zero
    assert "layers 1-2" in " ".join(result.output.split())


def test_extract_safetensors_records_scale(tmp_path):
    from steer_cli.vectors.file import load_vectors

    v = torch.randn(3, 5)
    src = tmp_path / "v.safetensors"
    save_vectors(src, v, base_model="tiny-base", layers=[0, 2])
    out = tmp_path / "half.safetensors"
    assert invoke("extract", src, "-o", out, "--scale", "-2").exit_code == 0
    got, meta = load_vectors(out)
    torch.testing.assert_close(got, torch.stack([-2 * v[0], torch.zeros(5), -2 * v[2]]), rtol=0, atol=0)
    assert meta["scale"] == -2.0 and meta["layers"] == [0, 2]


@pytest.mark.parametrize(("args", "needle"), [
    (["--scale", "0,1"], "takes one factor here"), (["--scale", "x"], "'x' is not a number"),
    (["--layers", "7"], "layer(s) 7 do not exist: the model has layers 0-2"),
    (["--layers", "1"], "keeps none of the steered layers (0,2)"), (["--layers", "2-0"], "runs backwards"),
])
def test_extract_bad_scale_or_layers(tmp_path, args, needle):
    src = tmp_path / "v.safetensors"
    save_vectors(src, torch.randn(3, 5), layers=[0, 2])
    out = tmp_path / "o.gguf"
    one_line_error(invoke("extract", src, "-o", out, *args), needle)
    assert not out.exists()


def test_fold_with_scale_and_layers_equals_the_scaled_steered_model(tmp_path, tiny_lm, model):
    from transformers import AutoModelForCausalLM

    v = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    vfile = tmp_path / "v.safetensors"
    save_vectors(vfile, v, base_model=str(tiny_lm), place="layer_output")
    out = tmp_path / "folded"
    result = invoke("merge", "--fold", "--vectors", vfile, "-o", out, "--scale", "0.25", "--layers", "1")
    assert result.exit_code == 0, result.output
    folded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = folded(IDS).logits
    torch.testing.assert_close(got, _logits(model, IDS, vectors=v, scale=0.25, subset=[1]), rtol=1e-5, atol=1e-5)
    assert json.loads((out / "config.json").read_text())["mlp_bias"] is True
    down0 = folded.model.layers[0].mlp.down_proj.bias
    assert down0.abs().max() == 0  # layer 0 left unsteered


def test_scale_and_layers_without_fold_are_refused(tmp_path):
    one_line_error(invoke("merge", "a", "b", "-o", tmp_path / "m.safetensors", "--scale", "2"), "go with --fold")
