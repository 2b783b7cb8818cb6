"""The typed settings object shared by every subcommand.

Defaults live here and nowhere else. A run's settings are built in layers, lowest first:

    defaults (this file) < preset (YAML) < --config FILE.yaml < --set key=value and flags

Every layer is a nested dict; ``build_settings`` merges them, remembers which layer set each key,
and validates the result, reporting every problem at once with the key and the flag or file at
fault. ``Settings.to_yaml`` writes the fully resolved settings into each output directory, and
``load_settings_file`` reads them back.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from steer_cli.errors import SteerError
from steer_cli.patching.strength import parse_layer_spec, parse_scales

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(_Group):
    name: str = Field("demo", description="Base model: hub id, local directory, short name (e.g. Qwen2.5-Math-7B), or 'demo'.")
    revision: Optional[str] = Field(None, description="Hub revision (branch, tag or commit) of the model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Compute dtype; auto = the checkpoint's bfloat16/float16 or else bfloat16 on GPU, float32 on CPU.")
    trust_remote_code: bool = Field(False, description="Allow custom model code from the hub (off unless you ask).")
    attn_implementation: Optional[str] = Field(None, description="transformers attention kernel (eager, sdpa, flash_attention_2).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")


class DataSettings(_Group):
    dataset: str = Field("demo", description="Training set: deepscaler, gsm8k, math, demo, a local .jsonl/.json/.parquet, or a hub id.")
    data_dir: Optional[str] = Field(None, description="Directory with <name>/train.jsonl files used before the hub.")
    split: str = Field("train", description="Split to read from a hub dataset.")
    problem_field: Optional[str] = Field(None, description="Field holding the problem text (default: guessed).")
    answer_field: Optional[str] = Field(None, description="Field holding the gold answer (default: guessed).")
    answer_format: Optional[Literal["plain", "gsm8k", "boxed_in", "list"]] = Field(None, description="How to read the answer field: plain, gsm8k ('#### x'), boxed_in (last \\boxed{}), list.")
    max_prompt_tokens: Optional[int] = Field(None, gt=0, description="Drop problems whose rendered prompt is longer than this.")
    limit: Optional[int] = Field(None, gt=0, description="Use only the first N problems.")
    shuffle: bool = Field(True, description="Shuffle the training set with the run's seed.")


class PromptSettings(_Group):
    template: Literal["qwen_math", "chat", "r1", "plain", "custom"] = Field("qwen_math", description="Prompt template: qwen_math (chat template, else text), chat, r1, plain, custom.")
    system_prompt: Optional[str] = Field(SYSTEM_PROMPT, description="System message for chat templates.")
    format: Optional[str] = Field(None, description="Prompt text with {problem} for the custom template.")
    append_to: bool = Field(False, description="Append 'To' after the generation prompt (reference-code option).")
    prefill: Optional[str] = Field(None, description="Text appended after the generation prompt, as tokens of its own: the model continues from it (the reference's 'append To' is --prefill To). One token unless prompt.prefill_multi_token.")
    prefill_multi_token: bool = Field(False, description="Allow a prefill of more than one token.")
    stop: list[str] = Field(default_factory=list, description="Stop tokens ending a completion, besides the tokenizer's and the model's EOS.")


class SteeringSettings(_Group):
    place: Literal["layer_output", "down_proj_bias", "attn_input", "attn_output", "mlp_input", "mlp_output"] = Field("layer_output", description="Where the vector is added in each layer: layer_output (end of the decoder layer), down_proj_bias (the MLP down_proj output), mlp_output / attn_output (a block's output, before the residual add), mlp_input / attn_input (a block's input after its norm; the residual stream is untouched).")
    layers: Optional[list[int]] = Field(None, description="Steer only these layer indices (default: all).")
    init_vectors: Optional[str] = Field(None, description="Start from this vectors file instead of zeros.")


class LoraSettings(_Group):
    rank: int = Field(4, gt=0, description="LoRA rank.")
    alpha: float = Field(4.0, gt=0, description="LoRA alpha (scaling = alpha / rank).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    init: Literal["default", "pissa"] = Field("default", description="LoRA initialisation: peft default or PiSSA.")
    target: str = Field("down_proj", description="Module adapted: the MLP down projection ('down_proj').")


class SetupSettings(_Group):
    kind: Literal["steering", "lora", "full"] = Field("steering", description="What trains: steering vectors, a LoRA on down_proj, or all weights.")
    steering: SteeringSettings = Field(default_factory=SteeringSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)


class VLLMSettings(_Group):
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="Share of GPU memory (RAM on CPU) the vLLM engine may take.")
    tensor_parallel_size: int = Field(1, gt=0, description="vLLM tensor-parallel size.")
    enforce_eager: bool = Field(False, description="Disable vLLM's compilation and CUDA graphs.")
    max_model_len: Optional[int] = Field(None, gt=0, description="vLLM context length (default: prompt + completion budget).")
    kv_cache_memory_bytes: Optional[int] = Field(None, gt=0, description="KV-cache size in bytes, instead of a memory share (useful on CPU).")


class RolloutSettings(_Group):
    backend: Literal["hf", "vllm"] = Field("hf", description="Generation backend: hf (transformers generate) or vllm.")
    num_generations: int = Field(16, gt=0, description="Completions sampled per prompt (the RLOO group size).")
    max_new_tokens: int = Field(1024, gt=0, description="Completion budget in tokens.")
    max_seq_length: Optional[int] = Field(None, gt=0, description="Prompt + completion cap; each prompt's budget is min(max_new_tokens, this - its length).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    top_k: int = Field(-1, ge=-1, description="Top-k sampling (-1 = off).")
    batch_prompts: int = Field(8, gt=0, description="Prompts per generate call (hf backend).")
    vllm: VLLMSettings = Field(default_factory=VLLMSettings)


class TrainSettings(_Group):
    prompts_per_step: int = Field(16, gt=0, description="Problems per optimizer step, across all processes.")
    max_steps: Optional[int] = Field(None, gt=0, description="Optimizer steps (default: epochs x problems / prompts_per_step).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training set when max_steps is not set.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    schedule: Literal["constant_with_warmup", "constant", "linear", "cosine"] = Field("constant_with_warmup", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: Optional[float] = Field(2.0, gt=0, description="Gradient clipping norm (null = off).")
    advantage: Literal["rloo", "mean", "mean_std"] = Field("rloo", description="Advantage: rloo (leave-one-out), mean (group mean), mean_std (GRPO).")
    reward: str = Field("math", description="Reward: math (math-verify), exact (normalised string equality with the answer), or a plug-in path/to/file.py:function or package.module:function (called as fn(completions, answers, rows), returning one float per completion, the reward itself).")
    reward_sha256: Optional[str] = Field(None, description="SHA-256 of a plug-in reward's source file; steer train records it at start, and --resume refuses a changed file.")
    reward_correct: float = Field(1.0, description="Reward of a correct completion (math, exact).")
    reward_wrong: float = Field(-1.0, description="Reward of a wrong completion (math, exact; the reference uses -1; 0 is common), and of a plug-in call that fails or overruns.")
    kl_coef: float = Field(0.0, ge=0, description="Coefficient of the per-token k3 KL to the base policy.")
    kl_reference_offload: bool = Field(False, description="Full fine-tuning with KL: keep the frozen reference copy in CPU memory, on the device only for its pass.")
    micro_batch_size: int = Field(4, gt=0, description="Sequences per forward/backward pass (gradient accumulation beyond).")
    logprob_chunk_tokens: int = Field(1024, ge=0, description="Tokens per chunk of the log-softmax over the vocabulary (bounds logits memory; 0 = all at once).")
    seed: int = Field(0, ge=0, description="Seed for data order, sampling and initialisation.")
    save_every: Optional[int] = Field(None, gt=0, description="Checkpoint every N steps (default: a sixth of the run).")
    keep_last: int = Field(5, gt=0, description="Checkpoints kept (older ones are deleted).")
    preempt_save_timeout: float = Field(120.0, gt=0, description="Seconds from SIGTERM/SIGUSR1 to exit: the step in flight is finished or dropped and a checkpoint written; past them the run exits at once, keeping the previous checkpoint (exit code 75 either way; also bounds steer eval's exit).")
    max_nonfinite_steps: int = Field(3, gt=0, description="Stop after this many non-finite updates in a row.")
    grader_workers: int = Field(2, ge=0, description="Grading worker processes (0 = grade in-process).")
    grade_timeout: float = Field(10.0, gt=0, description="Hard time limit in seconds to grade one completion.")
    grade_truncated_box: bool = Field(False, description="Grade the last complete \\boxed{} when the last one never closes (cut-off output); the reference counts it wrong.")
    grade_lenient_boxes: bool = Field(False, description="Read malformed answer boxes leniently, as steer did before (the reward and eval): \\boxed 5, \\boxed {5} and \\fbox{5} count, escaped braces are skipped when matching, \\boxedx is passed over, an r1 <answer> holding a box is read through it. Off: as the reference, which grades all of these wrong.")
    fsdp: bool = Field(False, description="Shard weights, gradients and optimizer state across processes with FSDP2 (setup full; launch with torchrun or accelerate).")
    master_float32: bool = Field(True, description="Setup full in bfloat16/float16: keep float32 master weights and run the forward in model.dtype (off: update the low-precision weights, losing steps below their resolution).")
    trackers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list, description="Extra loggers through accelerate (tensorboard, wandb).")


class EvalSettings(_Group):
    benchmarks: list[str] = Field(default_factory=lambda: ["paper"], description="Benchmarks: names, 'paper' (the paper's six) or 'all'.")
    data_dir: Optional[str] = Field(None, description="Directory with <benchmark>/test.jsonl files (default: the hub).")
    samples: Optional[int] = Field(None, gt=0, description="Samples per problem (default: 32 for AIME/AMC, 1 otherwise).")
    temperature: Optional[float] = Field(None, ge=0, description="Sampling temperature (default: 0 for a base model, 1.0 for a trained one).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    seeds: list[int] = Field(default_factory=lambda: [0], description="Evaluation seeds; results are reported as mean ± std.")
    limit: Optional[int] = Field(None, gt=0, description="Evaluate only N problems of each benchmark: the first N, or N drawn at random with eval.subset_seed.")
    subset_seed: Optional[int] = Field(None, ge=0, description="With eval.limit: draw the N problems at random with this seed, as the reference draws its 500 GSM8K test problems (numpy default_rng(seed).choice, no repeats), instead of taking the first N.")
    max_new_tokens: Optional[int] = Field(None, gt=0, description="Completion budget cap (default: each prompt gets the rest of eval.max_seq_length; rollout.max_new_tokens when that is unset too).")
    max_seq_length: Optional[int] = Field(None, gt=0, description="Prompt + completion context per prompt (the paper: 4096 for Qwen-Math/OLMo, 32768 others).")
    mean_k: int = Field(8, gt=0, description="k of the mean@k metric (the appendix's mean@8).")
    shard_samples: int = Field(32, gt=0, description="Samples per unit of work (whole problems: one AIME problem with 32 samples, or 32 single-sample problems); units are dealt to processes and kept when a run is cut short.")
    pool_cells: int = Field(8, gt=0, description="hf backend: how many targets (study grid cells) that differ only in their vectors, scale or layers are generated together, every row steered by its own target's vectors (the same samples as one at a time); 1: one target at a time.")
    pool_rows: int = Field(64, gt=0, description="hf backend: pooled targets fill a generation batch up to this many rows, and never beyond one target's own batch (rollout.batch_prompts problems x samples) where that is larger: pooling pays where batches are small and never raises memory above one target's batch of max(pool_rows, its own) rows.")
    reward: Optional[str] = Field(None, description="Also score every sample with this reward (math, exact, file.py:fn, pkg.module:fn) and report its mean beside accuracy.")
    checkpoints: list[str] = Field(default_factory=lambda: ["final"], description="Checkpoints of a training run to evaluate, each into its own directory: final (its final/, else its latest checkpoint), all (every checkpoint-N/ and final/), or steps N,M,... (checkpoint-N/, or final/ where it holds step N; 'final' may be listed too).")

    @field_validator("checkpoints", mode="before")
    @classmethod
    def _checkpoints(cls, value: Any) -> Any:
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            value = [v.strip() for v in str(value).split(",")]
        if not isinstance(value, (list, tuple)):
            return value
        items = [str(v).strip() for v in value]
        bad = [v for v in items if v not in ("final", "all") and not v.isdigit()]
        if bad or not items:
            raise ValueError(f"expected final, all, or checkpoint steps N,M,... (got {bad[0] if bad else 'nothing'!r})")
        if "all" in items and len(items) > 1:
            raise ValueError("'all' already names every checkpoint; give it alone")
        return list(dict.fromkeys(v if not v.isdigit() else str(int(v)) for v in items))


def _layer_list(value: Any) -> Any:
    if value is None or isinstance(value, (list, tuple)):
        return value

    try:
        return parse_layer_spec(value, "inference.layers")
    except SteerError as err:
        raise ValueError(str(err)) from None


class InferenceSettings(_Group):
    scale: list[float] = Field(default_factory=lambda: [1.0], description="Strength of trained vectors at inference (eval, generate): a factor on each vector; a list runs a sweep (--scale 0,0.5,1).")
    layers: Optional[list[int]] = Field(None, description="Apply trained vectors only on these layers at inference (--layers 0-10,17; default: every steered layer).")

    @field_validator("scale", mode="before")
    @classmethod
    def _scales(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        try:
            return parse_scales(value)
        except SteerError as err:
            raise ValueError(str(err)) from None

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        return _layer_list(value)


class GenerateSettings(_Group):
    prompts: list[str] = Field(default_factory=list, description="Prompts to complete (default: a few problems of the run's dataset).")
    file: Optional[str] = Field(None, description="File of prompts: one per line, or JSONL with a problem/prompt/question field.")
    num_prompts: int = Field(3, gt=0, description="How many problems of the run's dataset to take when no prompt is given.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    seed: int = Field(0, ge=0, description="Sampling seed.")
    max_new_tokens: int = Field(256, gt=0, description="Completion budget in tokens.")


class TunedLensSettings(_Group):
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the translators (the reference: 1e-3).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (pulls W toward 0, the identity translator).")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of the updates with a linear warm-up; linear decay to 0 after.")
    sequences_per_step: int = Field(32, gt=0, description="Sequences per update (batch 1, gradient accumulation; the reference: 32).")
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="Clip each translator's gradient to this norm (null = off).")
    epochs: int = Field(1, gt=0, description="Passes over the training sequences (the reference: 1).")
    seed: int = Field(0, ge=0, description="Seed of the data order, the problems taken and sampling.")
    prompts: int = Field(1024, gt=0, description="Problems of the dataset (data.*) the model completes for training data when no --data is given.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of those completions (0 = greedy, the reference's deepscaler_greedy).")
    max_new_tokens: Optional[int] = Field(None, gt=0, description="Completion budget of those completions (default: the rollout's, rollout.max_new_tokens capped by rollout.max_seq_length).")
    max_seq_length: Optional[int] = Field(4096, gt=1, description="Cut training sequences to this many tokens (the reference: 4096).")
    eval_sequences: int = Field(256, gt=0, description="Sequences of the eval KL when no --eval-data is given (the first training ones, as the reference).")
    position_chunk: int = Field(1024, gt=0, description="Positions per chunk of the vocabulary-wide KL (bounds memory).")
    save_every: int = Field(20, ge=0, description="Updates between resumable states in partial/ (0 = none).")


class LensSettings(_Group):
    tuned: TunedLensSettings = Field(default_factory=TunedLensSettings)


class StudySeedsSettings(_Group):
    axis_removal: bool = Field(True, description="Greedy axis removal per layer (how few coordinates carry the shared direction).")
    null: bool = Field(True, description="Also remove axes from a pair with the second vector's coordinates shuffled: the chance level.")
    thresholds: list[float] = Field(default_factory=lambda: [0.9, 0.99], description="Cosines at which the coordinates left are reported.")
    curve_points: int = Field(64, gt=1, description="Points of each axis-removal curve kept in study.json (log-spaced).")
    kept_coordinates: int = Field(16, ge=0, description="Coordinates standing last in the removal, listed per layer.")
    seed: int = Field(0, ge=0, description="Seed of the shuffled null.")


class StudyAdaptiveSettings(_Group):
    prompts: int = Field(100, gt=0, description="Problems of the dataset (data.*, shuffled with study.adaptive.seed) each adapter completes (the reference: 100).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the completions (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    max_new_tokens: Optional[int] = Field(None, gt=0, description="Completion budget in tokens (default: the rollout's, rollout.max_new_tokens capped by rollout.max_seq_length).")
    seed: int = Field(0, ge=0, description="Seed of the problem order and of sampling.")
    plot_samples: int = Field(1, ge=0, description="Problems drawn token by token (layers x tokens, prompt segments marked).")
    top_tokens: int = Field(10, ge=0, description="Tokens with the largest mean magnitude listed per layer.")


class _StudyForcedSettings(_Group):
    """Sampling and teacher forcing shared by the token-level studies (tokens, patch, persistence)."""

    prompts: int = Field(256, gt=0, description="Problems of the training set (data.*, shuffled with the study's seed) that get one sampled completion each.")
    seed: int = Field(0, ge=0, description="Seed of the problem order and of sampling (each completion has its own seed from it).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the completions, and of the compared distributions softmax(logits / T) (0: greedy completions, T = 1 distributions).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold of the completions.")
    max_new_tokens: Optional[int] = Field(None, gt=0, description="Completion budget in tokens (default: rollout.max_new_tokens of the run).")
    batch: int = Field(8, gt=0, description="Sequences per generate call and per teacher-forced pass.")


class StudyTokensSettings(_StudyForcedSettings):
    against: str = Field("base", description="What the vectors are compared with: 'base' (no vectors) or a second vectors file.")
    token: Optional[str] = Field(None, description="Token whose probability change is followed (one token of the tokenizer, e.g. 'To'); default: the one the vectors promote most at the first generated position.")
    top_k: int = Field(5, gt=0, description="Most promoted and most suppressed tokens kept per position.")
    first_positions: int = Field(32, gt=0, description="Generation positions with their own KL entry (KL by position).")
    summary_tokens: int = Field(20, gt=0, description="Tokens listed by mean probability change, at the first position and the rest.")


class StudyPatchSettings(_StudyForcedSettings):
    source_layer: Optional[int] = Field(None, ge=0, description="Layer whose vector is studied; the patched layer is the next one (default: the penultimate layer, L-2).")
    modes: list[str] = Field(default_factory=lambda: ["no-patch", "base", "skip-attn", "skip-layer", "skip-head", "steer-head"], description="Patch modes: no-patch, base, skip-attn, skip-layer, skip-head, steer-head, skip-q/k/v, steer-q/k/v.")
    heads: Optional[str] = Field(None, description="Heads of the head modes: indices, groups such as 0+1, 'all' (every head at once), 'each' (default: each head alone).")
    paths: list[str] = Field(default_factory=lambda: ["all"], description="Where a patched attention output goes (skip-head, steer-head): all, residual, mlp.")
    metric: Literal["kl", "accuracy"] = Field("kl", description="kl: teacher-forced KL to the reference per position (cheap); accuracy: generation on eval.* benchmarks, one eval per patch.")
    reference: str = Field("no-patch", description="The patch the KL is measured against (KL(reference || patch)).")
    top_k: int = Field(5, gt=0, description="Most promoted and most suppressed tokens kept per position (metric kl).")
    summary_tokens: int = Field(20, gt=0, description="Tokens listed per patch by mean probability change against the reference (metric kl).")


class StudyPersistenceSettings(_StudyForcedSettings):
    prompts: int = Field(100, gt=0, description="Problems of the training set (data.*, shuffled with the study's seed); each gets one completion per injection layer.")
    layers: Optional[list[int]] = Field(None, description="Injection layers i (default: every layer whose row of the merged file is non-zero).")
    positions: Literal["all", "generated"] = Field("all", description="Positions averaged: every teacher-forced position (the reference) or the generated ones only.")
    lens_top_k: int = Field(20, gt=0, description="Tokens listed per injection layer in the logit lens of the last-layer differences.")

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        return _layer_list(value)


class StudySettings(_Group):
    """One sub-group per `steer study` experiment."""

    seeds: StudySeedsSettings = Field(default_factory=StudySeedsSettings)
    adaptive: StudyAdaptiveSettings = Field(default_factory=StudyAdaptiveSettings)
    tokens: StudyTokensSettings = Field(default_factory=StudyTokensSettings)
    patch: StudyPatchSettings = Field(default_factory=StudyPatchSettings)
    persistence: StudyPersistenceSettings = Field(default_factory=StudyPersistenceSettings)


class OutputSettings(_Group):
    output_dir: Optional[str] = Field(None, description="Output directory (default: runs/<model>/<dataset>/<setup>/seed-<s>).")
    runs_dir: str = Field("runs", description="Root of default output directories and of the most-recent-run lookup.")
    overwrite: bool = Field(False, description="Replace an existing output directory.")
    resume: bool = Field(False, description="Continue from the latest checkpoint in the output directory.")


class Settings(_Group):
    """Everything a steer command needs; each command reads the groups it uses."""

    preset: Optional[str] = Field(None, description="Preset the settings started from.")
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    prompt: PromptSettings = Field(default_factory=PromptSettings)
    setup: SetupSettings = Field(default_factory=SetupSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    generate: GenerateSettings = Field(default_factory=GenerateSettings)
    lens: LensSettings = Field(default_factory=LensSettings)
    study: StudySettings = Field(default_factory=StudySettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    # Which layer set each key ("default", "preset ...", "--lr", ...), for error messages.
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# Keys that say how a run is carried out, not what it computes: resuming with other values is fine.
RUNTIME_KEYS = frozenset({
    "preset", "output.output_dir", "output.runs_dir", "output.overwrite", "output.resume",
    "train.grader_workers", "train.grade_timeout", "train.trackers", "train.save_every",
    "train.keep_last", "train.preempt_save_timeout", "train.max_steps", "rollout.vllm.gpu_memory_utilization",
    "rollout.vllm.tensor_parallel_size", "rollout.vllm.kv_cache_memory_bytes", "rollout.vllm.enforce_eager",
    "rollout.backend", "rollout.batch_prompts", "train.micro_batch_size", "train.logprob_chunk_tokens",
    "train.kl_reference_offload",
    "eval", "inference", "generate", "data.data_dir", "study", "lens",
})


# ---------------------------------------------------------------------------- field introspection

def field_doc(key: str) -> str:
    """The one-line description of a dotted settings key (shown in --help)."""
    model: Any = Settings
    parts = key.split(".")
    for i, part in enumerate(parts):
        info = model.model_fields[part]
        if i == len(parts) - 1:
            return info.description or ""
        model = info.annotation
    return ""


def field_default(key: str) -> Any:
    value: Any = Settings()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def all_keys(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """Every leaf key of the settings tree, dotted."""
    keys = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(all_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _group_keys(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    keys = set()
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.add(f"{prefix}{name}")
            keys |= _group_keys(ann, f"{prefix}{name}.")
    return keys


# ---------------------------------------------------------------------------- layering

class Layer:
    """One source of settings: a nested dict plus a label for each key saying where it came from."""

    def __init__(self, values: dict[str, Any], origin: str, key_origins: dict[str, str] | None = None):
        self.values = values
        self.origin = origin
        self.key_origins = key_origins or {}

    def origin_of(self, key: str) -> str:
        return self.key_origins.get(key, self.origin)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted key: value}; settings groups are descended, other dicts kept whole."""
    groups = _group_keys()
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and full in groups:
            flat.update(flatten(value, f"{full}."))
        else:
            flat[full] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def parse_set(assignments: list[str], origin: str = "--set") -> Layer:
    """``--set a.b=value`` pairs; values are parsed as YAML (numbers, bools, lists, null)."""
    flat: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for item in assignments:
        if "=" not in item:
            raise SteerError(f"--set expects key=value (e.g. --set train.lr=1e-3), got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        flat[key] = value
        origins[key] = f"--set {key}={raw}"
    return Layer(unflatten(flat), origin, origins)


def flags_layer(flags: dict[str, Any], flag_names: dict[str, str]) -> Layer:
    """Command-line flags given as {dotted key: value}; None means 'not given' and is dropped."""
    given = {k: v for k, v in flags.items() if v is not None}
    return Layer(unflatten(given), "flags", {k: flag_names.get(k, k) for k in given})


def read_yaml_file(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.exists():
        raise SteerError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SteerError(f"{what} {path} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SteerError(f"cannot read {what} {path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SteerError(f"{what} {path} must hold a mapping of settings groups, not {type(data).__name__}")
    return data


def config_layer(path: str | Path) -> Layer:
    return Layer(read_yaml_file(path, "config file"), f"config file {path}")


def build_settings(layers: list[Layer]) -> Settings:
    """Merge layers (later wins) and validate. All problems are reported in one SteerError."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    problems: list[str] = []
    known = set(all_keys())
    groups = _group_keys()
    for layer in layers:
        for key, value in flatten(layer.values).items():
            if key not in known:
                if key in groups:
                    problems.append(f"{key} ({layer.origin_of(key)}): is a settings group, expected a mapping")
                    continue
                hint = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                tail = f"; did you mean {hint[0]}?" if hint else "; see `steer train --help` for settings"
                problems.append(f"unknown setting {key} ({layer.origin_of(key)}){tail}")
                continue
            merged[key] = value
            origins[key] = layer.origin_of(key)
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(unflatten(merged))
    except ValidationError as err:
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"] if not isinstance(p, int))
            origin = origins.get(key, "default")
            value = merged.get(key, "<missing>")
            problems.append(f"{key} = {value!r} ({origin}): {e['msg']}")
    if problems:
        raise SteerError(_format_problems(problems))
    assert settings is not None
    settings._origins = origins
    return settings


def _format_problems(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"invalid settings: {problems[0]}"
    return "invalid settings:\n  " + "\n  ".join(problems)


def origin_of(settings: Settings, key: str) -> str:
    return settings._origins.get(key, "default")


def load_settings_file(path: str | Path) -> Settings:
    """Reload the settings.yaml written into an output directory."""
    data = read_yaml_file(path, "settings file")
    return build_settings([Layer(data, f"settings file {path}")])


def diff_settings(a: Settings, b: Settings, *, ignore: frozenset[str] = RUNTIME_KEYS) -> list[tuple[str, Any, Any]]:
    """Keys whose values differ between two settings, skipping ``ignore`` keys and groups."""
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    out = []
    for key in sorted(set(fa) | set(fb)):
        if key in ignore or any(key.startswith(g + ".") for g in ignore):
            continue
        if fa.get(key) != fb.get(key):
            out.append((key, fa.get(key), fb.get(key)))
    return out
