"""Assertions shared by the CLI tests."""

from __future__ import annotations

import contextlib


def one_line_error(result, *needles):
    """The command failed with exit 2 and exactly one ``error:`` line on stderr, naming each needle."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@contextlib.contextmanager
def interrupted_at_step(monkeypatch, step):
    """``steer train`` stops with KeyboardInterrupt when it starts step index ``step`` (0-based)."""
    from steer_cli.train import run as run_mod

    original = run_mod.Trainer.step

    def stop(self, index, grader):
        if index == step:
            raise KeyboardInterrupt
        return original(self, index, grader)

    monkeypatch.setattr(run_mod.Trainer, "step", stop)
    try:
        yield
    finally:
        monkeypatch.setattr(run_mod.Trainer, "step", original)
