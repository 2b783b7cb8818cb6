"""Sampling and grading one benchmark for one target and seed."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional, Sequence

from steer_cli.data.records import Problem


def generate_benchmark(
    backend: Any, grader: Any, prompts: Sequence[Sequence[int]], problems: Sequence[Problem],
    sampling: Any, *, max_new_tokens: Optional[int], max_seq_length: Optional[int], chunk: int,
    advance: Callable[[int], None] = lambda n: None, scorer: Optional[Callable[..., list[Any]]] = None,
) -> list[dict[str, Any]]:
    """Sample, grade and return one results line per problem. Prompts go in chunks seeded by their
    index (the backend's ``first_index``), so results do not depend on the chunk size; each prompt's
    budget is its own (``completion_budgets``: max_seq_length minus its length, capped by
    max_new_tokens when set), whatever else shares its chunk. ``scorer`` (``eval.reward``) adds each
    sample's ``reward``."""
    from steer_cli.rollout.base import completion_budgets

    lines: list[dict[str, Any]] = []
    for start in range(0, len(prompts), chunk):
        part = prompts[start:start + chunk]
        budgets = completion_budgets([len(p) for p in part], max_new_tokens, max_seq_length)
        groups = backend.generate(part, replace(sampling, max_new_tokens=max(budgets), budgets=budgets),
                                  first_index=start)
        items = [(c.text, problems[start + i].answer) for i, g in enumerate(groups) for c in g]
        grades = iter(grader.grade(items))
        if scorer is not None:
            scored = iter(scorer([c for g in groups for c in g],
                                 [problems[start + i] for i, g in enumerate(groups) for _ in g]))
        for i, group in enumerate(groups):
            p = problems[start + i]
            samples = []
            for c in group:
                g = next(grades)
                samples.append({"text": c.text, "correct": bool(g.correct), "length": len(c.token_ids),
                                "stopped": bool(c.stopped), "has_answer": bool(g.has_answer)})
                if scorer is not None:
                    samples[-1]["reward"] = next(scored)
            lines.append({"index": start + i, "id": p.id, "problem": p.problem, "answer": p.answer,
                          "prompt_length": len(part[i]), "max_new_tokens": budgets[i], "samples": samples})
        advance(len(part))
    return lines
