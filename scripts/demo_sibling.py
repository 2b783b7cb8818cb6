"""A sibling of the demo model (same geometry and tokenizer, MLPs perturbed by 5 %), for
`steer study transfer` on the demo:  python scripts/demo_sibling.py OUT_DIR"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from steer_cli.models import demo_model_dir


def main() -> None:
    out = Path(sys.argv[1])
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir(), dtype=torch.float32)
    torch.manual_seed(3)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(1.0 + 0.05 * torch.randn_like(layer.mlp.down_proj.weight))
    model.save_pretrained(out)
    for f in demo_model_dir().iterdir():
        if f.name.startswith("tokenizer") or f.name == "generation_config.json":
            shutil.copy(f, out / f.name)
    print(out)


if __name__ == "__main__":
    main()
