"""steer lens: scores against a direct computation, token display, loading, CLI end to end."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import one_line_error
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.lens import logit as lens
from steer_cli.lens.tokens import TokenRenderer
from steer_cli.lens import unembed as lens_unembed
from steer_cli.lens.unembed import load_unembedding
from steer_cli.vectors.file import save_vectors, unembed_sha256

_register()
runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- pure functions ----------------------------------------------------------------------------
def test_cosine_scores_match_direct_computation_and_zero_rows_give_zeros():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 16, generator=g)
    v[1] = 0.0
    w = torch.randn(50, 16, generator=g)
    w[7] = 0.0  # a zero unembedding row (padded vocabularies) must not give NaN either
    got = lens.lens_scores(v, w, "cosine", chunk=7)  # several chunks, the last one short
    want = F.cosine_similarity(v[:, None, :], w[None, :, :], dim=-1)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)
    assert (got[1] == 0).all() and (got[:, 7] == 0).all()


def test_dot_scores_match_direct_computation_for_bf16_unembedding():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(2, 8, generator=g)
    w = torch.randn(30, 8, generator=g).to(torch.bfloat16)
    got = lens.lens_scores(v, w, "dot", chunk=4)
    torch.testing.assert_close(got, v @ w.float().T)
    assert got.dtype == torch.float32


def test_top_tokens_are_the_k_best_in_order():
    row = torch.tensor([0.1, -0.5, 0.9, 0.3, -0.2, 0.7])
    assert lens.top_tokens(row, 3) == [(2, pytest.approx(0.9)), (5, pytest.approx(0.7)), (3, pytest.approx(0.3))]
    assert [i for i, _ in lens.top_tokens(row, 2, largest=False)] == [1, 4]
    assert len(lens.top_tokens(row, 100)) == 6


def test_layer_and_self_cosines_and_stable_rank():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 10, generator=g), torch.randn(4, 10, generator=g)
    b[3] = 0.0
    want = F.cosine_similarity(a, b, dim=-1)
    want[3] = 0.0
    torch.testing.assert_close(lens.layer_cosines(a, b), want)
    torch.testing.assert_close(lens.self_cosines(a), F.cosine_similarity(a[:, None], a[None], dim=-1))
    assert lens.stable_rank(torch.outer(torch.arange(1.0, 5.0), torch.ones(10))) == pytest.approx(1.0)
    assert lens.stable_rank(torch.eye(4, 10) * 3) == pytest.approx(4.0)
    assert lens.stable_rank(torch.zeros(3, 5)) == 0.0


# -- token display -----------------------------------------------------------------------------
def _byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for piece in ("Ġthe", "ä¸Ń", "ä¸"):  # ' the', '中' (e4 b8 ad), and its first two bytes alone
        vocab[piece] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>")
    return tok, vocab


def test_byte_level_pieces_are_shown_as_text_with_escapes():
    tok, vocab = _byte_level_tokenizer()
    r = TokenRenderer(tok)
    assert r.style == "byte"
    assert r.text(vocab["Ġthe"]) == " the"
    assert r.text(vocab["Ċ"]) == "\\n"
    assert r.text(vocab["ä¸Ń"]) == "中"
    assert r.text(vocab["ä¸"]) == "\\xe4\\xb8"  # a partial UTF-8 character
    assert r.piece(vocab["Ġthe"]) == "Ġthe"
    assert r.text(tok.convert_tokens_to_ids("<|im_end|>")) == "<|im_end|>"
    assert r.text(10_000) == "<unused 10000>"


def test_sentencepiece_pieces_and_byte_fallback():
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁the": 1, "<0x0A>": 2, "<0xE4>": 3, "ing": 4}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    r = TokenRenderer(PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>"))
    assert r.style == "sentencepiece"
    assert [r.text(i) for i in (1, 2, 3, 4)] == [" the", "\\n", "\\xe4", "ing"]


# -- loading and the lens on a tiny model ------------------------------------------------------
def _lm_head(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).get_output_embeddings().weight.detach()


def _vectors(path, model_dir, layers=2, hidden=64, seed=0, **meta):
    v = torch.randn(layers, hidden, generator=torch.Generator().manual_seed(seed))
    save_vectors(path, v, base_model=str(model_dir), **meta)
    return v


def test_unembedding_is_read_from_the_checkpoint_and_equals_lm_head(tiny_lm):
    u = load_unembedding(str(tiny_lm))
    assert u.source.startswith("lm_head.weight")
    assert u.num_layers == 2
    torch.testing.assert_close(u.weight, _lm_head(tiny_lm))


def test_tied_embeddings_read_the_input_embedding(tmp_path):
    from tiny_models import save_tiny_lm

    path = save_tiny_lm(tmp_path / "tied", tie_word_embeddings=True, num_hidden_layers=1)
    u = load_unembedding(str(path))
    assert "embed_tokens" in u.source
    torch.testing.assert_close(u.weight, _lm_head(path))


def test_full_model_fallback_gives_the_same_matrix(tiny_lm, monkeypatch):
    monkeypatch.setattr(lens_unembed, "_read_unembed_tensor", lambda *a: None)
    u = load_unembedding(str(tiny_lm))
    assert u.num_layers == 2 and "of" in u.source
    torch.testing.assert_close(u.weight, _lm_head(tiny_lm))


def test_run_lens_scores_equal_direct_computation(tiny_lm, tmp_path):
    w = _lm_head(tiny_lm)
    v = _vectors(tmp_path / "v.safetensors", tiny_lm, unembed_sha256=unembed_sha256(w))
    for kind in ("cosine", "dot"):
        result = lens.run_lens(tmp_path / "v.safetensors", top_k=5, kind=kind)
        want = F.cosine_similarity(v[:, None], w[None], dim=-1) if kind == "cosine" else v @ w.T
        torch.testing.assert_close(result.scores, want)
        for ll in result.layers:
            assert [t.id for t in ll.top] == torch.topk(want[ll.layer], 5).indices.tolist()
            assert [t.id for t in ll.bottom] == torch.topk(want[ll.layer], 5, largest=False).indices.tolist()
            assert ll.top[0].score == pytest.approx(float(want[ll.layer].max()), rel=1e-5)
        assert result.unembed_hash_ok is True and not result.notes
    assert result.norms == pytest.approx(v.norm(dim=-1).tolist())


def test_hash_mismatch_warns_and_zero_layers_are_skipped_unless_asked(tiny_lm, tmp_path):
    v = torch.randn(2, 64)
    v[0] = 0.0
    save_vectors(tmp_path / "v.safetensors", v, base_model=str(tiny_lm), unembed_sha256="0" * 64)
    result = lens.run_lens(tmp_path / "v.safetensors", top_k=3)
    assert result.unembed_hash_ok is False
    assert any("differs" in n for n in result.notes)
    assert [ll.layer for ll in result.layers] == [1] and result.skipped_zero == [0]
    result = lens.run_lens(tmp_path / "v.safetensors", top_k=3, layers=[0])
    assert result.layers[0].zero and result.layers[0].top == []


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_json_table_and_plot(tiny_lm, tmp_path):
    w = _lm_head(tiny_lm)
    v = _vectors(tmp_path / "v.safetensors", tiny_lm)
    result = runner.invoke(app, ["lens", str(tmp_path / "v.safetensors"), "--top-k", "4", "--json", "--layer", "1"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "steer-lens" and data["score"] == "cosine" and data["vocab_size"] == w.shape[0]
    assert [layer["layer"] for layer in data["layers"]] == [1]
    want = F.cosine_similarity(v[1][None], w, dim=-1)
    top = data["layers"][0]["top"]
    assert [t["id"] for t in top] == torch.topk(want, 4).indices.tolist()
    assert top[0]["score"] == pytest.approx(float(want.max()), rel=1e-5)
    assert {"id", "token", "piece", "score"} <= set(top[0])

    png = tmp_path / "lens.png"
    result = runner.invoke(app, ["lens", str(tmp_path / "v.safetensors"), "--show", "3", "--dot", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "layer 0" in result.stdout and "layer 1" in result.stdout and "dot" in result.stdout
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_cli_compare_gives_per_layer_cosines(tmp_path):
    a = torch.randn(3, 8)
    b = a.clone()
    b[1] = -b[1]
    b[2] = torch.randn(8)
    save_vectors(tmp_path / "a.safetensors", a)
    save_vectors(tmp_path / "b.safetensors", b)
    result = runner.invoke(app, ["lens", str(tmp_path / "a.safetensors"), "--compare", str(tmp_path / "b.safetensors"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    cos = [layer["cosine"] for layer in data["layers"]]
    assert cos[0] == pytest.approx(1.0) and cos[1] == pytest.approx(-1.0)
    assert cos[2] == pytest.approx(float(F.cosine_similarity(a[2], b[2], dim=0)), abs=1e-6)
    assert data["mean_cosine"] == pytest.approx(sum(cos) / 3)
    result = runner.invoke(app, ["lens", str(tmp_path / "a.safetensors"), "--compare", str(tmp_path / "b.safetensors")])
    assert result.exit_code == 0 and "mean cosine" in result.stdout


def test_cli_picks_the_latest_training_run(tiny_lm, tmp_path):
    run = tmp_path / "runs" / "m" / "d" / "steering" / "seed-0"
    (run / "final").mkdir(parents=True)
    (run / "settings.yaml").write_text("model:\n  name: x\n")
    (run / "metrics.jsonl").write_text("{}\n")
    _vectors(run / "final" / "vectors.safetensors", tiny_lm)
    result = runner.invoke(app, ["lens", "--runs-dir", str(tmp_path / "runs"), "--json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    assert "most recent training run" in result.stderr
    assert json.loads(result.stdout)["vectors"] == str(run / "final" / "vectors.safetensors")




def test_cli_bad_inputs_get_one_line_errors(tiny_lm, tmp_path):
    _vectors(tmp_path / "wide.safetensors", tiny_lm, layers=3)
    one_line_error(runner.invoke(app, ["lens", str(tmp_path / "wide.safetensors")]), "shape", "[3, 64]", "[2, 64]")
    (tmp_path / "v.pt").write_bytes(pickle.dumps({"vectors": [1.0]}, protocol=4))
    one_line_error(runner.invoke(app, ["lens", str(tmp_path / "v.pt"), "--model", str(tiny_lm)]), "pickle")
    (tmp_path / "notes.txt").write_text("these are not vectors\n")
    one_line_error(runner.invoke(app, ["lens", str(tmp_path / "notes.txt"), "--model", str(tiny_lm)]), "safetensors")
    save_vectors(tmp_path / "anon.safetensors", torch.randn(2, 64))
    one_line_error(runner.invoke(app, ["lens", str(tmp_path / "anon.safetensors")]), "--model")
    one_line_error(runner.invoke(app, ["lens", str(tmp_path / "anon.safetensors"), "--model", str(tiny_lm),
                                        "--layer", "5"]), "--layer 5")
    one_line_error(runner.invoke(app, ["lens", str(tmp_path / "missing.safetensors")]), "does not exist")
    one_line_error(runner.invoke(app, ["lens", "--runs-dir", str(tmp_path / "nowhere")]), "no run given")
