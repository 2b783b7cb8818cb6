"""vLLM worker extension: steering-vector and weight updates called by method name.

Passed to vLLM as ``worker_extension_cls="steer_cli.rollout.vllm_worker.SteeringWorkerExtension"``
(a dotted name: vLLM resolves it with ``resolve_obj_by_qualname``, which takes no ``module:Class``);
vLLM mixes it into its worker class in every worker process, and ``LLM.collective_rpc(name, ...)``
calls these methods by name (no pickled functions, so no ``VLLM_ALLOW_INSECURE_SERIALIZATION``).
vLLM imports this module in each worker before building the model, so importing it registers the
``Steer<Arch>`` classes there (spawned workers do not inherit the parent's registry).
"""

from __future__ import annotations

import time

import torch

from steer_cli.rollout import vllm_models
from steer_cli.rollout.packing import pack_tensor, unpack_tensor

vllm_models.register()


class SteeringWorkerExtension:
    """Methods run inside each vLLM worker (``self`` is vLLM's worker)."""

    def _steer_layers(self) -> tuple[list[tuple[int, torch.nn.Module]], tuple[int, int]]:
        model = self.model_runner.get_model()
        arch = getattr(model, "steer_arch", None)
        if arch is None:
            raise RuntimeError(
                f"the model in this vLLM worker ({type(model).__name__}) has no steering buffers; "
                "start the engine with hf_overrides={'architectures': ['Steer<Arch>']}"
            )
        return vllm_models.decoder_layers(model, arch), model.steer_shape

    def steer_shape(self) -> tuple[int, int]:
        """``(num_layers, hidden_size)`` of the steering matrix."""
        return tuple(self._steer_layers()[1])

    def set_steering_vectors(self, packed_vectors) -> float:
        """Copy packed vectors [num_layers, hidden] into the layer buffers in place; returns seconds."""
        start = time.perf_counter()
        vectors = unpack_tensor(packed_vectors)
        layers, shape = self._steer_layers()
        if tuple(vectors.shape) != tuple(shape):
            raise ValueError(f"steering vectors have shape {tuple(vectors.shape)}, expected {shape}")
        if layers:
            first = layers[0][1].steer_vector
            vectors = vectors.to(device=first.device, dtype=first.dtype)  # one host-to-device copy
        with torch.no_grad():
            for index, layer in layers:
                layer.steer_vector.copy_(vectors[index])
        if torch.cuda.is_available() and layers and layers[0][1].steer_vector.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def get_steering_vectors(self) -> tuple[list[int], tuple[str, list[int], bytes]]:
        """``(layer indices held here, packed float32 [num_layers, hidden])``; other rows are zero
        (pipeline parallelism splits the layers between workers)."""
        layers, shape = self._steer_layers()
        out = torch.zeros(shape, dtype=torch.float32)
        for index, layer in layers:
            out[index] = layer.steer_vector.detach().float().cpu()
        return [index for index, _ in layers], pack_tensor(out)

    def load_named_weights(self, named_packed: list) -> float:
        """Load checkpoint-format weights in place (vLLM's ``reload_weights``); returns seconds.

        Goes through vLLM's in-place reload so layers whose weights are repacked after loading
        (CPU GEMM, quantized kernels) are re-processed into their original storage.
        """
        start = time.perf_counter()
        weights = ((name, unpack_tensor(packed)) for name, packed in named_packed)
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        return time.perf_counter() - start
