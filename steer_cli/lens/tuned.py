"""The tuned lens (Belrose et al. 2023; the reference's ``train/tuned_lens.py``, E12): one affine
translator per layer, h -> h + W h + b, trained so that final_norm + unembedding of the translated
residual matches the model's own next-token distribution.

Files are in the tuned-lens library's layout, so ``tuned_lens.TunedLens.from_model_and_pretrained
(model, DIR)`` (or ``load``) reads them:

    DIR/config.json   {"base_model_name_or_path", "d_model", "num_hidden_layers", "bias": true,
                       "base_model_revision", "unembed_hash", "lens_type": "linear_tuned_lens"}
    DIR/params.pt     torch.save of the translators' ModuleList state dict:
                       {"0.weight": [d, d], "0.bias": [d], ..., "<L-1>.bias"}
    DIR/steer_lens.json   what steer adds: the layers trained, KLs, data, schedule (the library
                       ignores it)

The library's translator i reads ``hidden_states[i]`` of a transformers forward: i = 0 is the
embedding output and i = l + 1 the output of decoder layer l, where a steering vector s_l sits.
The last layer's output has no translator (the model's own head reads it): the lens there is the
identity, and its KL to the model is 0. Translators start at W = 0, b = 0 (the identity), and
the library adds them residually, so the linear part is A = I + W.

A steering vector is a direction, so it is read through the linear part only: A s_l. (The
reference's ``tuned_lens_stats`` applies A s + b, the map of a point.)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from steer_cli.errors import SteerError
from steer_cli.io import atomic_path, atomic_write_json

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.pt"
STEER_FILE = "steer_lens.json"
LENS_TYPE = "linear_tuned_lens"
# The fields of the library's TunedLensConfig (0.2): it warns about and drops any others.
CONFIG_KEYS = ("base_model_name_or_path", "d_model", "num_hidden_layers", "bias", "base_model_revision",
               "unembed_hash", "lens_type")


def translator_index(layer: int, num_layers: int) -> Optional[int]:
    """The library's translator reading the output of decoder layer ``layer`` (None: the last
    layer, read by the model's own head)."""
    if not 0 <= layer < num_layers:
        raise SteerError(f"layer {layer} is out of range: the model has layers 0..{num_layers - 1}")
    return layer + 1 if layer < num_layers - 1 else None


def library_unembed_hash(weight: torch.Tensor) -> str:
    """The tuned-lens library's ``Unembed.unembedding_hash``: sha256 of numpy's summary text of the
    float32 matrix at one decimal (numpy's default print options, set here so a caller's own
    options cannot change it)."""
    array = weight.detach().to("cpu", torch.float32).numpy()
    with np.printoptions(precision=8, threshold=1000, edgeitems=3, linewidth=75, suppress=False,
                         nanstr="nan", infstr="inf", sign="-", floatmode="maxprec", legacy=False):
        text = np.array_str(array, precision=1)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class TunedLens:
    """Translators of every library index 0..L-1: ``weight[i]`` is W_i [d, d], ``bias[i]`` b_i."""

    base_model: str
    num_layers: int
    hidden: int
    weight: torch.Tensor  # [L, d, d] float32
    bias: torch.Tensor  # [L, d] float32
    unembed_hash: Optional[str] = None
    revision: Optional[str] = None
    info: dict[str, Any] = field(default_factory=dict)  # steer_lens.json

    @classmethod
    def identity(cls, base_model: str, num_layers: int, hidden: int, **kwargs: Any) -> "TunedLens":
        return cls(base_model, num_layers, hidden, torch.zeros(num_layers, hidden, hidden),
                   torch.zeros(num_layers, hidden), **kwargs)

    def linear(self, layer: int) -> torch.Tensor:
        """A = I + W of the translator reading decoder layer ``layer``'s output (I for the last)."""
        eye = torch.eye(self.hidden)
        index = translator_index(layer, self.num_layers)
        return eye if index is None else eye + self.weight[index]

    def project_directions(self, vectors: torch.Tensor) -> torch.Tensor:
        """Row l of ``vectors`` [L, d] mapped by layer l's linear part: A_l s_l (no bias)."""
        if tuple(vectors.shape) != (self.num_layers, self.hidden):
            raise SteerError(f"the vectors are [{vectors.shape[0]}, {vectors.shape[1]}] but the tuned lens is for a "
                             f"model of {self.num_layers} layers x {self.hidden}; they belong to another model")
        v = vectors.detach().to(torch.float32)
        out = v.clone()
        out[:-1] += torch.einsum("lij,lj->li", self.weight[1:], v[:-1])
        return out

    def translate(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """The affine map of a residual-stream point at decoder layer ``layer``'s output."""
        index = translator_index(layer, self.num_layers)
        if index is None:
            return hidden
        w = self.weight[index].to(hidden.device, hidden.dtype)
        return hidden + hidden @ w.T + self.bias[index].to(hidden.device, hidden.dtype)


def save_tuned_lens(path: str | Path, lens: TunedLens) -> Path:
    """Write ``config.json``, ``params.pt`` and ``steer_lens.json`` (each atomically; the config
    last, so a directory with a config holds a whole lens)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for i in range(lens.num_layers):
        state[f"{i}.weight"] = lens.weight[i].contiguous().clone()
        state[f"{i}.bias"] = lens.bias[i].contiguous().clone()
    with atomic_path(out / PARAMS_FILE) as tmp:
        torch.save(state, tmp)
    atomic_write_json(out / STEER_FILE, lens.info)
    config = {"base_model_name_or_path": lens.base_model, "d_model": lens.hidden,
              "num_hidden_layers": lens.num_layers, "bias": True, "base_model_revision": lens.revision,
              "unembed_hash": lens.unembed_hash, "lens_type": LENS_TYPE}
    atomic_write_json(out / CONFIG_FILE, config)
    return out


def load_tuned_lens(path: str | Path) -> TunedLens:
    """Read a lens directory (ours or the library's); one-line errors for anything else."""
    p = Path(path).expanduser()
    if not (p / CONFIG_FILE).is_file() or not (p / PARAMS_FILE).is_file():
        raise SteerError(f"{p} is not a tuned lens directory (it needs {CONFIG_FILE} and {PARAMS_FILE}; "
                         "train one with `steer lens train-tuned`)")
    try:
        config = json.loads((p / CONFIG_FILE).read_text())
        state = torch.load(p / PARAMS_FILE, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, EOFError) as err:
        raise SteerError(f"cannot read the tuned lens in {p}: {err}") from None
    if config.get("lens_type", LENS_TYPE) != LENS_TYPE:
        raise SteerError(f"{p} holds a {config.get('lens_type')!r} lens; only {LENS_TYPE!r} lenses are read")
    try:
        layers, hidden = int(config["num_hidden_layers"]), int(config["d_model"])
    except (KeyError, TypeError, ValueError):
        raise SteerError(f"{p / CONFIG_FILE} lacks num_hidden_layers / d_model") from None
    weight = torch.zeros(layers, hidden, hidden)
    bias = torch.zeros(layers, hidden)
    for i in range(layers):
        w, b = state.get(f"{i}.weight"), state.get(f"{i}.bias")
        if w is None or tuple(w.shape) != (hidden, hidden):
            raise SteerError(f"{p / PARAMS_FILE} has no [{hidden}, {hidden}] translator {i}.weight")
        weight[i] = w.to(torch.float32)
        if b is not None:
            bias[i] = b.to(torch.float32)
    info = {}
    if (p / STEER_FILE).is_file():
        try:
            info = json.loads((p / STEER_FILE).read_text())
        except (OSError, ValueError):
            info = {}
    return TunedLens(str(config.get("base_model_name_or_path", "")), layers, hidden, weight, bias,
                     config.get("unembed_hash"), config.get("base_model_revision"), info)


# -- the lens as a function of the residual stream ---------------------------------------------
def head_logits(located: Any, config: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of final-norm inputs ``hidden`` exactly as the model's head computes them: final
    norm, unembedding, then Granite's logits scaling or Gemma's soft-capping where the config has
    them."""
    logits = located.unembed(located.final_norm(hidden))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scaling = getattr(text, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    cap = getattr(text, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


class LayerOutputs:
    """Forward hooks keeping the outputs of some decoder layers (tuple or tensor outputs)."""

    def __init__(self, located: Any, layers: Sequence[int]) -> None:
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [located.layers[i].register_forward_hook(self._keep(i)) for i in layers]

    def _keep(self, layer: int) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.outputs[layer] = (output[0] if isinstance(output, (tuple, list)) else output).detach()

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def kl_rows(teacher_logp: torch.Tensor, lens_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_model || p_lens) per row, from the model's log-probabilities and the lens's logits."""
    lens_logp = torch.log_softmax(lens_logits.to(torch.float32), dim=-1)
    return (teacher_logp.exp() * (teacher_logp - lens_logp)).sum(-1)


def translated_logits(located: Any, config: Any, hidden: torch.Tensor, weight: Optional[torch.Tensor],
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Head logits of residual rows ``hidden`` [T, d] after h + W h + b (float32 translator; the
    head runs in the model's dtype, as the reference's lens does). ``weight`` None: the logit lens."""
    if weight is None:
        return head_logits(located, config, hidden)
    h = hidden.to(torch.float32)
    h = h + h @ weight.T + bias
    return head_logits(located, config, h.to(hidden.dtype))


def forward_layers(model: nn.Module, located: Any, ids: Sequence[int],
                   layers: Sequence[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """One teacher-forced pass of ``ids``: the model's log-probabilities [T, V] (float32) and the
    outputs [T, d] of ``layers``."""
    device = next(model.parameters()).device
    recorder = LayerOutputs(located, layers)
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([list(ids)], device=device), use_cache=False).logits[0]
    finally:
        recorder.remove()
    return torch.log_softmax(logits.to(torch.float32), dim=-1), {i: recorder.outputs[i][0] for i in layers}


def sequence_kls(model: nn.Module, located: Any, ids: Sequence[int], lenses: dict[str, Optional[TunedLens]],
                 layers: Sequence[int], chunk: int = 1024) -> dict[str, dict[int, float]]:
    """Mean KL(p_model || p_lens) over the positions of ``ids`` at each of ``layers``, for each
    named lens (None: the logit lens), from one forward pass, ``chunk`` positions at a time."""
    teacher, hidden = forward_layers(model, located, ids, layers)
    out: dict[str, dict[int, float]] = {name: {} for name in lenses}
    with torch.no_grad():
        for name, lens in lenses.items():
            for layer in layers:
                index = translator_index(layer, located.num_layers)
                w = b = None
                if lens is not None and index is not None:
                    w = lens.weight[index].to(teacher.device)
                    b = lens.bias[index].to(teacher.device)
                total = 0.0
                for start in range(0, teacher.shape[0], chunk):
                    rows = slice(start, start + chunk)
                    logits = translated_logits(located, model.config, hidden[layer][rows], w, b)
                    total += float(kl_rows(teacher[rows], logits).sum())
                out[name][layer] = total / teacher.shape[0]
    return out
