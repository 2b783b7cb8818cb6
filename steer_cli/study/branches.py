"""One decoder layer run on two branches: its input without and with a vector (``study patch``).

Setup (the companion paper's section 7). v is the vector of a source layer S; adding it at the
end of layer S is adding it to the input of the target layer T = S + 1. T then has two inputs,
x ("vanilla") and x + v ("steered"); a patch decides which branch feeds which part of T:

    out = r + c(z) + g(r + c(z))    for the usual sequential block,

with r the residual carried on, z the per-head attention outputs (the output projection's input),
c the attention sublayer's contribution (output projection, and a post-norm where the family has
one), and g the MLP path. Modes:

| mode         | r     | attention                                   | extra                          |
|--------------|-------|---------------------------------------------|--------------------------------|
| no-patch     | x + v | steered                                     | = the model with v at S        |
| base         | x     | vanilla                                     | = the model without v          |
| skip-attn    | x + v | vanilla (blind to v)                        |                                |
| skip-layer   | x     | vanilla                                     | v added after the layer: only  |
|              |       |                                             | later layers and the head see v|
| skip-head H  | x + v | steered, heads H of z from the vanilla pass |                                |
| steer-head H | x + v | vanilla, heads H of z from the steered pass |                                |
| skip-q/k/v H | x + v | steered, heads H of q / k / v from vanilla  |                                |
| steer-q/k/v H| x + v | vanilla, heads H of q / k / v from steered  |                                |

**Steer-Head (one semantics).** Steer-Head is the converse of Skip-Head: everything that is not
patched is the *vanilla* attention (skip-attn), and the heads H carry the steered branch's z. So
Steer-Head over all heads (path all) is no-patch, as Skip-Head over all heads is skip-attn. (The
reference code had three semantics; its HF version used the steered attention for the unpatched
path of Steer-Head, which makes Steer-Head over all heads with path residual or mlp differ from
Skip-Head's converse. Here the unpatched branch of a patch is always the mode's own default:
steered for skip-*, vanilla for steer-*.)

**Paths** (head modes only). ``all``: the patched attention output feeds both the MLP path and
the residual. ``residual``: only the residual carries it; the MLP path reads the residual of the
unpatched attention. ``mlp``: only the MLP path reads it; the residual carries the unpatched one.
The unpatched MLP-path input is recorded in a third pass of the layer (same inputs, the mode's
default attention); ``mlp`` then swaps the residual at the layer output (out + h1_u - h1_p).
A parallel-residual block has no MLP path after attention: paths other than ``all`` are refused.

**k and v slices under GQA.** q and z slices are per query head; k and v slices per key-value
head, so patching k or v of key-value head g changes all the query heads of its group.
``skip-v`` over all key-value heads (only the pattern sees v) and ``steer-v`` over all (only the
values see v) are the reference's ``all_v_proj`` / ``inverse_all_v_proj``.

**Generation.** The vanilla pass (and the unpatched pass of a path patch) keeps its own KV cache
of the target layer, started afresh whenever the model's cache is empty at that layer (a new
prompt); patched k and v go to the model's cache, so a patch holds at every position. The tests
check that cached generation equals recomputing the whole prefix at every step.

Everything is hooks on the modules found through ``patching/attention.py``; nothing is replaced
and ``remove()`` restores the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache

from steer_cli.errors import SteerError
from steer_cli.patching.archs import locate
from steer_cli.patching.attention import PARTS, LayerParts, locate_attention

MODES = ("no-patch", "base", "skip-attn", "skip-layer", "skip-head", "steer-head",
         "skip-q", "skip-k", "skip-v", "steer-q", "steer-k", "steer-v")
HEAD_MODES = ("skip-head", "steer-head", "skip-q", "skip-k", "skip-v", "steer-q", "steer-k", "steer-v")
BASELINES = ("no-patch", "base", "skip-attn", "skip-layer")
PATHS = ("all", "residual", "mlp")


@dataclass(frozen=True)
class Patch:
    """A mode, the heads it patches (head modes) and the path the patched attention takes."""

    mode: str
    heads: tuple[int, ...] = ()
    path: str = "all"

    @property
    def part(self) -> Optional[str]:
        """The patched part of a head mode: "z" (head), "q", "k" or "v"."""
        if self.mode not in HEAD_MODES:
            return None
        tail = self.mode.split("-", 1)[1]
        return "z" if tail == "head" else tail

    @property
    def label(self) -> str:
        text = self.mode
        if self.mode in HEAD_MODES:
            text += " " + "+".join(str(h) for h in self.heads)
        if self.path != "all":
            text += f" ({self.path})"
        return text

    @property
    def key(self) -> str:
        """A file-name-safe identity: skip-head-3-residual."""
        parts = [self.mode] + (["+".join(str(h) for h in self.heads)] if self.mode in HEAD_MODES else [])
        if self.path != "all":
            parts.append(self.path)
        return "-".join(parts).replace("+", "_")

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "heads": list(self.heads), "path": self.path, "label": self.label, "key": self.key}


@dataclass(frozen=True)
class _Recipe:
    """What a patch does in terms of the two branches."""

    residual_steered: bool  # r = x + v (else x)
    default_steered: bool  # unpatched attention parts come from the steered branch
    swaps: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (part, heads) taken from the other branch
    path: str = "all"
    add_after: bool = False  # skip-layer: v added to the layer output

    @property
    def needs_vanilla(self) -> bool:
        return not self.default_steered or bool(self.swaps)


def recipe(patch: Patch) -> _Recipe:
    m = patch.mode
    if m == "no-patch":
        return _Recipe(True, True)
    if m == "base":
        return _Recipe(False, False)
    if m == "skip-attn":
        return _Recipe(True, False)
    if m == "skip-layer":
        return _Recipe(False, False, add_after=True)
    part = patch.part
    assert part is not None
    return _Recipe(True, m.startswith("skip-"), ((part, patch.heads),), patch.path)


def check_patch(patch: Patch, parts: LayerParts) -> None:
    """One-line errors for an unknown mode or path, a head out of range, a path on a block that
    has no MLP path after attention."""
    if patch.mode not in MODES:
        raise SteerError(f"unknown patch mode {patch.mode!r}; choose from {', '.join(MODES)}")
    if patch.path not in PATHS:
        raise SteerError(f"unknown path {patch.path!r}; choose from {', '.join(PATHS)}")
    part = patch.part
    if part is None:
        if patch.path != "all":
            raise SteerError(f"--path {patch.path} applies to head modes; {patch.mode} patches the whole layer")
        return
    if part in PARTS and patch.path != "all":
        raise SteerError(f"--path {patch.path} applies to skip-head and steer-head (z slices); "
                         f"{patch.mode} changes q, k or v and takes path all")
    if patch.path != "all" and parts.parallel:
        raise SteerError(f"this {parts.arch} model has a parallel-residual block (its MLP reads the layer input, "
                         f"not the attention output); --path {patch.path} does not apply")
    n = parts.count(part)
    if not patch.heads:
        raise SteerError(f"{patch.mode} needs at least one head")
    bad = [h for h in patch.heads if not 0 <= h < n]
    if bad:
        what = ("key-value heads" if part in ("k", "v") else "query heads")
        extra = (f" ({parts.kv_heads} key-value heads for {parts.heads} query heads)"
                 if part in ("k", "v") and parts.kv_heads != parts.heads else "")
        raise SteerError(f"head {bad[0]} is out of range: {patch.mode} takes {what} 0..{n - 1} of layer "
                         f"{parts.index}{extra}")


def _hidden_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple[Any, ...], kwargs: dict[str, Any], hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, dict(kwargs, hidden_states=hidden)


def _find_cache(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Optional[Cache]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Cache):
            return value
    return None


def _swap_cache(args: tuple[Any, ...], kwargs: dict[str, Any], old: Cache, new: Cache) -> tuple[tuple, dict]:
    return (tuple(new if a is old else a for a in args), {k: (new if v is old else v) for k, v in kwargs.items()})


def _cache_length(cache: Cache, layer: int) -> int:
    if isinstance(cache, EncoderDecoderCache):
        cache = cache.self_attention_cache
    try:
        return int(cache.get_seq_length(layer))
    except (IndexError, KeyError):
        return 0


class BranchedLayer:
    """Hooks that run decoder layer ``source + 1`` on two branches under a ``Patch``.

    The model must carry no vector at ``source`` itself: the vector enters at the target layer's
    input, per branch. ``set(patch)`` chooses what the next forward passes compute; with no patch
    set the hooks pass everything through (the model is the base model).
    """

    def __init__(self, model: nn.Module, source: int, vector: torch.Tensor) -> None:
        located = locate(model)
        n = located.num_layers
        if not 0 <= source < n - 1:
            raise SteerError(f"--source-layer {source} is out of range: the patched layer is the one after it, "
                             f"so the source must be 0..{n - 2} (this model has {n} layers)")
        self.model = model
        self.config = model.get_base_model().config if callable(getattr(model, "get_base_model", None)) else model.config
        self.source = source
        self.target = source + 1
        self.parts = locate_attention(model, self.target)
        self.vector = vector.detach()
        self.patch: Optional[Patch] = None
        self._recipe: Optional[_Recipe] = None
        self._phase: Optional[str] = None  # None (pass through) | vanilla | reference | main
        self._record: dict[str, torch.Tensor] = {}
        self._caches: dict[str, Optional[Cache]] = {"vanilla": None, "reference": None}
        self._handles: list[Any] = []
        self._install()

    # -- control ---------------------------------------------------------------------------
    def set(self, patch: Optional[Patch]) -> None:
        if patch is not None:
            check_patch(patch, self.parts)
            if patch.mode in HEAD_MODES:
                patch = replace(patch, heads=tuple(sorted(set(patch.heads))))
        self.patch = patch
        self._recipe = recipe(patch) if patch is not None else None
        self._caches = {"vanilla": None, "reference": None}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "BranchedLayer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # -- hooks -----------------------------------------------------------------------------
    def _install(self) -> None:
        p = self.parts
        self._handles.append(p.layer.register_forward_pre_hook(self._layer_pre, with_kwargs=True))
        self._handles.append(p.layer.register_forward_hook(self._layer_post))
        self._handles.append(p.out_proj.register_forward_pre_hook(self._z_pre))
        for module in {id(m): m for m in p.proj.values()}.values():
            held = tuple(part for part in PARTS if p.proj[part] is module)
            self._handles.append(module.register_forward_hook(self._qkv_hook(held)))
        self._handles.append(p.mlp_path.register_forward_pre_hook(self._mlp_pre))

    def _v(self, like: torch.Tensor) -> torch.Tensor:
        return self.vector.to(device=like.device, dtype=like.dtype)

    def _private_cache(self, name: str, real: Cache) -> Cache:
        cache = self._caches[name]
        if cache is None or _cache_length(real, self.target) == 0:
            # A fresh sequence (the model's own cache is empty at this layer): a fresh branch cache.
            cache = DynamicCache(config=self.config)
            if isinstance(real, EncoderDecoderCache):
                cache = EncoderDecoderCache(cache, DynamicCache(config=self.config))
            self._caches[name] = cache
        return cache

    def _side_pass(self, phase: str, args: tuple[Any, ...], kwargs: dict[str, Any], hidden: torch.Tensor) -> None:
        args, kwargs = _with_hidden(args, kwargs, hidden)
        real = _find_cache(args, kwargs)
        if real is not None:
            args, kwargs = _swap_cache(args, kwargs, real, self._private_cache(phase, real))
        self._phase = phase
        try:
            self.parts.layer.forward(*args, **kwargs)  # forward, not __call__: this layer's own hooks stay out
        finally:
            self._phase = None

    def _layer_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        r = self._recipe
        if r is None or self._phase is not None:
            return None
        self._record = {}
        x = _hidden_of(args, kwargs)
        steered = x + self._v(x)
        if r.needs_vanilla:
            self._side_pass("vanilla", args, kwargs, x)
        if r.path != "all":
            self._side_pass("reference", args, kwargs, steered if r.residual_steered else x)
        self._phase = "main"
        return _with_hidden(args, kwargs, steered if r.residual_steered else x)

    def _layer_post(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self._phase != "main":
            return None
        self._phase = None
        r = self._recipe
        assert r is not None
        hidden = output[0] if isinstance(output, tuple) else output
        if r.path == "mlp":
            hidden = hidden + (self._record["h1_reference"] - self._record["h1_main"])
        if r.add_after:
            hidden = hidden + self._v(hidden)
        self._record = {}
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _mix(self, part: str, natural: torch.Tensor, cols_of: Any) -> torch.Tensor:
        """The main pass's tensor of ``part``: the default branch, with the swapped heads taken
        from the other branch (``natural`` is this pass's own, steered, tensor)."""
        r = self._recipe
        assert r is not None
        vanilla = self._record[part]
        out = (natural if r.default_steered else vanilla).clone()
        other = vanilla if r.default_steered else natural
        for swapped, heads in r.swaps:
            if swapped == part:
                for h in heads:
                    cols = cols_of(h)
                    out[..., cols] = other[..., cols]
        return out

    def _z_pre(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        phase, r = self._phase, self._recipe
        if phase is None or r is None:
            return None
        z = args[0]
        if phase == "vanilla":
            self._record["z"] = z
            return None
        z_swapped = any(part == "z" for part, _ in r.swaps)
        if phase == "reference" or not z_swapped:
            if r.default_steered or any(part in PARTS for part, _ in r.swaps):
                return None  # steered attention, or one computed from patched q/k/v
            return (self._record["z"], *args[1:])
        return (self._mix("z", z, lambda h: self.parts.columns("z", h)), *args[1:])

    def _qkv_hook(self, held: tuple[str, ...]) -> Any:
        """On a q/k/v projection (``held``: the parts its output holds; all three if fused)."""
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> Any:
            phase, r = self._phase, self._recipe
            if phase is None or r is None:
                return None
            if phase == "vanilla":
                for part in held:
                    self._record[part] = output
                return None
            if phase != "main" or not any(part in PARTS for part, _ in r.swaps):
                return None  # z-level patches act at the output projection
            out = (output if r.default_steered else self._record[held[0]]).clone()
            other = self._record[held[0]] if r.default_steered else output
            for part, heads in r.swaps:
                if part in held:
                    for h in heads:
                        cols = self.parts.columns(part, h)
                        out[..., cols] = other[..., cols]
            return out
        return hook

    def _mlp_pre(self, module: nn.Module, args: tuple[Any, ...]) -> Any:
        phase, r = self._phase, self._recipe
        if phase is None or r is None or r.path == "all":
            return None
        h1 = args[0]
        if phase == "reference":
            self._record["h1_reference"] = h1
            return None
        if phase == "main":
            if r.path == "residual":
                return (self._record["h1_reference"], *args[1:])
            self._record["h1_main"] = h1
        return None


def parse_heads(spec: Optional[str], count: int, flag: str = "--heads") -> list[tuple[int, ...]]:
    """``--heads``: comma-separated items, each a head, a group ``0+1+2``, or ``all`` (every head
    at once); default (None): each head alone. One patch per item."""
    if spec is None:
        return [(h,) for h in range(count)]
    out: list[tuple[int, ...]] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        if item == "all":
            out.append(tuple(range(count)))
            continue
        if item == "each":
            out.extend((h,) for h in range(count))
            continue
        try:
            group = tuple(sorted({int(x) for x in item.split("+")}))
        except ValueError:
            raise SteerError(f"{flag} expects head indices, groups such as 0+1, 'each' or 'all'; got {item!r}") from None
        out.append(group)
    if not out:
        raise SteerError(f"{flag} is empty; give head indices, groups such as 0+1, 'each' or 'all'")
    return list(dict.fromkeys(out))


def plan_patches(modes: Sequence[str], heads: Optional[str], paths: Sequence[str], parts: LayerParts) -> list[Patch]:
    """Every (mode, heads, path) to measure, in order; baselines once each (path all)."""
    out: list[Patch] = []
    for mode in modes:
        if mode not in MODES:
            raise SteerError(f"unknown patch mode {mode!r}; choose from {', '.join(MODES)}")
        if mode not in HEAD_MODES:
            out.append(Patch(mode))
            continue
        part = Patch(mode, (0,)).part
        assert part is not None
        for group in parse_heads(heads, parts.count(part)):
            for path in (paths if part == "z" else ["all"]):
                patch = Patch(mode, group, path)
                check_patch(patch, parts)
                out.append(patch)
    return list(dict.fromkeys(out))
