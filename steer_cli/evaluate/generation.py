"""Sampling and grading this process's shards of one target, each shard written as it finishes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from steer_cli.data.records import Problem
from steer_cli.evaluate.outputs import write_results
from steer_cli.evaluate.shards import Shard, problem_keys, sample_seed
from steer_cli.rollout.base import SampleRequest, completion_budgets


@dataclass
class BenchInputs:
    """What generation needs of one benchmark: problems, prompts, budgets and seed keys."""

    problems: list[Problem]
    prompts: list[tuple[int, ...]]
    budgets: list[int]  # per prompt (``completion_budgets``): max_seq_length minus its length, capped
    keys: list[str]

    @classmethod
    def build(cls, problems: Sequence[Problem], prompts: Sequence[Sequence[int]], *,
              max_new_tokens: Optional[int], max_seq_length: Optional[int]) -> "BenchInputs":
        budgets = completion_budgets([len(p) for p in prompts], max_new_tokens, max_seq_length)
        return cls(list(problems), [tuple(int(t) for t in p) for p in prompts], list(budgets), problem_keys(problems))


def run_shards(backend: Any, grader: Any, shards: Sequence[Shard], inputs: dict[str, BenchInputs], sampling: Any,
               out: Path, *, written: Callable[[Shard], None] = lambda shard: None,
               scorer: Optional[Callable[..., list[Any]]] = None) -> None:
    """Generate every sample of ``shards`` of one target (written under ``out``): ``stream_shards``."""
    stream_shards(backend, grader, [(shard, inputs[shard.bench], out) for shard in shards], sampling,
                  written=written, scorer=scorer)


def stream_shards(backend: Any, grader: Any, work: Sequence[tuple[Shard, BenchInputs, Path]], sampling: Any, *,
                  written: Callable[[Shard], None] = lambda shard: None,
                  scorer: Optional[Callable[..., list[Any]]] = None, batch_groups: Optional[int] = None) -> None:
    """Generate every sample of each ``(shard, its benchmark's inputs, output dir)`` of ``work`` (one
    request each, seeded by ``sample_seed``; greedy: one unseeded request per problem), grade a
    shard once its samples are in, write it, call ``written``. The backend sees all requests at
    once (vLLM schedules them; hf batches them, ``batch_groups`` problems a batch where given);
    request groups are the problems numbered in the order of ``work``. ``scorer``
    (``eval.reward``) adds each sample's ``reward``."""
    requests: list[SampleRequest] = []
    where: list[tuple[int, int, int]] = []  # (work item, problem, sample) of each request
    group = 0
    for wi, (shard, b, _) in enumerate(work):
        for g, p in enumerate(shard.problems, group):
            for k in range(shard.samples):
                seed = None if sampling.greedy else sample_seed(shard.seed, shard.bench, b.keys[p], k)
                requests.append(SampleRequest(b.prompts[p], seed, b.budgets[p], group=g))
                where.append((wi, p, k))
        group += len(shard.problems)
    stream = (backend.stream_samples(requests, sampling) if batch_groups is None else
              backend.stream_samples(requests, sampling, batch_groups=batch_groups))
    got: list[dict[tuple[int, int], Any]] = [{} for _ in work]
    for i, completion in stream:
        wi, p, k = where[i]
        got[wi][(p, k)] = completion
        shard, b, out = work[wi]
        if len(got[wi]) == shard.size:
            write_results(shard.path(out), shard_lines(grader, shard, b, got[wi], scorer))
            got[wi] = {}
            written(shard)


def shard_lines(grader: Any, shard: Shard, b: BenchInputs, completions: dict[tuple[int, int], Any],
                scorer: Optional[Callable[..., list[Any]]] = None) -> list[dict]:
    """The results lines of a shard's problems (the format of ``seed-<s>/<bench>.jsonl``)."""
    order = [(p, k) for p in shard.problems for k in range(shard.samples)]
    grades = iter(grader.grade([(completions[x].text, b.problems[x[0]].answer) for x in order]))
    scores = iter(scorer([completions[x] for x in order], [b.problems[p] for p, _ in order]) if scorer else [])
    lines = []
    for p in shard.problems:
        problem = b.problems[p]
        samples = []
        for k in range(shard.samples):
            c, g = completions[(p, k)], next(grades)
            samples.append({"text": c.text, "correct": bool(g.correct), "length": len(c.token_ids),
                            "stopped": bool(c.stopped), "has_answer": bool(g.has_answer)})
            if scorer is not None:
                samples[-1]["reward"] = next(scores)
        lines.append({"index": p, "id": problem.id, "problem": problem.problem, "answer": problem.answer,
                      "prompt_length": len(b.prompts[p]), "max_new_tokens": b.budgets[p], "samples": samples})
    return lines
