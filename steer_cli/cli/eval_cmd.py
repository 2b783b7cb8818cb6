"""steer eval: (being built)."""

from __future__ import annotations

from steer_cli.cli import app


@app.command("eval", hidden=True)
def eval_command() -> None:
    """Not available yet."""
    from steer_cli.cli.common import fail

    fail("steer eval is not available yet")
