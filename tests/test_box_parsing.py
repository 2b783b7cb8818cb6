"""Reading the answer box as the paper's code does (issue 23, item 4), for the reward and for eval:
the last ``\\boxed`` occurrence decides, its braces right after it and counted as the reference
counts them (escaped ones too); ``train.grade_lenient_boxes`` keeps the older, lenient reading."""

from __future__ import annotations

import json

import pytest
from math_verify import parse, verify
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.rewards.extraction import extract_answer, extract_boxed
from steer_cli.rewards.grading import exact_match, is_correct, strict_match
from steer_cli.rewards.pool import Grader, training_grader
from steer_cli.settings import Layer, build_settings

_register()
runner = CliRunner()


def reference_grade(completion: str, gold: str) -> bool:
    """The reference's procedure restated (fact sheet 1d): the last ``\\boxed`` occurrence (else
    ``\\fbox``), cut at the brace that closes the first one after it, every brace counted; no cut
    is wrong; else math-verify parses the cut as it stands."""
    start = completion.rfind("\\boxed")
    if start < 0:
        start = completion.rfind("\\fbox")
    if start < 0:
        return False
    depth = 0
    for i in range(start, len(completion)):
        depth += {"{": 1, "}": -1}.get(completion[i], 0)
        if completion[i] == "}" and depth == 0:
            return bool(verify(parse("\\boxed{" + gold + "}"), parse(completion[start:i + 1])))
    return False


# (completion, gold): outputs the lenient reading grades correct and the reference wrong
LENIENT_ONLY = [
    (r"so the answer is \boxed 5.", "5"),  # no brace
    (r"so the answer is \fbox{4}", "4"),  # math-verify reads nothing from a \fbox cut
    (r"\boxed{4}, I mean \boxedx{5}", "4"),  # the last occurrence is \boxedx: it decides
    (r"\boxed{\left\{ 3 \right.}", "3"),  # the escaped brace counts: the box never closes
    (r"\boxed {5}", "5"),  # a blank before the brace
]
# graded alike either way
BOTH = [
    (r"so \boxed{\frac{1}{2}} done", "0.5"),
    (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # balanced escaped braces
    (r"first \boxed{1}, then \boxed{2}.", "2"),
    (r"\boxed{5} but wait \boxed{6", "5"),  # cut off inside the last box: wrong in both
    (r"\boxed{ \boxed{5}", "5"),  # the last one closes
    ("The answer is 5.", "5"),
]


@pytest.mark.parametrize("completion,gold", LENIENT_ONLY)
def test_reference_reading_is_the_default_and_lenient_is_a_setting(completion, gold):
    assert reference_grade(completion, gold) is False
    assert is_correct(completion, gold) is False
    assert is_correct(completion, gold, lenient_boxes=True) is True


@pytest.mark.parametrize("completion,gold", LENIENT_ONLY + BOTH)
def test_default_grading_equals_the_references_procedure(completion, gold):
    assert is_correct(completion, gold) is reference_grade(completion, gold)


def test_extraction_of_malformed_boxes():
    assert extract_boxed(r"\boxed 5") is None and extract_boxed(r"\boxed 5", lenient_boxes=True) == "5"
    assert extract_boxed(r"\fbox{7}") is None and extract_boxed(r"\fbox{7}", lenient_boxes=True) == "7"
    assert extract_boxed(r"\boxed{3} \boxedx{7}") is None
    assert extract_boxed(r"\boxed{3} \boxedx{7}", lenient_boxes=True) == "3"
    assert extract_boxed(r"\boxed{\left\{ x \right.}") is None
    assert extract_boxed(r"\boxed{\left\{ x \right.}", lenient_boxes=True) == r"\left\{ x \right."
    assert extract_boxed(r"\boxed{a \} b}") == "a \\"  # the reference's cut ends at the escaped brace
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert extract_boxed(r"\boxed") is None and extract_boxed("") is None
    # a cut-off last box: the previous one with train.grade_truncated_box, in either reading
    for lenient in (False, True):
        assert extract_boxed(r"\boxed{5} but \boxed{6", truncated_box_fallback=True, lenient_boxes=lenient) == "5"
        assert extract_boxed(r"\boxed{5} but \boxed{6", lenient_boxes=lenient) is None
    assert extract_boxed(r"\boxed 4 \boxed{5} \boxed{6", truncated_box_fallback=True) == "5"


def test_linear_time_on_a_megabyte_of_braces():
    import time

    text = r"\boxed{" + "{" * 500_000 + r"\boxed{" * 50_000
    start = time.perf_counter()
    assert extract_boxed(text) is None and extract_boxed(text, truncated_box_fallback=True) is None
    assert extract_boxed(text + "}") == ""  # the last box closes, empty
    assert extract_boxed(text, lenient_boxes=True) is None
    assert time.perf_counter() - start < 2.0


def test_r1_reads_the_last_answer_block_as_the_reference():
    # the reference: the last non-overlapping <answer>...</answer> match, wrapped in \boxed{} as it is
    assert extract_answer("<answer>1</answer> then <answer>2</answer>", "r1") == "2"
    assert extract_answer("<answer>a <answer>b</answer>", "r1") == "a <answer>b"
    assert extract_answer("<answer>a <answer>b</answer>", "r1", lenient_boxes=True) == "b"
    assert extract_answer(r"<answer>so \boxed{\frac{1}{2}}</answer>", "r1") == r"so \boxed{\frac{1}{2}}"
    assert is_correct(r"<answer>so \boxed{\frac{1}{2}}</answer>", "0.5", template="r1")  # math-verify reads it
    assert extract_answer("<answer> 4", "r1") is None


def test_known_departure_math_verify_reading_a_malformed_cut():
    # The reference hands a cut that is not \boxed{...} to math-verify, which sometimes finds a number
    # in it; ours is no answer there (README, "Where we depart").
    for completion, gold in ((r"\boxed 5 and then {x}", "5"), (r"\fbox{$4$}", "4")):
        assert reference_grade(completion, gold) is True
        assert is_correct(completion, gold) is False


def test_strict_exact_and_the_grader_read_boxes_the_same_way():
    assert not strict_match(r"\boxed 5", "5") and strict_match(r"\boxed 5", "5", lenient_boxes=True)
    assert exact_match(r"\fbox{4}", "4") == (False, False)  # no box: the whole text is compared
    assert exact_match(r"\fbox{4}", "4", lenient_boxes=True) == (True, True)
    items = LENIENT_ONLY + BOTH
    with Grader(num_workers=1) as grader:
        assert [g.correct for g in grader.grade(items)] == [reference_grade(c, a) for c, a in items]
    with Grader(num_workers=0, lenient_boxes=True) as grader:
        assert [g.correct for g in grader.grade(LENIENT_ONLY)] == [True] * len(LENIENT_ONLY)


def _settings(**train):
    return build_settings([Layer({"train": train}, "test")])


def test_the_reward_reads_the_setting():
    with training_grader(_settings(grader_workers=0)) as grader:
        assert not grader.lenient_boxes
        assert [g.correct for g in grader.grade(LENIENT_ONLY)] == [False] * len(LENIENT_ONLY)
    with training_grader(_settings(grader_workers=0, grade_lenient_boxes=True)) as grader:
        assert [g.correct for g in grader.grade(LENIENT_ONLY)] == [True] * len(LENIENT_ONLY)


def test_eval_grades_as_the_reward_and_records_how(tiny_lm, tmp_path, monkeypatch):
    import steer_cli.rewards.pool as pool

    made = []

    class Recording(pool.Grader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pool, "Grader", Recording)
    data = tmp_path / "data" / "mine"
    data.mkdir(parents=True)
    (data / "test.jsonl").write_text(json.dumps({"problem": "What is 2+2?", "answer": "4"}) + "\n")
    # the default is the settings' (the training test above); the non-default reaches eval's grader
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--model", str(tiny_lm), "--benchmarks", str(data / "test.jsonl"),
                                 "--max-new-tokens", "2", "--temperature", "0", "-o", str(out),
                                 "--set", "train.grader_workers=0", "--set", "train.grade_lenient_boxes=true"])
    assert result.exit_code == 0, result.output
    assert made and all(g.lenient_boxes for g in made)
    assert json.loads((out / "target.json").read_text())["identity"]["grade_lenient_boxes"] is True
