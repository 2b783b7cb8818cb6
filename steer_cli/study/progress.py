"""A study's progress on stderr: a rich bar on a terminal, a few plain lines otherwise (logs)."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StudyProgress:
    """``with StudyProgress("tokens", total, unit="samples") as bar: bar.advance()``; off a terminal
    one line at the start, one per tenth of the work and one at the end."""

    def __init__(self, description: str, total: int, *, unit: str = "samples", done: int = 0,
                 interactive: Optional[bool] = None) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.description, self.total, self.unit, self.done = description, total, unit, done
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar: Any = None
        self._task: Any = None
        self._next_line = 0
        self._started = time.perf_counter()

    def __enter__(self) -> "StudyProgress":
        if self.interactive:
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(self.unit), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.done)
        else:
            extra = f" ({self.done} done earlier)" if self.done else ""
            self.say(f"{self.description}: {self.total} {self.unit}{extra} ...")
            self._next_line = self._step_after(self.done)
        return self

    def _step_after(self, done: int) -> int:
        tenth = max(1, self.total // 10)
        return (done // tenth + 1) * tenth

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        elif self.done >= self._next_line and self.done < self.total:
            self.say(f"{self.description}: {self.done}/{self.total} {self.unit} "
                     f"({time.perf_counter() - self._started:.0f}s)")
            self._next_line = self._step_after(self.done)

    def say(self, message: str) -> None:
        (self._bar.console if self._bar is not None else self.console).print(message, markup=False)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if exc[0] is None:
            self.say(f"{self.description}: {self.done}/{self.total} {self.unit} in "
                     f"{time.perf_counter() - self._started:.1f}s")
