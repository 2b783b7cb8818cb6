"""The package's layering and file sizes (house rules 1 and 10)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "steer_cli"
MAX_LINES = 700


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_library_modules_do_not_import_the_cli():
    cli = PACKAGE / "cli"
    offenders = []
    for path in _sources():
        if cli in path.parents or path == PACKAGE / "__main__.py":
            continue
        bad = sorted(n for n in _imports(path) if n == "steer_cli.cli" or n.startswith("steer_cli.cli."))
        if bad:
            offenders.append(f"{path.relative_to(PACKAGE)}: {', '.join(bad)}")
    assert not offenders, offenders


def test_every_source_file_is_under_the_line_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in _sources()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) >= MAX_LINES}
    assert not long, long
