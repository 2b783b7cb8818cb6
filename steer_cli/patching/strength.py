"""Steering strength and layer subsets at inference (``--scale``, ``--layers``).

Trained vectors are applied as ``h <- h + scale * s_l`` on the layers kept: every inference path
(hf hooks, the vLLM engine, ``extract --format gguf``, ``merge --fold``) gets the matrix from
``scaled_vectors``, so they agree by construction. Scale 0 leaves the base model; scale 1 on all
layers is the matrix as trained, untouched. Training never reads any of this.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Optional, Sequence

from steer_cli.errors import SteerError

_SPEC_USAGE = "write layers as comma-separated indices and ranges, e.g. 0-10,17"
_PART_RE = re.compile(r"^(\d+)(?:-(\d+))?$")


def parse_layer_spec(spec: Any, flag: str = "--layers") -> list[int]:
    """``"0-10,17"`` -> [0, 1, ..., 10, 17] (sorted, no repeats); a list of ints passes through.
    Ranges include both ends. A one-line SteerError for anything else."""
    if isinstance(spec, (list, tuple)):
        parts: Iterable[Any] = spec
        out = set()
        for p in parts:
            if isinstance(p, bool) or not isinstance(p, int) or p < 0:
                raise SteerError(f"{flag}: {p!r} is not a layer index; {_SPEC_USAGE}")
            out.add(int(p))
        if not out:
            raise SteerError(f"{flag} is empty; {_SPEC_USAGE}")
        return sorted(out)
    if isinstance(spec, int) and not isinstance(spec, bool):
        return parse_layer_spec([spec], flag)
    text = str(spec).replace(" ", "")
    out = set()
    for part in text.split(","):
        m = _PART_RE.match(part)
        if not m:
            raise SteerError(f"bad layer spec {spec!r} ({flag}): {part!r} is not an index or a range; {_SPEC_USAGE}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise SteerError(f"bad layer spec {spec!r} ({flag}): range {part} runs backwards; write {hi}-{lo}")
        out.update(range(lo, hi + 1))
    return sorted(out)


def format_layers(layers: Sequence[int]) -> str:
    """[0, 1, 2, 3, 7] -> "0-3,7": the inverse of ``parse_layer_spec`` (used in labels)."""
    runs: list[list[int]] = []
    for i in sorted(set(int(x) for x in layers)):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def parse_scales(text: Any, flag: str = "--scale") -> list[float]:
    """``"0,0.5,1"`` -> [0.0, 0.5, 1.0] in the order given, repeats dropped; finite numbers only."""
    items = text if isinstance(text, (list, tuple)) else str(text).replace(" ", "").split(",")
    out: list[float] = []
    for item in items:
        if isinstance(item, bool):
            raise SteerError(f"{flag}: {item!r} is not a number; give factors such as 0,0.5,1")
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise SteerError(f"{flag}: {item!r} is not a number; give factors such as 0,0.5,1") from None
        if not math.isfinite(value):
            raise SteerError(f"{flag}: {item!r} is not a finite number")
        value = value + 0.0  # -0.0 -> 0.0: one label and one directory per value
        if value not in out:
            out.append(value)
    if not out:
        raise SteerError(f"{flag} is empty; give factors such as 0,0.5,1")
    return out


def format_scale(scale: float) -> str:
    """1.0 -> "1", 0.5 -> "0.5", -1.0 -> "-1"."""
    return f"{scale:g}"


def check_layers(layers: Optional[Sequence[int]], num_layers: int, flag: str = "--layers") -> None:
    """A one-line SteerError when ``layers`` names a layer the model does not have."""
    if layers is None:
        return
    bad = [i for i in layers if not 0 <= int(i) < num_layers]
    if bad:
        raise SteerError(f"{flag}: layer(s) {format_layers(bad)} do not exist: the model has layers "
                         f"0-{num_layers - 1}")


def kept_layers(steered: Optional[Sequence[int]], subset: Optional[Sequence[int]], num_layers: int,
                flag: str = "--layers") -> tuple[int, ...]:
    """The layers whose vectors apply: the steered ones (all when None) that ``subset`` keeps.
    An error when ``subset`` keeps none of them (nothing would be applied)."""
    check_layers(subset, num_layers, flag)
    trained = tuple(range(num_layers)) if steered is None else tuple(sorted(int(i) for i in steered))
    if subset is None:
        return trained
    keep = tuple(i for i in trained if i in set(int(x) for x in subset))
    if not keep:
        raise SteerError(f"{flag} {format_layers(subset)} keeps none of the steered layers "
                         f"({format_layers(trained)}); pick layers the vectors were trained on")
    return keep


def scaled_vectors(vectors: Any, scale: float = 1.0, layers: Optional[Sequence[int]] = None) -> Any:
    """``vectors`` [num_layers, hidden] times ``scale``, rows outside ``layers`` (default: all
    kept) set to zero. Scale 1 on all layers returns the same values (a copy)."""
    # lazy: settings (and so `steer --help`) import this module; only applying a scale needs torch
    import torch

    out = torch.as_tensor(vectors).detach().clone()
    if layers is not None:
        mask = torch.zeros(out.shape[0], dtype=torch.bool)
        mask[list(int(i) for i in layers)] = True
        out[~mask.to(out.device)] = 0
    if scale != 1.0:
        out = out * scale
    return out


def describe(scale: float, layers: Optional[Sequence[int]]) -> str:
    """"scale 0.5, layers 0-10,17" (for labels and logs); "" for scale 1 on every layer."""
    parts = []
    if scale != 1.0:
        parts.append(f"scale {format_scale(scale)}")
    if layers is not None:
        parts.append(f"layers {format_layers(layers)}")
    return ", ".join(parts)
