"""Do math-verify 0.7 (the reference's pin) and 0.8/0.9 (ours) grade the same way?

Builds grading cases from the benchmark files in a data directory and grades them with the
installed math-verify through steer's own path (``is_correct``: steer's answer extraction, gold
normalisation, ``verify(parse(gold), parse(pred))`` with the library defaults), then writes the
verdicts to JSON. Run it once under each version, then compare:

    python scripts/mathverify_versions.py grade --data-dir ../shared/data --out mv09.json
    /path/to/venv-0.7/bin/python scripts/mathverify_versions.py grade --data-dir ../shared/data --out mv07.json
    python scripts/mathverify_versions.py compare mv07.json mv09.json

Cases (the same list under every version, built without math-verify):
  gold      every benchmark problem: a completion boxing the problem's own gold answer
  solution  the reference solutions that box their answer (MATH500, AIME24), graded against gold
  rewrite   completions boxing a rewrite of a gold answer, each marked with the verdict a careful
            grader should give (True: equivalent, False: not, None: arguable): fractions and
            decimals, LaTeX forms, units, degrees, intervals and tuples, equations, near misses

``grade`` also grades a few cases in a second thread, where math-verify's signal-based timeouts
cannot run: steer turns them off there, and records whether the verdicts still match.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from steer_cli.data.benchmarks import ALL_BENCHMARKS, load_benchmark  # noqa: E402
from steer_cli.rewards.extraction import extract_answer, gold_text  # noqa: E402
from steer_cli.rewards.grading import is_correct  # noqa: E402

INT = re.compile(r"^-?\d+$")
DECIMAL = re.compile(r"^-?\d*\.\d+$")
FRAC = re.compile(r"^(-?)\\[dt]?frac\{(\d+)\}\{(\d+)\}$")
SQRT = re.compile(r"\\sqrt\{(\d+)\}")
DEGREES = re.compile(r"^(.+?)\s*\^\s*\{?\\circ\}?$")
TEXT = re.compile(r"^\\text\{([^{}]+)\}$")
EQUATION = re.compile(r"^([a-zA-Z])\s*=\s*(.+)$")
PAIR = re.compile(r"^(\\left)?\s*([(\[])(.+),(.+?)(\\right)?\s*([)\]])$")
# Rewrites of one rule per benchmark: GSM8K's 1319 integers would otherwise be most of the cases.
PER_RULE = 60


def completion(answer: str) -> str:
    """A short reply that ends by boxing ``answer`` (steer grades the last box)."""
    return f"Working through the problem step by step gives the result.\nThe final answer is $\\boxed{{{answer}}}$."


def rewrites(g: str) -> Iterator[tuple[str, str, bool | None]]:
    """(rule, rewritten answer, intended verdict) for a normalised gold answer ``g``."""
    if INT.match(g):
        n = int(g)
        yield "int_decimal_point", f"{n}.0", True
        yield "int_fraction", f"\\frac{{{2 * n}}}{{2}}", True
        yield "int_plus_one", str(n + 1), False
        yield "int_equation", f"x = {n}", True
        yield "int_text", f"\\text{{{n}}}", True
        yield "int_dollars", f"\\${n}", True
        yield "int_percent", f"{n}\\%", None
        yield "int_textbf", f"\\textbf{{{n}}}", True
        if abs(n) >= 1000:
            yield "int_thousands_comma", f"{n:,}", True
            yield "int_thousands_thinspace", f"{n:,}".replace(",", "\\,"), True
        if n > 1:
            yield "int_negated", str(-n), False
            yield "int_scientific", f"{n / 10:g} \\times 10", True
    if DECIMAL.match(g):
        value = Fraction(g)
        yield "decimal_as_fraction", f"\\frac{{{value.numerator}}}{{{value.denominator}}}", True
        yield "decimal_rounded", f"{float(g):.1f}", float(f"{float(g):.1f}") == float(g) or False
        yield "decimal_trailing_zero", g + "0", True
    m = FRAC.match(g)
    if m:
        sign, a, b = m.group(1), int(m.group(2)), int(m.group(3))
        value = Fraction(int(sign + str(a)), b)
        yield "frac_slash", f"{sign}{a}/{b}", True
        yield "frac_dfrac", f"{sign}\\dfrac{{{a}}}{{{b}}}", True
        yield "frac_unreduced", f"{sign}\\frac{{{3 * a}}}{{{3 * b}}}", True
        yield "frac_inverted", f"{sign}\\frac{{{b}}}{{{a}}}", a == b
        exact = value.denominator in (1, 2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 100)
        yield "frac_decimal", f"{float(value):.6g}", True if exact else None
        yield "frac_decimal_2dp", f"{float(value):.2f}", True if float(f"{float(value):.2f}") == value else False
    if g.rstrip().endswith("%"):
        bare = g.rstrip().rstrip("%").rstrip("\\").strip()
        yield "percent_dropped", bare, None
        if re.match(r"^-?\d+(\.\d+)?$", bare):
            yield "percent_as_decimal", f"{float(bare) / 100:g}", None
    if SQRT.search(g):
        yield "sqrt_bare", SQRT.sub(r"\\sqrt \1", g), True
        yield "sqrt_power", SQRT.sub(r"\1^{1/2}", g), True
        yield "sqrt_dropped", SQRT.sub(r"\1", g), False
    m = DEGREES.match(g)
    if m:
        yield "degrees_dropped", m.group(1), True
        yield "degrees_symbol", m.group(1) + "°", True
    m = TEXT.match(g)
    if m:
        yield "text_bare", m.group(1), True
        yield "text_other", "\\text{" + m.group(1)[::-1] + "x}", False
    m = EQUATION.match(g)
    if m:
        yield "equation_rhs_only", m.group(2), True
    m = PAIR.match(g)
    if m and m.group(2) + m.group(6) in ("()", "[]", "(]", "[)"):
        left, right = m.group(2), m.group(6)
        a, b = m.group(3).strip(), m.group(4).strip()
        yield "pair_no_left_right", f"{left}{a}, {b}{right}", True
        flip = {"(": "[", "[": "("}[left] + a + ", " + b + {")": "]", "]": ")"}[right]
        yield "pair_brackets_flipped", flip, None  # an interval differs; a tuple written [a, b]?
        if a != b:
            yield "pair_swapped", f"{left}{b}, {a}{right}", False
    if "," in g and not INT.match(g.replace(",", "")) and not PAIR.match(g):
        parts = [p.strip() for p in g.split(",")]
        if len(set(parts)) > 1:
            yield "list_reordered", ", ".join(reversed(parts)), True  # a set of answers
    if " " in g:
        yield "spaces_removed", g.replace(" ", ""), True
    if g.startswith("\\frac") or "\\pi" in g or "^" in g:
        yield "displaystyle", "\\displaystyle " + g, True
    digits = [i for i, ch in enumerate(g) if ch.isdigit()]
    if digits:
        i = digits[-1]
        yield "last_digit_changed", g[:i] + str((int(g[i]) + 1) % 10) + g[i + 1:], False


def build_cases(data_dir: Path) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for bench in ALL_BENCHMARKS:
        taken: dict[str, int] = {}
        for p in load_benchmark(bench, data_dir):
            g = gold_text(p.answer)
            base = {"bench": bench, "problem": p.id, "gold": p.answer}
            cases.append({**base, "kind": "gold", "rule": "gold", "completion": completion(g), "expect": True})
            solution = (p.row or {}).get("solution")
            if bench in ("math500", "aime24") and isinstance(solution, str) and "\\boxed" in solution:
                cases.append({**base, "kind": "solution", "rule": "reference_solution", "completion": solution,
                              "expect": True})
            for rule, answer, expect in rewrites(g):
                taken[rule] = taken.get(rule, 0) + 1
                if taken[rule] > PER_RULE:
                    continue
                cases.append({**base, "kind": "rewrite", "rule": rule, "completion": completion(answer),
                              "expect": expect})
    unit_cases = _units(data_dir)
    for i, c in enumerate(cases + unit_cases):
        c["id"] = i
    return cases + unit_cases


def _units(data_dir: Path) -> list[dict[str, Any]]:
    """OlympiadBench's answers that carry a unit, answered with the unit written out."""
    out = []
    for p in load_benchmark("olympiadbench", data_dir):
        unit = (p.row or {}).get("unit")
        if unit:
            g = gold_text(p.answer)
            u = unit.strip("$")
            out.append({"bench": "olympiadbench", "problem": p.id, "gold": p.answer, "kind": "rewrite",
                        "rule": "unit_text", "completion": completion(f"{g} \\text{{ {u}}}"), "expect": True})
            out.append({"bench": "olympiadbench", "problem": p.id, "gold": p.answer, "kind": "rewrite",
                        "rule": "unit_plain", "completion": completion(f"{g}\\ {u}"), "expect": True})
    return out


def versions() -> dict[str, str]:
    out = {}
    for name in ("math-verify", "latex2sympy2_extended", "sympy", "antlr4-python3-runtime"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def in_thread(cases: list[dict[str, Any]]) -> list[bool]:
    """Verdicts of ``cases`` graded in a second thread (no signal-based timeouts there)."""
    result: list[bool] = []

    def run() -> None:
        result.extend(is_correct(c["completion"], c["gold"]) for c in cases)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return result


def grade(args: argparse.Namespace) -> None:
    import logging

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # parse failures are verdicts here
    cases = build_cases(Path(args.data_dir))
    for c in cases:
        c["correct"] = is_correct(c["completion"], c["gold"])
    probe = [c for c in cases if c["kind"] == "gold"][:: max(1, len(cases) // 200)][:50]
    threaded = in_thread(probe)
    out = {"versions": versions(), "cases": cases,
           "thread_probe": {"n": len(probe), "same_as_main_thread": sum(t == c["correct"] for t, c in zip(threaded, probe)),
                            "correct_in_thread": sum(threaded), "correct_in_main": sum(c["correct"] for c in probe)}}
    Path(args.out).write_text(json.dumps(out, indent=1))
    right = sum(c["correct"] for c in cases)
    print(f"math-verify {out['versions']['math-verify']}: {len(cases)} cases, {right} graded correct; "
          f"thread probe {out['thread_probe']}")


def compare(args: argparse.Namespace) -> None:
    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    va, vb = a["versions"]["math-verify"], b["versions"]["math-verify"]
    ca, cb = a["cases"], b["cases"]
    if [c["completion"] for c in ca] != [c["completion"] for c in cb]:
        raise SystemExit("the two files hold different cases: build them with the same script and data")
    differ = [(x, y) for x, y in zip(ca, cb) if x["correct"] != y["correct"]]
    print(f"math-verify {va} vs {vb}: {len(differ)} of {len(ca)} verdicts differ ({100 * len(differ) / len(ca):.2f}%)")
    more_b = sum(y["correct"] for _, y in differ)
    print(f"  {vb} accepts where {va} rejects: {more_b}; the reverse: {len(differ) - more_b}")
    for kind in ("gold", "solution", "rewrite"):
        n = sum(c["kind"] == kind for c in ca)
        d = sum(x["kind"] == kind for x, _ in differ)
        print(f"  {kind:9s} {d:5d} of {n:5d} differ ({100 * d / max(n, 1):.2f}%)")
    for name, cases in ((va, ca), (vb, cb)):
        judged = [c for c in cases if c["expect"] is not None]
        agree = sum(c["correct"] == c["expect"] for c in judged)
        gold = [c for c in cases if c["kind"] == "gold"]
        print(f"  {name}: gold graded correct {sum(c['correct'] for c in gold)}/{len(gold)}; "
              f"matches the intended verdict on {agree}/{len(judged)} cases with one")
    rules: dict[str, int] = {}
    for x, _ in differ:
        rules[x["rule"]] = rules.get(x["rule"], 0) + 1
    print("  differing by rule: " + ", ".join(f"{r} {n}" for r, n in sorted(rules.items(), key=lambda t: -t[1])))
    shown: dict[str, int] = {}
    for x, y in differ:
        shown[x["rule"]] = shown.get(x["rule"], 0) + 1
        if shown[x["rule"]] > args.examples:
            continue
        pred = extract_answer(x["completion"])
        print(f"  [{x['bench']} {x['problem']}] {x['rule']}: gold {gold_text(x['gold'])!r} answer {pred!r} "
              f"(intended {x['expect']}): {va} {x['correct']}, {vb} {y['correct']}")
    for name, f in ((va, a), (vb, b)):
        print(f"  thread probe {name}: {f['thread_probe']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade the cases with the installed math-verify, write verdicts JSON")
    g.add_argument("--data-dir", default="../shared/data")
    g.add_argument("--out", required=True)
    c = sub.add_parser("compare", help="disagreement rate and examples of two verdict files")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--examples", type=int, default=3, help="examples shown per rule")
    args = parser.parse_args()
    grade(args) if args.command == "grade" else compare(args)


if __name__ == "__main__":
    main()
