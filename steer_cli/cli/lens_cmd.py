"""steer lens: (being built)."""

from __future__ import annotations

from steer_cli.cli import app


@app.command("lens", hidden=True)
def lens_command() -> None:
    """Not available yet."""
    from steer_cli.cli.common import fail

    fail("steer lens is not available yet")
