"""Tiny random causal LMs of every family in the patching table, built from configs (no downloads)."""

from __future__ import annotations

import torch

COMMON = dict(vocab_size=96, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
              num_key_value_heads=1, intermediate_size=64, max_position_embeddings=128,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)

CONFIGS: dict[str, dict] = {
    "llama": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "mistral": {},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "sliding_window": 32},
    "gemma3_text": {"head_dim": 16, "sliding_window": 32},
    "olmo": {},
    "olmo2": {},
    "phi3": {},
    "granite": {},
    "stablelm": {},
    "starcoder2": {},
    "gpt_neox": {},
    "gpt2": {"n_embd": 32, "n_layer": 3, "n_head": 2, "n_positions": 128, "vocab_size": 96},
}


def make_config(model_type: str, **overrides):
    from transformers import AutoConfig

    kwargs = dict(COMMON) if model_type != "gpt2" else {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    kwargs.update(CONFIGS[model_type])
    kwargs.update(overrides)
    return AutoConfig.for_model(model_type, **kwargs)


def make_model(model_type: str, seed: int = 0, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = make_config(model_type, **overrides)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init of biases/norms so "zero" and "identity" parts do not hide mistakes.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def sample_ids(batch: int = 2, length: int = 7, vocab: int = 96, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g)
