"""Teacher-forced passes shared by the token- and circuit-level studies (tokens, patch, persistence).

The pipeline of the reference code's ``metrics/*`` scripts, without their full-vocabulary tensors:

1. ``sample_completions``: one completion per prompt from the model as it is hooked (steered),
   each drawn from its own seed (``chunk_seed(seed, prompt index)``), so a sample does not depend
   on the batch it lands in. Completions cut at their budget are kept (``Sample.stopped`` False):
   dropping them, as the reference does, biases every statistic toward short answers.
2. ``Sample.ids``: prompt + completion without its last token, the teacher-forced input; row
   ``Sample.offset + k`` predicts completion token k (k = 0: the first generated token).
3. ``final_hidden``: the final norm's output of a forward pass (the model's own logits are
   computed for one position only), and ``head_logits`` turns rows of it into logits exactly as
   the model's head does (unembedding, then Gemma's soft-capping or Granite's scaling), so the
   statistics can walk the rows in chunks: ``position_stats.compare_rows`` never sees more than
   a chunk of rows x vocabulary at once.
4. ``LayerReplay``: one forward pass records each decoder layer's own call arguments (masks,
   position embeddings) from layer ``start`` on; ``run`` then recomputes only those layers on a
   new input, which is how ``study patch`` evaluates many patches of one layer for the cost of
   one layer and the head each.
5. ``RowVector`` adds a vector at a layer's output for some batch rows only, and ``LayerOutputs``
   calls back with every decoder layer's output: ``study persistence`` runs the vanilla and the
   steered copy of a sequence in one batch and reduces their difference layer by layer, never
   holding all layers' residuals.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from steer_cli.patching.archs import Located, locate
from steer_cli.rollout.base import SampleRequest, SamplingSpec
from steer_cli.rollout.hf import HFBackend, chunk_seed


@dataclass
class Sample:
    """One prompt and the completion sampled for it (stop token kept when it stopped)."""

    index: int  # position of the prompt in the study's prompt list
    prompt: list[int]
    completion: list[int]
    stopped: bool  # False: cut at its budget (kept, never dropped)

    @property
    def ids(self) -> list[int]:
        """The teacher-forced input: prompt + completion without its last token."""
        return self.prompt + self.completion[:-1]

    @property
    def offset(self) -> int:
        """The row that predicts the first generated token."""
        return len(self.prompt) - 1

    @property
    def positions(self) -> int:
        """Generation positions: one per completion token."""
        return len(self.completion)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "prompt_length": len(self.prompt), "completion": self.completion,
                "stopped": self.stopped}


def sample_completions(model: nn.Module, tokenizer: Any, prompts: Sequence[Sequence[int]], *,
                       indices: Optional[Sequence[int]] = None, temperature: float, top_p: float = 1.0,
                       max_new_tokens: int, stop_ids: Sequence[int], seed: int, batch: int = 8) -> list[Sample]:
    """One completion per prompt from ``model`` with whatever hooks are attached. ``indices`` are
    the prompts' indices in the whole study (they seed the samples; default 0, 1, ...)."""
    indices = list(range(len(prompts))) if indices is None else list(indices)
    greedy = temperature == 0.0
    requests = [SampleRequest(tuple(int(t) for t in p), None if greedy else chunk_seed(seed, i), max_new_tokens,
                              group=n) for n, (i, p) in enumerate(zip(indices, prompts))]
    spec = SamplingSpec(n=1, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                        stop_token_ids=tuple(int(t) for t in stop_ids), seed=seed)
    backend = HFBackend(model, tokenizer, batch_prompts=batch)
    out: list[Optional[Sample]] = [None] * len(requests)
    for n, completion in backend.stream_samples(requests, spec):
        out[n] = Sample(indices[n], list(requests[n].prompt), list(completion.token_ids), completion.stopped)
    return [s for s in out if s is not None]


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: with causal attention a row's real tokens never see
    its padding, and their positions are 0, 1, ... as without padding."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[r, :len(s)] = 1
    return ids.to(device), mask.to(device)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _output_hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _forward(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> Any:
    # One position of logits: the rows are read from the final norm's output instead.
    return model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)


@torch.no_grad()
def final_hidden(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                 located: Optional[Located] = None) -> torch.Tensor:
    """[B, T, d]: the final norm's output (what the unembedding reads) for every row."""
    located = located or locate(model)
    got: list[torch.Tensor] = []
    handle = located.final_norm.register_forward_hook(lambda m, a, out: got.append(_output_hidden(out)))
    try:
        _forward(model, ids, mask)
    finally:
        handle.remove()
    return got[-1]


def head_logits(model: nn.Module, hidden: torch.Tensor, located: Optional[Located] = None) -> torch.Tensor:
    """Logits of final-norm rows, as the model's own head computes them."""
    located = located or locate(model)
    logits = located.unembed(hidden)
    config = located_config(model)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scaling = getattr(config, "logits_scaling", None)
    if scaling and located.spec.name == "granite":
        logits = logits / scaling
    return logits


def located_config(model: nn.Module) -> Any:
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return base.config


class LayerReplay:
    """Recompute decoder layers ``start``.. on a new input with each layer's recorded arguments.

    ``capture`` runs the model once and keeps, for each layer from ``start`` on, the positional and
    keyword arguments it was called with (attention masks and position embeddings may differ by
    layer type), and ``start``'s input. ``run(hidden)`` calls those layers in turn (their hooks
    fire as in a normal pass) and the final norm, returning what ``final_hidden`` would."""

    def __init__(self, model: nn.Module, start: int, located: Optional[Located] = None) -> None:
        self.model = model
        self.located = located or locate(model)
        self.start = start
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.final: Optional[torch.Tensor] = None

    @property
    def input(self) -> torch.Tensor:
        args, kwargs = self.calls[0]
        return args[0] if args else kwargs["hidden_states"]

    @torch.no_grad()
    def capture(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One plain forward pass; returns its final hidden states."""
        layers = self.located.layers
        self.calls = [((), {})] * (len(layers) - self.start)

        def keep(offset: int) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                self.calls[offset] = (args, dict(kwargs))
            return hook

        handles = [layers[j].register_forward_pre_hook(keep(j - self.start), with_kwargs=True)
                   for j in range(self.start, len(layers))]
        try:
            self.final = final_hidden(self.model, ids, mask, self.located)
        finally:
            for h in handles:
                h.remove()
        return self.final

    @torch.no_grad()
    def run(self, hidden: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.input if hidden is None else hidden
        layers = self.located.layers
        for offset, (args, kwargs) in enumerate(self.calls):
            if args:
                out = layers[self.start + offset](h, *args[1:], **kwargs)
            else:
                out = layers[self.start + offset](*args, **dict(kwargs, hidden_states=h))
            h = _output_hidden(out)
        return _output_hidden(self.located.final_norm(h))


class RowVector:
    """Adds ``vector`` to decoder layer ``layer``'s output in batch rows ``rows`` only (a context
    manager): the vanilla and steered copies of a sequence run in one batch."""

    def __init__(self, model: nn.Module, layer: int, vector: torch.Tensor, rows: Sequence[int],
                 located: Optional[Located] = None) -> None:
        self.located = located or locate(model)
        self.layer, self.vector, self.rows = layer, vector, list(rows)
        self._handle: Any = None

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        hidden = _output_hidden(output)
        hidden = hidden.clone()
        hidden[self.rows] += self.vector.to(device=hidden.device, dtype=hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def __enter__(self) -> "RowVector":
        self._handle = self.located.layers[self.layer].register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


@contextlib.contextmanager
def layer_outputs(model: nn.Module, callback: Callable[[int, torch.Tensor], None],
                  located: Optional[Located] = None) -> Iterator[None]:
    """Call ``callback(layer index, output hidden [B, T, d])`` after every decoder layer (the
    residual stream after layer l, before the final norm), whatever the layer returns (a tensor
    or a tuple: the reference code's hook silently recorded nothing for tensor outputs)."""
    located = located or locate(model)

    def make(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            callback(index, _output_hidden(output))
        return hook

    handles = [layer.register_forward_hook(make(i)) for i, layer in enumerate(located.layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
