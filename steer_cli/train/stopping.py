"""Stopping ``steer train`` on a scheduler's signal (see steer_cli/preempt.py): a step is dropped
before its update, or finished after it, and the run saves the state after its last complete step.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


class StepDropped(Exception):
    """A stop signal arrived before the step's update: the step is abandoned."""


def rng_state() -> tuple[Any, Any, Any]:
    """What a step may draw from besides its own seeds (restored when the step is dropped)."""
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def set_rng_state(state: tuple[Any, Any, Any]) -> None:
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


def stop_message(signal_name: str, done: int, total: int, *, dropped: bool, saved_now: bool) -> str:
    """The one line a stopped run ends with (after ``stopped:``)."""
    what = f"{signal_name} during step {done + 1}" if dropped else signal_name
    if done == 0:
        return (f"{what}, before any step finished; nothing to save: run the same command with --resume "
                "to start again")
    saved = "saved" if saved_now else "was saved already"
    return (f"{what}; checkpoint-{done} {saved} (after step {done} of {total}): run the same command with "
            "--resume to continue")
