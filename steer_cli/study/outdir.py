"""A study's output directory: checked before anything is written, held for the whole study, and
finished with its settings, figures and (last) ``study.json``.

    <out>/cells/<key>/     one eval output per cell (``grid``), written as the cells finish
    <out>/figures/*.png    the study's figures (copied to ``--plot DIR`` too)
    <out>/settings.yaml    the resolved settings of the grid
    <out>/study.json       written last: a directory holding it is a finished study

A directory with ``cells/`` but no ``study.json`` is a stopped study: the same command continues it.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from steer_cli.errors import SteerError
from steer_cli.evaluate.parallel import Coordinator
from steer_cli.io import atomic_path, atomic_write_text, clear_dir
from steer_cli.lock import hold_dir, is_lock_file
from steer_cli.preempt import StopSignals
from steer_cli.settings import Settings
from steer_cli.study.grid import CELLS_DIR
from steer_cli.study.record import STUDY_FILE, read_study, write_study

FIGURES_DIR = "figures"


def check_study_dir(out: Path, experiment: str, overwrite: bool) -> str:
    """"new", "continue" or "overwrite"; a SteerError (nothing written) for a directory that is not
    a study of this experiment."""
    if out.exists() and not out.is_dir():
        raise SteerError(f"output path {out} exists and is not a directory")
    if not out.exists() or not any(not is_lock_file(p) for p in out.iterdir()):
        return "new"
    if (out / STUDY_FILE).is_file():
        found = read_study(out / STUDY_FILE).get("experiment")
        if found != experiment:
            raise SteerError(f"{out} holds a '{found}' study, not '{experiment}'; choose another --output-dir")
    elif not (out / CELLS_DIR).is_dir():
        raise SteerError(f"output directory {out} exists and is not a steer study (no study.json or cells/); "
                         "refusing to write into it, choose another --output-dir")
    return "overwrite" if overwrite else "continue"


@contextlib.contextmanager
def holding_study_dir(out: Path, experiment: str, settings: Settings, coord: Coordinator,
                      interrupt: str) -> Iterator[str]:
    """Check the directory on the main process, then hold it (lock) and stop on SIGTERM/SIGUSR1
    (``Interrupted``, exit 75) for the block; ``--overwrite`` clears it first. Yields the mode."""
    mode = coord.agree("study-dir", lambda: check_study_dir(out, experiment, settings.output.overwrite)
                       if coord.main else None, share=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(StopSignals(settings.train.preempt_save_timeout,
                                        "the study did not stop in time; finished cells are kept",
                                        interrupt=interrupt))

        def lock() -> None:
            if coord.main:
                stack.enter_context(hold_dir(out, f"steer study {experiment}"))

        coord.agree("study-lock", lock)
        if mode == "overwrite" and coord.main:
            clear_dir(out)
        yield mode


def finish_study(out: Path, experiment: str, *, settings: Settings, inputs: Mapping[str, Any],
                 study_settings: Mapping[str, Any], results: Mapping[str, Any],
                 figures: Optional[Callable[[Mapping[str, Any], Path], list[Path]]] = None,
                 plot_dir: Optional[Path] = None) -> tuple[dict[str, Any], list[Path]]:
    """(Main process.) settings.yaml, the figures (``figures(results, folder)``; copied into
    ``plot_dir`` too), then study.json; returns the study document and the figure paths."""
    atomic_write_text(out / "settings.yaml", settings.to_yaml())
    made: list[Path] = []
    if figures is not None:
        made = figures(results, out / FIGURES_DIR)
        if plot_dir is not None:
            plot_dir = Path(plot_dir)
            plot_dir.mkdir(parents=True, exist_ok=True)
            for fig in list(made):
                with atomic_path(plot_dir / fig.name) as tmp:
                    shutil.copyfile(fig, tmp)
                made.append(plot_dir / fig.name)
    path = write_study(out, experiment, inputs=inputs, settings=study_settings, results=results)
    return read_study(path), made
