"""Grading: math-verify on the extracted answer (the reward, and accuracy in eval), and the
``exact`` string match.

The check is ``math_verify.verify(parse(gold), parse(pred))`` with the library's default options,
as in the paper's code. math-verify's own timeouts use ``signal.alarm``: they work only in the main
thread, and cannot stop work stuck inside C code (a huge integer power, say). ``is_correct``
therefore keeps the library defaults in the main thread and runs with no timeout elsewhere;
``pool.Grader`` adds a hard per-item timeout by grading in worker processes that are killed when
they overrun.

Standard library only at top level (math_verify is imported when grading starts), because the
grader's worker processes import this module and must start cheaply and never load torch.
"""

from __future__ import annotations

import threading
import unicodedata
from typing import Any

from steer_cli.rewards.extraction import extract_answer, gold_text, gold_to_boxed, unwrap_math


def verify_boxed(gold_boxed: str, pred_boxed: str) -> bool:
    """math_verify.verify(parse(gold), parse(pred)); any error, timeout included, is False."""
    # lazy: math_verify pulls in sympy (seconds); worker processes import this module at start
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    if threading.current_thread() is threading.main_thread():
        parse_kw: dict[str, Any] = {}  # library defaults, as the paper
        verify_kw: dict[str, Any] = {}
    else:
        # signal.alarm is main-thread only: math-verify raises otherwise. No soft timeout here.
        parse_kw = {"parsing_timeout": None}
        verify_kw = {"timeout_seconds": None}
    try:
        gold = parse(gold_boxed, **parse_kw)
        pred = parse(pred_boxed, **parse_kw)
        return bool(verify(gold, pred, **verify_kw))
    except (Exception, TimeoutException):
        return False


def boxed(content: str) -> str:
    return "\\boxed{" + content + "}"


def is_correct(completion: str, answer: Any, *, template: str = "qwen_math",
               truncated_box_fallback: bool = False) -> bool:
    """True when the completion's final answer equals the gold answer per math-verify.

    No answer is wrong; a parse/verify error is wrong. In-process: math-verify's timeouts apply
    only in the main thread, and nothing stops a pathological input in C code (use Grader).
    A missing gold answer raises SteerError.
    """
    gold_boxed = gold_to_boxed(answer)
    pred = extract_answer(completion, template, truncated_box_fallback=truncated_box_fallback)
    if pred is None:
        return False
    return verify_boxed(gold_boxed, boxed(pred))


def strict_match(completion: str, answer: Any, template: str = "qwen_math", *,
                 truncated_box_fallback: bool = False) -> bool:
    """Exact string match of the extracted answer and the normalised gold (metrics only)."""
    pred = extract_answer(completion, template, truncated_box_fallback=truncated_box_fallback)
    return pred is not None and pred == gold_text(answer)


def normalise_text(text: str) -> str:
    """What ``exact`` compares: Unicode NFKC, one trailing period dropped, surrounding ``$...$`` /
    ``\\(...\\)`` removed, whitespace runs as one space, case folded."""
    text = unicodedata.normalize("NFKC", str(text)).strip()
    text = text[:-1] if text.endswith(".") else text
    return " ".join(unwrap_math(text).split()).casefold()


def exact_match(completion: str, answer: Any, template: str = "qwen_math", *,
                truncated_box_fallback: bool = False) -> tuple[bool, bool]:
    """(matches, has_answer): the extracted answer (last box; ``<answer>`` for r1) or, where there
    is none, the whole completion, equals the gold answer after ``normalise_text``."""
    gold = normalise_text(gold_text(answer))
    pred = extract_answer(completion, template, truncated_box_fallback=truncated_box_fallback)
    has_answer = pred is not None
    if pred is None:
        pred = completion
    return normalise_text(pred) == gold, has_answer
