"""Tiny random causal LMs of every family in the patching table, built from configs (no downloads)."""

from __future__ import annotations

import torch

from steer_cli.models import dtype_kwarg

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
    model = AutoModelForCausalLM.from_config(config, **dtype_kwarg(torch.float32))
    # Random init of biases/norms so "zero" and "identity" parts do not hide mistakes.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def sample_ids(batch: int = 2, length: int = 7, vocab: int = 96, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=g)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(chat_template: bool = True, qwen_base: bool = False):
    """A byte-level tokenizer (256 byte tokens + 3 specials), no merges: tiny and lossless.

    ``qwen_base``: EOS is ``<|endoftext|>`` (also the pad) and ``<|im_end|>`` a plain special token,
    as in Qwen base models, whose presets stop at ``<|im_end|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    if qwen_base:
        tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        tok.add_special_tokens({"additional_special_tokens": ["<|im_end|>", "<|im_start|>"]})
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    if chat_template:
        tok.chat_template = CHATML
    return tok


def save_tiny_lm(path, model_type: str = "qwen2", seed: int = 0, chat_template: bool = True,
                 qwen_base: bool = False, **overrides):
    """A tiny random causal LM + byte tokenizer saved like a hub checkpoint; returns the path."""
    tok = make_tokenizer(chat_template, qwen_base)
    kwargs = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, intermediate_size=128, max_position_embeddings=1024,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                  tie_word_embeddings=False)
    kwargs.update(overrides)
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, **kwargs)
    model = AutoModelForCausalLM.from_config(config, **dtype_kwarg(torch.float32))
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
