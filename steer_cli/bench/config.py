"""What ``steer bench`` measures and on what: one dataclass, the bench's own defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steer_cli.settings import TrainSettings

SETUPS = ("steering", "lora", "full")
BACKENDS = ("hf", "vllm", "none")


def _train_default(name: str) -> Any:
    """The trainer's own default for a setting the bench shares with it (one place for defaults)."""
    return TrainSettings.model_fields[name].default


@dataclass
class BenchConfig:
    model: str = "demo"
    setups: tuple[str, ...] = SETUPS
    backends: tuple[str, ...] = ("hf",)  # ("none",) or () measures no generation
    sequences: int = 8  # completions in the rollout batch
    prompt_len: int = 64
    completion_len: int = 192
    micro_batch_size: int = 1  # as the paper's DeepScaleR presets (train.micro_batch_size: 1)
    logprob_chunk_tokens: int = field(default_factory=lambda: _train_default("logprob_chunk_tokens"))
    repeats: int = 5
    warmup: int = 1
    timing: bool = True  # time the update steps (off: memory only, e.g. at real width on a CPU)
    gen_prompts: int = 4
    gen_tokens: int = 64
    gen_repeats: int = 9
    dtype: str = "auto"
    seed: int = 0
    lora_rank: int = 4
    memory: bool = True
    memory_updates: int = 2  # update steps of full in the memory probe (the second holds AdamW state too)
    # Peak memory also at these completion lengths / numbers of layers (synthetic models only for
    # layers); empty = completion_len and the model's own depth.
    memory_lengths: tuple[int, ...] = ()
    memory_layers: tuple[int, ...] = ()
    vllm_memory_utilization: float = 0.3
    vllm_enforce_eager: bool = False  # the real measurement keeps vLLM's compiled mode

    def generation_backends(self) -> tuple[str, ...]:
        return tuple(b for b in self.backends if b != "none")

    def problems(self) -> list[str]:
        """Every bad value, each naming its flag."""
        out = [f"--{name.replace('_', '-')} must be a positive integer (got {getattr(self, name)})"
               for name in ("sequences", "prompt_len", "completion_len", "micro_batch_size", "repeats")
               if getattr(self, name) < 1]
        if self.logprob_chunk_tokens < 0:
            out.append(f"--logprob-chunk-tokens must be 0 or more (got {self.logprob_chunk_tokens})")
        bad = [s for s in self.setups if s not in SETUPS]
        if bad or not self.setups:
            out.append(f"--setups: unknown or none {bad}; choose from {', '.join(SETUPS)}")
        bad = [b for b in self.backends if b not in BACKENDS]
        if bad:
            out.append(f"--backend: unknown {bad}; choose from {', '.join(BACKENDS)}")
        if "none" in self.backends and len(self.backends) > 1:
            out.append("--backend none measures no generation; do not combine it with hf or vllm")
        for name in ("memory_lengths", "memory_layers"):
            if any(int(x) < 1 for x in getattr(self, name)):
                out.append(f"--{name.replace('_', '-')} must be positive integers (got {list(getattr(self, name))})")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            out.append(f"--dtype must be auto, float32, bfloat16 or float16 (got {self.dtype})")
        return out
