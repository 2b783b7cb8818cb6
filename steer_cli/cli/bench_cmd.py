"""steer bench: (being built)."""

from __future__ import annotations

from steer_cli.cli import app


@app.command("bench", hidden=True)
def bench_command() -> None:
    """Not available yet."""
    from steer_cli.cli.common import fail

    fail("steer bench is not available yet")
