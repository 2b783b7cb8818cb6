"""What a study grid costs against the same cells as separate `steer eval` processes, side by side.

The pair grid of the demo's 4 layers (10 cells) as one `steer study pairs` process, then as 10
`steer eval --vectors MERGED --layers i,j` processes, one after the other, with the same protocol;
the per-cell completions must be identical. Prints (and with --json writes) the wall times, their
ratio and the check:

    python scripts/bench_study_grid.py [--merged FILE] [--limit 20] [--max-new-tokens 64] [--json out.json]

Without --merged, random demo-shaped vectors stand in (the cost does not depend on what they do).
Exit 1 when a cell differs or the ratio misses --target (default 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def steer(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "steer_cli", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"steer {' '.join(args[:3])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def completions(cell: Path) -> list[list[str]]:
    out = []
    for path in sorted(cell.glob("seed-*/*.jsonl")):
        out += [[s["text"] for s in json.loads(x)["samples"]] for x in path.read_text().splitlines() if x.strip()]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--merged", type=Path, help="merged single-layer vectors of the demo (default: random)")
    ap.add_argument("--limit", type=int, default=20, help="demo test problems per cell")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--layers", default="0,1,2,3")
    ap.add_argument("--target", type=float, default=0.5, help="the ratio the grid must stay under")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--workdir", type=Path, help="keep the outputs here (default: a temporary directory)")
    args = ap.parse_args()

    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    with tempfile.TemporaryDirectory(prefix="steer-bench-study-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        merged = args.merged
        if merged is None:
            import torch

            sys.path.insert(0, str(REPO))
            from steer_cli.vectors.file import save_vectors

            merged = save_vectors(work / "merged.safetensors",
                                  0.6 * torch.randn(4, 128, generator=torch.Generator().manual_seed(0)),
                                  base_model="demo", layers=[0, 1, 2, 3])
        protocol = ["--benchmarks", "demo", "--limit", str(args.limit), "--max-new-tokens", str(args.max_new_tokens),
                    "--temperature", "1.0"]
        layers = [int(x) for x in args.layers.split(",")]
        pairs = [(i, j) for a, i in enumerate(layers) for j in layers[a:]]

        grid = work / "grid"
        grid_s = steer(["study", "pairs", str(merged), "--model", "demo", "--layers", args.layers, "-o", str(grid),
                        *protocol], env)
        separate = work / "separate"
        separate_s = 0.0
        for i, j in pairs:
            subset = f"{i}" if i == j else f"{i},{j}"
            separate_s += steer(["eval", "--model", "demo", "--vectors", str(merged), "--layers", subset,
                                 "-o", str(separate / f"pair-{i}-{j}"), *protocol], env)
        same = all(completions(grid / "cells" / f"pair-{i}-{j}") == completions(separate / f"pair-{i}-{j}")
                   for i, j in pairs)
        result = {
            "cells": len(pairs), "limit": args.limit, "max_new_tokens": args.max_new_tokens,
            "grid_seconds": round(grid_s, 2), "separate_seconds": round(separate_s, 2),
            "ratio": round(grid_s / separate_s, 3), "target": args.target, "identical_cells": same,
            "cpu_count": os.cpu_count(),
        }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if not same or result["ratio"] > args.target:
        sys.exit(1)


if __name__ == "__main__":
    main()
