"""The vectors file: round trips, metadata, and clear errors for files that are not vectors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steer_cli.errors import SteerError
from steer_cli.vectors.file import check_fits, load_vectors, save_vectors, unembed_sha256


def test_round_trip_keeps_values_and_metadata(tmp_path):
    v = torch.randn(4, 8)
    path = save_vectors(tmp_path / "v.safetensors", v, base_model="Qwen/Qwen2.5-Math-7B",
                        layers=[1, 2], place="layer_output", setup="steering", step=12)
    loaded, meta = load_vectors(path)
    assert torch.equal(loaded, v)
    assert loaded.dtype == torch.float32
    assert meta["base_model"] == "Qwen/Qwen2.5-Math-7B"
    assert meta["layers"] == [1, 2] and meta["step"] == 12
    assert meta["num_layers"] == 4 and meta["hidden_size"] == 8
    assert meta["format"] == "steer-vectors" and meta["format_version"] == 1


def test_bfloat16_input_is_stored_as_float32(tmp_path):
    v = torch.randn(2, 3).to(torch.bfloat16)
    loaded, _ = load_vectors(save_vectors(tmp_path / "v.safetensors", v))
    assert loaded.dtype == torch.float32 and torch.equal(loaded, v.float())


def test_default_layers_are_all(tmp_path):
    _, meta = load_vectors(save_vectors(tmp_path / "v.safetensors", torch.zeros(3, 2)))
    assert meta["layers"] == [0, 1, 2]


def test_directory_with_vectors_file_is_accepted(tmp_path):
    save_vectors(tmp_path / "vectors.safetensors", torch.ones(2, 2))
    loaded, _ = load_vectors(tmp_path)
    assert torch.equal(loaded, torch.ones(2, 2))


def test_npy_import(tmp_path):
    arr = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    np.save(tmp_path / "steering_vectors.npy", arr)
    loaded, meta = load_vectors(tmp_path / "steering_vectors.npy")
    assert torch.equal(loaded, torch.from_numpy(arr))


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "v.safetensors"
    save_vectors(path, torch.zeros(2, 2))
    save_vectors(path, torch.ones(2, 2))
    assert [p.name for p in tmp_path.iterdir()] == ["v.safetensors"]
    assert torch.equal(load_vectors(path)[0], torch.ones(2, 2))


@pytest.mark.parametrize("case", ["pickle", "torch_save", "text", "missing", "no_tensor", "nan", "1d"])
def test_bad_files_are_clear_errors(tmp_path, case):
    path = tmp_path / "bad.safetensors"
    if case == "pickle":
        path.write_bytes(pickle.dumps({"vectors": [[1.0]]}))
        match = "pickle"
    elif case == "torch_save":
        torch.save({"vectors": torch.zeros(2, 2)}, path)
        match = "pickle"
    elif case == "text":
        path.write_text("hello, I am not a tensor file\n")
        match = "not a valid safetensors"
    elif case == "missing":
        match = "does not exist"
    elif case == "no_tensor":
        save_file({"model.layers.0.mlp.down_proj.bias": torch.zeros(3)}, str(path))
        match = "no tensor named 'vectors'.*steer extract"
    elif case == "nan":
        v = torch.zeros(3, 2)
        v[1, 0] = float("nan")
        save_file({"vectors": v}, str(path))
        match = r"NaN.*layers \[1\]"
    else:
        save_file({"vectors": torch.zeros(3)}, str(path))
        match = r"\[num_layers, hidden\]"
    with pytest.raises(SteerError, match=match):
        load_vectors(path)


def test_check_fits_names_both_shapes():
    with pytest.raises(SteerError, match=r"\[2, 8\].*\[4, 8\]"):
        check_fits(torch.zeros(2, 8), 4, 8, source="v.safetensors")
    check_fits(torch.zeros(4, 8), 4, 8)


def test_unembed_hash_tells_matrices_apart():
    w = torch.randn(10, 4)
    assert unembed_sha256(w) == unembed_sha256(w.clone())
    w2 = w.clone()
    w2[3, 1] += 1e-3
    assert unembed_sha256(w) != unembed_sha256(w2)
    assert unembed_sha256(w) != unembed_sha256(w.reshape(4, 10))


def test_header_length_starting_with_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """A safetensors file begins with its header length; 0x80 as its low byte is legal."""
    for pad in range(400):
        path = tmp_path / f"v{pad}.safetensors"
        save_vectors(path, torch.zeros(2, 2), note="x" * pad)
        if path.read_bytes()[0] == 0x80:
            loaded, meta = load_vectors(path)
            assert meta["note"] == "x" * pad and torch.equal(loaded, torch.zeros(2, 2))
            return
    pytest.fail("no metadata length produced a 0x80 first byte; widen the search")
