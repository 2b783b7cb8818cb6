"""steer report: the paper's tables (and plots) from eval summaries, training runs and bench files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from steer_cli.cli import app
from steer_cli.cli.common import info, run_command


@app.command("report")
def report_command(
    dirs: Optional[list[Path]] = typer.Argument(
        None, help="Directories (searched recursively) or files: eval summary.json, training runs, bench JSON; default: runs/."),
    fmt: str = typer.Option("github", "--format", "-f", help="Table format: github (Markdown), latex or csv."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write PNGs here: training curves per run and accuracy bars."),
) -> None:
    """Print the paper's tables: accuracy (Table 1), train/test pairs (Table 4), resource cost (Table 3)."""
    from rich.markup import escape

    from steer_cli.report.run import report

    out = run_command(report, dirs or None, fmt=fmt, plot_dir=plot)
    for note in out.notes:
        info(escape(note))
    print(out.text, end="")
    for path in out.plots:
        info(escape(f"wrote {path}"))
