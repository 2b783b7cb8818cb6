"""Tables off a terminal: one row a line, never wrapped, so that `steer ... | grep NAME` finds the row."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.presets import preset_names
from steer_cli.terminal import plain_table, print_table, print_text

_register()
runner = CliRunner()


def test_presets_piped_print_one_whole_row_per_line():
    result = runner.invoke(app, ["presets"])  # CliRunner's stdout is not a terminal
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    names = preset_names()
    assert lines[0] == f"{len(names)} presets"
    assert lines[1].split()[:2] == ["preset", "setup"]
    assert len(lines) == 2 + len(names)  # title, header, one line per preset
    rows = [line for line in lines if "qwen2.5-math-7b/deepscaler/steering " in line]
    assert len(rows) == 1 and rows[0].split() == [
        "qwen2.5-math-7b/deepscaler/steering", "steering", "all", "0.001", "16", "128", "4096", "qwen_math", "rloo"]
    assert [line.split()[0] for line in lines[2:]] == names
    assert not any(ch in result.stdout for ch in "│┃━─")


def test_plain_table_strips_markup_aligns_and_keeps_cells_on_one_line():
    table = Table(title="t")
    table.add_column("name")
    table.add_column("value", justify="right")
    table.add_row("[green]yes[/green]", "1")
    table.add_row(Text("two\nlines [not markup]"), "10")
    first = "two\\nlines [not markup]"  # 23 characters: the first column's width
    assert plain_table(table).splitlines() == [
        "t",
        "name".ljust(23) + "  value",
        "yes".ljust(23) + "      1",
        first + "     10",
    ]


def test_terminal_gets_the_drawn_table_and_a_pipe_the_plain_one():
    table = Table(title="t")
    table.add_column("a very long column header")
    table.add_row("a very long cell " * 5)
    tty = Console(file=io.StringIO(), force_terminal=True, width=40)
    print_table(tty, table)
    assert "│" in tty.file.getvalue() and len(tty.file.getvalue().splitlines()) > 4  # folded to 40 columns
    pipe = Console(file=io.StringIO(), width=40)
    print_table(pipe, table)
    print_text(pipe, "a note " * 20)
    lines = pipe.file.getvalue().splitlines()
    assert len(lines) == 4 and lines[2] == ("a very long cell " * 5).rstrip()
    assert lines[3].rstrip() == ("a note " * 20).rstrip()


def test_eval_table_piped_is_one_line_per_benchmark(capsys):
    from rich.table import Table as RichTable

    from steer_cli.evaluate.summary import results_table
    from steer_cli.terminal import stdout_console

    def summary(label, value):
        bench = {"metric": "pass@1", "display": "A benchmark with a long display name", "mean": value, "std": 0.0}
        return {"label": label, "seeds": [0], "greedy": False, "temperature": 1.0, "top_p": 1.0,
                "benchmarks": {"b1": bench, "b2": dict(bench, display="Another benchmark")},
                "average": {"mean": value, "std": 0.0}}

    console = stdout_console()
    for part in results_table([summary("base-model-with-a-long-label", 0.1), summary("trained", 0.5)]).renderables:
        (print_table if isinstance(part, RichTable) else print_text)(console, part)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "steer eval: accuracy (%)"
    assert lines[1].split() == ["Benchmark", "Metric", "base-model-with-a-long-label", "trained"]
    assert lines[2].split()[-3:] == ["pass@1", "10.0", "50.0"] and lines[2].startswith("A benchmark with a long")
    assert lines[4].split() == ["Average", "10.0", "50.0"]
    assert lines[5] == "base-model-with-a-long-label: T=1.0, top_p=1.0, seed 0"
