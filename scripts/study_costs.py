"""What the part-2 studies (tokens, patch, persistence, seeds, tuned lens, adaptive) cost as prompts
and layers grow.

    python scripts/study_costs.py                    # every configuration, each in a fresh process
    python scripts/study_costs.py tokens persistence # only these studies

Prints one JSON line per configuration: the seconds of the work itself (after loading) and the
peak resident memory above the loaded process (VmHWM - VmRSS before the work). CPU, tiny models:
the README's "What the part-2 studies cost" table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [("seeds", 4, 128, 1), ("seeds", 28, 128, 1), ("seeds", 28, 3584, 1), ("seeds", 28, 3584, 3),
           ("tuned", 2, 16, 0), ("tuned", 2, 64, 0), ("tuned", 8, 16, 0), ("tuned", 8, 64, 0),
           ("adaptive", 1, 8, 0), ("adaptive", 1, 32, 0), ("adaptive", 4, 8, 0), ("adaptive", 4, 32, 0)]
# token-level studies: a layers of a 256-wide random Qwen2 (4 heads, 2 key-value heads), b problems of
# the demo set, 32-token sampled completions (a random model never stops: every completion is 32)
CONFIGS += [(kind, a, b, 0) for kind in ("tokens", "patch", "persistence") for a in (2, 8) for b in (8, 32)]


def _memory() -> tuple[int, int]:
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024


def _one(kind: str, a: int, b: int, c: int, work: Path) -> dict:
    import torch

    torch.manual_seed(0)
    if kind == "seeds":  # a layers x b hidden, c pairs (c + 1 files when c = 3)
        from steer_cli.study.seeds import run_seeds
        from steer_cli.vectors.file import save_vectors

        shared = torch.randn(a, b)
        files = [save_vectors(work / f"v{k}.safetensors", shared + torch.randn(a, b), base_model="x")
                 for k in range(2 if c == 1 else 3)]
        before, _ = _memory()
        start = time.perf_counter()
        run_seeds(files)
        seconds = time.perf_counter() - start
    elif kind == "tuned":  # a layers (a - 1 translators), b sequences of 128 tokens
        from tiny_models import save_tiny_lm

        from steer_cli.lens.tuned_train import train_translators
        from steer_cli.models import load_causal_lm
        from steer_cli.settings import TunedLensSettings

        model = load_causal_lm(str(save_tiny_lm(work / "lm", num_hidden_layers=a, hidden_size=256,
                                                intermediate_size=1024)))
        seqs = [torch.randint(3, 250, (128,)).tolist() for _ in range(b)]
        before, _ = _memory()
        start = time.perf_counter()
        train_translators(model, seqs, list(range(a - 1)), TunedLensSettings(sequences_per_step=8))
        seconds = time.perf_counter() - start
    elif kind in ("tokens", "patch", "persistence"):
        seconds, before = _forced(kind, a, b, work)
    else:  # a single-layer rank-1 adapters on the demo, b problems, 32-token completions
        from peft import LoraConfig, get_peft_model

        from steer_cli.cli.common import settings_from_cli
        from steer_cli.models import load_causal_lm
        from steer_cli.study.adaptive import adaptive_study

        for layer in range(a):
            peft_model = get_peft_model(load_causal_lm("demo"), LoraConfig(
                r=1, lora_alpha=1, target_modules=[f"model.layers.{layer}.mlp.down_proj"]))
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.data.normal_(0, 0.05)
            peft_model.save_pretrained(work / "adapters" / f"lora-1-layer-{layer}")
        settings = settings_from_cli(preset=None, config=None, sets=["study.adaptive.max_new_tokens=32"],
                                     flags={"model.name": "demo", "study.adaptive.prompts": b})
        before, _ = _memory()
        start = time.perf_counter()
        adaptive_study([work / "adapters"], settings, output_dir=work / "out", plot=False, quiet=True)
        seconds = time.perf_counter() - start
    _, peak = _memory()
    return {"study": kind, "config": [a, b, c], "seconds": round(seconds, 3),
            "peak_above_loaded_mb": round((peak - before) / 2**20, 1), "peak_mb": round(peak / 2**20, 1)}


def _forced(kind: str, layers: int, prompts: int, work: Path) -> tuple[float, int]:
    """One token-level study on a random model: the study itself (sampling, teacher forcing, the
    statistics), its model load excluded by loading it once before (the study's own load is then
    from the page cache and the allocator's free lists, a fraction of a second)."""
    import torch
    from tiny_models import save_tiny_lm

    from steer_cli.settings import Layer, build_settings, unflatten
    from steer_cli.study.inputs import load_model
    from steer_cli.vectors.file import save_vectors

    lm = save_tiny_lm(work / "lm", num_hidden_layers=layers, hidden_size=256, intermediate_size=1024,
                      num_attention_heads=4, num_key_value_heads=2)
    merged = save_vectors(work / "v.safetensors", 2.0 * torch.randn(layers, 256), base_model=str(lm))
    values = {"model.name": str(lm), "data.dataset": "demo", "prompt.stop": ["<|im_end|>"], "prompt.template": "chat"}
    values.update({f"study.{kind}.{k}": v for k, v in
                   {"prompts": prompts, "max_new_tokens": 32, "batch": 8, "temperature": 1.0}.items()})
    settings = build_settings([Layer(unflatten(values), "costs")])
    load_model(settings)  # warm: the timed study loads the model again, from the page cache
    from steer_cli.study.patch import run_patch
    from steer_cli.study.persistence import run_persistence
    from steer_cli.study.tokens import run_tokens

    run = {"tokens": lambda **kw: run_tokens(settings, merged, None, against=None, **kw),
           "patch": lambda **kw: run_patch(settings, merged, None, **kw),
           "persistence": lambda **kw: run_persistence(settings, merged, None, **kw)}[kind]
    before, _ = _memory()
    start = time.perf_counter()
    run(output_dir=work / "out", interactive=False, plot=False)
    return time.perf_counter() - start, before


def main() -> None:
    if sys.argv[1:2] == ["--one"]:  # a child: one configuration
        sys.path.insert(0, str(ROOT / "tests"))
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(_one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), Path(tmp))))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    only = set(sys.argv[1:])
    for config in [c for c in CONFIGS if not only or c[0] in only]:
        done = subprocess.run([sys.executable, __file__, "--one", *map(str, config)], env=env, capture_output=True, text=True)
        print(done.stdout.strip().splitlines()[-1] if done.returncode == 0 else
              json.dumps({"config": config, "error": done.stderr.strip().splitlines()[-1:]}), flush=True)


if __name__ == "__main__":
    main()
