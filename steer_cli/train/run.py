"""``steer train``: online RLOO with steering vectors, a LoRA, or the full model.

Each step: take ``prompts_per_step`` problems (sharded across processes), sample
``num_generations`` completions per prompt with the current policy, grade them, turn rewards into
group advantages, and take one optimizer step on
``-sum_i A_i * sum_t log pi(y_it) / (generated tokens in the global batch)``.
Runs unchanged under ``accelerate launch`` / ``torchrun``: gradients of the trainable parameters
are summed across processes, so every process holds identical parameters.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import get_scheduler

from steer_cli.data.prompts import completion_stop_ids
from steer_cli.errors import Interrupted, SteerError, WriteError, say
from steer_cli.faults import maybe_die
from steer_cli.io import append_jsonl
from steer_cli.lock import hold_dir
from steer_cli.models import load_causal_lm, load_config, load_tokenizer, pick_dtype
from steer_cli.patching.archs import arch_for_config, locate
from steer_cli.patching.setups import prepare_setup
from steer_cli.patching.steering import check_shape
from steer_cli.preempt import StopSignals
from steer_cli.rewards.pool import check_plugin, training_grader
from steer_cli.rollout.base import Completion, SampleRequest, SamplingSpec, completion_budgets
from steer_cli.rollout.factory import engine_dtype, make_vllm_backend
from steer_cli.rollout.hf import HFBackend
from steer_cli.settings import Settings, flatten
from steer_cli.train.checkpoint import (
    load_checkpoint,
    prune_checkpoints,
    remove_partial_checkpoints,
    save_checkpoint,
    save_final,
    truncate_metrics,
)
from steer_cli.train.data import DataOrder, load_examples, step_seed
from steer_cli.train.display import Display
from steer_cli.train.fsdp import (
    full_state_dict,
    init_restarted_process_group,
    optimizer_state,
    shard_model,
    whole,
)
from steer_cli.train.job import RunState, bank_of, masked_vectors, rollout_requests, run_view
from steer_cli.train.objective import group_advantages
from steer_cli.train.outputs import (
    check_output_dir,
    check_training_settings,
    common_resume,
    default_output_dir,
    init_output_dir,
    run_finished,
)
from steer_cli.train.rewarding import record_reward, step_rewards
from steer_cli.train.step_metrics import step_metrics
from steer_cli.train.stopping import StepDropped, rng_state, set_rng_state, stop_message
from steer_cli.train.update import accumulate_policy_gradients
from steer_cli.vectors.file import load_vectors, unembed_sha256

# ------------------------------------------------------------------------------------ training

class Trainer:
    """One training job: one run, or several steering runs over one model copy (``train.sweep``).
    ``run()`` returns each run's ``final/`` directory (None on processes other than the main one)."""

    def __init__(self, settings: Settings | Sequence[Settings], *, out_dirs: Sequence[Path] | None = None,
                 names: Sequence[str] | None = None) -> None:
        listed = [settings] if isinstance(settings, Settings) else list(settings)
        for s in listed:
            check_training_settings(s)
        if len(listed) > 1 and listed[0].train.trackers:
            raise SteerError("train.trackers: several runs in one job log to their own metrics.jsonl; "
                             "drop the trackers, or train the runs as separate jobs")
        self.s = listed[0]  # what the runs share (model, data, rollouts) is read from here
        dirs = list(out_dirs) if out_dirs is not None else [
            Path(s.output.output_dir) if s.output.output_dir else default_output_dir(s) for s in listed]
        labels = list(names) if names is not None else [str(d) for d in dirs]
        self.runs = [RunState(k, s, Path(d), n) for k, (s, d, n) in enumerate(zip(listed, dirs, labels))]
        self.multi = len(self.runs) > 1
        self.stop = StopSignals(None)  # replaced by run(); here never set

    @property
    def out_dir(self) -> Path:
        return self.runs[0].out_dir

    # -- setup -------------------------------------------------------------------------------
    def _init_distributed(self) -> None:
        trackers = list(self.s.train.trackers)
        kwargs: dict[str, Any] = {}
        if trackers:
            kwargs.update(log_with=trackers, project_dir=str(self.out_dir))
        # accelerate picks gloo for several CPU processes only when told it runs on CPU.
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) >= 0
        if launched and not torch.cuda.is_available():
            kwargs["cpu"] = True
        init_restarted_process_group()
        self.acc = Accelerator(**kwargs)
        self.rank = self.acc.process_index
        self.world = self.acc.num_processes
        self.main = self.acc.is_main_process
        if self.s.train.prompts_per_step % self.world:
            raise SteerError(
                f"train.prompts_per_step = {self.s.train.prompts_per_step} (--prompts-per-step) must be "
                f"divisible by the number of processes ({self.world})"
            )

    def _check_runs(self) -> None:
        """Each run's directory (and resume point); finished runs of a job leave it; the runs that
        continue agree on one step (``common_resume``)."""
        for run in self.runs:
            record_reward(run.s)
        active = []
        for run in self.runs:
            if self.multi and self._on_main(lambda: run_finished(run.out_dir, run.s), share=True):
                if self.main:
                    say(f"note: {run.name} has finished ({run.out_dir / 'final'}); not trained again")
                continue
            # The main process checks (and hashes) the checkpoints once; all learn where to resume.
            run.resume_point = self._on_main(lambda: check_output_dir(run.out_dir, run.s), share=True)
            active.append(run)
        self.active = active
        if len(active) > 1:
            self._on_main(lambda: common_resume(active))
            if self.world > 1:
                points = broadcast_object_list([[r.resume_point for r in active]], from_process=0)[0]
                for r, point in zip(active, points):
                    r.resume_point = point

    def _setup(self) -> None:
        s = self.s
        self._init_distributed()
        self._lock_output_dirs()
        self._check_runs()
        if not self.active:
            return
        self.continues = self.active[0].continues

        config = load_config(s.model.name, revision=s.model.revision, trust_remote_code=s.model.trust_remote_code)
        arch_for_config(config)
        torch.manual_seed(s.train.seed)
        np.random.seed(s.train.seed % 2**32)
        self.tokenizer = load_tokenizer(s.model.name, revision=s.model.revision,
                                        trust_remote_code=s.model.trust_remote_code)
        self.examples, self.data_counts = load_examples(s, self.tokenizer)
        self.stop_ids = completion_stop_ids(self.tokenizer, s.prompt.stop, s.model.name, revision=s.model.revision,
                                            trust_remote_code=s.model.trust_remote_code)

        check_plugin(s, self.examples[0].answer, self.examples[0].row)

        compute = pick_dtype(s.model.dtype, self.acc.device, config)
        # Full fine-tuning in bf16/fp16 keeps float32 master weights (DeepSpeed's bf16 mode does, in
        # the reference): an AdamW step of lr 1e-6 is below bfloat16's resolution at the weights.
        master = s.setup.kind == "full" and compute != torch.float32 and s.train.master_float32
        model = load_causal_lm(s.model.name, dtype="float32" if master else s.model.dtype, device=self.acc.device,
                               revision=s.model.revision, trust_remote_code=s.model.trust_remote_code,
                               attn_implementation=s.model.attn_implementation)
        if s.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.steering = s.setup.kind == "steering"
        # Steering: the job's hooks sit on every layer some run steers and read each row's run's
        # vectors from a bank; each run's vectors are its own parameter (``job.run_view``).
        union = (sorted({i for r in self.active for i in (r.s.setup.steering.layers or range(config.num_hidden_layers))})
                 if self.steering else s.setup.steering.layers)
        self.trainable = prepare_setup(
            model, s.setup.kind, vectors=None, layers=union, place=s.setup.steering.place,
            lora_rank=s.setup.lora.rank, lora_alpha=s.setup.lora.alpha, lora_dropout=s.setup.lora.dropout,
            lora_init=s.setup.lora.init, kl_reference=s.train.kl_coef > 0,
            reference_offload=s.train.kl_reference_offload, reference_dtype=compute if master else None,
        )
        self.fsdp = s.train.fsdp
        if self.fsdp:
            shard_model(self.trainable.model, compute, self.acc.device)
            self.trainable.params = [p for p in self.trainable.model.parameters() if p.requires_grad]
        elif master:
            self.trainable.autocast_dtype = compute

        self.unembed_hash = unembed_sha256(whole(locate(model).unembed.weight))
        per_epoch = len(self.examples) // s.train.prompts_per_step
        self.total_steps = s.train.max_steps or max(1, int(s.train.epochs * per_epoch))
        self.save_every = s.train.save_every or max(1, math.ceil(self.total_steps / 6))
        for run in self.active:
            rs = run.s
            if self.steering:
                init = load_vectors(rs.setup.steering.init_vectors)[0] if rs.setup.steering.init_vectors else None
                if init is not None:
                    check_shape(init, self.trainable.steering.num_layers, self.trainable.steering.hidden_size)
                run.trainable = run_view(self.trainable, init, rs.setup.steering.layers)
            else:
                run.trainable = self.trainable
            run.optimizer = torch.optim.AdamW(
                run.trainable.params, lr=rs.train.lr, betas=(rs.train.adam_beta1, rs.train.adam_beta2),
                eps=rs.train.adam_eps, weight_decay=rs.train.weight_decay,
            )
            run.scheduler = get_scheduler(
                rs.train.schedule, run.optimizer,
                num_warmup_steps=math.ceil(rs.train.warmup_ratio * self.total_steps),
                num_training_steps=self.total_steps,
            )
            run.order = DataOrder(len(self.examples), rs.train.seed, s.data.shuffle)
        self.data_fingerprint = hashlib.sha256("\n".join(e.id for e in self.examples).encode()).hexdigest()[:16]
        if s.rollout.backend == "vllm":
            engine_dtype(s.model.dtype)  # a dtype vLLM cannot run here fails before anything is written
        for run in self.active:
            self._on_main(lambda: init_output_dir(run.out_dir, run.s, run.resume_point))
        self.backend = self._make_backend()

    def _on_main(self, fn: Callable[[], Any], *, share: bool = False) -> Any:
        """Run ``fn`` on the main process (the one that reads and writes the run directory) and
        wait for it; its error (bad input, a write the OS refused) is raised on every process, so
        all stop together and none waits in a collective the main one left. ``share``: every
        process returns the main one's value."""
        error, value = None, None
        if self.main:
            try:
                value = fn()
            except (SteerError, WriteError) as err:
                error = err
        if self.world > 1:
            error, value = broadcast_object_list([error, value if share else None], from_process=0)
        if error is not None:
            raise error
        return value

    def _lock_output_dirs(self) -> None:
        """One writer per run directory: the main process locks each for the whole job, before
        anything in it is read, written or cleared; the others learn whether it could."""
        for run in self.runs:
            self._on_main(lambda: self._stack.enter_context(hold_dir(run.out_dir, "steer train")))

    def _make_backend(self) -> Any:
        if self.s.rollout.backend == "hf":
            return HFBackend(self.trainable.model, self.tokenizer, batch_prompts=self.s.rollout.batch_prompts,
                             context=self.trainable.generation)

        return make_vllm_backend(self.s, self._engine_view(self.active[0]),
                                 max_prompt_len=max(len(e.prompt_ids) for e in self.examples))

    def _engine_view(self, run: RunState) -> Any:
        """What a vLLM engine takes from a run: a steering run's vectors with only its own layers'
        rows (the engine adds every row), otherwise the trainable itself."""
        if not self.steering:
            return run.trainable
        return SimpleNamespace(kind="steering", steering=SimpleNamespace(vectors=masked_vectors(run)))

    def vectors_meta(self, run: RunState, step: int) -> dict[str, Any]:
        t = run.trainable
        return {
            "base_model": self.s.model.name,
            "layers": list(t.steering.layers) if t.steering else None,
            "place": t.steering.place if t.steering else None,
            "setup": self.s.setup.kind,
            "step": step,
            "seed": run.s.train.seed,
            "dataset": self.s.data.dataset,
            "preset": run.s.preset,
            "unembed_sha256": self.unembed_hash,
        }

    # -- one step ----------------------------------------------------------------------------
    def _budgets(self, prompts: list[list[int]]) -> tuple[int, ...]:
        """Each prompt's own completion budget (rollout.max_seq_length minus its length), as in the
        reference code, never that of the longest prompt beside it."""
        return completion_budgets([len(p) for p in prompts], self.s.rollout.max_new_tokens,
                                  self.s.rollout.max_seq_length)

    def _sum_across(self, values: list[float], op: Any = None) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.acc.device)
        torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)
        return t.tolist()

    def _max_across(self, values: list[float]) -> list[float]:
        return self._sum_across(values, torch.distributed.ReduceOp.MAX if self.world > 1 else None)

    def _reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum gradients across processes. A parameter without a gradient (every advantage of the
        step was zero, so no backward ran) gets zeros: AdamW then still moves by its momentum, as
        it does in the reference implementation, whose backward always runs."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.world == 1 or self.fsdp:  # FSDP reduce-scatters (sums) gradients in backward
            return
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n

    def _rollouts(self, plans: list[dict[str, Any]], per_rank: int) -> list[list[list[Completion]]]:
        """Every run's completions of the step: with the hf backend all runs' samples in shared
        batches, each row steered by its run's vectors and seeded by its own global row; with vLLM
        run after run, each run's vectors in the engine for its turn."""
        if isinstance(self.backend, HFBackend):
            requests: list[SampleRequest] = []
            for k, plan in enumerate(plans):
                requests += rollout_requests(plan["prompts"], plan["sampling"].budgets, self.s.rollout.num_generations,
                                             plan["sampling"].seed, self.rank * per_rank, k * per_rank)
            out: list[Completion | None] = [None] * len(requests)
            handle = self.trainable.steering if self.steering else None
            if handle is not None:
                bank, mask = bank_of(self.active)
                handle.set_bank(bank, layer_mask=mask)
                self.backend.before_batch = lambda batch: handle.set_row_index(
                    torch.tensor([r.group // per_rank for r in batch]))
            try:
                for i, completion in self.backend.stream_samples(requests, plans[0]["sampling"],
                                                                 batch_groups=self.s.rollout.batch_prompts * len(plans)):
                    out[i] = completion
            finally:
                if handle is not None:
                    handle.set_bank(None)
                    self.backend.before_batch = None
            n = self.s.rollout.num_generations
            groups, at = [], 0
            for plan in plans:
                rows = out[at:at + len(plan["prompts"]) * n]
                at += len(rows)
                groups.append([rows[i * n:(i + 1) * n] for i in range(len(plan["prompts"]))])
            return groups
        groups = []
        for run, plan in zip(self.active, plans):
            if self.multi:
                self.backend.sync_from(self._engine_view(run))
            groups.append(self.backend.generate(plan["prompts"], plan["sampling"], first_index=self.rank * per_rank))
        return groups

    def step(self, step: int, grader: Any) -> list[dict[str, Any]]:
        s = self.s
        t_start = time.perf_counter()
        if self.acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.acc.device)
        per_rank = s.train.prompts_per_step // self.world
        n = s.rollout.num_generations
        plans = []
        for run in self.active:
            global_idx = run.order.indices(step, s.train.prompts_per_step)
            local_idx = global_idx[self.rank * per_rank:(self.rank + 1) * per_rank]
            examples = [self.examples[i] for i in local_idx]
            prompts = [e.prompt_ids for e in examples]
            sampling = SamplingSpec(
                n=n, temperature=s.rollout.temperature, top_p=s.rollout.top_p,
                top_k=s.rollout.top_k, max_new_tokens=s.rollout.max_new_tokens, budgets=self._budgets(prompts),
                stop_token_ids=self.stop_ids, seed=step_seed(run.s.train.seed, step),
            )
            plans.append({"examples": examples, "prompts": prompts, "sampling": sampling})
        self.trainable.model.eval()
        try:
            all_groups = self._rollouts(plans, per_rank)
        except Exception:
            if not self.stop.requested:
                raise
            all_groups = None  # the scheduler's signal also ended a vLLM engine: the step is dropped below
        t_gen = time.perf_counter()
        maybe_die("generate", step + 1)
        # Check points: a stop signal drops the step before its update changes anything but the
        # RNG (restored by run()); after them the step is finished, then saved.
        if self._stop_requested():
            raise StepDropped

        graded = [step_rewards(grader, run.s, plan["examples"], groups, self.tokenizer)
                  for run, plan, groups in zip(self.active, plans, all_groups)]
        t_grade = time.perf_counter()
        if self._stop_requested():  # also: grader workers the signal ended graded their items wrong
            raise StepDropped

        seqs: list[tuple[list[int], list[int], float]] = []
        entries: list[int] = []
        local_tokens, completions_of = [], []
        for k, (run, plan, groups, (rewards, _, _)) in enumerate(zip(self.active, plans, all_groups, graded)):
            advantages = group_advantages(rewards, run.s.train.advantage)
            completions = [c for g in groups for c in g]
            completions_of.append(completions)
            local_tokens.append(float(sum(len(c.token_ids) for c in completions)))
            for i, c in enumerate(completions):
                adv = float(advantages.view(-1)[i])
                # A zero advantage contributes nothing to the gradient without a KL term; skip its pass.
                if c.token_ids and (s.train.kl_coef > 0 or adv != 0.0):
                    seqs.append((plan["prompts"][i // n], c.token_ids, adv))
                    entries.append(k)
        global_tokens = self._sum_across(local_tokens)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        common = dict(temperature=s.rollout.temperature, micro_batch_size=s.train.micro_batch_size, pad_id=pad_id,
                      device=self.acc.device, kl_coef=s.train.kl_coef, train_mode=s.model.gradient_checkpointing,
                      logprob_chunk_tokens=s.train.logprob_chunk_tokens)
        if self.steering:
            handle = self.trainable.steering
            bank, mask = bank_of(self.active)
            sink = torch.zeros(bank.shape, dtype=torch.float64, device=bank.device)
            handle.set_bank(bank, layer_mask=mask, grad_sink=sink)
            try:
                loss_sums, kl_sums = accumulate_policy_gradients(
                    self.trainable, seqs, global_tokens=0.0, entries=entries, entry_tokens=global_tokens,
                    set_rows=lambda rows: handle.set_row_index(torch.tensor(rows, dtype=torch.long)), **common)
            finally:
                handle.set_bank(None)
            for k, run in enumerate(self.active):
                (param,) = run.params
                param.grad = sink[k].to(param.dtype)
        else:
            min_micro = 0
            if self.fsdp:  # every pass is a collective: all processes run as many
                (min_micro,) = self._max_across([float(math.ceil(len(seqs) / s.train.micro_batch_size))])
            loss_sum, kl_sum = accumulate_policy_gradients(
                self.trainable, seqs, global_tokens=global_tokens[0], min_micro_batches=int(min_micro), **common)
            loss_sums, kl_sums = [loss_sum], [kl_sum]
        self._reduce_grads([p for run in self.active for p in run.params])
        reduced = self._sum_across(list(loss_sums) + list(kl_sums))
        K = len(self.active)
        loss_global, kl_global = reduced[:K], reduced[K:]
        maybe_die("update", step + 1)
        updates = []
        for k, run in enumerate(self.active):
            params = run.params
            if run.s.train.max_grad_norm:
                grad_norm = float(whole(torch.nn.utils.clip_grad_norm_(params, run.s.train.max_grad_norm)))
            else:
                grad_norm = float(whole(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])))
            finite = math.isfinite(grad_norm) and math.isfinite(loss_global[k])
            lr = run.scheduler.get_last_lr()[0]
            if finite:
                run.optimizer.step()
                run.consecutive_nonfinite = 0
            else:
                run.nonfinite_total += 1
                run.consecutive_nonfinite += 1
            run.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                # The schedule follows the step count even when a non-finite update was skipped.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                run.scheduler.step()
            updates.append((grad_norm, finite, lr))
        t_update = time.perf_counter()
        try:
            # Several runs put their vectors into the engine before their own rollouts instead.
            sync_time = self._sync_backend() if updates[0][1] and not self.multi else 0.0
        except Exception:
            if not self.stop.requested:
                raise
            sync_time = 0.0  # stopping: the engine is not needed again
        t_end = time.perf_counter()
        for run in self.active:
            if run.consecutive_nonfinite >= s.train.max_nonfinite_steps:
                which = f" of run {run.name}" if self.multi else ""
                raise SteerError(
                    f"training{which} diverged: {run.consecutive_nonfinite} updates in a row had a non-finite loss "
                    f"or gradient (step {step + 1}); lower the learning rate (--lr, now {run.s.train.lr:g})"
                )
        out = []
        for k, (run, completions, (rewards, correct, reward_errors)) in enumerate(
                zip(self.active, completions_of, graded)):
            grad_norm, finite, lr = updates[k]
            local = {
                "correct": correct.view(-1).tolist() if correct is not None else [],
                "reward_errors": [int(reward_errors)],
                "rewards": rewards.view(-1).tolist(),
                "lengths": [len(c.token_ids) for c in completions],
                "stopped": [c.stopped for c in completions],
                "same": [bool((r == r[0]).all()) for r in rewards],
                "gen_tokens": int(local_tokens[k]),
                "t_gen": t_gen - t_start,
            }
            out.append(step_metrics(self, run, step, local, {
                "loss": loss_global[k], "kl": kl_global[k] if s.train.kl_coef > 0 else None, "grad_norm": grad_norm,
                "lr": lr, "finite": finite, "time_grade": t_grade - t_gen, "time_update": t_update - t_grade,
                "time_sync": sync_time, "time_step": t_end - t_start,
            }))
        return out

    def _sync_backend(self) -> float:
        sync = getattr(self.backend, "sync_from", None)
        if sync is None:
            return 0.0
        t0 = time.perf_counter()
        sync(self._engine_view(self.active[0]))
        return time.perf_counter() - t0

    # -- persistence ---------------------------------------------------------------------------
    def _trainer_state(self, run: RunState, step: int) -> dict[str, Any]:
        return {
            "total_steps": self.total_steps,
            "seed": run.s.train.seed,
            "prompts_per_step": self.s.train.prompts_per_step,
            "data_size": len(self.examples),
            "data_fingerprint": self.data_fingerprint,
            "data_counts": self.data_counts,
            "data_position": step * self.s.train.prompts_per_step,
            "nonfinite_total": run.nonfinite_total,
            "consecutive_nonfinite": run.consecutive_nonfinite,
        }

    def _gathered(self, optimizer: bool) -> tuple[Any, Any]:
        """Whole weights (and optimizer state) of a sharded model; every process must call this."""
        if not self.fsdp:
            return None, None

        model_state = full_state_dict(self.trainable.model)
        optim_state = optimizer_state(self.trainable.model, self.active[0].optimizer) if optimizer else None
        return model_state, optim_state

    def _save(self, step: int) -> None:
        model_state, optim_state = self._gathered(optimizer=True)
        for run in self.active:
            def save(run: RunState = run) -> None:
                save_checkpoint(run.out_dir, step, run.trainable, run.optimizer, run.scheduler,
                                self._trainer_state(run, step), vectors_meta=self.vectors_meta(run, step),
                                tokenizer=self.tokenizer, model_state=model_state, optimizer_state=optim_state)
                prune_checkpoints(run.out_dir, run.s.train.keep_last)

            self._on_main(save)

    def _save_final(self, step: int) -> list[Path]:
        model_state, _ = self._gathered(optimizer=False)
        for run in self.active:
            self._on_main(lambda: save_final(run.out_dir, step, run.trainable, self._trainer_state(run, step),
                                             vectors_meta=self.vectors_meta(run, step), tokenizer=self.tokenizer,
                                             model_state=model_state))
        return [run.out_dir / "final" for run in self.active]

    def _resume(self) -> int:
        steps = set()
        for run in self.active:
            if self.main:
                remove_partial_checkpoints(run.out_dir)
            ckpt = run.resume_point.checkpoint
            assert ckpt is not None  # check_output_dir found an intact one (run.continues)
            state = load_checkpoint(ckpt, run.trainable, run.optimizer, run.scheduler, sharded=self.fsdp,
                                    main=self.main)
            if state.get("data_fingerprint") != self.data_fingerprint:
                raise SteerError(
                    f"--resume: the training problems differ from those of the run in {run.out_dir} "
                    "(another dataset file or limit?); resume with the same data"
                )
            run.nonfinite_total = state.get("nonfinite_total", 0)
            run.consecutive_nonfinite = state.get("consecutive_nonfinite", 0)
            step = int(state["step"])
            steps.add(step)
            self._on_main(lambda: truncate_metrics(run.metrics_path, step))
        assert len(steps) == 1, steps  # common_resume put every run at one step
        return steps.pop()

    # -- main ----------------------------------------------------------------------------------
    def run(self) -> Path | list[Path] | None:
        """The ``final/`` directory (a list for a job of several runs; None off the main process)."""
        try:
            with contextlib.ExitStack() as stack:
                self._stack = stack  # holds the runs' directory locks until the job has ended
                finals = self._run()
        except WriteError as err:
            raise err.with_hint(self._write_hint(err)) from None
        if not self.main:
            return None
        return finals if self.multi else (finals[0] if finals else None)

    def _write_hint(self, err: WriteError) -> str:
        fix = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
        saved = getattr(self, "_saved_step", None)
        if saved is None:
            return f"{fix}, then run the same command with --resume"
        where = f"it continues from checkpoint-{saved}" if saved else "no checkpoint yet: it starts over"
        return f"nothing earlier was removed: {fix}, then run the same command with --resume ({where})"

    def _run(self) -> list[Path]:
        self._setup()
        if not self.active:
            if self.main:
                say("steer train: every run of this job has finished; nothing to do")
            return []
        start = self._resume() if self.continues else 0
        if self.continues and not self.multi:
            # The engine was started with the starting vectors / weights: it generates the resumed
            # run's next step with the checkpoint's (several runs sync before each turn anyway).
            self._sync_backend()
        self._saved_step = start  # the state after this many steps is on disk (or is the start)
        if self.s.train.trackers:
            self.acc.init_trackers("steer", config=tracker_config(self.s))
        display = Display(self.total_steps, start, enabled=self.main, out_dir=self.out_dir,
                          info=self._describe(), labels=[r.name for r in self.active] if self.multi else None)
        timeout = self.s.train.preempt_save_timeout
        self.stop = StopSignals(timeout, deadline_message=(
            f"no checkpoint written within train.preempt_save_timeout = {timeout:g} s of the stop signal; "
            "the previous checkpoint is intact: run the same command with --resume to continue from it"))
        try:
            with self.stop, training_grader(self.s) as grader:
                for step in range(start, self.total_steps):
                    if self._stop_requested():
                        self._stop_at(step, dropped=False)
                    rng = rng_state()
                    try:
                        metrics = self.step(step, grader)
                    except StepDropped:
                        # Back to the state after the last complete step, so that the checkpoint
                        # and a resumed run equal an uninterrupted one.
                        set_rng_state(rng)
                        for run in self.active:
                            run.optimizer.zero_grad(set_to_none=True)
                        self._stop_at(step, dropped=True)
                    for run, m in zip(self.active, metrics):
                        self._on_main(lambda: append_jsonl(run.metrics_path, m))
                    if self.main and self.s.train.trackers:
                        self.acc.log({k: v for k, v in metrics[0].items() if isinstance(v, (int, float))},
                                     step=step + 1)
                    display.update(metrics[0] if not self.multi else metrics)
                    done = step + 1
                    if done % self.save_every == 0 and done < self.total_steps:
                        self._save(done)
                        self._saved_step = done
                # A signal now changes nothing: final/ is written (the deadline still holds).
                finals = self._save_final(self.total_steps)
        finally:
            display.close()
            close = getattr(self.backend, "close", None) if hasattr(self, "backend") else None
            if close:
                # A scheduler's signal may have ended a vLLM engine's processes already.
                with contextlib.suppress(Exception) if self.stop.requested else contextlib.nullcontext():
                    close()
            if self.s.train.trackers:
                self.acc.end_training()
        return finals

    # -- stopping on SIGTERM / SIGUSR1 -----------------------------------------------------------
    def _stop_requested(self) -> bool:
        """Whether any process got a stop signal; all processes call this at the same points, so
        they agree on the step they stop at."""
        flag = self.stop.requested
        if self.world > 1:
            (flag,) = self._max_across([float(flag)])
            flag = bool(flag)
            if flag:
                self.stop.start_deadline()
        return flag

    def _stop_at(self, done: int, *, dropped: bool) -> None:
        """Save the state after ``done`` steps of every run (unless it is on disk already) and stop."""
        saved_now = done > self._saved_step
        if saved_now:
            self._save(done)
            self._saved_step = done
        raise Interrupted(stop_message(self.stop.signal_name, done, self.total_steps, dropped=dropped,
                                       saved_now=saved_now))

    def _describe(self) -> str:
        t = self.trainable
        c = self.data_counts
        dropped = "".join(f", {n} {what}" for n, what in ((c["skipped_rows"], "bad rows skipped"),
                                                            (c["too_long"], "prompts over the length limit")) if n)
        trainable = self.active[0].trainable.num_trainable if self.steering else t.num_trainable
        where = (f"{len(self.active)} runs in one job: " + ", ".join(r.name for r in self.active)
                 if self.multi else str(self.out_dir))
        return (f"{self.s.model.name} · {self.s.setup.kind} ({trainable:,} trainable) · "
                f"{len(self.examples)} problems{dropped} · {self.total_steps} steps x {self.s.train.prompts_per_step} "
                f"prompts x {self.s.rollout.num_generations} samples · {self.world} process(es) · {where}")


def tracker_config(s: Settings) -> dict[str, Any]:
    """The settings as trackers' hyperparameters: dotted keys and scalar values (TensorBoard's hparams
    take numbers, strings and booleans only; lists become their JSON text, None is left out by it)."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flatten(s.to_dict()).items()}


def train(settings: Settings) -> Path | None:
    """Run ``steer train``; returns the ``final/`` directory (None on processes other than the main one)."""
    result = Trainer(settings).run()
    assert result is None or isinstance(result, Path)
    return result


def train_job(settings: Sequence[Settings], out_dirs: Sequence[Path], names: Sequence[str]) -> list[Path] | None:
    """Several steering runs in one job (``steer train --sweep`` / repeated ``--preset``): each
    run's ``final/`` directory (None on processes other than the main one)."""
    result = Trainer(list(settings), out_dirs=out_dirs, names=names).run()
    if result is None:
        return None
    return result if isinstance(result, list) else [result]
