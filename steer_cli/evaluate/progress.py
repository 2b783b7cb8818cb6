"""Progress of an evaluation: a rich bar per (benchmark, seed) on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional


class Reporter:
    """Progress: a rich bar per (benchmark, seed) on a terminal, plain lines otherwise."""

    def __init__(self, interactive: Optional[bool] = None) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, soft_wrap=True)  # log lines stay whole
        self.interactive = (sys.stderr.isatty() if interactive is None else interactive)
        self._progress: Any = None

    def say(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            self.console.print(message)

    def __enter__(self) -> "Reporter":
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.console, transient=True)
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def task(self, description: str, total: int) -> Callable[[int], None]:
        if self._progress is None:
            self.say(f"{description}: {total} problems ...")
            return lambda n: None
        task_id = self._progress.add_task(description, total=total)

        def advance(n: int) -> None:
            self._progress.update(task_id, advance=n)

        return advance

    def finish_task(self) -> None:
        if self._progress is not None:
            for t in list(self._progress.tasks):
                self._progress.remove_task(t.id)
