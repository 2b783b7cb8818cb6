"""steer extract: (being built)."""

from __future__ import annotations

from steer_cli.cli import app


@app.command("extract", hidden=True)
def extract_command() -> None:
    """Not available yet."""
    from steer_cli.cli.common import fail

    fail("steer extract is not available yet")
