"""``steer bench``: steering vs LoRA vs full fine-tuning cost, measured side by side in one run."""

from steer_cli.bench.config import BACKENDS, SETUPS, BenchConfig
from steer_cli.bench.memory import fit_scaling, measure_peak_memory
from steer_cli.bench.models import GEOMETRIES, RANDOM_MODELS, geometry_of, materialize_model, synthetic_config
from steer_cli.bench.run import TARGETS, check_targets, machine_info, ratios, run_bench, write_json
from steer_cli.bench.timing import (
    interleaved,
    interleaved_many,
    measure_vllm,
    optimizer_state_bytes,
    paired_ratio,
    paired_speed_ratio,
    synthetic_batch,
)

__all__ = [
    "BACKENDS", "SETUPS", "BenchConfig", "fit_scaling", "measure_peak_memory", "GEOMETRIES", "RANDOM_MODELS",
    "geometry_of", "materialize_model", "synthetic_config", "TARGETS", "check_targets", "machine_info", "ratios",
    "run_bench", "write_json", "interleaved", "interleaved_many", "measure_vllm", "optimizer_state_bytes", "paired_ratio",
    "paired_speed_ratio", "synthetic_batch",
]
