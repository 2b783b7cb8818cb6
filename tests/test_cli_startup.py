"""`steer --help` must answer at once: the CLI imports no torch, transformers or vLLM at startup."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from steer_cli import __version__
from steer_cli.errors import SteerError
from steer_cli.models import KNOWN_MODELS, resolve_model


def test_cli_startup_imports_no_heavy_library():
    code = ("import sys; from steer_cli.cli import _register; _register(); "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'peft', 'datasets', 'accelerate') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "steer_cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"steer {__version__}"
    out = subprocess.run([sys.executable, "-m", "steer_cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "eval", "generate", "extract", "merge", "lens", "report", "bench", "presets"):
        assert command in out.stdout


def test_model_names_resolve(tmp_path, monkeypatch):
    monkeypatch.delenv("STEER_MODELS_DIR", raising=False)
    assert resolve_model("Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    assert resolve_model("Qwen/Qwen2.5-Math-7B") == "Qwen/Qwen2.5-Math-7B"
    assert resolve_model("someone/their-model") == "someone/their-model"
    local = tmp_path / "Qwen2.5-Math-7B"
    local.mkdir()
    monkeypatch.setenv("STEER_MODELS_DIR", str(tmp_path))
    assert resolve_model("Qwen2.5-Math-7B") == str(local)
    assert resolve_model(str(local)) == str(local)
    assert resolve_model("demo").endswith(os.path.join("demo", "model"))
    with pytest.raises(SteerError, match="not a local directory, a hub id"):
        resolve_model("no-such-model")
    with pytest.raises(SteerError, match="does not exist"):
        resolve_model("./missing/dir")
    assert len({m.preset for m in KNOWN_MODELS}) == len(KNOWN_MODELS)


def test_every_study_takes_dash_o_for_its_output_directory():
    """`-o DIR` works for every study (README's demo commands use it; tokens, patch and
    persistence once took only --output-dir)."""
    import typer.main

    from steer_cli.cli import _register, app

    _register()
    study = typer.main.get_command(app).commands["study"]
    lacking = [name for name, cmd in study.commands.items()
               if not any("-o" in p.opts and "--output-dir" in p.opts for p in cmd.params)]
    assert sorted(study.commands) and not lacking, lacking
