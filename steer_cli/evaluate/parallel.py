"""Several processes evaluating together under ``torchrun`` / ``accelerate launch``: who is who
(from the launcher's environment), which GPUs each process takes, and agreement between them.

Processes coordinate through the launcher's key-value store (``torch.distributed.rendezvous``)
and never create a torch process group: vLLM builds its own torch.distributed world inside each
engine (in this process or in processes it forks), which a group of ours would confuse. The store
carries little: each phase's errors (so a bad input gives one error and exit 2 everywhere, nothing
written) and the main process's plan of the work. Results travel as files in the output directory,
which every process must see (on several nodes: a shared filesystem).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch.distributed import rendezvous

from steer_cli.errors import SteerError

# How long a process waits for the others to finish a checking phase (loading tokenizers and
# benchmark files, reading configs): minutes, not the hours generation may take.
PHASE_TIMEOUT = timedelta(minutes=30)


class ReportedByMain(SteerError):
    """A phase failed; the main process prints the error, the others only exit with code 2."""


@dataclass(frozen=True)
class Launch:
    """This process's place among those a launcher started (one process when not launched)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launch_from_env(env: Mapping[str, str] = os.environ) -> Launch:
    """The launcher's RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE (torchrun and accelerate set them)."""
    def number(name: str, default: int) -> int:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise SteerError(f"environment variable {name}={raw!r} is not a number; launch with torchrun "
                             "or accelerate launch, or unset it") from None

    world = number("WORLD_SIZE", 1)
    rank = number("RANK", 0)
    local_rank = number("LOCAL_RANK", 0)
    local_world = number("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise SteerError(f"inconsistent launch environment (RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}, "
                         f"LOCAL_WORLD_SIZE={local_world}); launch with torchrun or accelerate launch")
    return Launch(rank, world, local_rank, local_world)


def device_slice(visible: Sequence[str], local_rank: int, local_world: int, per_process: int) -> list[str]:
    """The GPUs (entries of CUDA_VISIBLE_DEVICES) of local process ``local_rank``: ``per_process``
    of them (vLLM's tensor-parallel size, 1 for hf), consecutive. Where each process already sees
    exactly its own, they are kept."""
    if len(visible) == per_process:
        return list(visible)
    need = local_world * per_process
    if len(visible) < need:
        raise SteerError(
            f"{local_world} processes on this node with {per_process} GPU(s) each need {need} GPUs, but "
            f"{len(visible)} are visible; launch --nproc_per_node {max(1, len(visible) // per_process)} or lower "
            "rollout.vllm.tensor_parallel_size")
    return list(visible[local_rank * per_process:(local_rank + 1) * per_process])


def bind_devices(launch: Launch, per_process: int) -> Optional[list[str]]:
    """Restrict this process to its own GPUs through CUDA_VISIBLE_DEVICES, before CUDA starts, so
    the hf model (cuda:0) and a vLLM engine (its workers start at GPU 0, also in processes it
    spawns) land there. Nothing to do for one process per node or without GPUs; returns the GPUs taken."""
    if launch.local_world <= 1:
        return None

    count = torch.cuda.device_count()  # NVML: does not start CUDA, so the variable still applies
    if count == 0:
        return None
    if torch.cuda.is_initialized():
        raise RuntimeError("CUDA started before the evaluation's processes took their GPUs")
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [d.strip() for d in raw.split(",") if d.strip()] if raw else [str(i) for i in range(count)]
    mine = device_slice(visible[:count], launch.local_rank, launch.local_world, per_process)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return mine


class Coordinator:
    """Agreement between the processes of one evaluation (a single process agrees with itself)."""

    def __init__(self, launch: Launch = Launch(), store: Any = None) -> None:
        self.launch = launch
        self.store = store
        # A torchrun restart runs the phases again: keep its keys apart.
        self.prefix = f"steer-eval/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self.phases = 0  # every process agrees on the same phases in the same order: number them

    @classmethod
    def connect(cls) -> "Coordinator":
        launch = launch_from_env()
        if launch.world == 1:
            return cls(launch)
        if not launch.main:
            # Other processes print nothing but errors: their vLLM engines (and the processes those
            # start, which inherit this) log warnings and errors only.
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

        try:
            store, _, _ = next(rendezvous("env://", timeout=PHASE_TIMEOUT))
        except (ValueError, RuntimeError) as err:
            raise SteerError(f"cannot reach the other processes of this launch ({err}); "
                             "launch with torchrun or accelerate launch") from None
        return cls(launch, store)

    @property
    def rank(self) -> int:
        return self.launch.rank

    @property
    def world(self) -> int:
        return self.launch.world

    @property
    def main(self) -> bool:
        return self.launch.main

    def agree(self, phase: str, fn: Callable[[], Any], *, share: bool = False) -> Any:
        """Run ``fn`` here and wait until every process has run its own; a SteerError in any of
        them is raised in all (printed by the main process only). Returns this process's value,
        or with ``share`` the main process's (JSON)."""
        error: Optional[str] = None
        value = None
        try:
            value = fn()
        except SteerError as err:
            error = str(err)
        if self.store is None:
            if error is not None:
                raise SteerError(error)
            return value
        post: dict[str, Any] = {"error": error}
        if share and self.main:
            post["value"] = value
        self.phases += 1
        phase = f"{self.phases}-{phase}"
        self.store.set(self._key(phase, self.rank), json.dumps(post))
        keys = [self._key(phase, r) for r in range(self.world)]
        self.store.wait(keys, PHASE_TIMEOUT)
        posts = [json.loads(self.store.get(k)) for k in keys]
        failed = [(r, p["error"]) for r, p in enumerate(posts) if p["error"] is not None]
        if failed:
            rank, message = failed[0]
            if rank != 0:
                others = f" (and {len(failed) - 1} other process(es))" if len(failed) > 1 else ""
                message = f"process {rank} of {self.world}{others}: {message}"
            raise SteerError(message) if self.main else ReportedByMain(message)
        return posts[0].get("value") if share else value

    def reported(self) -> None:
        """(Main process.) The error is printed: the others may exit now."""
        if self.store is not None:
            self.store.set(self.prefix + "reported", "1")

    def wait_reported(self) -> None:
        """Exit only once the main process has printed the error: a launcher stops every process
        as soon as one exits with an error, which could cut the main one short."""
        if self.store is not None:
            try:
                self.store.wait([self.prefix + "reported"], timedelta(seconds=60))
            except Exception:  # noqa: BLE001 - the main process is gone; exit all the same
                pass

    def _key(self, phase: str, rank: int) -> str:
        return f"{self.prefix}{phase}/{rank}"
