"""Training setups on one model: ``steering`` (vectors only), ``lora`` (peft on down_proj), ``full``.

``prepare_setup`` freezes what must not train and returns a ``Trainable``: the model to run, the
parameters to optimise, and how to save/load them. Base weights of ``steering`` and ``lora`` never
get gradients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from steer_cli.errors import SteerError
from steer_cli.patching.archs import locate
from steer_cli.patching.steering import SteeringHandle, attach_steering

SETUPS = ("steering", "lora", "full")


@dataclass
class Trainable:
    kind: str
    model: nn.Module  # the module to call (a peft wrapper for lora)
    params: list[nn.Parameter]
    steering: Optional[SteeringHandle] = None
    info: dict[str, Any] = field(default_factory=dict)
    # Float32 master weights computed in this dtype (setup full in bfloat16): forward passes run
    # under torch.autocast, as DeepSpeed's bf16 mode keeps float32 copies for the optimizer.
    autocast_dtype: Optional[torch.dtype] = None

    @property
    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def named_trainable(self) -> dict[str, torch.Tensor]:
        if self.steering is not None:
            return {"vectors": self.steering.vectors}
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def autocast(self) -> Any:
        """Context for every forward pass of the policy (update and generation)."""
        import contextlib

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device = next(self.model.parameters()).device
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def generation(self) -> Any:
        """Context for generating with the policy: autocast, and a sharded model gathered whole."""
        import contextlib

        from steer_cli.train.fsdp import gathered

        stack = contextlib.ExitStack()
        stack.enter_context(self.autocast())
        stack.enter_context(gathered(self.model))
        return stack

    def reference(self) -> Any:
        """Context manager running the frozen base policy (for the KL term), no second copy."""
        import contextlib

        if self.steering is not None:
            return self.steering.disabled()
        if self.kind == "lora":
            return self.model.disable_adapter()
        return contextlib.nullcontext()


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
) -> Trainable:
    if kind not in SETUPS:
        raise SteerError(f"unknown setup {kind!r}; choose one of {', '.join(SETUPS)}")
    if kind == "steering":
        model.requires_grad_(False)
        handle = attach_steering(model, vectors, layers=layers, place=place, trainable=True)
        return Trainable(kind, model, [handle.vectors], steering=handle,
                         info={"layers": list(handle.layers), "place": place})
    if kind == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

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
        return Trainable(kind, peft_model, params, info={"rank": lora_rank, "alpha": lora_alpha})
    model.requires_grad_(True)
    return Trainable(kind, model, [p for p in model.parameters() if p.requires_grad])
