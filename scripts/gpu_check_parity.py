"""vLLM greedy vs transformers greedy with steering vectors attached, before and after in-place
vector updates, with vLLM's compiled mode and CUDA graphs on (``enforce_eager=False``).

Part of scripts/gpu_check.sh; writes one JSON object: token agreement per round and ``equal_all``.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()

    import torch

    from steer_cli.models import load_causal_lm, load_tokenizer, resolve_model
    from steer_cli.patching.steering import attach_steering
    from steer_cli.rollout.base import SamplingSpec
    from steer_cli.rollout.hf import HFBackend
    from steer_cli.rollout.vllm import VLLMBackend

    cuda = torch.cuda.is_available()
    path = resolve_model("demo")
    # float32 on both sides: greedy paths then agree token for token (bf16 kernels differ between
    # the two engines, so bf16 greedy may part ways after a near-tie).
    model = load_causal_lm(path, dtype="float32", device="cuda" if cuda else "cpu")
    tok = load_tokenizer(path)
    g = torch.Generator().manual_seed(0)
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    prompts = [tok(f"What is {a} + {b}?")["input_ids"] for a, b in ((12, 30), (7, 45), (61, 19), (33, 33))]
    spec = SamplingSpec(n=1, temperature=0.0, top_p=1.0, top_k=-1, max_new_tokens=8 if args.quick else 48,
                        stop_token_ids=[], seed=0)
    handle = attach_steering(model, None, trainable=False)
    hf = HFBackend(model, tok, batch_prompts=len(prompts))
    engine_kwargs = dict(dtype="float32", gpu_memory_utilization=0.2 if cuda else 0.1, enforce_eager=not cuda,
                         max_model_len=256, seed=0)
    if not cuda:
        engine_kwargs["kv_cache_memory_bytes"] = 64 << 20
    rounds = []
    with VLLMBackend(path, **engine_kwargs) as engine:
        for r in range(3):
            vectors = (0.0 if r == 0 else 0.5 * r) * torch.randn(layers, hidden, generator=g)
            handle.set(vectors)
            sync_seconds = engine.set_vectors(vectors)  # in place: the compiled graphs stay
            a = [c[0].token_ids for c in hf.generate(prompts, spec)]
            b = [c[0].token_ids for c in engine.generate(prompts, spec)]
            same = sum(x == y for x, y in zip(a, b))
            rounds.append({"round": r, "vector_scale": 0.5 * r, "equal_prompts": same, "prompts": len(prompts),
                           "sync_seconds": sync_seconds})
    out = {"rounds": rounds, "equal_all": all(x["equal_prompts"] == x["prompts"] for x in rounds),
           "enforce_eager": engine_kwargs["enforce_eager"]}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
