"""How a target is evaluated (the paper's protocol, resolved from settings) and the identity of its
results: everything that changes its samples, compared when a re-run continues a directory."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from steer_cli.data.records import FieldMap
from steer_cli.errors import SteerError
from steer_cli.evaluate.benchmarks import BenchmarkData
from steer_cli.evaluate.targets import Target
from steer_cli.rewards.plugins import parse_reward, reward_sha256
from steer_cli.settings import Settings

if TYPE_CHECKING:
    from steer_cli.evaluate.models import LoadedVectors


@dataclass
class Protocol:
    """How one target is evaluated, fully resolved."""

    temperature: float
    top_p: float
    seeds: list[int]
    max_new_tokens: Optional[int]  # None: each prompt gets the rest of max_seq_length
    max_seq_length: Optional[int]
    samples_setting: Optional[int]
    mean_k: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def samples(self, bench: BenchmarkData) -> int:
        if self.greedy:
            return 1
        return self.samples_setting or bench.default_samples


def resolve_protocol(settings: Settings, target: Target) -> Protocol:
    e = settings.eval
    temperature = e.temperature if e.temperature is not None else (1.0 if target.trained else 0.0)
    seeds = list(dict.fromkeys(e.seeds))
    if not seeds:
        raise SteerError("no evaluation seeds; pass --seeds such as 0,1,2")
    if temperature == 0.0:
        seeds = seeds[:1]  # greedy decoding is deterministic: more seeds repeat the same answers
    # The paper evaluates in a context of eval.max_seq_length (4K Qwen2.5-Math/OLMo, 32K others):
    # each prompt may generate the rest of it. The training budget applies only when neither
    # eval.max_new_tokens nor eval.max_seq_length is set.
    max_new_tokens = e.max_new_tokens
    if max_new_tokens is None and e.max_seq_length is None:
        max_new_tokens = settings.rollout.max_new_tokens
    return Protocol(
        temperature=float(temperature), top_p=e.top_p, seeds=seeds, max_new_tokens=max_new_tokens,
        max_seq_length=e.max_seq_length, samples_setting=e.samples, mean_k=e.mean_k,
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identity(settings: Settings, target: Target, proto: Protocol, vectors: Optional["LoadedVectors"],
             fields: Optional[FieldMap]) -> dict[str, Any]:
    """Everything that changes a target's samples; a re-run into the same directory must match it.
    Not the number of processes, the shard size or the batch size: samples do not depend on them."""
    p = settings.prompt
    ident: dict[str, Any] = {
        "model": settings.model.name, "revision": settings.model.revision, "dtype": settings.model.dtype,
        "setup": target.setup,
        "vectors_sha256": vectors.sha256 if vectors else None,
        "vectors_layers": list(vectors.layers) if vectors and vectors.layers is not None else None,
        "vectors_place": vectors.place if vectors else None,
        "adapter_sha256": _adapter_hash(target.adapter) if target.adapter else None,
        "weights": str(target.weights.resolve()) if target.weights else None,
        "backend": settings.rollout.backend,
        "template": p.template, "system_prompt": p.system_prompt, "format": p.format,
        "append_to": p.append_to, "stop": list(p.stop),
        "temperature": proto.temperature, "top_p": proto.top_p if not proto.greedy else None,
        "samples": None if proto.greedy else proto.samples_setting,
        "grade_truncated_box": settings.train.grade_truncated_box,
        "limit": settings.eval.limit, "max_new_tokens": proto.max_new_tokens,
        "max_seq_length": proto.max_seq_length,
        "fields": fields.describe() if fields else None,
        # Sampled samples are drawn from per-sample seeds (evaluate.shards.sample_seed), not per batch:
        # results of older versions do not continue into a directory of these.
        "sampling": None if proto.greedy else "per-sample seeds",
    }
    # Added only when used, so earlier outputs (scale 1, every layer, no reward) still match.
    if target.scale != 1.0:
        ident["inference_scale"] = target.scale
    if target.layers is not None:
        ident["inference_layers"] = list(target.layers)
    if settings.eval.reward is not None:
        spec = parse_reward(settings.eval.reward)
        ident["reward"] = spec.text
        ident["reward_sha256"] = reward_sha256(spec)
    return ident


def _adapter_hash(adapter: Path) -> str:
    weights = adapter / "adapter_model.safetensors"
    if weights.is_file():
        return _sha256_file(weights)
    return str(adapter.resolve())
