"""Units of work of an evaluation and their files.

Every sample is drawn from its own seed, ``sample_seed(eval seed, benchmark, problem, sample)``,
so a sample is the same whichever process, batch or order generates it. Work is cut into shards:
a few consecutive problems of one (benchmark, seed) with all their samples (about
``eval.shard_samples`` samples a shard), dealt round-robin to the processes. A finished shard is
written whole (temporary file, then rename) to ``seed-<s>/.shards/<benchmark>.<first>-<last>.jsonl``,
in the lines of the final file; the main process merges a (benchmark, seed)'s shards into
``seed-<s>/<benchmark>.jsonl`` (problem order: what one process writes) and deletes them. A
re-run keeps every finished problem found in shard files, whatever the shard size or number of
processes that wrote them, and plans shards over the rest only.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from steer_cli.data.records import Problem
from steer_cli.evaluate.outputs import results_path, write_results

SHARDS_DIR = ".shards"


def sample_seed(eval_seed: int, bench: str, problem_key: str, sample: int) -> int:
    """The seed of one sample (63 bits): a function of what it is, never of where it runs."""
    digest = hashlib.sha256(f"steer-eval:{eval_seed}:{bench}:{problem_key}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def problem_keys(problems: Sequence[Problem]) -> list[str]:
    """A key per problem for its seeds: its id; a repeated id gets ``#k`` for its k-th repeat, so
    two problems never share samples."""
    seen: dict[str, int] = {}
    keys = []
    for p in problems:
        k = seen.get(p.id, 0)
        seen[p.id] = k + 1
        keys.append(p.id if k == 0 else f"{p.id}#{k}")
    return keys


@dataclass(frozen=True)
class Shard:
    """Problems ``problems`` (indices) of ``bench`` under eval seed ``seed``, ``samples`` each,
    for target number ``target`` of the run."""

    target: int
    bench: str
    seed: int
    problems: tuple[int, ...]
    samples: int

    @property
    def name(self) -> str:
        return f"{self.bench}.{self.problems[0]}-{self.problems[-1]}.jsonl"

    def path(self, out: Path) -> Path:
        return shards_dir(out, self.seed) / self.name

    @property
    def size(self) -> int:
        return len(self.problems) * self.samples

    def to_json(self) -> list[Any]:
        return [self.target, self.bench, self.seed, list(self.problems), self.samples]

    @classmethod
    def from_json(cls, value: Sequence[Any]) -> "Shard":
        target, bench, seed, problems, samples = value
        return cls(int(target), str(bench), int(seed), tuple(int(i) for i in problems), int(samples))


def shards_dir(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}" / SHARDS_DIR


def plan_shards(target: int, bench: str, seed: int, todo: Sequence[int], samples: int,
                shard_samples: int) -> list[Shard]:
    """``todo`` (problem indices, in order) in shards of ``max(1, shard_samples // samples)`` problems."""
    per = max(1, shard_samples // samples)
    return [Shard(target, bench, seed, tuple(todo[i:i + per]), samples) for i in range(0, len(todo), per)]


def deal(shards: Sequence[Shard], rank: int, world: int) -> list[Shard]:
    """Process ``rank``'s shards: every ``world``-th, so each process gets a mix of benchmarks."""
    return list(shards[rank::world])


def shard_files(out: Path, bench: str, seed: int) -> list[Path]:
    folder = shards_dir(out, seed)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(bench)}\.\d+-\d+\.jsonl$")
    return sorted(p for p in folder.iterdir() if pattern.match(p.name))


def valid_line(line: Any, problems: Sequence[Problem], samples: int) -> Optional[int]:
    """The problem index of a results line that is whole and belongs to this benchmark, else None."""
    if not isinstance(line, dict):
        return None
    index, found = line.get("index"), line.get("samples")
    if not isinstance(index, int) or not 0 <= index < len(problems) or line.get("id") != problems[index].id:
        return None
    if not isinstance(found, list) or len(found) != samples or not all(isinstance(s, dict) for s in found):
        return None
    return index


def finished_lines(out: Path, bench: str, seed: int, problems: Sequence[Problem], samples: int) -> dict[int, dict]:
    """Finished problems (index -> results line) in the shard files of (bench, seed)."""
    done: dict[int, dict] = {}
    for path in shard_files(out, bench, seed):
        try:
            lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            continue
        for line in lines:
            index = valid_line(line, problems, samples)
            if index is not None:
                done.setdefault(index, line)
    return done


def remove_shards(out: Path, bench: str, seed: int) -> None:
    for path in shard_files(out, bench, seed):
        path.unlink(missing_ok=True)
    folder = shards_dir(out, seed)
    try:
        folder.rmdir()  # only when empty: other benchmarks' shards may still be there
    except OSError:
        pass


def merge_shards(out: Path, bench: str, seed: int, problems: Sequence[Problem], samples: int) -> list[dict]:
    """Write ``seed-<s>/<bench>.jsonl`` from the shard files (problem order), then delete them."""
    done = finished_lines(out, bench, seed, problems, samples)
    missing = [i for i in range(len(problems)) if i not in done]
    if missing:
        raise RuntimeError(f"{shards_dir(out, seed)}: shards of {bench} lack problems {missing[:10]}")
    lines = [done[i] for i in range(len(problems))]
    write_results(results_path(out, bench, seed), lines)
    remove_shards(out, bench, seed)
    return lines
