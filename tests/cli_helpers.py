"""Assertions shared by the CLI tests."""

from __future__ import annotations


def one_line_error(result, *needles):
    """The command failed with exit 2 and exactly one ``error:`` line on stderr, naming each needle."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
