"""bfloat16 end to end on CPU: each setup trains and evaluates with `--set model.dtype=bfloat16`;
what trains keeps float32 (steering vectors; LoRA adapters; full fine-tuning's master weights), so
updates below bfloat16's resolution at the parameter's magnitude still add up."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import one_line_error
from tiny_models import make_model, sample_ids
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.patching.setups import prepare_setup

_register()
runner = CliRunner()
BF16 = ["--set", "model.dtype=bfloat16"]
SMALL = ["--max-steps", "2", "--prompts-per-step", "2", "--num-generations", "4", "--max-new-tokens", "24",
         "--set", "train.grader_workers=0", "--set", "train.warmup_ratio=0"]


def _step(trainable, optimizer, ids):
    with trainable.autocast():
        loss = trainable.model(ids).logits.float().logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_steering_updates_below_bf16_resolution_add_up():
    model = make_model("qwen2").to(torch.bfloat16)
    trainable = prepare_setup(model, "steering", vectors=torch.ones(3, 32))
    lr, steps = 1e-4, 10
    # One step moves a unit vector by about lr, less than half of bfloat16's spacing at 1.0 (2^-7).
    assert torch.tensor(1.0 + lr, dtype=torch.bfloat16) == 1.0
    optimizer = torch.optim.AdamW(trainable.params, lr=lr, weight_decay=0.0)
    for _ in range(steps):
        _step(trainable, optimizer, sample_ids())
    moved = (trainable.steering.vectors.detach() - 1.0).abs()
    assert trainable.steering.vectors.dtype == torch.float32
    assert moved.mean() > 0.5 * lr * steps  # Adam steps are ~lr each; all of them count


def test_full_master_weights_keep_updates_that_bf16_weights_lose():
    lr, steps = 1e-6, 3
    ids = sample_ids()

    def changed_fraction(master: bool) -> float:
        model = make_model("qwen2")
        model = model if master else model.to(torch.bfloat16)
        trainable = prepare_setup(model, "full")
        if master:
            trainable.autocast_dtype = torch.bfloat16  # what `steer train` does for bf16 + full
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.AdamW(trainable.params, lr=lr, weight_decay=0.0)
        for _ in range(steps):
            _step(trainable, optimizer, ids)
        w = before["model.layers.0.mlp.down_proj.weight"]
        now = dict(model.named_parameters())["model.layers.0.mlp.down_proj.weight"].detach()
        return float((now != w).float().mean())

    assert changed_fraction(master=True) > 0.9
    assert changed_fraction(master=False) < 0.1  # lost to rounding: why master weights exist


def test_autocast_forward_runs_in_bf16_on_float32_master_weights():
    model = make_model("qwen2")
    trainable = prepare_setup(model, "full")
    trainable.autocast_dtype = torch.bfloat16
    with trainable.autocast():
        logits = model(sample_ids()).logits
    assert logits.dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("setup,extra", [("steering", ["--lr", "0.03"]), ("lora", ["--lr", "1e-3"]),
                                         ("full", ["--lr", "1e-4"])])
def test_each_setup_trains_and_evaluates_in_bf16(setup, extra, tmp_path):
    out = tmp_path / setup
    result = runner.invoke(app, ["train", "--preset", "demo", "--setup", setup, "--output-dir", str(out), *SMALL, *extra, *BF16])
    assert result.exit_code == 0, result.output
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["skipped_nonfinite"] == 0 for m in metrics)
    if setup == "full":
        config = json.loads((out / "final" / "model" / "config.json").read_text())
        # the master weights, not their bf16 copies (the key is torch_dtype before transformers 4.56)
        assert config.get("dtype", config.get("torch_dtype")) == "float32"
    result = runner.invoke(app, ["eval", str(out), "--limit", "4", "--output-dir", str(tmp_path / f"eval-{setup}"),
                                 *BF16])
    assert result.exit_code == 0, result.output
    summaries = list((tmp_path / f"eval-{setup}").glob("*/summary.json"))
    assert {json.loads(p.read_text())["label"] for p in summaries} == {"base", "final"}


def test_vllm_dtype_the_platform_cannot_run_is_a_one_line_error(tmp_path, monkeypatch):
    from steer_cli.errors import SteerError
    from steer_cli.rollout.factory import check_engine_dtype

    class NoBf16Cpu:
        device_name = "cpu"
        supported_dtypes = [torch.float16, torch.float32]

    with pytest.raises(SteerError, match="cannot run bfloat16 on this machine.*model.dtype=float32"):
        check_engine_dtype("bfloat16", NoBf16Cpu())
    check_engine_dtype("float32", NoBf16Cpu())

    import steer_cli.rollout.factory as factory

    monkeypatch.setattr(factory, "check_engine_dtype", lambda name, platform=None: check_engine_dtype(name, NoBf16Cpu()))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--backend", "vllm", "--output-dir", str(out), *SMALL, *BF16])
    one_line_error(result, "model.dtype = bfloat16", "--backend hf")
    assert not out.exists()
