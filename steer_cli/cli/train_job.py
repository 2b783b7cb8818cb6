"""steer train with several runs in one job: repeated --preset and --sweep KEY=V1,V2,..."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from steer_cli.cli.common import FLAG_NAMES, fail, info, run_command, settings_from_cli
from steer_cli.errors import SteerError


def _job(presets: list[str], sweep_texts: list[str], *, config: Optional[Path], sets: Optional[list[str]],
         flags: dict[str, Any]) -> tuple[list[Any], list[Path]]:
    from steer_cli.models import load_config
    from steer_cli.presets import preset_exists
    from steer_cli.settings import parse_set
    from steer_cli.train.outputs import default_output_dir
    from steer_cli.train.sweep import assign_output_dirs, check_compatible, expand_runs, parse_sweep

    sweeps = [parse_sweep(t) for t in sweep_texts]
    keys = [sw.key for sw in sweeps]
    if len(set(keys)) != len(keys):
        raise SteerError(f"--sweep {next(k for k in keys if keys.count(k) > 1)} is given twice; give all its values "
                         "in one --sweep")
    given = {k for k, v in flags.items() if v is not None}
    set_keys = set(parse_set(sets or []).key_origins) if sets else set()
    for key in keys:
        if key in given or key in set_keys:
            by = FLAG_NAMES.get(key, "--set") if key in given else f"--set {key}"
            raise SteerError(f"--sweep {key} and {by} both set {key}; drop one")

    def build(preset: Optional[str], top: Any) -> Any:
        return settings_from_cli(preset=preset, config=config, sets=sets, flags=flags, top=top)

    def num_layers(s: Any) -> int:
        return int(load_config(s.model.name, revision=s.model.revision,
                               trust_remote_code=s.model.trust_remote_code).num_hidden_layers)

    runs = expand_runs(presets, sweeps, build, num_layers=num_layers, preset_exists=preset_exists)
    check_compatible(runs)
    dirs = assign_output_dirs(runs, flags.get("output.output_dir"), default_output_dir)
    for run, path in zip(runs, dirs):
        run.settings.output.output_dir = str(path)  # its settings.yaml names its own directory
    return runs, dirs


def train_job_command(presets: list[str], sweep_texts: list[str], *, config: Optional[Path],
                      sets: Optional[list[str]], flags: dict[str, Any], print_settings: bool) -> None:
    runs, dirs = run_command(_job, presets, sweep_texts, config=config, sets=sets, flags=flags)
    if print_settings:
        for run, path in zip(runs, dirs):
            print(f"# run {run.name}: {path}\n{run.settings.to_yaml()}---")
        return
    if flags.get("output.resume") and flags.get("output.overwrite"):
        fail("--resume and --overwrite contradict each other; pick one")
    from steer_cli.train.run import train_job

    finals = run_command(train_job, [r.settings for r in runs], dirs, [r.name for r in runs])
    for final in finals or []:
        info(f"[green]done[/green]: {final}")
