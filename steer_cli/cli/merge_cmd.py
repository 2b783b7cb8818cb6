"""steer merge: (being built)."""

from __future__ import annotations

from steer_cli.cli import app


@app.command("merge", hidden=True)
def merge_command() -> None:
    """Not available yet."""
    from steer_cli.cli.common import fail

    fail("steer merge is not available yet")
