"""steer study tokens: the per-position statistics against direct computation, the exact checks of
the spec (E6) on tiny models, resume, and the command end to end on the shipped demo."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import one_line_error
from tiny_models import make_model, sample_ids
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.patching.archs import locate
from steer_cli.patching.steering import attach_steering
from steer_cli.settings import Layer, build_settings, unflatten
from steer_cli.study import tokens as T
from steer_cli.study.forced import final_hidden, head_logits
from steer_cli.study.position_stats import compare_rows, nan_pearson, quantiles
from steer_cli.vectors.file import save_vectors

_register()
runner = CliRunner()


def test_compare_rows_matches_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 40, generator=g), torch.randn(3, 40, generator=g)
    got = compare_rows(p, q, temperature=0.7, k=3, tokens=[5, 9])
    lp, lq = torch.log_softmax(p.double() / 0.7, -1), torch.log_softmax(q.double() / 0.7, -1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    delta = lq.exp() - lp.exp()
    torch.testing.assert_close(torch.from_numpy(got.kl), kl)
    assert (got.kl >= 0).all()
    assert got.top_ids[:, 0].tolist() == delta.argmax(-1).tolist()
    assert got.bottom_ids[:, 0].tolist() == delta.argmin(-1).tolist()
    torch.testing.assert_close(torch.from_numpy(got.token_q), lq.exp()[:, [5, 9]])
    same = compare_rows(p, p, k=3)
    assert (same.kl == 0).all() and (same.top_delta == 0).all()


def test_nan_safe_statistics():
    assert quantiles([float("nan")]) is None
    assert quantiles([1.0, 2.0, float("nan"), 3.0])["median"] == 2.0
    x = [0.0, 1.0, 2.0, float("nan"), 4.0]
    y = [1.0, 3.0, 5.0, 100.0, float("nan")]
    fit = nan_pearson(x, y)
    assert fit["n"] == 3 and fit["r"] == pytest.approx(1.0) and fit["slope"] == pytest.approx(2.0)
    assert nan_pearson([1.0, float("nan")], [2.0, 3.0])["r"] is None


def test_last_layer_vector_is_the_final_norm_of_the_shifted_residual():
    """For a vector only at layer L-1: the head reads norm(h_base + v) (E1/E6 closed form)."""
    model = make_model("llama")
    ids = sample_ids()
    located = locate(model)
    seen = []
    handle = located.final_norm.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    base_in = (final_hidden(model, ids, torch.ones_like(ids)), seen[-1])[1]
    handle.remove()
    v = torch.randn(model.config.hidden_size)
    rows = torch.zeros(3, model.config.hidden_size)
    rows[2] = v
    with attach_steering(model, rows, layers=[2], trainable=False):
        steered = final_hidden(model, ids, torch.ones_like(ids))
    with torch.no_grad():
        torch.testing.assert_close(steered, located.final_norm(base_in + v))
        torch.testing.assert_close(head_logits(model, steered), model.lm_head(located.final_norm(base_in + v)))


# -- the study on the demo model ---------------------------------------------------------------
def _demo_vectors(path, scale=2.0, zero=False, layers=4, hidden=128, model="demo"):
    g = torch.Generator().manual_seed(0)
    v = torch.zeros(layers, hidden) if zero else scale * torch.randn(layers, hidden, generator=g)
    return save_vectors(path, v, base_model=model)


def _settings(**flat):
    values = {"model.name": "demo", "data.dataset": "demo", "prompt.stop": ["<|im_end|>"],
              "study.tokens.prompts": 4, "study.tokens.batch": 2, "study.tokens.max_new_tokens": 10}
    values.update(flat)
    return build_settings([Layer(unflatten(values), "test")])


def test_zero_vectors_change_nothing_and_greedy_rows_line_up(tmp_path):
    zero = _demo_vectors(tmp_path / "zero.safetensors", zero=True)
    doc, _ = T.run_tokens(_settings(**{"study.tokens.temperature": 0.0}), zero, None, against=None,
                          output_dir=tmp_path / "zero", plot=False)
    lines = [json.loads(x) for x in (tmp_path / "zero" / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and doc["results"]["samples"] == 4
    for line in lines:
        assert all(k == 0.0 for k in line["kl"]) and all(d[0] == 0.0 for d in line["top_delta"])
        # greedy completions: the row at offset + k predicts completion token k
        assert line["argmax_steered"] == line["completion"][:len(line["argmax_steered"])]
    assert doc["results"]["first"]["kl"]["max"] == 0.0


def test_truncated_samples_are_kept_and_a_stopped_study_resumes(tmp_path, monkeypatch):
    vectors = _demo_vectors(tmp_path / "v.safetensors")
    settings = _settings(**{"study.tokens.max_new_tokens": 6})
    whole, _ = T.run_tokens(settings, vectors, None, against=None, output_dir=tmp_path / "whole", plot=False)
    r = whole["results"]
    assert r["samples"] == 4 and r["truncated"] >= 1 and r["positions"] == sum(
        len(json.loads(x)["kl"]) for x in (tmp_path / "whole" / "samples.jsonl").read_text().splitlines())
    assert r["first"]["kl"]["n"] == 4 and r["token"]["token"]
    calls = []
    original = T.sample_completions

    def stop_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(T, "sample_completions", stop_second)
    with pytest.raises(KeyboardInterrupt):
        T.run_tokens(settings, vectors, None, against=None, output_dir=tmp_path / "cut", plot=False)
    assert not (tmp_path / "cut" / "study.json").exists()
    monkeypatch.setattr(T, "sample_completions", original)
    again, _ = T.run_tokens(settings, vectors, None, against=None, output_dir=tmp_path / "cut", plot=False)
    assert again["results"] == whole["results"]
    # against itself: nothing changes
    same, _ = T.run_tokens(settings, vectors, None, against=vectors, output_dir=tmp_path / "self", plot=False)
    assert same["results"]["rest"]["kl"]["max"] == 0.0


def test_command_on_the_demo_and_its_one_line_errors(tmp_path):
    vectors = _demo_vectors(tmp_path / "v.safetensors")
    out = tmp_path / "out"
    args = ["study", "tokens", str(vectors), "--prompts", "3", "--max-new-tokens", "8", "--batch", "3",
            "--output-dir", str(out)]
    result = runner.invoke(app, args + ["--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["experiment"] == "tokens" and doc["results"]["samples"] == 3
    assert doc["inputs"]["vectors"]["sha256"]
    assert {p.name for p in (out / "figures").iterdir()} == {"token_delta.png", "promoted_tokens.png",
                                                             "kl_by_position.png"}
    table = runner.invoke(app, args)  # finished: read back, printed as a summary
    assert table.exit_code == 0 and "position 0" in table.stdout
    other = _demo_vectors(tmp_path / "other.safetensors", layers=3, hidden=64)
    one_line_error(runner.invoke(app, ["study", "tokens", str(other), "--model", "demo"]), "another model")
    one_line_error(runner.invoke(app, args[:3] + ["--layers", "7", "--output-dir", str(tmp_path / "x")]), "7")
    one_line_error(runner.invoke(app, args[:3] + ["--token", "What is", "--output-dir", str(tmp_path / "y")]),
                   "--token 'What is' is")
    one_line_error(runner.invoke(app, args + ["--prompts", "5"]), "other inputs or settings")


def test_kl_by_position_axis_starts_at_zero(tmp_path, monkeypatch):
    """KL >= 0: the symlog axis must not mirror empty negative decades below 0."""
    from steer_cli.study import tokens_plots

    seen = []
    monkeypatch.setattr(tokens_plots, "save_png", lambda fig, path: seen.append(fig) or path)
    tokens_plots.plot_kl_by_position([6e-4, 1e-4, 1e-3, 0.2, 3e-3], {"mean": 0.06}, tmp_path / "kl.png")
    bottom, top = seen[0].axes[0].get_ylim()
    assert bottom == 0.0 and top >= 0.2
