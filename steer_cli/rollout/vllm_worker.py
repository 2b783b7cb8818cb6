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

    def _steered_model(self):
        model = self.model_runner.get_model()
        if getattr(model, "steer_arch", None) is None:
            raise RuntimeError(
                f"the model in this vLLM worker ({type(model).__name__}) has no steering buffers; "
                "start the engine with hf_overrides={'architectures': ['Steer<Arch>']}"
            )
        return model

    def _buffers(self, place) -> tuple[list[tuple[int, torch.Tensor]], tuple[int, int], object]:
        model = self._steered_model()
        place = place or model.steer_places[0]
        if place not in model.steer_places:
            raise ValueError(f"this engine steers at {', '.join(model.steer_places)}, not {place}")
        return vllm_models.steer_buffers(model, place), model.steer_shape, model

    def steer_shape(self) -> tuple[int, int]:
        """``(num_layers, hidden_size)`` of the steering matrix."""
        return tuple(self._steered_model().steer_shape)

    def set_steering_vectors(self, packed_vectors, place=None) -> float:
        """Copy packed vectors [num_layers, hidden] into the buffers of ``place`` (default: the
        engine's first place) in place, and zero those of its other places; returns seconds."""
        start = time.perf_counter()
        vectors = unpack_tensor(packed_vectors)
        buffers, shape, model = self._buffers(place)
        if tuple(vectors.shape) != tuple(shape):
            raise ValueError(f"steering vectors have shape {tuple(vectors.shape)}, expected {shape}")
        if buffers:
            first = buffers[0][1]
            vectors = vectors.to(device=first.device, dtype=first.dtype)  # one host-to-device copy
        chosen = {id(b) for _, b in buffers}
        with torch.no_grad():
            for index, buffer in buffers:
                buffer.copy_(vectors[index])
            for other in model.steer_places:
                for _, buffer in vllm_models.steer_buffers(model, other):
                    if id(buffer) not in chosen:
                        buffer.zero_()
        if torch.cuda.is_available() and buffers and buffers[0][1].is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def get_steering_vectors(self, place=None) -> tuple[list[int], tuple[str, list[int], bytes]]:
        """``(layer indices held here, packed float32 [num_layers, hidden])`` of ``place``; other
        rows are zero (pipeline parallelism splits the layers between workers)."""
        buffers, shape, _ = self._buffers(place)
        out = torch.zeros(shape, dtype=torch.float32)
        for index, buffer in buffers:
            out[index] = buffer.detach().float().cpu()
        return [index for index, _ in buffers], pack_tensor(out)

    def load_named_weights(self, named_packed: list) -> float:
        """Load checkpoint-format weights in place (vLLM's ``reload_weights``); returns seconds.

        Goes through vLLM's in-place reload so layers whose weights are repacked after loading
        (CPU GEMM, quantized kernels) are re-processed into their original storage.
        """
        start = time.perf_counter()
        weights = ((name, unpack_tensor(packed)) for name, packed in named_packed)
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        return time.perf_counter() - start
