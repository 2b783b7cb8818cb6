"""`steer train` on the built-in demo in a subprocess, with fault injection (steer_cli/faults.py):
shared by the kill-, signal- and lock-tests."""

from __future__ import annotations

import os
import subprocess
import sys

# Checkpoints every 2 steps, 6 steps of 4 prompts x 4 samples: about 25 s on 2 CPU cores.
ARGS = ["train", "--max-steps", "6", "--save-every", "2", "--prompts-per-step", "4", "--num-generations", "4",
        "--lr", "0.03", "--set", "train.warmup_ratio=0", "--set", "train.grader_workers=0"]


def demo_env(fault: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env.pop("STEER_FAULT", None)
    if fault:
        env["STEER_FAULT"] = fault
    return env


def train_demo(out, *extra, fault=None, args=ARGS):
    return subprocess.run([sys.executable, "-m", "steer_cli", *args, "--output-dir", str(out), *extra],
                          env=demo_env(fault), capture_output=True, text=True, timeout=600)
