"""The GPU acceptance check behind scripts/gpu_check.sh: one command, one JSON file of figures.

Each check runs `steer` (or a short Python probe) as a subprocess with its own time limit, so one
failure never hides the others; the JSON is rewritten after every check, so a run cut short keeps
what it measured. Without a CUDA GPU it exits 2 with one line (``--allow-cpu`` runs the same
checks on a CPU at toy sizes: that is how the test suite covers this script).

    bash scripts/gpu_check.sh [--out gpu_check.json] [--workdir DIR] [--only a,b] [--skip a,b]
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent


class CheckFailed(Exception):
    """A check ran but what it measured misses its bar (the message says which)."""


class Skipped(Exception):
    """A check cannot run here (the message says why)."""


@dataclass
class Ctx:
    work: Path
    quick: bool  # toy sizes (CPU tests)
    cuda: bool
    log: Callable[[str], None]
    timeout_scale: float = 1.0

    def steer(self, *args: str, timeout: float, name: str, launcher: list[str] | None = None,
              fault: str | None = None) -> str:
        """Run ``python -m steer_cli ARGS`` (or under ``launcher``); its output goes to a log file."""
        cmd = (launcher or [sys.executable]) + ["-m", "steer_cli", *args]
        return self.run(cmd, timeout=timeout, name=name, fault=fault)

    def run(self, cmd: list[str], *, timeout: float, name: str, fault: str | None = None,
            ok_codes: tuple[int, ...] = (0,)) -> str:
        log_path = self.work / f"{name}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("STEER_FAULT", None)
        if fault:  # steer_cli/faults.py: kill the run at that point of that step
            env["STEER_FAULT"] = fault
        self.log(f"  $ {' '.join(cmd)}")
        with open(log_path, "w") as log:
            try:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.work, env=env,
                                      timeout=timeout * self.timeout_scale)
            except subprocess.TimeoutExpired:
                raise CheckFailed(f"timed out after {timeout * self.timeout_scale:.0f} s: {' '.join(cmd[-6:])}; "
                                  f"tail: {_tail(log_path)}") from None
        if proc.returncode not in ok_codes and not (fault and proc.returncode != 0):
            raise CheckFailed(f"exit {proc.returncode}: {_tail(log_path)}")
        return log_path.read_text(errors="replace")


def _tail(path: Path, lines: int = 6) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(text[-lines:])[-1500:]


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _train_figures(run: Path, wall: float) -> dict[str, Any]:
    m = _metrics(run)
    k = max(1, min(5, len(m) // 3))
    med = sorted(x["time_step"] for x in m)[len(m) // 2]
    return {
        "wall_seconds": round(wall, 1), "steps": len(m),
        "reward_first": round(_mean([x["reward_mean"] for x in m[:k]]), 4),
        "reward_last": round(_mean([x["reward_mean"] for x in m[-k:]]), 4),
        "accuracy_first": round(_mean([x["accuracy"] for x in m[:k]]), 4),
        "accuracy_last": round(_mean([x["accuracy"] for x in m[-k:]]), 4),
        "step_seconds_median": round(med, 3),
        "update_seconds_median": round(sorted(x["time_update"] for x in m)[len(m) // 2], 3),
        "tokens_per_second_median": round(sorted((x.get("tokens_per_second") or 0) for x in m)[len(m) // 2], 1),
        "nonfinite_total": m[-1].get("nonfinite_total", 0),
    }


def _demo_train(ctx: Ctx, name: str, *extra: str, steps: int | None = None, min_rise: float | None = 0.3,
                timeout: float = 150) -> dict[str, Any]:
    run = ctx.work / name
    args = ["train", "--output-dir", str(run), "--overwrite", "--set", "model.dtype=bfloat16", *extra]
    if ctx.quick:
        args += ["--max-steps", "2", "--prompts-per-step", "2", "--num-generations", "2", "--max-new-tokens", "8"]
    elif steps:
        args += ["--max-steps", str(steps)]
    t0 = time.perf_counter()
    ctx.steer(*args, timeout=timeout, name=name)
    fig = _train_figures(run, time.perf_counter() - t0)
    if fig["nonfinite_total"]:
        raise CheckFailed(f"{fig['nonfinite_total']} non-finite updates in bf16")
    if not ctx.quick and min_rise is not None and fig["reward_last"] - fig["reward_first"] < min_rise:
        raise CheckFailed(f"reward rose {fig['reward_first']} -> {fig['reward_last']}, less than {min_rise}")
    return fig


def _have_vllm() -> str | None:
    try:
        import vllm  # noqa: F401
    except Exception as err:  # any import failure means: no usable vLLM here
        return f"vLLM does not import here ({type(err).__name__}: {str(err)[:120]}); install steer-cli[vllm]"
    return None


# ---------------------------------------------------------------------------------------- checks

def check_env(ctx: Ctx) -> dict[str, Any]:
    import torch
    import transformers

    out: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": sys.version.split()[0], "cuda": torch.version.cuda}
    for mod in ("accelerate", "peft", "vllm", "math_verify"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as err:
            out[mod] = f"missing ({type(err).__name__})"
    if ctx.cuda:
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                   bf16=torch.cuda.is_bf16_supported(), gpus=torch.cuda.device_count())
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                               text=True)
            out["driver"] = q.stdout.strip()
    return out


def check_train_steering_hf(ctx: Ctx) -> dict[str, Any]:
    return _demo_train(ctx, "steering-hf")


def check_eval_steering_hf(ctx: Ctx) -> dict[str, Any]:
    run = ctx.work / "steering-hf"
    if not (run / "final").exists():
        raise Skipped("needs train_steering_hf")
    out = ctx.work / "eval-steering-hf"
    args = ["eval", str(run), "--output-dir", str(out), "--overwrite"]
    if ctx.quick:
        args += ["--limit", "4"]
    t0 = time.perf_counter()
    ctx.steer(*args, timeout=120, name="eval-steering-hf")
    fig: dict[str, Any] = {"wall_seconds": round(time.perf_counter() - t0, 1)}
    for summary_file in sorted(out.glob("*/summary.json")):
        s = json.loads(summary_file.read_text())
        fig[s.get("label", summary_file.parent.name)] = {
            name: {"metric": b["metric"], "mean": b["mean"], "problems": b["problems"]}
            for name, b in s["benchmarks"].items()}
    if not ctx.quick and fig.get("final", {}).get("demo", {}).get("mean", 0) <= fig.get("base", {}).get("demo", {}).get("mean", 1):
        raise CheckFailed(f"trained vectors do not beat the base model: {fig}")
    return fig


def check_train_lora_hf(ctx: Ctx) -> dict[str, Any]:
    return _demo_train(ctx, "lora-hf", "--setup", "lora", "--set", "train.lr=1e-3", steps=25, min_rise=None)


def check_train_full_hf(ctx: Ctx) -> dict[str, Any]:
    return _demo_train(ctx, "full-hf", "--setup", "full", "--set", "train.lr=1e-4", steps=25, min_rise=None)


def check_train_steering_vllm(ctx: Ctx) -> dict[str, Any]:
    why = _have_vllm()
    if why:
        raise Skipped(why)
    return _demo_train(ctx, "steering-vllm", "--backend", "vllm", "--set", "rollout.vllm.gpu_memory_utilization=0.25",
                       timeout=300)


def check_vllm_matches_hf(ctx: Ctx) -> dict[str, Any]:
    why = _have_vllm()
    if why:
        raise Skipped(why)
    probe = REPO / "scripts" / "gpu_check_parity.py"
    out = ctx.work / "parity.json"
    ctx.run([sys.executable, str(probe), "--out", str(out)] + (["--quick"] if ctx.quick else []),
            timeout=300, name="vllm-parity")
    fig = json.loads(out.read_text())
    if not fig.get("equal_all"):
        raise CheckFailed(f"vLLM greedy differs from hf greedy: {fig}")
    return fig


def _bench(ctx: Ctx, name: str, args: list[str], timeout: float) -> dict[str, Any]:
    out = ctx.work / f"{name}.json"
    ctx.steer("bench", *args, "--json", str(out), timeout=timeout, name=name)
    return json.loads(out.read_text())


def check_bench_1b(ctx: Ctx) -> dict[str, Any]:
    backends = "hf" if _have_vllm() else "hf,vllm"
    if ctx.quick:
        args = ["--model", "demo", "--backend", "hf", "--repeats", "1", "--sequences", "2", "--completion-len", "8"]
    else:
        args = ["--model", "random-1b", "--backend", backends, "--repeats", "5", "--completion-len", "512"]
    data = _bench(ctx, "bench-1b", args, timeout=240)
    s = data["setups"]
    return {"model_params": data["model_params"], "dtype": data.get("dtype"), "ratios": data["ratios"],
            "vllm": "measured" if data.get("vllm_sync") else (_have_vllm() or "not asked"),
            "setups": {k: {f: v.get(f) for f in ("trainable_params", "optimizer_state_bytes", "update_step_seconds",
                                                  "update_step_seconds_min", "update_step_seconds_max",
                                                  "peak_memory_bytes")} for k, v in s.items()},
            "generation": {b: {k: g.get(k) for k in ("tokens_per_second_bare", "tokens_per_second_steered",
                                                     "steered_over_bare_paired")}
                           for b, g in (data.get("generation") or {}).items()}}


def check_bench_7b_width(ctx: Ctx) -> dict[str, Any]:
    if ctx.quick:
        args = ["--model", "demo", "--setups", "steering", "--backend", "none", "--no-timing",
                "--completion-len", "8", "--memory-lengths", "8,16"]
    else:
        args = ["--model", "qwen2.5-math-7b-2layers", "--setups", "steering", "--backend", "none", "--repeats", "3",
                "--completion-len", "512", "--memory-lengths", "512,1024,2048", "--memory-layers", "1,2"]
    data = _bench(ctx, "bench-7b-width", args, timeout=300)
    return {"model_params": data["model_params"], "dtype": data.get("dtype"),
            "update_step_seconds": data["setups"]["steering"].get("update_step_seconds"),
            "memory_scaling": data.get("memory_scaling")}


def check_fsdp_full(ctx: Ctx) -> dict[str, Any]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    small = ["--prompts-per-step", "4", "--num-generations", "4", "--max-new-tokens", "48"] if ctx.quick else []
    common = ["train", "--setup", "full", "--fsdp", "--set", "model.dtype=bfloat16", "--set", "train.lr=1e-4",
              "--max-steps", "4", "--save-every", "2", *small]
    a, b = ctx.work / "fsdp-a", ctx.work / "fsdp-b"
    t0 = time.perf_counter()
    ctx.steer(*common, "--output-dir", str(a), "--overwrite", timeout=180, name="fsdp-a", launcher=launcher)
    wall = time.perf_counter() - t0
    # Killed after checkpoint-2 (in step 3's update), then resumed: must end where run a ended.
    ctx.steer(*common, "--output-dir", str(b), "--overwrite", timeout=180, name="fsdp-b1", launcher=launcher,
              fault="update@3")
    if not (b / "checkpoint-2").is_dir():
        raise CheckFailed("the killed FSDP run left no checkpoint-2")
    ctx.steer(*common, "--output-dir", str(b), "--resume", timeout=180, name="fsdp-b2", launcher=launcher)
    diff = _max_weight_diff(a / "final" / "model", b / "final" / "model")
    fig = {"wall_seconds": round(wall, 1), "steps": len(_metrics(a)), "resume_max_abs_weight_diff": diff,
           "reward_first": _metrics(a)[0]["reward_mean"], "reward_last": _metrics(a)[-1]["reward_mean"]}
    if diff != 0.0:
        fig["note"] = "resume differs from the uninterrupted run (sampling on GPU is not bitwise deterministic)"
    return fig


def _max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    def load(d: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    wa, wb = load(a), load(b)
    if set(wa) != set(wb):
        raise CheckFailed(f"checkpoints hold different tensors: {sorted(set(wa) ^ set(wb))[:4]}")
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def check_multirun(ctx: Ctx) -> dict[str, Any]:
    """Four demo seeds in one job against the same four runs one after another (the multi-run
    benchmark); on a GPU the runs need not match the runs alone bit for bit (exit 1 is kept)."""
    out = ctx.work / "multirun.json"
    script = Path(__file__).resolve().parent / "bench_multirun.py"
    ctx.run([sys.executable, str(script), "--only", "demo", "--runs", "4", "--max-steps", "2" if ctx.quick else "20",
             "--workdir", str(ctx.work / "multirun"), "--json", str(out)], timeout=400, name="multirun", ok_codes=(0, 1))
    return json.loads(out.read_text())["results"][0]


CHECKS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "env": check_env,
    "train_steering_hf": check_train_steering_hf,
    "eval_steering_hf": check_eval_steering_hf,
    "train_lora_hf": check_train_lora_hf,
    "train_full_hf": check_train_full_hf,
    "fsdp_full": check_fsdp_full,
    "bench_7b_width": check_bench_7b_width,
    "bench_1b": check_bench_1b,
    "train_steering_vllm": check_train_steering_vllm,
    "vllm_matches_hf": check_vllm_matches_hf,
    "multirun": check_multirun,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json", help="JSON file of all figures (default gpu_check.json)")
    ap.add_argument("--workdir", default=None, help="Where runs go (default: a temporary directory)")
    ap.add_argument("--only", default=None, help="Comma-separated checks to run (default all): " + ",".join(CHECKS))
    ap.add_argument("--skip", default="", help="Comma-separated checks to leave out")
    ap.add_argument("--allow-cpu", action="store_true", help="Run on a CPU at toy sizes (for tests of this script)")
    args = ap.parse_args(argv)

    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as err:
        print(f"gpu_check: {err.name or err} is not installed; install steer first: pip install torch "
              '(the CUDA build for this machine), then pip install -e ".[vllm]"', file=sys.stderr)
        return 2

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_check: no CUDA GPU visible (torch.cuda.is_available() is False); run it on a machine with an "
              "NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    names = [n.strip() for n in (args.only or ",".join(CHECKS)).split(",") if n.strip()]
    unknown = [n for n in names + [s for s in args.skip.split(",") if s] if n not in CHECKS]
    if unknown:
        print(f"gpu_check: unknown checks {unknown}; choose from {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    skip = set(s for s in args.skip.split(",") if s)
    work = (Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="steer-gpu-check-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out).resolve()
    ctx = Ctx(work=work, quick=not cuda, cuda=cuda, log=lambda msg: print(msg, flush=True))
    report: dict[str, Any] = {"kind": "steer-gpu-check", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "workdir": str(work), "checks": {}}
    t_all = time.perf_counter()
    for name in names:
        if name in skip:
            continue
        print(f"[gpu_check] {name}", flush=True)
        t0 = time.perf_counter()
        entry: dict[str, Any]
        try:
            entry = {"status": "passed", "figures": CHECKS[name](ctx)}
        except Skipped as why:
            entry = {"status": "skipped", "reason": str(why)}
        except CheckFailed as why:
            entry = {"status": "failed", "reason": str(why)}
        except Exception as err:  # a bug in a check must not stop the others
            entry = {"status": "error", "reason": f"{type(err).__name__}: {err}"}
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        report["checks"][name] = entry
        report["total_seconds"] = round(time.perf_counter() - t_all, 1)
        print(f"[gpu_check] {name}: {entry['status']} ({entry['seconds']} s) "
              f"{entry.get('reason', '')}".rstrip(), flush=True)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, out_path)
    statuses = [c["status"] for c in report["checks"].values()]
    print(f"[gpu_check] {statuses.count('passed')} passed, {statuses.count('failed') + statuses.count('error')} "
          f"failed, {statuses.count('skipped')} skipped in {report['total_seconds']} s; figures in {out_path}")
    return 1 if any(s in ("failed", "error") for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
