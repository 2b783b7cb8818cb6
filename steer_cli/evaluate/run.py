"""``evaluate()``: plan every target (checks, finished work) before writing anything, then sample,
grade and write per (target, benchmark, seed), and the summaries."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from steer_cli import eval_metrics as M
from steer_cli.data.records import FieldMap
from steer_cli.evaluate.benchmarks import BenchmarkData, load_benchmarks
from steer_cli.evaluate.generation import generate_benchmark
from steer_cli.evaluate.models import EvalModels, LoadedVectors, load_target_vectors, model_dims, vllm_factory
from steer_cli.evaluate.outputs import (
    FORMAT_VERSION,
    TARGET_KIND,
    abs_path,
    check_output_dir,
    init_output_dir,
    read_results,
    results_path,
    write_results,
)
from steer_cli.evaluate.progress import Reporter
from steer_cli.evaluate.protocol import Protocol, identity, resolve_protocol
from steer_cli.evaluate.rewards import lines_rewards, read_rewards
from steer_cli.evaluate.summary import build_summary
from steer_cli.evaluate.targets import Target
from steer_cli.io import atomic_write_json
from steer_cli.settings import Settings


@dataclass
class _Plan:
    target: Target
    proto: Protocol
    vectors: Optional[LoadedVectors]
    ident: dict[str, Any]
    mode: str  # new | continue | overwrite
    done: dict[tuple[str, int], list[list[bool]]] = field(default_factory=dict)
    todo: list[tuple[BenchmarkData, int]] = field(default_factory=list)


def _plan(settings: Settings, targets: Sequence[Target], benches: Sequence[BenchmarkData],
          fields: Optional[FieldMap]) -> list[_Plan]:
    """Check every target (vectors shapes, output directories) and find finished work; writes nothing."""
    dims: Optional[tuple[int, int]] = None
    plans = []
    for t in targets:
        vectors = None
        if t.vectors is not None:
            dims = dims or model_dims(settings)
            vectors = load_target_vectors(t.vectors, settings, dims)
            if t.layers is not None:  # a --layers subset that keeps nothing fails before any write
                from steer_cli.strength import kept_layers

                kept_layers(vectors.layers, t.layers, dims[0])
        proto = resolve_protocol(settings, t)
        ident = identity(settings, t, proto, vectors, fields)
        plan = _Plan(t, proto, vectors, ident, check_output_dir(t.output_dir, ident, settings.output.overwrite))
        for b in benches:
            for seed in proto.seeds:
                found = None
                if plan.mode == "continue":
                    found = read_results(results_path(t.output_dir, b.name, seed), b.problems, proto.samples(b))
                if found is not None:
                    plan.done[(b.name, seed)] = found
                else:
                    plan.todo.append((b, seed))
        plans.append(plan)
    return plans


def evaluate(
    settings: Settings,
    targets: Sequence[Target],
    *,
    fields: Optional[FieldMap] = None,
    interactive: Optional[bool] = None,
) -> list[dict[str, Any]]:
    """Evaluate each target on every benchmark and seed; returns the summaries (also written).

    Everything is checked (benchmarks, data, vectors shapes, output directories, prompts) before
    anything is written; finished (benchmark, seed) files from an earlier run with the same
    protocol are kept and reported as skipped.
    """
    from steer_cli.rollout.base import SamplingSpec

    benches = load_benchmarks(settings, fields)
    plans = _plan(settings, targets, benches, fields)
    p = settings.prompt
    prompts: dict[str, list[list[int]]] = {}
    stop_ids: tuple[int, ...] = ()
    models = None
    if any(plan.todo for plan in plans):  # a re-run with nothing left to do skips loading transformers
        if settings.rollout.backend == "vllm":
            vllm_factory()  # fail before writing anything
        from steer_cli.data.prompts import completion_stop_ids, render_prompt
        from steer_cli.models import load_tokenizer

        tokenizer = load_tokenizer(settings.model.name, revision=settings.model.revision,
                                   trust_remote_code=settings.model.trust_remote_code)
        stop_ids = completion_stop_ids(tokenizer, p.stop, settings.model.name, revision=settings.model.revision,
                                       trust_remote_code=settings.model.trust_remote_code)
        prompts = {b.name: [render_prompt(tokenizer, x.problem, p.template, system_prompt=p.system_prompt,
                                          fmt=p.format, append_to=p.append_to) for x in b.problems]
                   for b in benches}
        models = EvalModels(settings, tokenizer)
    scorer = None
    if settings.eval.reward is not None and any(plan.todo for plan in plans):
        from steer_cli.evaluate.rewards import RewardScorer

        scorer = RewardScorer(settings, tokenizer)
    hf = settings.rollout.backend == "hf"
    chunk = settings.rollout.batch_prompts if hf else max(256, settings.rollout.batch_prompts)

    reporter = Reporter(interactive)
    summaries = []
    grader = None
    with contextlib.ExitStack() as stack:
        if scorer is not None:
            stack.callback(scorer.close)
            scorer.check(benches[0].problems[0])  # a broken plug-in fails before anything is written
        stack.enter_context(reporter)
        for plan in plans:
            t, proto = plan.target, plan.proto
            init_output_dir(t.output_dir, plan.mode, settings, {
                "kind": TARGET_KIND, "format_version": FORMAT_VERSION, "label": t.label,
                "setup": t.setup, "model": t.model,
                "vectors": abs_path(t.vectors), "adapter": abs_path(t.adapter), "run": abs_path(t.run),
                "checkpoint": t.checkpoint,
                "identity": plan.ident,
            })
            matrices = dict(plan.done)
            reward_values = {k: read_rewards(results_path(t.output_dir, k[0], k[1])) for k in plan.done} \
                if settings.eval.reward is not None else {}
            for b in benches:
                for seed in proto.seeds:
                    if (b.name, seed) in plan.done:
                        reporter.say(f"{t.label} · {b.display} · seed {seed}: finished earlier, skipped")
            if plan.todo:
                assert models is not None
                if grader is None:
                    from steer_cli import rewards

                    grader = stack.enter_context(rewards.Grader(
                        num_workers=settings.train.grader_workers, timeout=settings.train.grade_timeout,
                        template=p.template, truncated_box_fallback=settings.train.grade_truncated_box))
                with models.backend(t, plan.vectors) as backend:
                    for b, seed in plan.todo:
                        n = proto.samples(b)
                        sampling = SamplingSpec(n=n, temperature=proto.temperature, top_p=proto.top_p,
                                                top_k=-1, stop_token_ids=stop_ids, seed=seed)
                        label = f"{t.label} · {b.display} · seed {seed} · {n} sample{'s' if n > 1 else ''}"
                        started = time.perf_counter()
                        advance = reporter.task(label, len(b.problems))
                        lines = generate_benchmark(backend, grader, prompts[b.name], b.problems, sampling,
                                                   max_new_tokens=proto.max_new_tokens,
                                                   max_seq_length=proto.max_seq_length, chunk=chunk,
                                                   advance=advance, scorer=scorer)
                        reporter.finish_task()
                        write_results(results_path(t.output_dir, b.name, seed), lines)
                        matrix = [[s["correct"] for s in line["samples"]] for line in lines]
                        matrices[(b.name, seed)] = matrix
                        if scorer is not None:
                            reward_values[(b.name, seed)] = lines_rewards(lines)
                        metric = M.primary_metric(n)
                        value = M.primary_value(M.seed_metrics(matrix, proto.mean_k), metric)
                        reporter.say(f"{label}: {metric} {100 * value:.1f} "
                                     f"({time.perf_counter() - started:.1f}s)")
            summary = build_summary(t, settings, proto, benches, matrices, reward_values)
            atomic_write_json(t.output_dir / "summary.json", summary)
            reporter.say(f"{t.label}: results in {t.output_dir}")
            summaries.append(summary)
    return summaries
