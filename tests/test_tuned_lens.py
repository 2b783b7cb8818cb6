"""The tuned lens (E12): exact checks on tiny random Qwen2 and Llama models, the tuned-lens
library's file layout, resume, and one demo run of `steer lens train-tuned` + `steer lens --tuned`."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error
from tiny_models import make_model, sample_ids
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.lens.tuned import (
    CONFIG_KEYS,
    TunedLens,
    library_unembed_hash,
    load_tuned_lens,
    save_tuned_lens,
    sequence_kls,
)
from steer_cli.lens.tuned_train import train_translators
from steer_cli.patching.archs import locate
from steer_cli.settings import TunedLensSettings
from steer_cli.vectors.file import save_vectors

runner = CliRunner()
_register()


def _random_lens(model, seed=0):
    located = locate(model)
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(seed)
    lens = TunedLens.identity("tiny", located.num_layers, d)
    lens.weight[:] = 0.1 * torch.randn(lens.weight.shape, generator=g)
    lens.bias[:] = 0.1 * torch.randn(lens.bias.shape, generator=g)
    return lens


def _direct_kl(p_logits, q_logits):
    p = torch.log_softmax(p_logits.double(), -1)
    q = torch.log_softmax(q_logits.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_last_layer_kl_is_zero_exactly_and_the_logit_lens_matches_direct_computation(family):
    model = make_model(family)
    located = locate(model)
    ids = sample_ids(batch=1, length=10)[0].tolist()
    layers = list(range(located.num_layers))
    identity = TunedLens.identity("tiny", located.num_layers, model.config.hidden_size)
    kls = sequence_kls(model, located, ids, {"logit": None, "identity": identity, "random": _random_lens(model)},
                       layers, chunk=4)
    last = located.num_layers - 1
    assert kls["logit"][last] == 0.0 and kls["identity"][last] == 0.0 and kls["random"][last] == 0.0
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        for layer in range(last):  # hidden_states[l + 1] is decoder layer l's output
            direct = _direct_kl(out.logits[0], model.lm_head(located.final_norm(out.hidden_states[layer + 1][0])))
            assert kls["logit"][layer] == pytest.approx(direct, rel=1e-4, abs=1e-7)
            # identity translators (the initialisation) are the logit lens: the loss at step 0
            assert kls["identity"][layer] == pytest.approx(kls["logit"][layer], rel=1e-6, abs=1e-9)
            assert kls["random"][layer] != pytest.approx(kls["logit"][layer])


def test_directions_go_through_the_linear_part_only():
    lens = _random_lens(make_model("qwen2"))
    v = torch.randn(lens.num_layers, lens.hidden)
    projected = lens.project_directions(v)
    for layer in range(lens.num_layers - 1):
        a = torch.eye(lens.hidden) + lens.weight[layer + 1]
        torch.testing.assert_close(projected[layer], a @ v[layer])
        torch.testing.assert_close(lens.linear(layer), a)
        torch.testing.assert_close(lens.translate(v[layer], layer), a @ v[layer] + lens.bias[layer + 1])
    torch.testing.assert_close(projected[-1], v[-1])  # the last layer: identity


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_training_lowers_the_kl_of_every_trained_layer_on_a_repeated_batch(family):
    model = make_model(family)
    located = locate(model)
    seqs = [sample_ids(batch=1, length=12, seed=k)[0].tolist() for k in range(2)]
    s = TunedLensSettings(sequences_per_step=2, lr=3e-3, warmup_ratio=0.0, epochs=8, position_chunk=5)
    trained, state = train_translators(model, seqs, [0, 1], s)
    assert state.updates == 8 and len(state.history) == 8 and state.history[0]["lr"] == pytest.approx(3e-3)
    lens = TunedLens.identity("tiny", located.num_layers, model.config.hidden_size)
    for layer, (w, b) in trained.items():
        lens.weight[layer + 1], lens.bias[layer + 1] = w, b
    for ids in seqs:
        after = sequence_kls(model, located, ids, {"logit": None, "tuned": lens}, [0, 1])
        for layer in (0, 1):
            assert after["tuned"][layer] < 0.9 * after["logit"][layer]
    # the first update's recorded loss is the logit-lens KL of its sequences (identity start)
    assert state.history[0]["kl"]["0"] > state.history[-1]["kl"]["0"]


def test_an_interrupted_training_resumes_to_the_same_translators(tmp_path):
    model = make_model("llama")
    seqs = [sample_ids(batch=1, length=9, seed=k)[0].tolist() for k in range(5)]
    s = TunedLensSettings(sequences_per_step=2, save_every=1, position_chunk=4)
    whole, _ = train_translators(model, seqs, [0, 1], s)
    state = tmp_path / "state.pt"

    def stop(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_translators(model, seqs, [0, 1], s, state_path=state, progress=stop)
    assert state.exists()
    resumed, final = train_translators(model, seqs, [0, 1], s, state_path=state)
    assert final.updates == 3
    for layer in (0, 1):
        torch.testing.assert_close(resumed[layer][0], whole[layer][0], rtol=0, atol=0)
        torch.testing.assert_close(resumed[layer][1], whole[layer][1], rtol=0, atol=0)


def test_files_are_in_the_tuned_lens_librarys_layout(tmp_path):
    model = make_model("llama")
    lens = _random_lens(model)
    lens.unembed_hash = library_unembed_hash(model.lm_head.weight)
    lens.info = {"trained_layers": [0, 1]}
    save_tuned_lens(tmp_path, lens)
    config = json.loads((tmp_path / "config.json").read_text())
    assert tuple(config) == CONFIG_KEYS and config["lens_type"] == "linear_tuned_lens" and config["bias"] is True
    assert (config["d_model"], config["num_hidden_layers"]) == (32, 3)
    state = torch.load(tmp_path / "params.pt", weights_only=True)
    assert sorted(state) == sorted(f"{i}.{p}" for i in range(3) for p in ("weight", "bias"))
    assert state["1.weight"].shape == (32, 32) and state["1.bias"].shape == (32,)
    again = load_tuned_lens(tmp_path)
    torch.testing.assert_close(again.weight, lens.weight)
    assert again.info == {"trained_layers": [0, 1]}
    # the library's Unembed.unembedding_hash: sha256 of numpy's one-decimal summary of W_U
    text = np.array_str(model.lm_head.weight.detach().float().numpy(), precision=1)
    assert config["unembed_hash"] == hashlib.sha256(text.encode()).hexdigest()
    library = pytest.importorskip("tuned_lens")  # the library itself, where it is installed
    loaded = library.TunedLens.from_model_and_pretrained(model, str(tmp_path))
    h = torch.randn(1, 4, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(h, 2), model.lm_head(model.model.norm(lens.translate(h, 1))))


def test_cli_trains_on_the_demo_reads_vectors_through_it_and_refuses_bad_input(tmp_path):
    out = tmp_path / "lens"
    args = ["lens", "train-tuned", "--prompts", "3", "--max-new-tokens", "6", "-o", str(out),
            "--set", "lens.tuned.sequences_per_step=2"]
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output
    info = load_tuned_lens(out).info
    assert info["trained_layers"] == [0, 1, 2] and info["updates"] == 2 and info["sequences"] == 3
    assert info["eval_kl"]["tuned"][3] == 0.0 and info["eval_kl"]["logit_lens"][3] == 0.0
    assert info["eval_data"]["in_sample"] and (out / "figures" / "tuned_lens.png").stat().st_size > 0
    assert not (out / "partial").exists()
    rows = [json.loads(line) for line in (out / "sequences.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["input_ids"]) > 2 for r in rows)  # --data reads it back
    vectors = save_vectors(tmp_path / "v.safetensors", torch.randn(4, 128), base_model="demo")
    read = runner.invoke(app, ["lens", str(vectors), "--tuned", str(out), "--json", "--top-k", "3",
                               "--plot", str(tmp_path / "lens.png")])
    assert read.exit_code == 0, read.output
    doc = json.loads(read.stdout)
    assert doc["tuned"]["cosine"][3] == pytest.approx(1.0) and doc["tuned"]["norm_ratio"][3] == pytest.approx(1.0)
    assert len(doc["layers"]) == 4 and (tmp_path / "lens-tuned.png").exists()
    table = runner.invoke(app, ["lens", str(vectors), "--tuned", str(out), "--layer", "2", "--show", "2"])
    assert table.exit_code == 0 and "cos(s, A s)" in table.stdout
    one_line_error(runner.invoke(app, args), "--overwrite")
    one_line_error(runner.invoke(app, [*args[:2], "--layers", "9", "-o", str(tmp_path / "x")]), "out of range")
    one_line_error(runner.invoke(app, [*args[:2], "--data", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "y")]),
                   "does not exist")
    one_line_error(runner.invoke(app, ["lens", str(vectors), "--tuned", str(tmp_path)]), "not a tuned lens")
    other = tmp_path / "other"
    save_tuned_lens(other, TunedLens.identity("tiny", 3, 64))
    one_line_error(runner.invoke(app, ["lens", str(vectors), "--tuned", str(other)]), "another model")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
