#!/usr/bin/env bash
# GPU acceptance check: one command, under 8 minutes on one GPU, no downloads, one JSON of figures.
#   bash scripts/gpu_check.sh [--out gpu_check.json] [--workdir DIR] [--only a,b] [--skip a,b]
# Trains the demo on CUDA in bfloat16 (steering with hf rollouts and with vLLM; LoRA; full; full
# under FSDP with resume), checks vLLM greedy == hf greedy with vectors and CUDA graphs, runs
# `steer bench` on a random ~1B Qwen2 and the Qwen2.5-Math-7B width, and four demo seeds in one job
# against the same four runs one after another (scripts/bench_multirun.py). Exits 2 without a GPU.
set -uo pipefail
PYTHON=${PYTHON:-python3}
exec "$PYTHON" "$(dirname "$0")/gpu_check.py" "$@"
