"""Fault injection for the kill-and-resume tests.

``STEER_FAULT=<point>@<step>`` makes ``steer train`` kill itself with SIGKILL when it reaches that
point of that step (1-based): ``generate`` (rollouts done, update not started), ``update``
(gradients computed, optimizer not stepped) or ``checkpoint`` (checkpoint files written, not yet
renamed into place). Unset, it costs one environment lookup per point.
"""

from __future__ import annotations

import os
import signal

POINTS = ("generate", "update", "checkpoint")


def maybe_die(point: str, step: int) -> None:
    spec = os.environ.get("STEER_FAULT")
    if not spec:
        return
    name, _, at = spec.partition("@")
    if name == point and at.isdigit() and int(at) == step:
        os.kill(os.getpid(), signal.SIGKILL)
