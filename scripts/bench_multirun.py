"""K steering runs in one `steer train` job against the same K runs one after another, side by side.

Each configuration runs the same K seeds twice in this one invocation: as one process
`steer train --sweep train.seed=0,...,K-1` and as K processes `steer train --seed k`, one after
the other. Prints (and with --json writes) the wall times and their ratio, each process's peak
resident memory (``ru_maxrss`` of the process itself, from ``wait4``) and the job's peak against
the largest single run's, and checks that every run of the job ended with the same vectors as
the same run alone (bit for bit on CPU):

    python scripts/bench_multirun.py                    # the demo (K = 4, its 50 steps) and random-50m
    python scripts/bench_multirun.py --only demo --runs 4 --json multirun.json

``random-50m`` is a random Qwen2 of 63 M parameters (8 layers x 512) with the demo's tokenizer and
task, a few short steps: its completions are all wrong, so its steps are rollouts and grading
with few or no update passes. Exit 1 when a run differs from the run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "demo": [],  # the demo's own 50 steps, 8 prompts x 8 samples
    "random-50m": ["--max-steps", "3", "--prompts-per-step", "4", "--num-generations", "4",
                   "--max-new-tokens", "24"],
}


def run_process(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"steer {' '.join(cmd[3:7])} ... failed ({code}):\n{err.decode(errors='replace')[-3000:]}")
    return seconds, int(usage.ru_maxrss) * 1024


def random_model(workdir: Path) -> str:
    """random-50m with the demo's tokenizer files beside it (the demo's vocabulary fits in it)."""
    from steer_cli.bench.models import materialize_model
    from steer_cli.models import resolve_model

    path = Path(materialize_model("random-50m", workdir))
    demo = Path(resolve_model("demo"))
    for f in demo.iterdir():
        if f.is_file() and ("token" in f.name or f.name in ("special_tokens_map.json", "vocab.json", "merges.txt",
                                                             "chat_template.jinja")):
            shutil.copy2(f, path / f.name)
    return str(path)


def bench(name: str, runs: int, workdir: Path, max_steps: int | None = None) -> dict:
    from safetensors.torch import load_file

    env = dict(os.environ)
    env.pop("STEER_FAULT", None)
    base = [sys.executable, "-m", "steer_cli", "train", *CONFIGS[name]]
    if max_steps:
        base += ["--max-steps", str(max_steps)]
    if name != "demo":
        base += ["--model", random_model(workdir), "--preset", "demo/demo/steering"]
    seeds = list(range(runs))
    job_dir = workdir / name / "job"
    job_s, job_rss = run_process([*base, "--sweep", "train.seed=" + ",".join(map(str, seeds)),
                                  "--output-dir", str(job_dir)], env)
    alone = []
    for seed in seeds:
        alone.append(run_process([*base, "--seed", str(seed), "--output-dir", str(workdir / name / f"alone-{seed}")],
                                 env))
    same = all(
        load_file(str(job_dir / f"seed-{s}" / "final" / "vectors.safetensors"))["vectors"].equal(
            load_file(str(workdir / name / f"alone-{s}" / "final" / "vectors.safetensors"))["vectors"])
        for s in seeds)
    sequential = sum(t for t, _ in alone)
    one_peak = max(m for _, m in alone)
    return {"config": name, "runs": runs, "args": base[4:], "job_seconds": round(job_s, 1),
            "sequential_seconds": round(sequential, 1), "alone_seconds": [round(t, 1) for t, _ in alone],
            "time_ratio": round(job_s / sequential, 3), "job_peak_rss_bytes": job_rss,
            "one_run_peak_rss_bytes": one_peak, "memory_ratio": round(job_rss / one_peak, 3),
            "identical_vectors": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4, help="K: seeds in the job")
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append", help="configurations to run")
    parser.add_argument("--max-steps", type=int, help="steps of every run (default: each configuration's own)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="steer-bench-multirun-") as tmp:
        workdir = args.workdir or Path(tmp)
        results = [bench(name, args.runs, workdir, args.max_steps) for name in (args.only or list(CONFIGS))]
    out = {"load_average_at_start": round(load, 2), "load_average_at_end": round(os.getloadavg()[0], 2),
           "cpu_count": os.cpu_count(), "results": results}
    for r in results:
        print(f"{r['config']}: K = {r['runs']} in one job {r['job_seconds']} s, one after another "
              f"{r['sequential_seconds']} s (ratio {r['time_ratio']}); peak RSS job "
              f"{r['job_peak_rss_bytes'] / 2**30:.2f} GiB, one run {r['one_run_peak_rss_bytes'] / 2**30:.2f} GiB "
              f"(ratio {r['memory_ratio']}); vectors identical to the runs alone: {r['identical_vectors']}")
    print(f"load average {out['load_average_at_start']} at start, {out['load_average_at_end']} at end")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if not all(r["identical_vectors"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
