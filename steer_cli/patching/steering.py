"""Steering vectors on a transformers model: one learnable vector per decoder layer.

``attach_steering`` adds ``s_l`` at one place of decoder layer ``l``, at every position:

- ``layer_output``: the end of the layer (``h <- h + s_l``);
- ``down_proj_bias``: the output of the MLP's down projection (the reference implementation's form);
- ``mlp_output``: the MLP block's output, before anything after it (a post-MLP norm, the residual add);
- ``mlp_input``: the MLP block's input, after its pre-norm (the residual stream is not touched);
- ``attn_output``: the attention block's output (after ``o_proj``), before the residual add;
- ``attn_input``: the attention block's input, after the layer's input norm (residual untouched).

Each place is one add, the same in the vLLM engine (``rollout.vllm_models``). The MLP ends in its
down projection, so ``mlp_output`` is ``down_proj_bias``; both equal ``layer_output`` where the
MLP output goes straight into the residual stream (Llama, Qwen2/3, Mistral, GPT-2, GPT-NeoX ...)
and differ where a norm follows the MLP (Gemma2/3, OLMo2). An input place acts on one branch only
(the reference's vector on a norm's output). Nothing in the model is replaced: forward hooks (pre-
hooks for input places) do the adding, so ``remove()`` restores the model exactly.

Vector banks: several sets of vectors on one model, one per row of a batch (several training
runs in one job, eval grids). A bank is a ``[R, num_layers, hidden]`` tensor, one ``[num_layers,
hidden]`` matrix per entry (run); a row index (LongTensor ``[B]``) names each row's entry. While a
bank is set, the hooks add ``bank[idx[b], l]`` to row ``b`` at layer ``l`` instead of
``handle.vectors[l]``; everything else (places, ``disabled()``, ``remove()``) is unchanged::

    handle = attach_steering(model, layers=union_of_layers, trainable=False)
    handle.set_bank(bank, layer_mask=mask)   # bank [R, L, d]; mask [R, L] bool: where entry r steers
    handle.set_row_index(idx)                # LongTensor [B]: the entry of each row of the batch
    ...generate / forward...
    with handle.using_bank(bank, idx, layer_mask=mask):   # the same, restored on exit
        ...
    handle.set_bank(None)                    # back to handle.vectors

Hooks exist only on ``handle.layers``; ``layer_mask`` (default: every layer) keeps an entry's
other layers unsteered even where its bank rows are not zero. In passes without autograd the
bank is cast to the activations' dtype once per ``set_bank`` (call it again after changing the
bank in place). Gradients: with ``grad_sink`` (a float64 tensor shaped like the bank) a pass
with autograd adds each row's gradient into ``grad_sink[idx[b], l]`` in backward: positions
summed in order, then rows in order, each onto what the sink holds, so on CPU an entry's
gradient does not depend on the other rows of its batches nor on how they were cut into micro-
batches (``bank_rows_gradient``). Without a sink the add is differentiable in the bank itself.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from steer_cli.errors import SteerError
from steer_cli.patching.archs import Located, locate
from steer_cli.patching.strength import kept_layers, scaled_vectors

PLACES = ("layer_output", "down_proj_bias", "attn_input", "attn_output", "mlp_input", "mlp_output")
# Places added to a block's input (a forward pre-hook) rather than to a module's output.
INPUT_PLACES = frozenset({"attn_input", "mlp_input"})


def place_module(located: Located, index: int, place: str) -> nn.Module:
    """The module of layer ``index`` whose output (input for ``INPUT_PLACES``) gets the vector."""
    if place == "layer_output":
        return located.layers[index]
    if place == "down_proj_bias":
        return located.down_proj(index)
    if place in ("attn_input", "attn_output"):
        return located.attn(index)
    if place in ("mlp_input", "mlp_output"):
        return located.mlp(index)
    raise SteerError(f"unknown steering place {place!r}; choose one of {', '.join(PLACES)}")


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
        # Bank mode (see the module docstring): None when off.
        self._bank: torch.Tensor | None = None
        self._bank_mask: torch.Tensor | None = None
        self._bank_sink: torch.Tensor | None = None
        self._bank_cast: dict[tuple[Any, ...], torch.Tensor] = {}
        self._row_index: torch.Tensor | None = None
        self._row_index_on: dict[Any, torch.Tensor] = {}
        self._layers_used: list[bool] | None = None  # per layer: does a row of the batch steer it
        self._anchor = torch.zeros((), requires_grad=True)  # makes a sink pass build a graph

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
        steered = self.steer(index, hidden)
        if isinstance(output, tuple):
            return (steered, *output[1:])
        return steered

    def _add_input(self, index: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Add the vector to a block's hidden-states input: the ``hidden_states`` keyword (how
        transformers calls attention) or else the first positional argument (the MLP's ``x``)."""
        if not self._enabled:
            return None
        if isinstance(kwargs.get("hidden_states"), torch.Tensor):
            hidden = kwargs["hidden_states"]
            return args, {**kwargs, "hidden_states": self.steer(index, hidden)}
        if args and isinstance(args[0], torch.Tensor):
            return (self.steer(index, args[0]), *args[1:]), kwargs
        raise SteerError(f"cannot steer the input of layer {index}'s block at {self.place}: it was called "
                         "without a hidden-states tensor")

    def steer(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden`` ([B, T, hidden]) with layer ``index``'s vector added: ``handle.vectors``, or
        each row's bank entry while a bank is set."""
        if self._bank is None:
            return hidden + self._vector(index, hidden)
        return self._bank_add(index, hidden)

    # -- bank mode ---------------------------------------------------------------------------
    def set_bank(self, bank: torch.Tensor | None, *, layer_mask: torch.Tensor | None = None,
                 grad_sink: torch.Tensor | None = None) -> None:
        """Steer each row with its own entry of ``bank`` ([R, num_layers, hidden]); None: back to
        ``handle.vectors``. ``layer_mask`` [R, num_layers] bool: the layers each entry steers
        (default all hooked ones). ``grad_sink`` (float64, the bank's shape): where backward adds
        each row's gradient (see the module docstring). Call again after changing ``bank`` in place."""
        if bank is None:
            self._bank = self._bank_mask = self._bank_sink = self._row_index = None
            self._bank_cast.clear()
            self._row_index_on.clear()
            self._layers_used = None
            return
        if bank.dim() != 3 or tuple(bank.shape[1:]) != (self.num_layers, self.hidden_size):
            raise SteerError(f"a vector bank has shape [entries, {self.num_layers}, {self.hidden_size}], "
                             f"got {list(bank.shape)}")
        if layer_mask is not None and tuple(layer_mask.shape) != tuple(bank.shape[:2]):
            raise SteerError(f"layer_mask has shape {list(layer_mask.shape)}, expected {list(bank.shape[:2])}")
        if grad_sink is not None and (grad_sink.shape != bank.shape or grad_sink.dtype != torch.float64):
            raise SteerError(f"grad_sink must be float64 of the bank's shape {list(bank.shape)}")
        self._bank = bank
        self._bank_mask = None if layer_mask is None else layer_mask.to(device=bank.device, dtype=torch.bool)
        self._bank_sink = grad_sink
        self._bank_cast.clear()
        self._layers_used = None

    def set_row_index(self, index: torch.Tensor | None) -> None:
        """The bank entry of each row ([B] integers) of the forward passes that follow."""
        if index is not None:
            index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
            if self._bank is not None and index.numel() and not (0 <= int(index.min()) and
                                                                 int(index.max()) < self._bank.shape[0]):
                raise SteerError(f"row index names bank entries {sorted(set(index.tolist()))} but the bank "
                                 f"has {self._bank.shape[0]}")
        self._row_index = index
        self._row_index_on.clear()
        self._layers_used = None

    @contextlib.contextmanager
    def using_bank(self, bank: torch.Tensor, index: torch.Tensor, *, layer_mask: torch.Tensor | None = None,
                   grad_sink: torch.Tensor | None = None) -> Iterator["SteeringHandle"]:
        """``set_bank`` + ``set_row_index`` for the block, then the previous state again."""
        previous = (self._bank, self._bank_mask, self._bank_sink, self._row_index)
        self.set_bank(bank, layer_mask=layer_mask, grad_sink=grad_sink)
        self.set_row_index(index)
        try:
            yield self
        finally:
            self.set_bank(None)
            if previous[0] is not None:
                self.set_bank(previous[0], layer_mask=previous[1], grad_sink=previous[2])
                self.set_row_index(previous[3])

    def _rows_on(self, device: torch.device, batch: int) -> torch.Tensor:
        if self._row_index is None:
            raise SteerError("a vector bank is set but no row index (handle.set_row_index)")
        if self._row_index.numel() != batch:
            raise SteerError(f"the row index has {self._row_index.numel()} entries but the batch has {batch} rows")
        rows = self._row_index_on.get(device)
        if rows is None:
            rows = self._row_index_on[device] = self._row_index.to(device)
        return rows

    def _layer_used(self, index: int) -> bool:
        if self._layers_used is None:
            assert self._bank_mask is not None and self._row_index is not None
            used = self._bank_mask[self._row_index.to(self._bank_mask.device)].any(0)
            self._layers_used = used.tolist()
        return bool(self._layers_used[index])

    def _bank_add(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        assert self._bank is not None
        if hidden.dim() != 3:
            raise SteerError(f"bank steering needs [batch, positions, hidden] activations, got {list(hidden.shape)}")
        rows = self._rows_on(hidden.device, hidden.shape[0])
        if self._bank_mask is not None and not self._layer_used(index):
            return hidden  # no row of this batch steers this layer: as if it had no hook
        if not torch.is_grad_enabled():
            key = (hidden.device, hidden.dtype)
            cast = self._bank_cast.get(key)
            if cast is None:
                cast = self._bank.detach().to(device=hidden.device, dtype=hidden.dtype, copy=True)
                if self._bank_mask is not None:
                    cast[~self._bank_mask.to(hidden.device)] = 0
                self._bank_cast[key] = cast
            return hidden + cast[rows, index].unsqueeze(1)
        if self._bank_sink is not None:
            return _BankAdd.apply(hidden, self._anchor, self._bank, rows, index, self._bank_mask, self._bank_sink)
        delta = self._bank[rows.to(self._bank.device), index]
        if self._bank_mask is not None:
            keep = self._bank_mask[rows.to(self._bank.device), index].unsqueeze(-1)
            delta = torch.where(keep, delta, torch.zeros_like(delta))
        return hidden + delta.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(1)

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
            module = place_module(self.located, index, self.place)
            if self.place in INPUT_PLACES:
                self._hooks.append(module.register_forward_pre_hook(_InputHook(self, index), with_kwargs=True))
            else:
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


def bank_rows_gradient(grad: torch.Tensor) -> torch.Tensor:
    """Per-row gradient of a vector added at every position: ``grad`` [B, T, d] summed over T.

    On CPU the sum runs position by position (``cumsum``, accumulated in float64), so left
    padding (zeros first) and the batch's width leave a row's sum unchanged; elsewhere a plain sum.
    """
    if grad.device.type == "cpu":
        return grad.cumsum(1, dtype=torch.float64)[:, -1]
    return grad.sum(1, dtype=torch.float64)


class _BankAdd(torch.autograd.Function):
    """``hidden + bank[rows, layer]`` whose backward adds each row's gradient into a float64 sink,
    row after row onto what it holds (not into ``bank.grad``): the sum for one entry is then the
    same sequence of additions whatever else shares the batch or the micro-batches."""

    @staticmethod
    def forward(ctx, hidden, anchor, bank, rows, layer, mask, sink):  # type: ignore[override]
        on_bank = rows.to(bank.device)
        delta = bank[on_bank, layer]
        if mask is not None:
            keep = mask[on_bank, layer]
            delta = torch.where(keep.unsqueeze(-1), delta, torch.zeros_like(delta))
        else:
            keep = None
        ctx.save_for_backward(on_bank)
        ctx.layer, ctx.sink, ctx.keep = layer, sink, keep
        return hidden + delta.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(1)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (rows,) = ctx.saved_tensors
        per_row = bank_rows_gradient(grad).to(ctx.sink.device)
        sink, layer, keep = ctx.sink, ctx.layer, ctx.keep
        with torch.no_grad():
            for entry in torch.unique(rows).tolist():
                mine = rows == entry
                if keep is not None:
                    mine = mine & keep
                if not bool(mine.any()):
                    continue
                # sink + row_1 + row_2 + ... in order: cumsum of [sink; rows] (float64, sequential on CPU)
                stacked = torch.cat([sink[entry, layer].unsqueeze(0), per_row[mine.to(per_row.device)]])
                sink[entry, layer] = stacked.cumsum(0)[-1]
        return grad, None, None, None, None, None, None


class _Hook:
    """A picklable-free callable so each hook knows its layer index without closures in loops."""

    def __init__(self, handle: SteeringHandle, index: int) -> None:
        self.handle = handle
        self.index = index

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        return self.handle._add(self.index, output)


class _InputHook(_Hook):
    """A forward pre-hook (with keyword arguments) adding the vector to a block's input."""

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> Any:  # type: ignore[override]
        return self.handle._add_input(self.index, args, kwargs)


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
