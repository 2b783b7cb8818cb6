"""Training setups on one model: ``steering`` (vectors only), ``lora`` (peft on down_proj), ``full``.

``prepare_setup`` freezes what must not train and returns a ``Trainable``: the model to run, the
parameters to optimise, and how to save/load them. Base weights of ``steering`` and ``lora`` never
get gradients.

The KL term compares the policy with the model it started from (``Trainable.reference``): the
steering setup switches its vectors off, LoRA its adapter (a PiSSA adapter goes back to its
initial weights, since PiSSA moved them out of the base weights), and full fine-tuning keeps a
frozen copy (``frozen_reference_copy``), as the reference code does.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

from steer_cli.errors import SteerError
from steer_cli.patching.archs import locate
from steer_cli.patching.steering import SteeringHandle, attach_steering
from steer_cli.train.fsdp import gathered

SETUPS = ("steering", "lora", "full")


@dataclass
class Trainable:
    kind: str
    model: nn.Module  # the module to call (a peft wrapper for lora)
    params: list[nn.Parameter]
    steering: Optional[SteeringHandle] = None
    info: dict[str, Any] = field(default_factory=dict)
    # full with a KL term: the frozen starting model (CPU-resident when reference_offload)
    reference_model: Optional[nn.Module] = None
    reference_offload: bool = False
    # PiSSA LoRA: the adapter's initial weights (A0, B0, peft's state-dict format) and a directory
    # holding them as an adapter, which peft's conversion to a plain LoRA reads
    pissa_init: Optional[dict[str, torch.Tensor]] = None
    _pissa_dir: Any = None
    # Float32 master weights computed in this dtype (setup full in bfloat16): forward passes run
    # under torch.autocast, as DeepSpeed's bf16 mode keeps float32 copies for the optimizer.
    autocast_dtype: Optional[torch.dtype] = None

    @property
    def pissa(self) -> bool:
        return self.pissa_init is not None

    def save_adapter(self, path: str | Path) -> Path:
        """Write the LoRA adapter into ``path``, in the form that applies to the original base weights.

        PiSSA moved the adapter's initial product B0 A0 out of the base weights (W -> W - B0 A0), so
        its adapter alone, put on the original W, gives W + B0 A0 + dBA. It is written converted
        (peft's ``path_initial_model_for_weight_conversion``, as the reference code does before each
        vLLM sync): the rank-2r plain LoRA [B | -B0][A ; A0] = BA - B0 A0, which vLLM, ``steer eval``
        and other tools put on the original weights. Other adapters are written as they are.
        """
        path = Path(path)
        if self.pissa_init is None:
            self.model.save_pretrained(str(path), safe_serialization=True)
        else:
            init = Path(self._pissa_dir.name) / PISSA_INIT_NAME
            with warnings.catch_warnings():
                # peft loads the initial adapter beside the PiSSA one for a moment, and warns of it
                warnings.filterwarnings("ignore", message="PiSSA changes the base weights")
                self.model.save_pretrained(str(path), safe_serialization=True,
                                           path_initial_model_for_weight_conversion=str(init))
        return path

    @property
    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def named_trainable(self) -> dict[str, torch.Tensor]:
        if self.steering is not None:
            return {"vectors": self.steering.vectors}
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def autocast(self) -> Any:
        """Context for every forward pass of the policy (update and generation)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device = next(self.model.parameters()).device
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def generation(self) -> Any:
        """Context for generating with the policy: autocast, and a sharded model gathered whole."""

        stack = contextlib.ExitStack()
        stack.enter_context(self.autocast())
        stack.enter_context(gathered(self.model))
        return stack

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """The policy the run started from, as a model to call (for the KL term): steering with its
        vectors off, LoRA with its adapter off, or for full fine-tuning the frozen copy, moved to
        the policy's device for the block when it is offloaded."""
        if self.steering is not None:
            with self.steering.disabled():
                yield self.model
        elif self.kind == "lora" and self.pissa_init is not None:
            # Adapter off would leave W - B0 A0: the start is the adapter back at A0, B0.

            trained = {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
            set_peft_model_state_dict(self.model, self.pissa_init)
            try:
                yield self.model
            finally:
                set_peft_model_state_dict(self.model, trained)
        elif self.kind == "lora":
            with self.model.disable_adapter():
                yield self.model
        elif self.reference_model is None:
            raise SteerError("full fine-tuning with a KL term needs a frozen reference copy of the model "
                             "(prepare_setup(..., kl_reference=True)); without one the KL would be 0")
        elif not self.reference_offload:
            yield self.reference_model
        else:
            device = next(self.model.parameters()).device
            self.reference_model.to(device)
            try:
                yield self.reference_model
            finally:
                self.reference_model.to("cpu")


def frozen_reference_copy(model: nn.Module, *, offload: bool = False,
                          dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A frozen copy of ``model`` as it is now (eval mode, no gradients): the KL reference of full
    fine-tuning. With ``offload`` its weights are copied straight into CPU memory (no second copy on
    the device at any time); ``dtype`` stores its floating-point weights in that dtype (the compute
    dtype of a model kept in float32 master weights). The one place the copy is made: under FSDP
    it is not sharded yet (each process holds a whole copy); a sharded copy belongs here.
    """
    memo: dict[int, Any] = {}
    if offload or dtype is not None:
        # deepcopy takes these for the originals: tied weights stay tied (one Parameter object).
        for p in model.parameters():
            to = dtype if dtype is not None and p.is_floating_point() else p.dtype
            memo[id(p)] = nn.Parameter(p.detach().to("cpu" if offload else p.device, to, copy=True),
                                       requires_grad=False)
        for b in model.buffers():
            memo[id(b)] = b.detach().to("cpu" if offload else b.device, copy=True)
    ref = copy.deepcopy(model, memo)
    ref.requires_grad_(False)
    return ref.eval()


PISSA_INIT_NAME = "pissa_init"  # peft loads the initial adapter under its directory's name


def keep_pissa_init(trainable: Trainable) -> Trainable:
    """Record a freshly PiSSA-initialised adapter's weights (memory, and a temporary adapter
    directory for peft's conversion); call before any training step."""

    trainable.pissa_init = {k: v.detach().clone() for k, v in get_peft_model_state_dict(trainable.model).items()}
    trainable._pissa_dir = tempfile.TemporaryDirectory(prefix="steer-pissa-")
    trainable.model.save_pretrained(str(Path(trainable._pissa_dir.name) / PISSA_INIT_NAME), safe_serialization=True)
    return trainable


def is_pissa_adapter(adapter_dir: str | Path) -> bool:
    """True for an adapter saved as PiSSA trained it (applies to W - B0 A0, not to W)."""
    try:
        config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return False
    return str(config.get("init_lora_weights", "")).lower().startswith("pissa")


def convert_pissa_adapter(base_model: nn.Module, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Rewrite an unconverted PiSSA adapter (``is_pissa_adapter``) as the plain rank-2r LoRA that
    applies to the original weights of ``base_model`` (which this modifies: PiSSA's initialisation
    is rerun on it to recover A0 and B0, deterministic from the base weights)."""
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = False
    trainable = keep_pissa_init(Trainable("lora", get_peft_model(base_model, config), []))
    set_peft_model_state_dict(trainable.model, load_file(str(Path(adapter_dir) / "adapter_model.safetensors")))
    return trainable.save_adapter(out_dir)


def lora_target_regex(model: nn.Module) -> str:
    """A peft target regex matching exactly the MLP down projections of the decoder layers."""
    located = locate(model)
    down = "|".join(re.escape(d) for d in located.spec.down_proj)
    return rf"(.*\.)?{re.escape(located.layers_path)}\.\d+\.({down})"


def prepare_setup(
    model: nn.Module,
    kind: str,
    *,
    vectors: Optional[torch.Tensor] = None,
    layers: Optional[list[int]] = None,
    place: str = "layer_output",
    lora_rank: int = 4,
    lora_alpha: float = 4.0,
    lora_dropout: float = 0.0,
    lora_init: str = "default",
    adapter_dir: Optional[str | Path] = None,
    kl_reference: bool = False,
    reference_offload: bool = False,
    reference_dtype: Optional[torch.dtype] = None,
) -> Trainable:
    """``kl_reference``: the run has a KL term, so ``full`` keeps a frozen copy of the model
    (``reference_offload``: in CPU memory; ``reference_dtype``: its weights' dtype, default the
    model's); the other setups need none."""
    if kind not in SETUPS:
        raise SteerError(f"unknown setup {kind!r}; choose one of {', '.join(SETUPS)}")
    if kind == "steering":
        model.requires_grad_(False)
        handle = attach_steering(model, vectors, layers=layers, place=place, trainable=True)
        return Trainable(kind, model, [handle.vectors], steering=handle,
                         info={"layers": list(handle.layers), "place": place})
    if kind == "lora":
        model.requires_grad_(False)
        if adapter_dir is not None:
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
        else:
            config = LoraConfig(
                r=lora_rank,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=lora_target_regex(model),
                init_lora_weights="pissa" if lora_init == "pissa" else True,
                bias="none",
            )
            peft_model = get_peft_model(model, config)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        trainable = Trainable(kind, peft_model, params, info={"rank": lora_rank, "alpha": lora_alpha})
        if lora_init == "pissa" and adapter_dir is None:
            keep_pissa_init(trainable)
        return trainable
    reference = (frozen_reference_copy(model, offload=reference_offload, dtype=reference_dtype)
                 if kl_reference else None)
    model.requires_grad_(True)
    return Trainable(kind, model, [p for p in model.parameters() if p.requires_grad],
                     reference_model=reference, reference_offload=reference_offload and kl_reference)
