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
import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from transformers import get_scheduler

from steer_cli.data.prompts import completion_stop_ids
from steer_cli.errors import Interrupted, SteerError
from steer_cli.faults import maybe_die
from steer_cli.io import append_jsonl
from steer_cli.lock import hold_dir
from steer_cli.models import load_causal_lm, load_config, load_tokenizer, pick_dtype
from steer_cli.patching.archs import arch_for_config, locate
from steer_cli.patching.setups import prepare_setup
from steer_cli.preempt import StopSignals
from steer_cli.rewards.pool import check_plugin, training_grader
from steer_cli.rollout.base import SamplingSpec, completion_budgets
from steer_cli.rollout.factory import engine_dtype, make_vllm_backend
from steer_cli.rollout.hf import HFBackend
from steer_cli.settings import Settings, flatten
from steer_cli.train.checkpoint import (
    latest_checkpoint,
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
    training_state_bytes,
    whole,
)
from steer_cli.train.objective import group_advantages
from steer_cli.train.outputs import (
    check_output_dir,
    check_training_settings,
    default_output_dir,
    init_output_dir,
)
from steer_cli.train.rewarding import record_reward, step_rewards
from steer_cli.train.stopping import StepDropped, rng_state, set_rng_state, stop_message
from steer_cli.train.update import accumulate_policy_gradients
from steer_cli.vectors.file import load_vectors, unembed_sha256

# ------------------------------------------------------------------------------------ training

class Trainer:
    """One training run. ``run()`` returns the output directory."""

    def __init__(self, settings: Settings) -> None:
        check_training_settings(settings)
        self.s = settings

        self.stop = StopSignals(None)  # replaced by run(); here never set

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

    def _setup(self) -> None:
        s = self.s
        self.out_dir = Path(s.output.output_dir) if s.output.output_dir else default_output_dir(s)
        self._init_distributed()
        self._lock_output_dir()

        record_reward(s)
        self.continues = check_output_dir(self.out_dir, s)

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
        init = None
        if s.setup.steering.init_vectors:
            init, _ = load_vectors(s.setup.steering.init_vectors)
        self.trainable = prepare_setup(
            model, s.setup.kind, vectors=init, layers=s.setup.steering.layers, place=s.setup.steering.place,
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
        self.optimizer = torch.optim.AdamW(
            self.trainable.params, lr=s.train.lr, betas=(s.train.adam_beta1, s.train.adam_beta2),
            eps=s.train.adam_eps, weight_decay=s.train.weight_decay,
        )

        self.scheduler = get_scheduler(
            s.train.schedule, self.optimizer,
            num_warmup_steps=math.ceil(s.train.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.order = DataOrder(len(self.examples), s.train.seed, s.data.shuffle)
        self.data_fingerprint = hashlib.sha256("\n".join(e.id for e in self.examples).encode()).hexdigest()[:16]
        if s.rollout.backend == "vllm":
            engine_dtype(s.model.dtype)  # a dtype vLLM cannot run here fails before anything is written
        if self.main:
            init_output_dir(self.out_dir, s, continues=self.continues)
        self.acc.wait_for_everyone()
        self.backend = self._make_backend()

    def _lock_output_dir(self) -> None:
        """One writer per run directory: the main process locks it for the whole run, before
        anything in it is read, written or cleared; the others learn whether it could."""
        error = None
        if self.main:
            try:
                self._stack.enter_context(hold_dir(self.out_dir, "steer train"))
            except SteerError as err:
                error = str(err)
        if self.world > 1:
            box = broadcast_object_list([error], from_process=0)
            error = box[0]
        if error:
            raise SteerError(error)

    def _make_backend(self) -> Any:
        if self.s.rollout.backend == "hf":
            return HFBackend(self.trainable.model, self.tokenizer, batch_prompts=self.s.rollout.batch_prompts,
                             context=self.trainable.generation)

        return make_vllm_backend(self.s, self.trainable, max_prompt_len=max(len(e.prompt_ids) for e in self.examples))

    def vectors_meta(self, step: int) -> dict[str, Any]:
        t = self.trainable
        return {
            "base_model": self.s.model.name,
            "layers": list(t.steering.layers) if t.steering else None,
            "place": t.steering.place if t.steering else None,
            "setup": self.s.setup.kind,
            "step": step,
            "seed": self.s.train.seed,
            "dataset": self.s.data.dataset,
            "preset": self.s.preset,
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

    def _reduce_grads(self) -> None:
        """Sum gradients across processes. A parameter without a gradient (every advantage of the
        step was zero, so no backward ran) gets zeros: AdamW then still moves by its momentum, as
        it does in the reference implementation, whose backward always runs."""
        for p in self.trainable.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.world == 1 or self.fsdp:  # FSDP reduce-scatters (sums) gradients in backward
            return
        grads = [p.grad for p in self.trainable.params]
        flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(self.trainable.params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n

    def step(self, step: int, grader: Any) -> dict[str, Any]:
        s = self.s
        t_start = time.perf_counter()
        if self.acc.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.acc.device)
        per_rank = s.train.prompts_per_step // self.world
        global_idx = self.order.indices(step, s.train.prompts_per_step)
        local_idx = global_idx[self.rank * per_rank:(self.rank + 1) * per_rank]
        examples = [self.examples[i] for i in local_idx]
        prompts = [e.prompt_ids for e in examples]
        sampling = SamplingSpec(
            n=s.rollout.num_generations, temperature=s.rollout.temperature, top_p=s.rollout.top_p,
            top_k=s.rollout.top_k, max_new_tokens=s.rollout.max_new_tokens, budgets=self._budgets(prompts),
            stop_token_ids=self.stop_ids, seed=step_seed(s.train.seed, step),
        )
        self.trainable.model.eval()
        try:
            groups = self.backend.generate(prompts, sampling, first_index=self.rank * per_rank)
        except Exception:
            if not self.stop.requested:
                raise
            groups = None  # the scheduler's signal also ended a vLLM engine: the step is dropped below
        t_gen = time.perf_counter()
        maybe_die("generate", step + 1)
        # Check points: a stop signal drops the step before its update changes anything but the
        # RNG (restored by run()); after them the step is finished, then saved.
        if self._stop_requested():
            raise StepDropped

        n = s.rollout.num_generations
        rewards, correct, reward_errors = step_rewards(grader, s, examples, groups, self.tokenizer)
        t_grade = time.perf_counter()
        if self._stop_requested():  # also: grader workers the signal ended graded their items wrong
            raise StepDropped
        advantages = group_advantages(rewards, s.train.advantage)

        completions = [c for g in groups for c in g]
        local_tokens = sum(len(c.token_ids) for c in completions)
        (global_tokens,) = self._sum_across([float(local_tokens)])
        seqs = [(prompts[i // n], completions[i].token_ids, float(advantages.view(-1)[i]))
                for i in range(len(completions))]
        if s.train.kl_coef == 0:
            # A zero advantage contributes nothing to the gradient; skip its forward/backward.
            seqs = [x for x in seqs if x[2] != 0.0 and x[1]]
        else:
            seqs = [x for x in seqs if x[1]]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        min_micro = 0
        if self.fsdp:  # every pass is a collective: all processes run as many
            (min_micro,) = self._max_across([float(math.ceil(len(seqs) / s.train.micro_batch_size))])
        loss_sum, kl_sum = accumulate_policy_gradients(
            self.trainable, seqs, global_tokens=global_tokens, temperature=s.rollout.temperature,
            micro_batch_size=s.train.micro_batch_size, pad_id=pad_id, device=self.acc.device,
            kl_coef=s.train.kl_coef, train_mode=s.model.gradient_checkpointing,
            logprob_chunk_tokens=s.train.logprob_chunk_tokens, min_micro_batches=int(min_micro),
        )
        self._reduce_grads()
        loss_global, kl_global = self._sum_across([loss_sum, kl_sum])
        params = self.trainable.params
        if s.train.max_grad_norm:
            grad_norm = float(whole(torch.nn.utils.clip_grad_norm_(params, s.train.max_grad_norm)))
        else:
            grad_norm = float(whole(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])))
        finite = math.isfinite(grad_norm) and math.isfinite(loss_global)
        maybe_die("update", step + 1)
        lr = self.scheduler.get_last_lr()[0]
        if finite:
            self.optimizer.step()
            self.consecutive_nonfinite = 0
        else:
            self.nonfinite_total += 1
            self.consecutive_nonfinite += 1
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # The schedule follows the step count even when a non-finite update was skipped.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        t_update = time.perf_counter()
        try:
            sync_time = self._sync_backend() if finite else 0.0
        except Exception:
            if not self.stop.requested:
                raise
            sync_time = 0.0  # stopping: the engine is not needed again
        t_end = time.perf_counter()
        if self.consecutive_nonfinite >= s.train.max_nonfinite_steps:
            raise SteerError(
                f"training diverged: {self.consecutive_nonfinite} updates in a row had a non-finite loss or "
                f"gradient (step {step + 1}); lower the learning rate (--lr, now {s.train.lr:g})"
            )
        local = {
            "correct": correct.view(-1).tolist() if correct is not None else [],
            "reward_errors": [int(reward_errors)],
            "rewards": rewards.view(-1).tolist(),
            "lengths": [len(c.token_ids) for c in completions],
            "stopped": [c.stopped for c in completions],
            "same": [bool((r == r[0]).all()) for r in rewards],
            "gen_tokens": local_tokens,
            "t_gen": t_gen - t_start,
        }
        return self._metrics(step, local, {
            "loss": loss_global, "kl": kl_global if s.train.kl_coef > 0 else None, "grad_norm": grad_norm,
            "lr": lr, "finite": finite, "time_grade": t_grade - t_gen, "time_update": t_update - t_grade,
            "time_sync": sync_time, "time_step": t_end - t_start,
        })

    def _sync_backend(self) -> float:
        sync = getattr(self.backend, "sync_from", None)
        if sync is None:
            return 0.0
        t0 = time.perf_counter()
        sync(self.trainable)
        return time.perf_counter() - t0

    def _metrics(self, step: int, local: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
        if self.world > 1:
            parts = gather_object([local])
        else:
            parts = [local]
        cat = {k: [x for p in parts for x in p[k]] for k in ("correct", "rewards", "lengths", "stopped", "same")}
        gen_tokens = sum(p["gen_tokens"] for p in parts)
        t_gen = max(p["t_gen"] for p in parts)
        rewards = torch.tensor(cat["rewards"])
        lengths = torch.tensor(cat["lengths"], dtype=torch.float32)
        m: dict[str, Any] = {
            "step": step + 1,
            "epoch": round((step + 1) * self.s.train.prompts_per_step / len(self.examples), 4),
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            # a plug-in's rewards are not right or wrong: no accuracy
            "accuracy": float(torch.tensor(cat["correct"], dtype=torch.float32).mean()) if cat["correct"] else None,
            "reward_errors": sum(x for p in parts for x in p["reward_errors"]),
            "frac_same_reward_groups": float(np.mean(cat["same"])),
            "completion_len_mean": float(lengths.mean()),
            "completion_len_max": int(lengths.max()),
            "frac_truncated": 1.0 - float(np.mean(cat["stopped"])),
            "loss": shared["loss"],
            "grad_norm": shared["grad_norm"],
            "lr": shared["lr"],
            "skipped_nonfinite": 0 if shared["finite"] else 1,
            "nonfinite_total": self.nonfinite_total,
            "time_generate": t_gen,
            "time_grade": shared["time_grade"],
            "time_update": shared["time_update"],
            "time_sync": shared["time_sync"],
            "time_step": shared["time_step"],
            "gen_tokens": gen_tokens,
            "tokens_per_second": gen_tokens / t_gen if t_gen > 0 else None,
        }
        if shared["kl"] is not None:
            m["kl"] = shared["kl"]
        if getattr(self, "_state_bytes", None) is None and self.optimizer.state:  # fixed once state exists
            self._state_bytes = training_state_bytes(self.trainable.params, self.optimizer)
        m["state_bytes_per_process"] = getattr(self, "_state_bytes", None)
        if self.acc.device.type == "cuda":
            m["gpu_memory_peak_bytes"] = int(torch.cuda.max_memory_allocated(self.acc.device))
        if self.trainable.steering is not None:
            norms = self.trainable.steering.vectors.detach().norm(dim=-1)
            m["vector_norms"] = [round(float(x), 6) for x in norms]
        return m

    # -- persistence ---------------------------------------------------------------------------
    def _trainer_state(self, step: int) -> dict[str, Any]:
        return {
            "total_steps": self.total_steps,
            "seed": self.s.train.seed,
            "prompts_per_step": self.s.train.prompts_per_step,
            "data_size": len(self.examples),
            "data_fingerprint": self.data_fingerprint,
            "data_counts": self.data_counts,
            "data_position": step * self.s.train.prompts_per_step,
            "nonfinite_total": self.nonfinite_total,
            "consecutive_nonfinite": self.consecutive_nonfinite,
        }

    def _gathered(self, optimizer: bool) -> tuple[Any, Any]:
        """Whole weights (and optimizer state) of a sharded model; every process must call this."""
        if not self.fsdp:
            return None, None

        model_state = full_state_dict(self.trainable.model)
        optim_state = optimizer_state(self.trainable.model, self.optimizer) if optimizer else None
        return model_state, optim_state

    def _save(self, step: int) -> None:
        model_state, optim_state = self._gathered(optimizer=True)
        if self.main:
            save_checkpoint(self.out_dir, step, self.trainable, self.optimizer, self.scheduler,
                            self._trainer_state(step), vectors_meta=self.vectors_meta(step),
                            tokenizer=self.tokenizer, model_state=model_state, optimizer_state=optim_state)
            prune_checkpoints(self.out_dir, self.s.train.keep_last)
        self.acc.wait_for_everyone()

    def _save_final(self, step: int) -> Path:
        final = self.out_dir / "final"
        model_state, _ = self._gathered(optimizer=False)
        if self.main:
            save_final(self.out_dir, step, self.trainable, self._trainer_state(step),
                       vectors_meta=self.vectors_meta(step), tokenizer=self.tokenizer, model_state=model_state)
        self.acc.wait_for_everyone()
        return final

    def _resume(self) -> int:
        if self.main:
            remove_partial_checkpoints(self.out_dir)
        ckpt = latest_checkpoint(self.out_dir)
        assert ckpt is not None  # check_output_dir made sure (self.continues)
        state = load_checkpoint(ckpt, self.trainable, self.optimizer, self.scheduler, sharded=self.fsdp,
                                main=self.main)
        if state.get("data_fingerprint") != self.data_fingerprint:
            raise SteerError(
                f"--resume: the training problems differ from those of the run in {self.out_dir} "
                "(another dataset file or limit?); resume with the same data"
            )
        self.nonfinite_total = state.get("nonfinite_total", 0)
        self.consecutive_nonfinite = state.get("consecutive_nonfinite", 0)
        step = int(state["step"])
        if self.main:
            truncate_metrics(self.out_dir / "metrics.jsonl", step)
        return step

    # -- main ----------------------------------------------------------------------------------
    def run(self) -> Path | None:
        with contextlib.ExitStack() as stack:
            self._stack = stack  # holds the output directory's lock until the run has ended
            return self._run()

    def _run(self) -> Path | None:
        self._setup()
        self.nonfinite_total = 0
        self.consecutive_nonfinite = 0
        start = self._resume() if self.continues else 0
        self._saved_step = start  # the state after this many steps is on disk (or is the start)
        if self.s.train.trackers:
            self.acc.init_trackers("steer", config=tracker_config(self.s))
        display = Display(self.total_steps, start, enabled=self.main, out_dir=self.out_dir,
                          info=self._describe())
        metrics_path = self.out_dir / "metrics.jsonl"
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
                        self.optimizer.zero_grad(set_to_none=True)
                        self._stop_at(step, dropped=True)
                    if self.main:
                        append_jsonl(metrics_path, metrics)
                        if self.s.train.trackers:
                            self.acc.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                         step=step + 1)
                    display.update(metrics)
                    done = step + 1
                    if done % self.save_every == 0 and done < self.total_steps:
                        self._save(done)
                        self._saved_step = done
                # A signal now changes nothing: final/ is written (the deadline still holds).
                final = self._save_final(self.total_steps)
        finally:
            display.close()
            close = getattr(self.backend, "close", None) if hasattr(self, "backend") else None
            if close:
                # A scheduler's signal may have ended a vLLM engine's processes already.
                with contextlib.suppress(Exception) if self.stop.requested else contextlib.nullcontext():
                    close()
            if self.s.train.trackers:
                self.acc.end_training()
        return final if self.main else None

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
        """Save the state after ``done`` steps (unless it is on disk already) and stop."""
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
        return (f"{self.s.model.name} · {self.s.setup.kind} ({t.num_trainable:,} trainable) · "
                f"{len(self.examples)} problems{dropped} · {self.total_steps} steps x {self.s.train.prompts_per_step} "
                f"prompts x {self.s.rollout.num_generations} samples · {self.world} process(es) · {self.out_dir}")


def tracker_config(s: Settings) -> dict[str, Any]:
    """The settings as trackers' hyperparameters: dotted keys and scalar values (TensorBoard's hparams
    take numbers, strings and booleans only; lists become their JSON text, None is left out by it)."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flatten(s.to_dict()).items()}


def train(settings: Settings) -> Path | None:
    """Run ``steer train``; returns the ``final/`` directory (None on processes other than the main one)."""
    return Trainer(settings).run()
