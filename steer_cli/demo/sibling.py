"""A sibling of the demo model for `steer study transfer`: the same geometry and tokenizer, its MLPs'
down projections perturbed by ``spread`` (relative, seeded), so the demo's vectors have a second
model of the same shape to transfer to."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from steer_cli.models import demo_model_dir


def make_demo_sibling(out: Path, *, spread: float = 0.05, seed: int = 3) -> Path:
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir(), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            weight = layer.mlp.down_proj.weight
            weight.mul_(1.0 + spread * torch.randn(weight.shape, generator=generator))
    model.save_pretrained(out)
    for f in demo_model_dir().iterdir():
        if f.name.startswith("tokenizer") or f.name == "generation_config.json":
            shutil.copy(f, Path(out) / f.name)
    return Path(out)
