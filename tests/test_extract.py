"""steer extract: runs, checkpoints (reference layout, rank-r form), .npy -> safetensors / npy / gguf."""

from __future__ import annotations

import json

import numpy as np
import torch
from cli_helpers import one_line_error
from safetensors.torch import save_file
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.vectors.file import load_vectors, save_vectors, unembed_sha256

_register()
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def said(result):
    """The command's messages with rich's line wrapping undone."""
    return " ".join(result.output.split())




def make_run(root, name="run", vectors=None, step_dirs=("final",), layers=None):
    """A steer training-run directory: settings.yaml, metrics.jsonl, <step dirs>/vectors.safetensors."""
    run = root / name
    run.mkdir(parents=True)
    (run / "settings.yaml").write_text("model:\n  name: tiny\n")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    out = {}
    for i, sub in enumerate(step_dirs):
        (run / sub).mkdir()
        v = torch.randn(3, 8) if vectors is None else vectors + i
        save_vectors(run / sub / "vectors.safetensors", v, base_model="tiny-base", place="layer_output",
                     setup="steering", step=10 + i, layers=layers)
        out[sub] = v
    return run, out


def test_from_run_dir_prefers_final(tmp_path):
    run, written = make_run(tmp_path, step_dirs=("checkpoint-2", "final"))
    out = tmp_path / "v.safetensors"
    result = invoke("extract", run, "-o", out)
    assert result.exit_code == 0, result.output
    vectors, meta = load_vectors(out)
    torch.testing.assert_close(vectors, written["final"])
    assert meta["base_model"] == "tiny-base" and meta["place"] == "layer_output" and meta["step"] == 11
    assert meta["source"].endswith("final/vectors.safetensors")


def test_run_without_final_uses_latest_numbered_checkpoint(tmp_path):
    run, written = make_run(tmp_path, step_dirs=("checkpoint-2", "checkpoint-10"))
    out = tmp_path / "v.safetensors"
    assert invoke("extract", run, "-o", out).exit_code == 0
    torch.testing.assert_close(load_vectors(out)[0], written["checkpoint-10"])


def test_default_is_the_most_recent_training_run(tmp_path, monkeypatch):
    run, written = make_run(tmp_path / "runs" / "tiny" / "demo", name="seed-0")
    monkeypatch.chdir(tmp_path)
    result = invoke("extract", "-o", "v.safetensors")
    assert result.exit_code == 0, result.output
    assert "most recent training run" in said(result) and "seed-0" in said(result)
    torch.testing.assert_close(load_vectors(tmp_path / "v.safetensors")[0], written["final"])


def test_lora_run_has_no_vectors(tmp_path):
    run = tmp_path / "lora-run"
    (run / "final" / "adapter").mkdir(parents=True)
    (run / "settings.yaml").write_text("x: 1\n")
    one_line_error(invoke("extract", run, "-o", tmp_path / "v.safetensors"), "LoRA adapter")


def reference_checkpoint(path, model_type="qwen2", rank=None, shards=2):
    """A checkpoint like the reference implementation saves: base weights + down_proj biases (or A/B)."""
    from tiny_models import make_model

    model = make_model(model_type)
    model.config.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["_name_or_path"] = "Qwen/Tiny-Base"
    (path / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    if rank is None:
        vectors = torch.randn(3, 32, generator=g)
        for i in range(3):
            state[f"model.layers.{i}.mlp.down_proj.bias"] = vectors[i].clone()
    else:
        a, b = torch.randn(3, rank, generator=g), torch.randn(rank, 32, generator=g)
        state["model.steering_matrix_A"], state["model.steering_matrix_B"] = a, b
        vectors = a @ b
    keys = sorted(state)
    for s in range(shards):
        save_file({k: state[k] for k in keys[s::shards]}, str(path / f"model-0000{s + 1}-of-0000{shards}.safetensors"))
    return model, vectors


def test_from_reference_checkpoint_down_proj_biases(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    model, vectors = reference_checkpoint(ckpt)
    out = tmp_path / "v.safetensors"
    result = invoke("extract", ckpt, "-o", out)
    assert result.exit_code == 0, result.output
    got, meta = load_vectors(out)
    torch.testing.assert_close(got, vectors)
    assert meta["place"] == "down_proj_bias" and meta["layers"] == [0, 1, 2]
    assert meta["base_model"] == "Qwen/Tiny-Base" and meta["setup"] == "steering"
    assert meta["unembed_sha256"] == unembed_sha256(model.lm_head.weight)
    assert "for qwen2 this equals layer_output" in said(result)


def test_from_rank_r_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    _, vectors = reference_checkpoint(ckpt, rank=2, shards=1)
    out = tmp_path / "v.npy"
    result = invoke("extract", ckpt, "-o", out)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out), vectors.numpy(), rtol=1e-6)
    assert "rank-2" in said(result)


def test_stock_biases_are_not_steering_vectors(tmp_path):
    """GPT-2's mlp.c_proj.bias is part of the stock model: extracting it would be wrong."""
    from tiny_models import make_model

    model = make_model("gpt2")
    ckpt = tmp_path / "gpt2"
    model.save_pretrained(ckpt)
    one_line_error(invoke("extract", ckpt, "-o", tmp_path / "v.safetensors"), "stock gpt2")


def test_checkpoint_without_vectors_says_what_was_looked_for(tmp_path):
    from tiny_models import make_model

    ckpt = tmp_path / "plain"
    make_model("llama").save_pretrained(ckpt)
    one_line_error(invoke("extract", ckpt, "-o", tmp_path / "v.safetensors"), "down_proj.bias", "steering_matrix_A")
    assert not (tmp_path / "v.safetensors").exists()


def npy_source(tmp_path, rows=4, width=6, zero_first=True):
    m = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float32)
    if zero_first:
        m[0] = 0
    path = tmp_path / "steering_vectors.npy"
    np.save(path, m)
    return path, m


def test_npy_to_safetensors_and_back_to_npy(tmp_path):
    src, m = npy_source(tmp_path)
    out = tmp_path / "v.safetensors"
    assert invoke("extract", src, "-o", out).exit_code == 0
    vectors, meta = load_vectors(out)
    np.testing.assert_array_equal(vectors.numpy(), m)
    assert meta["source"] == str(src) and meta["layers"] == [1, 2, 3]  # the non-zero rows
    assert meta["place"] == "down_proj_bias"  # the reference implementation's .npy exports
    placed = tmp_path / "placed.safetensors"
    assert invoke("extract", src, "-o", placed, "--place", "layer_output").exit_code == 0
    assert load_vectors(placed)[1]["place"] == "layer_output"
    one_line_error(invoke("extract", placed, "-o", tmp_path / "x.safetensors", "--place", "down_proj_bias"),
                   "records place layer_output")
    again = tmp_path / "again.bin"
    assert invoke("extract", out, "-o", again, "--format", "npy").exit_code == 0
    np.testing.assert_array_equal(np.load(again), m)


def read_gguf(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: reader.fields[name].contents() for name in reader.fields
              if name.startswith(("general.architecture", "controlvector."))}
    tensors = {t.name: (t.tensor_type, list(t.shape), np.array(t.data)) for t in reader.tensors}
    return fields, tensors


def test_gguf_reads_back_with_llama_cpp_numbering(tmp_path):
    import gguf

    src, m = npy_source(tmp_path)
    out = tmp_path / "cv.gguf"
    result = invoke("extract", src, "-o", out)
    assert result.exit_code == 0, result.output
    fields, tensors = read_gguf(out)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.layer_count"] == 3
    assert "controlvector.model_hint" in fields
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]  # row N -> direction.N
    for n in (1, 2, 3):
        kind, shape, data = tensors[f"direction.{n}"]
        assert kind == gguf.GGMLQuantizationType.F32 and shape == [6]
        np.testing.assert_array_equal(data, m[n])


def test_gguf_writes_only_steered_layers_and_model_hint(tmp_path, tiny_lm):
    v = torch.randn(2, 64)
    src = tmp_path / "one.safetensors"
    save_vectors(src, v, base_model=str(tiny_lm), layers=[1], place="layer_output")
    out = tmp_path / "cv.gguf"
    assert invoke("extract", src, "-o", out).exit_code == 0
    fields, tensors = read_gguf(out)
    assert list(tensors) == ["direction.1"] and fields["controlvector.layer_count"] == 1
    assert fields["controlvector.model_hint"] == "qwen2"
    np.testing.assert_array_equal(tensors["direction.1"][2], v[1].numpy())


def test_gguf_refuses_a_nonzero_layer_0_unless_dropped(tmp_path):
    src, m = npy_source(tmp_path, zero_first=False)
    out = tmp_path / "cv.gguf"
    one_line_error(invoke("extract", src, "-o", out), "layer 0", "--drop-layer-0")
    assert not out.exists()
    result = invoke("extract", src, "-o", out, "--drop-layer-0")
    assert result.exit_code == 0, result.output
    assert sorted(read_gguf(out)[1]) == ["direction.1", "direction.2", "direction.3"]


def test_bad_inputs_get_one_line_errors_and_write_nothing(tmp_path):
    out = tmp_path / "v.safetensors"
    pickle = tmp_path / "vectors.pt"
    torch.save({"vectors": torch.zeros(2, 2)}, pickle)
    one_line_error(invoke("extract", pickle, "-o", out), "pickle")
    text = tmp_path / "notes.txt"
    text.write_text("hello, not tensors\n")
    one_line_error(invoke("extract", text, "-o", out), "neither a safetensors file nor an .npy")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(invoke("extract", empty, "-o", out), "nothing steer can extract", "final/")
    one_line_error(invoke("extract", tmp_path / "missing", "-o", out), "does not exist")
    src, _ = npy_source(tmp_path)
    one_line_error(invoke("extract", src, "-o", out, "--format", "pt"), "--format")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "notes.txt", "steering_vectors.npy", "vectors.pt"]


def test_existing_output_needs_overwrite(tmp_path):
    src, m = npy_source(tmp_path)
    out = tmp_path / "v.safetensors"
    out.write_bytes(b"precious")
    one_line_error(invoke("extract", src, "-o", out), "--overwrite")
    assert out.read_bytes() == b"precious"
    assert invoke("extract", src, "-o", out, "--overwrite").exit_code == 0
    np.testing.assert_array_equal(load_vectors(out)[0].numpy(), m)


def test_empty_runs_dir_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("extract", "-o", "v.safetensors"), "no training run found")


def test_checkpoint_bias_width_must_match_config(tmp_path):
    from tiny_models import make_model

    ckpt = tmp_path / "ckpt"
    model = make_model("llama")
    model.config.save_pretrained(ckpt)
    save_file({f"model.layers.{i}.mlp.down_proj.bias": torch.ones(31) for i in range(3)},
              str(ckpt / "model.safetensors"))
    one_line_error(invoke("extract", ckpt, "-o", tmp_path / "v.safetensors"), "hidden size is 32")
