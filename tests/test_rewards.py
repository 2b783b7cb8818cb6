"""Answer extraction, math-verify checking and the process-pool grader (steer_cli/rewards.py)."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time

import pytest

from steer_cli.errors import SteerError
from steer_cli.rewards.extraction import extract_answer, extract_boxed, gold_text, gold_to_boxed
from steer_cli.rewards.grading import is_correct, strict_match
from steer_cli.rewards.pool import Grade, Grader

TIMEOUT = 2.0
# 10^(10^10) alone has ten billion digits: sympy never finishes; math-verify's alarm fires at 5 s.
TOWER = r"The answer is \boxed{10^{10^{10^{10^{10}}}}}"


# -- extraction ------------------------------------------------------------------------------------


def test_last_box_wins():
    assert extract_boxed(r"first \boxed{1}, then \boxed{2}.") == "2"


def test_nested_braces_are_matched():
    assert extract_boxed(r"so \boxed{\frac{1}{\sqrt{2}}} done") == r"\frac{1}{\sqrt{2}}"
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    # escaped braces do not count: this box closes at the last brace
    assert extract_boxed(r"\boxed{\left\{ x \right.}") == r"\left\{ x \right."


def test_fbox_is_a_fallback_only():
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed{3} and later \fbox{7}") == "3"


def test_no_box_is_none():
    assert extract_boxed("The answer is 5.") is None
    assert extract_boxed(r"\boxedx{5}") is None  # another command, not a box
    assert extract_answer("The answer is 5.") is None
    assert extract_answer(r"\boxed{ }") is None


def test_unclosed_last_box_has_no_answer_as_in_the_reference():
    # the reference's last_boxed_only_string: the last \boxed decides; unclosed -> no answer
    assert extract_boxed(r"\boxed{5} but wait \boxed{6") is None
    assert extract_boxed(r"\boxed{6") is None
    assert extract_boxed(r"\boxed{ \boxed{5}") == "5"  # the last one closes
    assert extract_boxed(r"\fbox{5} then \boxed{6") is None  # no falling back to \fbox either
    assert not is_correct(r"so \boxed{5} but wait, \boxed{", "5")
    assert not strict_match(r"so \boxed{5} but wait, \boxed{", "5")


def test_unclosed_last_box_falls_back_to_previous_complete_one_when_asked():
    fb = {"truncated_box_fallback": True}
    assert extract_boxed(r"\boxed{5} but wait \boxed{6", **fb) == "5"
    assert extract_boxed(r"\boxed{6", **fb) is None
    assert extract_boxed(r"\boxed{ \boxed{5}", **fb) == "5"
    assert extract_boxed(r"\fbox{5} then \boxed{6", **fb) == "5"
    assert is_correct(r"so \boxed{5} but wait, \boxed{", "5", **fb)
    assert strict_match(r"so \boxed{5} but wait, \boxed{", "5", **fb)
    cut = [(r"so \boxed{5} but wait, \boxed{", "5")]
    with Grader(num_workers=0) as strict, Grader(num_workers=0, truncated_box_fallback=True) as lenient:
        assert [g.correct for g in strict.grade(cut)] == [False]
        assert [g.correct for g in lenient.grade(cut)] == [True]


def test_box_without_braces_takes_one_token():
    assert extract_boxed(r"so $\boxed 5$.") == "5"
    assert extract_boxed(r"so \boxed 12.") == "12"


def test_extraction_is_linear_on_megabyte_inputs():
    cases = {
        r"\boxed{" * 5000: (None, None),
        "x " * 500_000 + r"\boxed{" * 5000: (None, None),
        r"\boxed{1}" + r"\boxed{" * 140_000: (None, "1"),
        r"\boxed{2}" + "{" * 1_000_000: ("2", "2"),
        r"\boxed{" + "{" * 500_000 + "}" * 500_001: ("{" * 500_000 + "}" * 500_000,) * 2,
    }
    for text, expected in cases.items():
        for fallback, want in zip((False, True), expected):
            start = time.monotonic()
            assert extract_boxed(text, truncated_box_fallback=fallback) == want
            # a quadratic scan of these would take minutes
            assert time.monotonic() - start < 5.0


def test_r1_takes_the_last_answer_block():
    completion = "<think>maybe 3</think> <answer> 3 </answer> no: <answer> 4 </answer>"
    assert extract_answer(completion, "r1") == "4"
    assert extract_answer(r"<answer>so \boxed{\frac{1}{2}}</answer>", "r1") == r"\frac{1}{2}"
    assert extract_answer(r"<answer> 4", "r1") is None
    assert extract_answer(r"\boxed{4}", "r1") is None  # r1 reads tags only
    assert extract_answer(r"<answer>4</answer> \boxed{5}") == "5"  # other templates read boxes


# -- gold answers ----------------------------------------------------------------------------------


def test_gold_normalisation():
    assert gold_text(27.0) == "27"
    assert gold_text("27.0") == "27"
    assert gold_text(2.5) == "2.5"
    assert gold_text(204) == "204"
    assert gold_text(" $\\frac{1}{2}$ ") == r"\frac{1}{2}"
    assert gold_text(["$3$", 5.0]) == "3, 5"
    tuple_gold = r"\left( 3, \frac{\pi}{2} \right)"
    assert gold_to_boxed(tuple_gold) == r"\boxed{" + tuple_gold + "}"


@pytest.mark.parametrize("bad", [None, "", "$ $", [], {"a": 1}])
def test_missing_gold_answer_is_a_user_error(bad):
    with pytest.raises(SteerError):
        gold_to_boxed(bad)


# -- checking --------------------------------------------------------------------------------------

CASES = [
    (r"so \boxed{1/2}", "0.5", True),
    (r"so \boxed{\frac{1}{2}}", "0.5", True),
    (r"so \boxed{0.4}", "0.5", False),
    ("so the answer is 0.5", "0.5", False),  # no box: wrong
    (r"\boxed{27}", 27.0, True),  # AMC golds are floats
    (r"\boxed{26}", 27.0, False),
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", True),  # MATH500 tuple
    (r"\boxed{(\frac{\pi}{2}, 3)}", r"\left( 3, \frac{\pi}{2} \right)", False),
    (r"\boxed{[2, 5)}", "[2,5)", True),
    (r"\boxed{(2, 5]}", "[2,5)", False),
    (r"\boxed{(2,7,13), (1,8,19), (4,5,7)}", ["$(1,8,19), (2,7,13), (4,5,7)$"], True),  # Olympiad
    (r"\boxed{(1,8,19), (2,7,13)}", ["$(1,8,19), (2,7,13), (4,5,7)$"], False),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", True),
]


@pytest.mark.parametrize(("completion", "answer", "expected"), CASES)
def test_is_correct(completion, answer, expected):
    assert is_correct(completion, answer) is expected


def test_is_correct_r1():
    assert is_correct("<think>hm</think><answer>1/2</answer>", "0.5", template="r1")
    assert not is_correct(r"\boxed{1/2}", "0.5", template="r1")


def test_is_correct_works_outside_the_main_thread():
    # math-verify's signal-based timeouts raise in other threads; that must not become False
    out = []
    t = threading.Thread(target=lambda: out.append(is_correct(r"\boxed{\frac{1}{2}}", "0.5")))
    t.start()
    t.join()
    assert out == [True]


def test_strict_match():
    assert strict_match(r"\boxed{27}", 27.0)
    assert strict_match("<answer> 4 </answer>", "$4$", template="r1")
    assert not strict_match(r"\boxed{1/2}", "0.5")
    assert not strict_match("no box", "0.5")


# -- grader ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grader():
    with Grader(num_workers=2, timeout=TIMEOUT) as g:
        yield g


MIXED = [(c, a) for c, a, _ in CASES[:8]]


def test_grader_matches_in_process_grading(grader):
    pids = grader.worker_pids
    grades = grader.grade(MIXED)
    assert [g.correct for g in grades] == [is_correct(c, a) for c, a in MIXED]
    assert [g.correct for g in grades] == [e for _, _, e in CASES[:8]]  # order kept
    assert [g.has_answer for g in grades] == [extract_answer(c) is not None for c, _ in MIXED]
    assert [g.strict for g in grades] == [strict_match(c, a) for c, a in MIXED]
    assert not any(g.timed_out for g in grades)
    assert grader.grade(MIXED[:2]) == grades[:2]
    assert grader.worker_pids == pids  # the pool is started once, not per call


def test_grader_bounds_pathological_items(grader):
    items = [
        (r"\boxed{\frac{1}{2}}", "0.5"),
        ("word " * 200_000 + r"\boxed{27}", 27.0),  # 1 MB completion
        (TOWER, "1"),
        (r"\boxed{" * 5000, "3"),
        (r"\boxed{" + "1+" * 500_000 + "1}", "1"),  # 1 MB inside the box
        (r"\boxed{3}", "4"),
        (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)"),
    ]
    start = time.monotonic()
    grades = grader.grade(items)
    elapsed = time.monotonic() - start
    assert grades[0] == Grade(correct=True, has_answer=True, strict=False, timed_out=False)
    assert grades[1] == Grade(correct=True, has_answer=True, strict=True, timed_out=False)
    assert grades[2] == Grade(correct=False, has_answer=True, strict=False, timed_out=True)
    assert grades[3] == Grade(correct=False, has_answer=False, strict=False, timed_out=False)
    assert not grades[4].correct and grades[4].has_answer
    assert grades[5] == Grade(correct=False, has_answer=True, strict=False, timed_out=False)
    assert grades[6].correct and not grades[6].timed_out
    # The flags above prove the kills (math-verify's own alarm would need 5 s and not set
    # timed_out); this bounds the batch: both slow items run side by side, then the replacements
    # warm up (a second or two on a loaded 2-core machine) and take the rest.
    assert elapsed < TIMEOUT + 6.0
    assert grader.grade(items[:1])[0].correct  # the pool still works


def test_grader_from_another_thread(grader):
    out = []
    t = threading.Thread(target=lambda: out.append(grader.grade(MIXED)))
    t.start()
    t.join()
    assert [g.correct for g in out[0]] == [e for _, _, e in CASES[:8]]


def _wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
    raise AssertionError(f"process {pid} still exists")


def test_grader_survives_a_crashed_worker():
    # timeout 4 s: below math-verify's 5 s alarm, so a missed crash would show as timed_out
    with Grader(num_workers=1, timeout=4.0) as g:
        assert g.grade(MIXED[:1])[0].correct  # worker is up
        (pid,) = g.worker_pids
        killer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
        killer.start()
        grades = g.grade([(TOWER, "1"), (r"\boxed{1/2}", "0.5")])
        killer.join()
        assert grades[0] == Grade(correct=False, has_answer=True, strict=False, timed_out=False)
        assert grades[1].correct
        assert g.worker_pids != [pid]
        # an idle worker that died is replaced before it is given work
        (pid,) = g.worker_pids
        os.kill(pid, signal.SIGKILL)
        _wait_until_gone(pid)
        assert [x.correct for x in g.grade(MIXED)] == [e for _, _, e in CASES[:8]]


def test_grader_in_process_mode():
    with Grader(num_workers=0) as g:
        assert g.worker_pids == []
        assert [x.correct for x in g.grade(MIXED[:4])] == [e for _, _, e in CASES[:4]]


def test_workers_do_not_load_torch_held_by_the_parent():
    torch = pytest.importorskip("torch")
    torch.ones(256, 256) @ torch.ones(256, 256)  # parent has torch and its thread pool running
    with Grader(num_workers=1, timeout=TIMEOUT) as g:
        assert g.grade(MIXED[:1])[0].correct
        (pid,) = g.worker_pids
        maps_path = f"/proc/{pid}/maps"
        if not os.path.exists(maps_path):
            pytest.skip("no /proc on this platform")
        with open(maps_path) as f:
            assert "libtorch" not in f.read()


def test_grader_close_and_bad_input():
    g = Grader(num_workers=1, timeout=TIMEOUT)
    (pid,) = g.worker_pids
    with pytest.raises(SteerError):
        g.grade([(r"\boxed{1}", None)])
    g.close()
    g.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(SteerError):
        g.grade(MIXED[:1])
    with pytest.raises(dataclasses.FrozenInstanceError):
        Grade(True, True, True, False).correct = False  # type: ignore[misc]
