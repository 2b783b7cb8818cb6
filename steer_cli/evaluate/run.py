"""``evaluate()``: check everything on every process and plan the work before writing anything, then
generate this process's shards, and (main process) merge them and write the summaries.

Phases, each agreed by all processes (``Coordinator.agree``: a SteerError anywhere stops all):
check (settings, benchmarks, vectors, output directories) -> plan (main: finished work, the shards
left) -> inputs (tokenizer, prompts, backend) -> init (main writes settings.yaml and target.json)
-> visible (the others see them). Then every process runs its shards; the main process merges
each (benchmark, seed) as soon as all its shards are written, and writes a target's summary.json
once its last one is merged. A process whose work is done exits.
"""

from __future__ import annotations

import contextlib
import errno
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import steer_cli.evaluate.metrics as M
from steer_cli.data.prompts import completion_stop_ids, render_prompt
from steer_cli.data.records import FieldMap
from steer_cli.errors import SteerError, WriteError
from steer_cli.evaluate.benchmarks import BenchmarkData, load_benchmarks
from steer_cli.evaluate.generation import BenchInputs, run_shards
from steer_cli.evaluate.models import EvalModels, LoadedVectors, load_target_vectors, model_dims, vllm_factory
from steer_cli.evaluate.outputs import (
    FORMAT_VERSION,
    TARGET_KIND,
    abs_path,
    check_output_dir,
    init_output_dir,
    read_results,
    results_path,
)
from steer_cli.evaluate.parallel import Coordinator, bind_devices
from steer_cli.evaluate.pooled import pools, run_pool
from steer_cli.evaluate.progress import Reporter
from steer_cli.evaluate.protocol import Protocol, identity, resolve_protocol
from steer_cli.evaluate.rewards import RewardScorer, lines_rewards, read_rewards
from steer_cli.evaluate.shards import Shard, deal, finished_lines, merge_shards, plan_shards, remove_shards
from steer_cli.evaluate.summary import build_summary
from steer_cli.evaluate.targets import Target
from steer_cli.io import atomic_write_json
from steer_cli.lock import hold_dir
from steer_cli.models import load_tokenizer, resolve_model
from steer_cli.patching.strength import kept_layers
from steer_cli.preempt import StopSignals
from steer_cli.rewards import pool as rewards
from steer_cli.rollout.base import SamplingSpec
from steer_cli.rollout.factory import engine_dtype
from steer_cli.rollout.vllm import check_supported, model_architecture
from steer_cli.settings import Settings


@dataclass
class _Plan:
    target: Target
    proto: Protocol
    vectors: Optional[LoadedVectors]
    ident: dict[str, Any]
    mode: str  # new | continue | overwrite
    # Main process only: finished (benchmark, seed)s and how many problems of the others are.
    done: dict[tuple[str, int], list[list[bool]]] = field(default_factory=dict)
    kept: dict[tuple[str, int], int] = field(default_factory=dict)


def _check(settings: Settings, targets: Sequence[Target], fields: Optional[FieldMap],
           coord: Coordinator) -> tuple[list[BenchmarkData], list[_Plan]]:
    """Every target's vectors, protocol and output directory; reads, never writes."""
    vllm = settings.rollout.backend == "vllm"
    bind_devices(coord.launch, settings.rollout.vllm.tensor_parallel_size if vllm else 1)
    benches = load_benchmarks(settings, fields)
    dims: Optional[tuple[int, int]] = None
    plans = []
    for t in targets:
        vectors = None
        if t.vectors is not None:
            dims = dims or model_dims(settings)
            vectors = load_target_vectors(t.vectors, settings, dims)
            if t.layers is not None:  # a --layers subset that keeps nothing fails before any write

                kept_layers(vectors.layers, t.layers, dims[0])
        proto = resolve_protocol(settings, t)
        ident = identity(settings, t, proto, vectors, fields)
        plans.append(_Plan(t, proto, vectors, ident, check_output_dir(t.output_dir, ident, settings.output.overwrite)))
    return benches, plans


def _find_work(settings: Settings, plans: Sequence[_Plan], benches: Sequence[BenchmarkData]) -> list[list[Any]]:
    """(Main process.) Finished results and shards kept from an earlier run; the shards left, as JSON."""
    shards: list[Shard] = []
    for ti, plan in enumerate(plans):
        out = plan.target.output_dir
        for b in benches:
            n = plan.proto.samples(b)
            for seed in plan.proto.seeds:
                found = kept = None
                if plan.mode == "continue":
                    found = read_results(results_path(out, b.name, seed), b.problems, n)
                    kept = None if found is not None else finished_lines(out, b.name, seed, b.problems, n)
                if found is not None:
                    plan.done[(b.name, seed)] = found
                    continue
                plan.kept[(b.name, seed)] = len(kept or {})
                todo = [i for i in range(len(b.problems)) if i not in (kept or {})]
                shards += plan_shards(ti, b.name, seed, todo, n, settings.eval.shard_samples)
    return [s.to_json() for s in shards]


@dataclass
class _Inputs:
    models: EvalModels
    stop_ids: tuple[int, ...]
    prompts: dict[Optional[str], dict[str, list[list[int]]]]  # per prefill (None: none), per benchmark
    scorer: Optional[Any] = None  # eval.reward's RewardScorer
    per_budget: dict[tuple[Any, ...], dict[str, BenchInputs]] = field(default_factory=dict)

    def bench_inputs(self, proto: Protocol, benches: Sequence[BenchmarkData],
                     prefill: Optional[str] = None) -> dict[str, BenchInputs]:
        key = (prefill, proto.max_new_tokens, proto.max_seq_length)
        if key not in self.per_budget:
            prompts = self.prompts[prefill]
            self.per_budget[key] = {b.name: BenchInputs.build(b.problems, prompts[b.name], max_new_tokens=key[1],
                                                              max_seq_length=key[2]) for b in benches}
        return self.per_budget[key]


def _load_inputs(settings: Settings, benches: Sequence[BenchmarkData], plans: Sequence[_Plan],
                 stack: contextlib.ExitStack, models: Optional[Any] = None) -> _Inputs:
    """Tokenizer, stop set and prompts; for vLLM, that the engine can run each target; with
    ``eval.reward``, the scorer after a trial call of its plug-in (reads only)."""
    if settings.rollout.backend == "vllm":
        vllm_factory()

        engine_dtype(settings.model.dtype)
        for plan in plans:
            t = plan.target
            path = str(t.weights) if t.weights else resolve_model(settings.model.name)
            check_supported(model_architecture(path), plan.vectors.place if plan.vectors else "layer_output")
    m, p = settings.model, settings.prompt
    tokenizer = load_tokenizer(m.name, revision=m.revision, trust_remote_code=m.trust_remote_code)
    stop_ids = completion_stop_ids(tokenizer, p.stop, m.name, revision=m.revision, trust_remote_code=m.trust_remote_code)
    # A prefill is the targets' own (prompt.prefill, or a study's reference line), checked here,
    # before anything is written.
    prompts = {prefill: {b.name: [render_prompt(tokenizer, x.problem, p.template, system_prompt=p.system_prompt,
                                                fmt=p.format, append_to=p.append_to, prefill=prefill,
                                                prefill_multi_token=p.prefill_multi_token) for x in b.problems]
                         for b in benches}
               for prefill in dict.fromkeys(plan.target.prefill for plan in plans)}
    scorer = None
    if settings.eval.reward is not None:
        scorer = RewardScorer(settings, tokenizer)
        stack.callback(scorer.close)
        scorer.check(benches[0].problems[0])  # a broken plug-in fails before anything is written
    if models is None:
        models = EvalModels(settings, tokenizer, places=tuple(dict.fromkeys(p.vectors.place for p in plans if p.vectors)))
        stack.callback(models.close)  # the vLLM engine the base and steering targets share
    return _Inputs(models, tuple(stop_ids), prompts, scorer)


def _init(settings: Settings, plans: Sequence[_Plan], benches: Sequence[BenchmarkData], reporter: Reporter) -> None:
    """(Main process.) settings.yaml and target.json of every target; stale shards of finished work go."""
    for plan in plans:
        t = plan.target
        init_output_dir(t.output_dir, plan.mode, settings, {
            "kind": TARGET_KIND, "format_version": FORMAT_VERSION, "label": t.label,
            "setup": t.setup, "model": t.model,
            "vectors": abs_path(t.vectors), "adapter": abs_path(t.adapter), "run": abs_path(t.run),
            "checkpoint": t.checkpoint, "prefill": t.prefill,
            "identity": plan.ident,
        })
        for b in benches:
            for seed in plan.proto.seeds:
                if (b.name, seed) in plan.done:
                    remove_shards(t.output_dir, b.name, seed)  # left by a run stopped while merging
                    reporter.say(f"{t.label} · {b.display} · seed {seed}: finished earlier, skipped")
                elif plan.kept.get((b.name, seed)):
                    reporter.say(f"{t.label} · {b.display} · seed {seed}: {plan.kept[(b.name, seed)]} of "
                                 f"{len(b.problems)} problems finished earlier, kept")


def _check_visible(plans: Sequence[_Plan]) -> None:
    for plan in plans:
        if not (plan.target.output_dir / "target.json").is_file():
            raise SteerError(f"this process does not see {plan.target.output_dir / 'target.json'}, which the main "
                             "process wrote; on several nodes the output directory must be on a filesystem they "
                             "all share (same path)")


class _Merger:
    """(Main process.) Merges each (target, benchmark, seed) once all its shards are written, and
    writes a target's summary once all of its are merged."""

    def __init__(self, settings: Settings, plans: Sequence[_Plan], benches: Sequence[BenchmarkData],
                 shards: Sequence[Shard], reporter: Reporter, world: int, started: float) -> None:
        self.s, self.plans, self.benches, self.reporter = settings, plans, benches, reporter
        self.world, self.started = world, started
        self.matrices = [dict(p.done) for p in plans]
        self.rewards: list[dict[tuple[str, int], list[Optional[float]]]] = [
            {k: read_rewards(results_path(p.target.output_dir, *k)) for k in p.done} if settings.eval.reward else {}
            for p in plans]
        self.waiting: dict[tuple[int, str, int], list[Path]] = {}
        for ti, plan in enumerate(plans):
            for b in benches:
                for seed in plan.proto.seeds:
                    if (b.name, seed) not in plan.done:
                        self.waiting[(ti, b.name, seed)] = []
        for sh in shards:
            self.waiting[(sh.target, sh.bench, sh.seed)].append(sh.path(plans[sh.target].target.output_dir))
        self.summaries: list[Optional[dict[str, Any]]] = [None] * len(plans)

    def poll(self) -> bool:
        """Merge what is complete; True when everything is."""
        for key in list(self.waiting):
            paths = self.waiting[key]
            if all(p.exists() for p in paths):
                self.reporter.seen(paths)
                self._merge(*key)
                del self.waiting[key]
        for ti, plan in enumerate(self.plans):
            if self.summaries[ti] is None and not any(k[0] == ti for k in self.waiting):
                self._summarise(ti)
        return not self.waiting

    def wait(self) -> list[dict[str, Any]]:
        while not self.poll():
            time.sleep(0.5)  # other processes are still generating
        return [s for s in self.summaries if s is not None]

    def _merge(self, ti: int, bench: str, seed: int) -> None:
        plan = self.plans[ti]
        b = next(x for x in self.benches if x.name == bench)
        n = plan.proto.samples(b)
        lines = merge_shards(plan.target.output_dir, bench, seed, b.problems, n)
        matrix = [[bool(s["correct"]) for s in line["samples"]] for line in lines]
        self.matrices[ti][(bench, seed)] = matrix
        self.rewards[ti][(bench, seed)] = lines_rewards(lines)
        metric = M.primary_metric(n)
        value = M.primary_value(M.seed_metrics(matrix, plan.proto.mean_k), metric)
        self.reporter.say(f"{plan.target.label} · {b.display} · seed {seed} · {n} sample{'s' if n > 1 else ''}: "
                          f"{metric} {100 * value:.1f} ({time.perf_counter() - self.started:.1f}s)")

    def _summarise(self, ti: int) -> None:
        plan = self.plans[ti]
        summary = build_summary(plan.target, self.s, plan.proto, self.benches, self.matrices[ti], self.rewards[ti],
                                processes=self.world, wall_seconds=time.perf_counter() - self.started,
                                vectors_place=plan.vectors.place if plan.vectors else None)
        atomic_write_json(plan.target.output_dir / "summary.json", summary)
        self.reporter.say(f"{plan.target.label}: results in {plan.target.output_dir}")
        self.summaries[ti] = summary


def evaluate(
    settings: Settings,
    targets: Sequence[Target],
    *,
    fields: Optional[FieldMap] = None,
    interactive: Optional[bool] = None,
    coord: Optional[Coordinator] = None,
    kept_in: Optional[str] = None,
    models: Optional[Any] = None,
) -> list[dict[str, Any]]:
    """Evaluate each target on every benchmark and seed; returns the summaries (also written) on
    the main process, an empty list on the others. ``kept_in`` names where finished results are
    kept in the stop message (default: the output directories).

    Everything is checked (benchmarks, data, vectors shapes, output directories, prompts) on every
    process before anything is written; finished (benchmark, seed) files and finished shards from
    an earlier run with the same protocol are kept. The main process locks each output directory
    for the whole call (one writer per directory); SIGTERM/SIGUSR1 stop every process at once
    (``Interrupted``, exit code 75) keeping the finished shards, so the same command continues.
    ``models`` stands in for the ``EvalModels`` of the call (its ``backend(target, vectors)``
    hands out each target's generation backend): a study's patched model, loaded once.
    """
    coord = coord or Coordinator()
    outs = list(dict.fromkeys(t.output_dir for t in targets if t.output_dir is not None))
    with contextlib.ExitStack() as stack:
        stack.enter_context(StopSignals(
            settings.train.preempt_save_timeout, "the evaluation did not stop within train.preempt_save_timeout; "
            "finished results are kept: run the same command to continue",
            interrupt=f"finished results in {kept_in or ', '.join(map(str, outs))} are kept: run the same command "
                      "to continue"))

        def lock() -> None:  # the main process writes the directories: it holds them
            if coord.main:
                for out in outs:
                    stack.enter_context(hold_dir(out, "steer eval"))

        coord.agree("lock", lock)  # a directory in use stops every process before any check
        try:
            return _evaluate(settings, targets, fields=fields, interactive=interactive, coord=coord, outer=stack,
                             models=models)
        except WriteError as err:
            fix = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
            raise err.with_hint(f"finished results are kept: {fix}, then run the same command again") from None


def _evaluate(settings: Settings, targets: Sequence[Target], *, fields: Optional[FieldMap],
              interactive: Optional[bool], coord: Coordinator, outer: contextlib.ExitStack,
              models: Optional[Any] = None) -> list[dict[str, Any]]:
    started = time.perf_counter()
    reporter = Reporter(interactive, enabled=coord.main)
    benches, plans = coord.agree("check", lambda: _check(settings, targets, fields, coord))
    shards = [Shard.from_json(x) for x in
              coord.agree("plan", lambda: _find_work(settings, plans, benches) if coord.main else None, share=True)]
    inputs = coord.agree("inputs", lambda: _load_inputs(settings, benches, plans, outer, models) if shards else None)
    coord.agree("init", lambda: _init(settings, plans, benches, reporter) if coord.main else None)
    if coord.world > 1:
        coord.agree("visible", lambda: None if coord.main else _check_visible(plans))

    merger = _Merger(settings, plans, benches, shards, reporter, coord.world, started) if coord.main else None
    mine = deal(shards, coord.rank, coord.world)
    with contextlib.ExitStack() as stack:
        stack.enter_context(reporter)
        who = f"{coord.world} processes" if coord.world > 1 else "1 process"
        reporter.job(f"eval · {who}", {sh.path(plans[sh.target].target.output_dir): sh.size for sh in shards})
        if merger is not None:
            merger.poll()
        grader = None
        # hf: targets that differ only in their vectors share batches (one bank entry each)
        pooling = inputs is not None and settings.rollout.backend == "hf" and isinstance(inputs.models, EvalModels)
        for pool in pools(plans, settings.eval.pool_cells if pooling else 1):
            work = [(ti, [sh for sh in mine if sh.target == ti]) for ti in pool]
            work = [(ti, todo) for ti, todo in work if todo]
            if not work:
                continue
            assert inputs is not None
            if grader is None:
                grader = stack.enter_context(rewards.settings_grader(settings, reward="math"))
            ti, todo = work[0]
            plan = plans[ti]
            proto = plan.proto
            sampling = SamplingSpec(n=1, temperature=proto.temperature, top_p=proto.top_p, top_k=-1,
                                    stop_token_ids=inputs.stop_ids)
            if len(work) > 1:
                members = [plans[i] for i, _ in work]
                run_pool(inputs.models.base_model(), inputs.models.tokenizer, settings.rollout.batch_prompts, grader,
                         members, [t for _, t in work],
                         [inputs.bench_inputs(p.proto, benches, p.target.prefill) for p in members], sampling,
                         written=lambda shard: merger.poll() if merger else None, scorer=inputs.scorer,
                         pool_rows=settings.eval.pool_rows)
                continue
            with inputs.models.backend(plan.target, plan.vectors) as backend:
                run_shards(backend, grader, todo, inputs.bench_inputs(proto, benches, plan.target.prefill), sampling,
                           plan.target.output_dir, written=lambda shard: merger.poll() if merger else None,
                           scorer=inputs.scorer)
        return merger.wait() if merger is not None else []
