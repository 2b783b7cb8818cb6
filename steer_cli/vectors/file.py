"""The vectors file: safetensors with one float32 tensor ``vectors`` [num_layers, hidden] + metadata.

Every command that takes vectors reads this file. Metadata (safetensors stores strings only; we
JSON-encode each value) records where the vectors come from and where they go:

    format            "steer-vectors"
    format_version    1
    base_model        name or path of the model they were trained on
    num_layers, hidden_size
    layers            indices of the steered layers (rows of other layers are zero)
    place             "layer_output" or "down_proj_bias" (see steer_cli.patching.steering)
    setup             "steering" (or where they were extracted from)
    step              training step
    unembed_sha256    hash of the unembedding matrix, so ``lens`` can tell a different model
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from steer_cli.errors import SteerError
from steer_cli.io import atomic_path

FORMAT = "steer-vectors"
FORMAT_VERSION = 1
TENSOR_NAME = "vectors"

_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, zip (torch.save)


def save_vectors(path: str | Path, vectors: Any, **metadata: Any) -> Path:
    """Write vectors atomically; returns the path. ``vectors`` is a [L, d] tensor or array."""
    tensor = torch.as_tensor(vectors).detach().to("cpu", torch.float32).contiguous()
    if tensor.ndim != 2:
        raise SteerError(f"vectors must be a 2-D [num_layers, hidden] matrix, got shape {list(tensor.shape)}")
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "num_layers": tensor.shape[0],
        "hidden_size": tensor.shape[1],
    }
    meta.update({k: v for k, v in metadata.items() if v is not None})
    meta.setdefault("layers", list(range(tensor.shape[0])))
    encoded = {k: json.dumps(v) for k, v in meta.items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({TENSOR_NAME: tensor}, str(tmp), metadata=encoded)
    return path


def load_vectors(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Read a vectors file -> (float32 tensor [L, d], metadata dict). Clear errors for bad files."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = path / "vectors.safetensors"
        if not candidate.exists():
            raise SteerError(f"{path} is a directory without vectors.safetensors; pass the file itself")
        path = candidate
    if not path.exists():
        raise SteerError(f"vectors file {path} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        raise SteerError(f"cannot read vectors file {path}: {err.strerror}") from None
    if path.suffix == ".npy" or head.startswith(b"\x93NUMPY"):
        return load_npy(path), {"format": FORMAT, "source": str(path)}
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
            names = list(f.keys())
            tensor = f.get_tensor(TENSOR_NAME) if TENSOR_NAME in names else None
    except Exception as err:  # safetensors raises its own error types for malformed headers
        # Checked only after parsing failed: a safetensors header length may start with 0x80 too.
        if any(head.startswith(m) for m in _PICKLE_MAGIC):
            raise SteerError(
                f"{path} is a pickle/torch.save file; steer only loads safetensors (pickles can run code). "
                "Convert it with `steer extract` from a checkpoint, or save the tensor with safetensors"
            ) from None
        raise SteerError(f"{path} is not a valid safetensors vectors file ({err})") from None
    if tensor is None:
        raise SteerError(
            f"{path} has no tensor named {TENSOR_NAME!r} (it has {', '.join(names[:5]) or 'none'}); "
            "if it is a model checkpoint, use `steer extract` to get a vectors file"
        )
    return _validated(tensor, path), _decode_meta(raw_meta)


def load_npy(path: str | Path) -> Any:
    """A [L, d] matrix from an .npy file (the reference implementation's export)."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise SteerError(f"{path} is not a plain numeric .npy array ({err})") from None
    return _validated(torch.from_numpy(np.asarray(array, dtype=np.float32)), Path(path))


def _validated(tensor: Any, path: Path) -> Any:
    if tensor.ndim != 2:
        raise SteerError(f"{path}: vectors must be [num_layers, hidden], got shape {list(tensor.shape)}")
    tensor = tensor.to(torch.float32)
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).nonzero()[:, 0].unique().tolist()
        raise SteerError(f"{path}: vectors contain NaN or infinite values (layers {bad[:10]})")
    return tensor


def _decode_meta(raw: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            meta[key] = value
    return meta


def check_fits(vectors: Any, num_layers: int, hidden: int, *, source: str | Path = "vectors") -> None:
    """Raise a SteerError unless ``vectors`` is [num_layers, hidden]."""
    if tuple(vectors.shape) != (num_layers, hidden):
        raise SteerError(
            f"{source} has shape [{vectors.shape[0]}, {vectors.shape[1]}] but the model needs "
            f"[{num_layers}, {hidden}] (num_layers x hidden_size); they were trained on another model"
        )


def unembed_sha256(weight: Any) -> str:
    """Hash of the unembedding matrix (shape + float32 bytes, in row chunks to bound memory)."""
    h = hashlib.sha256(str(tuple(weight.shape)).encode())
    w = weight.detach()
    for start in range(0, w.shape[0], 8192):
        h.update(w[start:start + 8192].to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
