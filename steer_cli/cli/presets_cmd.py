"""steer presets: list the presets (the paper's configurations and the demo)."""

from __future__ import annotations

import json
from typing import Optional

import typer

from steer_cli.cli import app
from steer_cli.cli.common import run_command


@app.command("presets")
def presets_command(
    filter: Optional[str] = typer.Argument(None, help="Show only presets whose name contains this text."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    show: Optional[str] = typer.Option(None, "--show", help="Print one preset's fully resolved settings as YAML."),
) -> None:
    """List presets: model / dataset / setup with their key settings."""
    run_command(_presets, filter, as_json, show)


def _presets(filter: Optional[str], as_json: bool, show: Optional[str]) -> None:
    from steer_cli.presets import preset_info, preset_layer, preset_names
    from steer_cli.settings import build_settings

    if show:
        print(build_settings([preset_layer(show)]).to_yaml(), end="")
        return
    rows = []
    for name in preset_names():
        if filter and filter.lower() not in name.lower():
            continue
        s = build_settings([preset_layer(name)])
        rows.append({
            "preset": name,
            "model": s.model.name,
            "dataset": s.data.dataset,
            "setup": s.setup.kind + (f" r{s.setup.lora.rank}" if s.setup.kind == "lora" else ""),
            "layers": "all" if s.setup.steering.layers is None else ",".join(map(str, s.setup.steering.layers)),
            "lr": s.train.lr,
            "generations": s.rollout.num_generations,
            "prompts_per_step": s.train.prompts_per_step,
            "max_seq_length": s.rollout.max_seq_length,
            "template": s.prompt.template,
            "advantage": s.train.advantage,
            "command": preset_info(name).command,
        })
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from steer_cli.terminal import print_table, stdout_console

    table = Table(title=f"{len(rows)} presets", show_lines=False)
    for col in ("preset", "setup", "layers", "lr", "generations", "prompts_per_step", "max_seq_length", "template", "advantage"):
        table.add_column(col.replace("_", " "), overflow="fold")
    for r in rows:
        table.add_row(r["preset"], r["setup"], r["layers"], f"{r['lr']:g}", str(r["generations"]),
                      str(r["prompts_per_step"]), str(r["max_seq_length"] or "-"), r["template"], r["advantage"])
    print_table(stdout_console(), table)
