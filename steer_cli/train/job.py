"""The runs of one ``steer train`` job: what each run owns, and how their vectors share one model.

A job trains K >= 1 runs over one copy of the base model. Everything heavy (weights, the rollout
engine, every batch) is the job's; a run owns its settings and directory, its vectors (one
``[num_layers, hidden]`` float32 parameter), AdamW state, learning-rate schedule, data order,
sampling seeds, counters and metrics. With the hf backend the shared hooks steer every row of a
batch by its own run's vectors (a vector bank, ``patching.steering``), in generation and in the
update, whose backward gives each run its own gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from steer_cli.patching.setups import Trainable
from steer_cli.patching.steering import SteeringHandle
from steer_cli.rollout.base import SampleRequest
from steer_cli.rollout.hf import chunk_seed
from steer_cli.settings import Settings
from steer_cli.train.checkpoint import ResumePoint


@dataclass
class RunState:
    """One run of a job."""

    index: int
    s: Settings
    out_dir: Path
    name: str
    resume_point: Optional[ResumePoint] = None
    trainable: Any = None  # the run's own view: for steering, its vectors on a hookless handle
    optimizer: Any = None
    scheduler: Any = None
    order: Any = None
    nonfinite_total: int = 0
    consecutive_nonfinite: int = 0
    state_bytes: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def continues(self) -> bool:
        return self.resume_point is not None and self.resume_point.checkpoint is not None

    @property
    def params(self) -> list[nn.Parameter]:
        return self.trainable.params

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"


def run_view(shared: Trainable, vectors: Optional[torch.Tensor], layers: Optional[Sequence[int]]) -> Trainable:
    """A run's own steering parameters over the job's model: a float32 ``[num_layers, hidden]``
    parameter (its starting vectors, or zeros) on a handle without hooks, so that saving,
    loading and the optimizer see one ordinary steering run. The job's hooks read it through
    the bank."""
    handle = shared.steering
    assert handle is not None
    if vectors is None:
        data = torch.zeros_like(handle.vectors, dtype=torch.float32)
    else:
        data = vectors.detach().to(device=handle.vectors.device, dtype=torch.float32).clone()
    param = nn.Parameter(data, requires_grad=True)
    own = tuple(sorted(set(int(i) for i in layers))) if layers else tuple(range(handle.num_layers))
    view = SteeringHandle(shared.model, handle.located, param, own, handle.place)  # no hooks installed
    return Trainable("steering", shared.model, [param], steering=view,
                     info={"layers": list(own), "place": handle.place}, autocast_dtype=shared.autocast_dtype)


def bank_of(runs: Sequence[RunState]) -> tuple[torch.Tensor, torch.Tensor]:
    """The runs' vectors as a ``[K, num_layers, hidden]`` bank and the ``[K, num_layers]`` mask of
    the layers each run steers (its other rows, such as starting vectors outside its layers, are
    never added, as a single run's hooks exist only on its layers)."""
    bank = torch.stack([r.trainable.steering.vectors.detach() for r in runs])
    mask = torch.zeros(bank.shape[:2], dtype=torch.bool, device=bank.device)
    for k, r in enumerate(runs):
        mask[k, list(r.trainable.steering.layers)] = True
    return bank, mask


def masked_vectors(run: RunState) -> torch.Tensor:
    """The run's vectors with the rows of layers it does not steer zeroed (what a vLLM engine,
    which adds every row, must hold)."""
    handle = run.trainable.steering
    out = torch.zeros_like(handle.vectors.detach())
    rows = list(handle.layers)
    out[rows] = handle.vectors.detach()[rows]
    return out


def rollout_requests(prompts: Sequence[Sequence[int]], budgets: Sequence[int], n: int, seed: int,
                     first_index: int, group_offset: int) -> list[SampleRequest]:
    """The step's samples of one run as independent requests: sample ``j`` of the run's global
    prompt ``first_index + i`` seeded by (step seed, its global row), so it depends on nothing
    else in its batch or process (``HFBackend.stream_samples``)."""
    return [SampleRequest(tuple(p), chunk_seed(seed, (first_index + i) * n + j), int(budgets[i]),
                          group=group_offset + i)
            for i, p in enumerate(prompts) for j in range(n)]
