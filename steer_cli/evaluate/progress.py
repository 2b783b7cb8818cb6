"""Progress of an evaluation, on the main process only: one rich bar for the whole job (every
process's samples) on a terminal, plain lines otherwise. Other processes print nothing.

The bar counts the samples of shard files as they appear, whichever process wrote them: a thread
looks for them every half second, so the bar moves while this process is busy generating."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    def __init__(self, interactive: Optional[bool] = None, *, enabled: bool = True) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)  # log lines stay whole
        self.enabled = enabled
        self.interactive = enabled and (sys.stderr.isatty() if interactive is None else interactive)
        self._progress: Any = None
        self._task: Any = None
        self._watcher: Optional[ShardWatcher] = None

    def say(self, message: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            self.console.print(message)

    def __enter__(self) -> "Reporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def job(self, description: str, shards: dict[Path, int]) -> None:
        """Start the bar of the whole job: ``shards`` maps every shard file to its sample count."""
        total = sum(shards.values())
        if not self.enabled or not total:
            return
        if not self.interactive:
            self.say(f"{description}: {total} samples ...")
            return

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("samples"), TimeElapsedColumn(), console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)
        self._watcher = ShardWatcher(shards, self._advance)
        self._watcher.start()

    def seen(self, paths: list[Path]) -> None:
        """Count these shard files now (they are about to be merged and deleted)."""
        if self._watcher is not None:
            self._watcher.poll(paths)

    def _advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n)


class ShardWatcher(threading.Thread):
    """Calls ``advance(samples)`` once for each shard file when it first exists."""

    def __init__(self, shards: dict[Path, int], advance: Any, interval: float = 0.5) -> None:
        super().__init__(name="steer-eval-progress", daemon=True)
        self.pending = dict(shards)
        self.advance = advance
        self.interval = interval
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.poll()

    def poll(self, paths: Optional[list[Path]] = None) -> None:
        with self._lock:
            for path in list(self.pending if paths is None else paths):
                if path in self.pending and path.exists():
                    self.advance(self.pending.pop(path))

    def stop(self) -> None:
        self._halt.set()
        self.join()
