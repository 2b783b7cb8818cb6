"""The built-in demo: a small arithmetic task and a tiny Qwen2 model pretrained on it (shipped)."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
DEMO_MODEL_DIR = DEMO_DIR / "model"
DEMO_DATA_DIR = DEMO_DIR / "data"
DEMO_TRAIN_FILE = DEMO_DATA_DIR / "train.jsonl"
DEMO_TEST_FILE = DEMO_DATA_DIR / "test.jsonl"
