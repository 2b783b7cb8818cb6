#!/usr/bin/env bash
# Every `steer study` of README "Studying vectors" on the built-in demo, from training to figures:
#   bash scripts/study_demo.sh [WORKDIR]    (default runs/study-demo; about 4 min on 2 CPU cores)
# Each step prints its wall time; a re-run skips what is done (trained runs, finished cells).
set -euo pipefail
W=${1:-runs/study-demo}
EVAL=(--benchmarks demo --limit 50 --samples 1)
step() { local t=$SECONDS; echo "+ $*" >&2; "$@"; echo "  ($(( SECONDS - t )) s)" >&2; }
mkdir -p "$W"
# One run per layer, in one job (issue 25), then an all-layer run and the stack of the four.
[ -d "$W/layers/layer-3/final" ] || step steer train --sweep setup.steering.layers=each --max-steps 30 --lr 0.1 -o "$W/layers"
[ -d "$W/all/final" ] || step steer train --max-steps 30 -o "$W/all"
[ -f "$W/merged.safetensors" ] || step steer merge "$W"/layers/layer-* -o "$W/merged.safetensors"
step steer study layers "$W"/layers/layer-* --all "$W/all" --prefill 8 "${EVAL[@]}" -o "$W/study/layers"
step steer study pairs "$W/merged.safetensors" --full "$W/all" "${EVAL[@]}" -o "$W/study/pairs"
step steer study magnitude "$W/all" --scale 0,0.5,1,1.5,2 "${EVAL[@]}" -o "$W/study/magnitude"
step steer study persistence "$W/merged.safetensors" --pairs "$W/study/pairs" --prompts 16 -o "$W/study/persistence"
# Transfer needs a sibling of the demo's geometry: the demo with its MLPs perturbed, and a run on it.
[ -d "$W/sibling" ] || step python scripts/demo_sibling.py "$W/sibling"
[ -d "$W/sibling-run/final" ] || step steer train --preset demo --model "$W/sibling" --max-steps 30 -o "$W/sibling-run"
step steer study transfer --vectors "$W/all,$W/sibling-run" --models "demo,$W/sibling" "${EVAL[@]}" -o "$W/study/transfer"
