"""Prompt templates shared by training and evaluation (the reference code's ``tokenize_example``).

- ``qwen_math``: the tokenizer's chat template with the system prompt below and the problem as the
  user turn; a tokenizer without a chat template gets the plain-text "conversation" form instead.
- ``chat``: like ``qwen_math`` but a missing chat template is an error.
- ``r1``: the R1-Zero text prompt (``<think>``/``<answer>`` tags); answers are read from ``<answer>``.
- ``plain``: the problem text alone.
- ``custom``: ``prompt.format`` with ``{problem}`` (and ``{system}``) filled in.

The reference implementation's exact wording of the two text forms is elided in our fact sheet;
these follow the widely used Qwen2.5-Math and R1-Zero wordings.
"""

from __future__ import annotations

from typing import Any

from steer_cli.errors import SteerError

TEMPLATES = ("qwen_math", "chat", "r1", "plain", "custom")

SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

QWEN_MATH_TEXT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. Please reason step by step, and put your final answer within \\boxed{}."
)

R1_TEXT = (
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the User with the answer. The reasoning process is enclosed within <think> </think> "
    "and the answer is enclosed within <answer> </answer> tags, respectively, i.e., <think> "
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


def stop_token_ids(tokenizer: Any, stops: list[str] | tuple[str, ...] = ()) -> tuple[int, ...]:
    """Token ids that end a completion: the given stop tokens, else the tokenizer's EOS.

    Each stop must be a single token of the vocabulary (``<|im_end|>``, ``<|eot_id|>`` ...).
    """
    if not stops:
        if tokenizer.eos_token_id is None:
            raise SteerError("the tokenizer has no EOS token; set prompt.stop to the token that ends an answer")
        return (int(tokenizer.eos_token_id),)
    ids = []
    vocab = tokenizer.get_vocab()
    for stop in stops:
        if stop not in vocab:
            raise SteerError(
                f"stop token {stop!r} (prompt.stop) is not a single token of this tokenizer; "
                f"use one of its special tokens, e.g. {tokenizer.eos_token!r}"
            )
        ids.append(int(vocab[stop]))
    return tuple(dict.fromkeys(ids))
