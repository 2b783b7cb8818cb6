"""What ``steer train`` shows while it runs: a rich progress bar with the last step's numbers on a
terminal, one plain line per step otherwise (logs, CI)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from steer_cli.errors import say


def step_line(m: dict[str, Any], total: int) -> str:
    parts = [
        f"step {m['step']}/{total}",
        f"reward {m['reward_mean']:+.3f}",
        *([f"acc {m['accuracy']:.3f}"] if m.get("accuracy") is not None else []),
        f"len {m['completion_len_mean']:.1f}",
        f"trunc {m['frac_truncated']:.2f}",
        f"loss {m['loss']:+.4f}",
        f"gnorm {m['grad_norm']:.3g}",
        f"{m['time_step']:.1f}s",
    ]
    if m.get("reward_errors"):
        parts.append(f"reward errors {m['reward_errors']}")
    if m.get("skipped_nonfinite"):
        parts.append("SKIPPED (non-finite)")
    return "  ".join(parts)


class Display:
    def __init__(self, total: int, start: int, *, enabled: bool, out_dir: Path, info: str,
                 labels: list[str] | None = None) -> None:
        self.total = total
        self.labels = labels  # several runs in one job: one line (or stats entry) per run
        self.enabled = enabled
        self.progress = None
        if not enabled:
            return

        self.console = Console(stderr=True, highlight=False)
        say(f"steer train: {info}")
        if start:
            say(f"resuming at step {start}")
        if sys.stderr.isatty():
            self.progress = Progress(
                TextColumn("[bold blue]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
                console=self.console, transient=False,
            )
            self.task = self.progress.add_task("train", total=total, completed=start, stats="")
            self.progress.start()

    def update(self, m: dict[str, Any] | list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        if isinstance(m, list):
            self._update_runs(m)
            return
        if self.progress is not None:
            acc = f" acc {m['accuracy']:.2f}" if m.get("accuracy") is not None else ""
            errors = f" errors {m['reward_errors']}" if m.get("reward_errors") else ""
            stats = (f"reward {m['reward_mean']:+.2f}{acc} "
                     f"len {m['completion_len_mean']:.0f}/{m['completion_len_max']}{errors}")
            self.progress.update(self.task, completed=m["step"], stats=stats)
            if m.get("skipped_nonfinite"):
                self.progress.console.print(f"step {m['step']}: non-finite loss or gradient, update skipped")
        else:
            say(step_line(m, self.total))

    def _update_runs(self, ms: list[dict[str, Any]]) -> None:
        labels = self.labels or [str(k) for k in range(len(ms))]
        if self.progress is not None:
            key = "accuracy" if all(m.get("accuracy") is not None for m in ms) else "reward_mean"
            stats = f"{'acc' if key == 'accuracy' else 'reward'} " + " ".join(f"{m[key]:.2f}" for m in ms)
            self.progress.update(self.task, completed=ms[0]["step"], stats=stats)
            for label, m in zip(labels, ms):
                if m.get("skipped_nonfinite"):
                    self.progress.console.print(f"{label} step {m['step']}: non-finite loss or gradient, update skipped")
            return
        for label, m in zip(labels, ms):
            say(f"{label}: {step_line(m, self.total)}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
