"""steer report: (being built)."""

from __future__ import annotations

from steer_cli.cli import app


@app.command("report", hidden=True)
def report_command() -> None:
    """Not available yet."""
    from steer_cli.cli.common import fail

    fail("steer report is not available yet")
