"""GGUF export: a llama.cpp control vector.

GGUF layer numbering (llama.cpp ``common_control_vector_load_one`` in ``common/common.cpp`` and
``llama_adapter_cvec`` in ``src/llama-adapter.cpp``; repeng's ``ControlVector.export_gguf`` writes
the same): tensor ``direction.N`` is added to the output of decoder layer N, counted from 0 (after
that layer's final residual add, at every position: ``cur = build_cvec(cur, il)`` right before
``l_out``). So our row l (the vector added at the end of 0-based layer l) is written as
``direction.l``, unchanged. llama.cpp cannot steer layer 0: it rejects ``direction.0`` (and skips
the whole file), so a non-zero row 0 is refused unless dropped on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf

from steer_cli.errors import SteerError
from steer_cli.io import atomic_path
from steer_cli.models import resolve_model

GGUF_ARCH = "controlvector"

GGUF_LAYERS_NOTE = (
    "GGUF (llama.cpp control vector) layer numbering: tensor direction.N is added to the output of "
    "decoder layer N counted from 0, which is steer's row N, written unchanged; llama.cpp cannot steer "
    "layer 0 (it rejects direction.0), so a non-zero row 0 needs --drop-layer-0."
)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_gguf(output: Path, vectors: Any, meta: dict[str, Any], *, drop_layer_0: bool = False) -> list[str]:
    """A llama.cpp control vector: one F32 ``direction.N`` per steered layer N >= 1 (see module doc)."""
    layers = sorted(int(i) for i in meta.get("layers", range(vectors.shape[0])))
    notes = []
    if 0 in layers:
        if drop_layer_0:
            notes.append("layer 0 dropped: llama.cpp cannot steer it")
        elif bool(vectors[0].abs().max() > 0):
            raise SteerError("layer 0 has a non-zero vector, which llama.cpp cannot apply (it rejects direction.0); "
                             "pass --drop-layer-0 to write the other layers anyway (a different intervention)")
        layers.remove(0)
    if not layers:
        raise SteerError("nothing to write: the only steered layer is 0, which llama.cpp cannot steer")
    hint, hint_note = _model_hint(meta.get("base_model"))
    if hint_note:
        notes.append(hint_note)
    if meta.get("place") == "down_proj_bias":
        notes.append("llama.cpp adds control vectors to the layer output; that equals these down_proj_bias "
                     "vectors only where no norm follows the MLP (not Gemma2/3, OLMo2)")
    with atomic_path(output) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch=GGUF_ARCH)
        writer.add_string(f"{GGUF_ARCH}.model_hint", hint)
        writer.add_uint32(f"{GGUF_ARCH}.layer_count", len(layers))
        for layer in layers:
            writer.add_tensor(f"direction.{layer}", vectors[layer].detach().cpu().float().numpy().copy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    notes.append(f"GGUF control vector: direction.N for layers {layers} (each added to the output of 0-based "
                 "decoder layer N)")
    return notes


# llama.cpp's architecture names where they differ from transformers' model_type.
_LLAMA_CPP_ARCH = {"mistral": "llama", "gpt_neox": "gptneox", "gemma3_text": "gemma3"}


def _model_hint(base_model: Any) -> tuple[str, str | None]:
    """llama.cpp architecture name of the base model (what its own generator writes), when knowable."""
    if not base_model:
        return "unknown", "no base model recorded; controlvector.model_hint = unknown"
    try:
        config = _read_json(Path(resolve_model(str(base_model))) / "config.json")
    except SteerError:
        config = None
    model_type = (config or {}).get("model_type")
    if model_type:
        return _LLAMA_CPP_ARCH.get(model_type, model_type), None
    return str(base_model), None
