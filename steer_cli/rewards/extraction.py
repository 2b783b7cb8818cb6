"""Answer extraction: the prediction of a completion and the normalised gold answer.

Follows the paper's code: the prediction is the last ``\\boxed{...}`` (``<answer>...</answer>``
for the r1 template) and the gold answer is ``\\boxed{answer}``. Small departures, all on malformed
output: escaped braces (``\\{``) do not count when matching a box, ``\\boxed 5`` counts, and an
``<answer>`` block that holds a box is read through the box. As in the reference, a last
``\\boxed{`` that never closes (truncated output) has no answer; with ``truncated_box_fallback``
(setting ``train.grade_truncated_box``) the last complete box before it is graded instead.

Pure and linear-time; standard library only (the grader's worker processes import it).
"""

from __future__ import annotations

import numbers
import re
from itertools import accumulate, islice
from typing import Any

from steer_cli.errors import SteerError

_BLANKS_RE = re.compile(r"\s*")
_NOT_BRACE_BYTES = bytes(b for b in range(256) if b not in b"{}")
_BRACE_BYTE_VALUE = [1 if b == ord("{") else -1 if b == ord("}") else 0 for b in range(256)]
# Escaped braces and backslashes are skipped so `\left\{ x \right.` inside a box stays balanced.
_BRACE_RE = re.compile(r"\\[\\{}]|[{}]")
_TOKEN_RE = re.compile(r"[^\s$]+")
_INT_FLOAT_RE = re.compile(r"^([+-]?\d+)\.0*$")
_WRAPPERS = (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


# --------------------------------------------------------------------------------------------------
# Extraction (pure, linear-time)
# --------------------------------------------------------------------------------------------------


def _running_balance(text: str, start: int, end: int | None = None) -> list[int]:
    """Brace balance of text[start:end] after each real (unescaped) brace, from 0.

    Built from C-speed string operations so a megabyte of braces costs milliseconds."""
    seg = text[start:end].replace("\\\\", "").replace("\\{", "").replace("\\}", "")
    braces = seg.encode("utf-8", "ignore").translate(None, _NOT_BRACE_BYTES)
    return list(accumulate(map(_BRACE_BYTE_VALUE.__getitem__, braces), initial=0))


def _fold(text: str, start: int, end: int, min_after: int) -> int:
    """Lowest prefix brace balance of text[start:], given that of text[end:] ({ = +1, } = -1)."""
    seg = text[start:end]
    if "}" not in seg and "\\{" not in seg:  # only opening braces: the usual junk
        return min(0, seg.count("{") + min_after)
    run = _running_balance(text, start, end)
    return min(min(run), run[-1] + min_after)


def _brace_content(text: str, open_pos: int) -> str:
    """Content of the group opening at open_pos, which the caller knows closes."""
    n_braces = _running_balance(text, open_pos).index(0, 1)  # braces up to the closing one
    real_braces = (m for m in _BRACE_RE.finditer(text, open_pos) if len(m.group()) == 1)
    close = next(islice(real_braces, n_braces - 1, None))
    return text[open_pos + 1 : close.start()]


_UNCLOSED = object()  # the last box never closes, and no fallback was asked for


def _last_complete_box(text: str, command: str, fallback: bool = True) -> Any:
    """Walks the occurrences of `command` from the last one back, keeping the lowest prefix brace
    balance of the text after the current one: its `{` closes iff that balance goes below zero.
    Each character is looked at a bounded number of times, so this is linear. Without
    ``fallback`` the last occurrence decides: its content, or ``_UNCLOSED``."""
    needle = "\\" + command
    n = len(text)
    search_end = n
    folded_from, min_after = n, 0
    while True:
        start = text.rfind(needle, 0, search_end)
        if start < 0:
            return None
        search_end = start
        arg = start + len(needle)
        if arg < n and text[arg].isalpha():  # a longer command name, not ours
            continue
        arg = _BLANKS_RE.match(text, arg).end()
        if arg < n and text[arg] == "{":
            min_after = _fold(text, arg + 1, folded_from, min_after)
            folded_from = arg + 1
            if min_after < 0:
                return _brace_content(text, arg)
        elif arg > start + len(needle):  # `\boxed 5`: one token, no braces
            tok = _TOKEN_RE.match(text, arg)
            if tok is not None:
                return tok.group().rstrip(".,;")
        if not fallback:
            return _UNCLOSED


def extract_boxed(text: str, *, truncated_box_fallback: bool = False) -> str | None:
    """Content of the last `\\boxed{...}` (nested braces matched); `\\fbox{...}` where there is no
    `\\boxed`. `\\boxed 5` (a blank and one token, no braces) counts too.

    A last box that never closes (output cut off inside it) gives None, as in the reference code;
    with ``truncated_box_fallback`` the previous complete box is taken instead. Linear in len(text).
    """
    for command in ("boxed", "fbox"):
        found = _last_complete_box(text, command, truncated_box_fallback)
        if found is _UNCLOSED:
            return None
        if found is not None:
            return found
    return None


def extract_answer(completion: str, template: str = "qwen_math", *,
                   truncated_box_fallback: bool = False) -> str | None:
    """The model's final answer: last boxed content, or for "r1" the last `<answer>` block."""
    if template == "r1":
        close = completion.rfind("</answer>")
        if close < 0:
            return None
        open_ = completion.rfind("<answer>", 0, close)
        if open_ < 0:
            return None
        answer = completion[open_ + len("<answer>") : close]
        if "\\boxed" in answer or "\\fbox" in answer:
            boxed = extract_boxed(answer, truncated_box_fallback=truncated_box_fallback)
            if boxed is not None:
                answer = boxed
    else:
        answer = extract_boxed(completion, truncated_box_fallback=truncated_box_fallback)
    if answer is None or not answer.strip():
        return None
    return answer.strip()


# --------------------------------------------------------------------------------------------------
# Gold answers
# --------------------------------------------------------------------------------------------------


def unwrap_math(s: str) -> str:
    s = s.strip()
    changed = True
    while changed:
        changed = False
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
                changed = True
    return s


def gold_text(answer: Any) -> str:
    """Gold answer as a plain string: 27.0 -> "27", lists joined with ", ", `$...$` removed.

    Raises SteerError for a missing (None/empty) or unsupported answer: that is a data bug.
    """
    if isinstance(answer, (list, tuple)):
        if not answer:
            raise SteerError("a gold answer is an empty list; fix the dataset's answer field")
        return ", ".join(gold_text(a) for a in answer)
    if isinstance(answer, bool) or answer is None:
        raise SteerError(f"a gold answer is {answer!r}; fix the dataset's answer field")
    if isinstance(answer, numbers.Integral):
        return str(int(answer))
    if isinstance(answer, float):
        return str(int(answer)) if answer.is_integer() else repr(answer)
    if isinstance(answer, numbers.Real):  # Fraction, Decimal
        return str(int(answer)) if answer == int(answer) else str(answer)
    if not isinstance(answer, str):
        raise SteerError(
            f"a gold answer has type {type(answer).__name__}; use a string, a number or a list"
        )
    s = unwrap_math(answer)
    if "\\boxed" in s or "\\fbox" in s:
        boxed = extract_boxed(s)
        if boxed is not None:
            s = boxed.strip()
    m = _INT_FLOAT_RE.match(s)
    if m:
        s = str(int(m.group(1)))
    if not s:
        raise SteerError(f"a gold answer is empty ({answer!r}); fix the dataset's answer field")
    return s


def gold_to_boxed(answer: Any) -> str:
    """`\\boxed{...}` of the normalised gold answer, the string fed to math_verify.parse."""
    return "\\boxed{" + gold_text(answer) + "}"
