"""Steering vectors on a transformers model: one learnable vector per decoder layer.

``attach_steering`` adds ``s_l`` at the end of decoder layer ``l`` (``h <- h + s_l`` at every
position; place ``layer_output``), or to the output of its MLP down projection (place
``down_proj_bias``, the reference implementation's form). The two coincide where the MLP output
goes straight into the residual stream (Llama, Qwen2/3, Mistral, GPT-2, GPT-NeoX ...) and differ
where a norm follows the MLP (Gemma2/3, OLMo2). Nothing in the model is replaced: forward hooks do
the adding, so ``remove()`` restores the model exactly.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from steer_cli.errors import SteerError
from steer_cli.patching.archs import Located, locate
from steer_cli.patching.strength import kept_layers, scaled_vectors

PLACES = ("layer_output", "down_proj_bias")


class SteeringHandle:
    """The attached vectors and the hooks that apply them.

    ``vectors`` is one ``[num_layers, hidden]`` float32 parameter; rows of layers that are not
    steered (see ``layers``) are never read. Use as a context manager to remove on exit.
    """

    def __init__(self, model: nn.Module, located: Located, vectors: nn.Parameter,
                 layers: tuple[int, ...], place: str) -> None:
        self.model = model
        self.located = located
        self.vectors = vectors
        self.layers = layers
        self.place = place
        self._enabled = True
        self._hooks: list[Any] = []
        # The vectors cast to the activations' device and dtype, for passes without autograd
        # (generation): one cast per update of the vectors instead of one per layer per token.
        self._cast: torch.Tensor | None = None
        self._cast_key: tuple[Any, ...] | None = None

    @property
    def num_layers(self) -> int:
        return self.vectors.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.vectors.shape[1]

    def _add(self, index: int, output: Any) -> Any:
        if not self._enabled:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        steered = hidden + self._vector(index, hidden)
        if isinstance(output, tuple):
            return (steered, *output[1:])
        return steered

    def _vector(self, index: int, like: torch.Tensor) -> torch.Tensor:
        """Row ``index`` in ``like``'s device and dtype; the master copy stays float32."""
        if torch.is_grad_enabled() and self.vectors.requires_grad:
            return self.vectors[index].to(device=like.device, dtype=like.dtype)
        key = (like.device, like.dtype, self.vectors._version, self.vectors.data_ptr())
        if self._cast_key != key:
            self._cast = self.vectors.detach().to(device=like.device, dtype=like.dtype, copy=True)
            self._cast_key = key
        return self._cast[index]

    def _install(self) -> None:
        for index in self.layers:
            if self.place == "layer_output":
                module = self.located.layers[index]
            else:
                module = self.located.down_proj(index)
            self._hooks.append(module.register_forward_hook(_Hook(self, index)))

    def set(self, vectors: torch.Tensor) -> None:
        """Copy new values into the attached vectors (shape checked)."""
        check_shape(vectors, self.num_layers, self.hidden_size, what="new vectors")
        with torch.no_grad():
            self.vectors.copy_(vectors.to(self.vectors.device, self.vectors.dtype))

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the base model (e.g. the KL reference policy) without removing the hooks."""
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    def __enter__(self) -> "SteeringHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


class _Hook:
    """A picklable-free callable so each hook knows its layer index without closures in loops."""

    def __init__(self, handle: SteeringHandle, index: int) -> None:
        self.handle = handle
        self.index = index

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        return self.handle._add(self.index, output)


def check_shape(vectors: torch.Tensor, num_layers: int, hidden: int, *, what: str = "vectors") -> None:
    if tuple(vectors.shape) != (num_layers, hidden):
        raise SteerError(
            f"{what} have shape {list(vectors.shape)} but this model needs [{num_layers}, {hidden}] "
            f"(num_layers x hidden_size); were they trained on another model?"
        )


def attach_steering(
    model: nn.Module,
    vectors: torch.Tensor | None = None,
    *,
    layers: Sequence[int] | None = None,
    place: str = "layer_output",
    trainable: bool = True,
    scale: float = 1.0,
    subset: Sequence[int] | None = None,
) -> SteeringHandle:
    """Attach one vector per decoder layer; returns a handle with ``.vectors`` and ``.remove()``.

    ``vectors`` (``[num_layers, hidden]``) defaults to zeros, which leave the logits bit-identical.
    ``layers`` restricts steering to some layer indices (single-layer runs); default all.
    Inference only (``trainable=False``): ``scale`` multiplies the vectors and ``subset`` keeps
    only those of the steered layers (``--scale``, ``--layers``; ``steer_cli.strength``).
    """
    if place not in PLACES:
        raise SteerError(f"unknown steering place {place!r}; choose one of {', '.join(PLACES)}")
    located = locate(model)
    num_layers = located.num_layers
    if scale != 1.0 or subset is not None:
        if trainable or vectors is None:
            raise SteerError("a steering scale or layer subset applies to given vectors at inference, "
                             "not to trainable ones")
        layers = kept_layers(layers, subset, num_layers)
        vectors = scaled_vectors(vectors, scale, layers)
    hidden = int(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd)
    if layers is None:
        layer_ids = tuple(range(num_layers))
    else:
        layer_ids = tuple(sorted(set(int(i) for i in layers)))
        bad = [i for i in layer_ids if not 0 <= i < num_layers]
        if bad:
            raise SteerError(f"steering layers {bad} do not exist: this model has layers 0..{num_layers - 1}")
    device = _device_of(located.layers[layer_ids[0]] if layer_ids else model)
    if vectors is None:
        data = torch.zeros(num_layers, hidden, dtype=torch.float32, device=device)
    else:
        check_shape(vectors, num_layers, hidden)
        data = vectors.detach().to(device=device, dtype=torch.float32).clone()
    param = nn.Parameter(data, requires_grad=trainable)
    handle = SteeringHandle(model, located, param, layer_ids, place)
    handle._install()
    return handle


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")
