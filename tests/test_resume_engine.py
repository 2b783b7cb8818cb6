"""A resumed run's rollout engine gets the checkpoint's vectors before it generates again.

The vLLM engine is started with the run's starting vectors; before this test's fix a `--resume`d
run generated its first step with those (zeros) instead of the checkpoint's. A recording stand-in
for the engine (generating with the hf model underneath) shows what the engine holds."""

from __future__ import annotations

import torch

import steer_cli.train.run as train_run
from steer_cli.cli.common import settings_from_cli
from steer_cli.errors import Interrupted
from steer_cli.rollout.hf import HFBackend
from steer_cli.vectors.file import load_vectors


class RecordingEngine:
    """The vLLM training backend's interface: generate with what was synced last."""

    def __init__(self, trainer):
        self.hf = HFBackend(trainer.trainable.model, trainer.tokenizer, batch_prompts=8)
        self.handle = trainer.trainable.steering
        self.synced: list[torch.Tensor] = []
        self.generated_with: list[torch.Tensor] = []

    def sync_from(self, view):
        self.synced.append(view.steering.vectors.detach().clone())

    def generate(self, prompts, sampling, *, first_index=0):
        held = self.synced[-1] if self.synced else torch.zeros_like(self.handle.vectors)
        self.generated_with.append(held)
        self.handle.set(held)
        try:
            return self.hf.generate(prompts, sampling, first_index=first_index)
        finally:
            self.handle.set(torch.zeros_like(held))


def _settings(out, **extra):
    flags = {"train.max_steps": 3, "train.save_every": 2, "train.prompts_per_step": 2,
             "rollout.num_generations": 4, "train.lr": 0.05, "output.output_dir": str(out), **extra}
    return settings_from_cli(preset=None, config=None, sets=["rollout.backend=vllm", "train.grader_workers=0",
                                                               "train.warmup_ratio=0"], flags=flags)


def test_resumed_engine_generates_with_the_checkpoint_vectors(tmp_path, monkeypatch, coin_grader):
    engines: list[RecordingEngine] = []

    def make_backend(self):
        engine = RecordingEngine(self)
        engine.sync_from(self._engine_view(self.active[0]))  # as VLLMTrainingBackend does at start
        engines.append(engine)
        return engine

    monkeypatch.setattr(train_run.Trainer, "_make_backend", make_backend)
    monkeypatch.setattr(train_run, "engine_dtype", lambda dtype: None)
    out = tmp_path / "run"
    monkeypatch.setenv("STEER_FAULT", "update@3:term")  # stop after step 3's update: checkpoint-3
    try:
        train_run.train(_settings(out, **{"train.max_steps": 4}))
        raise AssertionError("the stop signal should have ended the run")
    except Interrupted:
        pass
    monkeypatch.delenv("STEER_FAULT")
    saved, meta = load_vectors(out / "checkpoint-3" / "vectors.safetensors")
    assert meta["step"] == 3 and saved.abs().sum() > 0

    train_run.train(_settings(out, **{"train.max_steps": 4, "output.resume": True}))
    resumed = engines[-1]
    (step4,) = resumed.generated_with  # the one step left
    assert torch.equal(step4, saved)
