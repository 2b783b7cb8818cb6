"""The demo task: two-digit addition and subtraction, as bare sums or one-line word problems.

Solutions restate the sum, work column by column (ones, then tens) and end with the answer in
bold, "The answer is **N**.", or, less often, boxed, "The answer is \\boxed{N}.", e.g.
"58+97: 8+7=15, write 5 carry 1. 5+9+1=15. The answer is **155**." Only the boxed form is graded
as an answer, so a model that does the arithmetic well but rarely boxes scores low until RL
teaches it to box. Bold rather than a bare number because the choice is then one token, " **"
against " \\", neither used anywhere else in a reply; a bare number would start with " ", the
token before every number in the working, and a steering vector that favours " \\" over it
would corrupt the working too.

A problem's identity is ``(op, a, b)``: two wordings of the same numbers count as one problem,
so the test split shares no numbers-and-operation with the train split or the pretraining corpus.
"""

from __future__ import annotations

import random
from typing import Iterable

# (template, op); {a} and {b} are the operands, {name} and {thing} vary the wording.
TEMPLATES: tuple[tuple[str, str], ...] = (
    ("What is {a} + {b}?", "+"),
    ("Compute {a} + {b}.", "+"),
    ("{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", "+"),
    ("A box holds {a} {thing}. Someone adds {b} more. How many {thing} are in the box?", "+"),
    ("What is {a} - {b}?", "-"),
    ("Compute {a} - {b}.", "-"),
    ("{name} has {a} {thing} and gives away {b}. How many {thing} does {name} have left?", "-"),
    ("A box holds {a} {thing}. Someone takes out {b}. How many {thing} are in the box?", "-"),
)
NAMES = ("Tom", "Ann", "Sam", "Mia", "Ben", "Eva")
THINGS = ("apples", "books", "coins", "cards", "stamps", "shells")

ProblemKey = tuple[str, int, int]


def solution_steps(op: str, a: int, b: int) -> list[str]:
    """Column-by-column working for ``a op b`` (both two-digit, ``a >= b`` for subtraction):
    the sum restated, then the ones column, then the tens column."""
    a1, a0 = divmod(a, 10)
    b1, b0 = divmod(b, 10)
    if op == "+":
        if a0 + b0 >= 10:
            steps = [f"{a0}+{b0}={a0 + b0}, write {a0 + b0 - 10} carry 1.", f"{a1}+{b1}+1={a1 + b1 + 1}."]
        else:
            steps = [f"{a0}+{b0}={a0 + b0}.", f"{a1}+{b1}={a1 + b1}."]
    elif op == "-":
        if a0 < b0:
            steps = [f"borrow, {a0 + 10}-{b0}={a0 + 10 - b0}.", f"{a1}-1-{b1}={a1 - 1 - b1}."]
        else:
            steps = [f"{a0}-{b0}={a0 - b0}.", f"{a1}-{b1}={a1 - b1}."]
    else:
        raise ValueError(f"unknown op {op!r}")
    return [f"{a}{op}{b}:"] + steps


def answer_of(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b


def solution_text(problem: dict, boxed: bool) -> str:
    """The assistant's reply (without the end-of-turn token)."""
    final = f"\\boxed{{{problem['answer']}}}" if boxed else f"**{problem['answer']}**"
    return " ".join(problem["solution_steps"]) + f" The answer is {final}."


def problem_key(problem: dict) -> ProblemKey:
    return (problem["op"], problem["a"], problem["b"])


def make_problem(rng: random.Random, exclude: Iterable[ProblemKey] | set = ()) -> dict:
    """One problem: ``problem`` text, ``answer`` (str), ``solution_steps``, ``op``, ``a``, ``b``.

    Draws again while ``(op, a, b)`` is in ``exclude``.
    """
    exclude = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
    while True:
        template, op = rng.choice(TEMPLATES)
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if op == "-" and a < b:
            a, b = b, a
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        if (op, a, b) not in exclude:
            break
    return {
        "problem": template.format(a=a, b=b, name=name, thing=thing),
        "answer": str(answer_of(op, a, b)),
        "solution_steps": solution_steps(op, a, b),
        "op": op,
        "a": a,
        "b": b,
    }


def make_split(n: int, seed: int, exclude: Iterable[ProblemKey] = ()) -> list[dict]:
    """``n`` problems with distinct ``(op, a, b)``, none in ``exclude``; same seed, same list."""
    rng = random.Random(seed)
    seen = set(exclude)
    out = []
    while len(out) < n:
        p = make_problem(rng, seen)
        seen.add(problem_key(p))
        out.append(p)
    return out


TEST_SEED, TRAIN_SEED = 1, 2
N_TEST, N_TRAIN = 200, 2000


def demo_splits() -> tuple[list[dict], list[dict]]:
    """The shipped (train, test) splits: the test split first, then a train split that avoids it."""
    test = make_split(N_TEST, TEST_SEED)
    train = make_split(N_TRAIN, TRAIN_SEED, exclude={problem_key(p) for p in test})
    return train, test
