"""Prompt templates shared by training and evaluation (the reference code's ``tokenize_example``).

- ``qwen_math``: the tokenizer's chat template with the system prompt below and the problem as the
  user turn; a tokenizer without a chat template gets the plain-text "conversation" form instead.
- ``chat``: like ``qwen_math`` but a missing chat template is an error.
- ``r1``: the R1-Zero text prompt (``<think>``/``<answer>`` tags); answers are read from ``<answer>``.
- ``plain``: the problem text alone.
- ``custom``: ``prompt.format`` with ``{problem}`` (and ``{system}``) filled in.

The two text forms are the reference code's (``policy_model.py``), word for word: "The user asks"
in ``qwen_math`` but "The User asks" in ``r1``, and "and answer is enclosed" in ``r1``.
"""

from __future__ import annotations

from typing import Any, Sequence

from transformers import GenerationConfig

from steer_cli.errors import SteerError
from steer_cli.models import load_config, quiet_transformers, resolve_model

TEMPLATES = ("qwen_math", "chat", "r1", "plain", "custom")

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

QWEN_MATH_TEXT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. Please reason step by step, and put your final answer within \\boxed{}."
)

R1_TEXT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the User with the answer. The reasoning process is enclosed within <think> </think> "
    "and answer is enclosed within <answer> </answer> tags, respectively, i.e., <think> "
    "reasoning process here </think> <answer> answer here </answer>."
)


def render_prompt_text(
    tokenizer: Any,
    problem: str,
    template: str = "qwen_math",
    *,
    system_prompt: str | None = SYSTEM_PROMPT,
    fmt: str | None = None,
    append_to: bool = False,
) -> str:
    """The prompt as text, special tokens included (tokenize it with ``add_special_tokens=False``)."""
    if template not in TEMPLATES:
        raise SteerError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    bos = tokenizer.bos_token or ""
    if template in ("qwen_math", "chat") and has_chat:
        messages = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": problem})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    elif template == "chat":
        raise SteerError(
            "prompt template 'chat' needs a tokenizer with a chat template, and this one has none; "
            "use --set prompt.template=qwen_math (plain-text form) or a chat/instruct model"
        )
    elif template == "qwen_math":
        text = f"{bos}{QWEN_MATH_TEXT}\n\nUser: {problem} Assistant:"
    elif template == "r1":
        text = f"{bos}{R1_TEXT}\nUser: {problem}\nAssistant: <think>"
    elif template == "plain":
        text = f"{bos}{problem}"
    else:  # custom
        if not fmt or "{problem}" not in fmt:
            raise SteerError("prompt template 'custom' needs prompt.format containing '{problem}'")
        text = fmt.replace("{system}", system_prompt or "").replace("{problem}", problem)
    if append_to:
        text += "To"
    return text


def render_prompt(tokenizer: Any, problem: str, template: str = "qwen_math", **kwargs: Any) -> list[int]:
    """Token ids of the rendered prompt."""
    text = render_prompt_text(tokenizer, problem, template, **kwargs)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_token_ids(tokenizer: Any, stops: list[str] | tuple[str, ...] = (),
                   eos_ids: Sequence[int] = ()) -> tuple[int, ...]:
    """The stop set: token ids that end a completion, in every generation (train, eval; hf, vLLM).

    The given stop tokens (``prompt.stop``; each a single token of the vocabulary, e.g.
    ``<|im_end|>``), the tokenizer's EOS, and ``eos_ids`` (the model's
    ``generation_config.eos_token_id``, see ``model_eos_ids``). The reference code stops at its
    stop token and keeps EOS, so a Qwen base model stops at ``<|im_end|>`` or ``<|endoftext|>``.
    """
    ids = []
    vocab = tokenizer.get_vocab() if stops else {}
    for stop in stops:
        if stop not in vocab:
            raise SteerError(
                f"stop token {stop!r} (prompt.stop) is not a single token of this tokenizer; "
                f"use one of its special tokens, e.g. {tokenizer.eos_token!r}"
            )
        ids.append(int(vocab[stop]))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    ids.extend(int(i) for i in eos_ids)
    if not ids:
        raise SteerError("the tokenizer and the model name no EOS token; set prompt.stop to the token "
                         "that ends an answer")
    return tuple(dict.fromkeys(ids))


def model_eos_ids(name: str, *, revision: str | None = None, trust_remote_code: bool = False) -> tuple[int, ...]:
    """Every id in the model's ``generation_config.eos_token_id`` (``generation_config.json``), else
    in its config's ``eos_token_id``; () when neither names one."""

    quiet_transformers()
    try:
        eos = GenerationConfig.from_pretrained(resolve_model(name), revision=revision).eos_token_id
    except OSError:  # no generation_config.json
        config = load_config(name, revision=revision, trust_remote_code=trust_remote_code)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        eos = getattr(text, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(int(i) for i in (eos if isinstance(eos, (list, tuple)) else [eos]))


def completion_stop_ids(tokenizer: Any, stops: list[str] | tuple[str, ...], model: str, *,
                        revision: str | None = None, trust_remote_code: bool = False) -> tuple[int, ...]:
    """``stop_token_ids`` with the model's own EOS ids: what train and eval stop generation at."""
    return stop_token_ids(tokenizer, stops, model_eos_ids(model, revision=revision,
                                                          trust_remote_code=trust_remote_code))
