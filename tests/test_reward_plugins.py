"""Reward plug-ins (--reward file.py:fn / pkg.module:fn), the exact reward, and their use in training."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pytest
import yaml
from cli_helpers import one_line_error
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.errors import SteerError
from steer_cli.rewards.grading import exact_match, normalise_text
from steer_cli.rewards.plugins import check_values, parse_reward, reward_sha256
from steer_cli.rewards.pool import Grader, Score

_register()
runner = CliRunner()

PLUGIN = textwrap.dedent('''
    import math
    import time

    def length(completions, answers, rows):
        return [float(len(c)) for c in completions]

    def picky(completions, answers, rows):
        out = []
        for c, a, r in zip(completions, answers, rows):
            if c == "raise":
                raise RuntimeError("boom")
            if c == "sleep":
                time.sleep(30)
            if c == "nan":
                return [math.nan]
            if c == "two":
                return [1.0, 2.0]
            out.append(1.0 if c.strip() == a else -0.5 + 0.001 * len(r.get("problem", "")))
        return out

    def constant_one(completions, answers, rows):
        return [1.0]

    def scalar(completions, answers, rows):
        return 1.0

    def crash_on_empty(completions, answers, rows):
        return [1.0 / len(c) for c in completions]

    def stuck(completions, answers, rows):
        while True:
            pass
''')


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(PLUGIN)
    return path


# -- parsing -------------------------------------------------------------------------------------


def test_parse_reward_forms(plugin, tmp_path, monkeypatch):
    assert parse_reward("math").kind == "math" and not parse_reward("math").plugin
    assert parse_reward("exact").kind == "exact"
    spec = parse_reward(f"{plugin}:length")
    assert (spec.kind, spec.target, spec.function, spec.plugin) == ("file", str(plugin), "length", True)
    monkeypatch.chdir(tmp_path)
    assert parse_reward("my_reward.py:length").target == str(plugin)  # made absolute for the workers
    assert parse_reward("json.decoder:scanstring").kind == "module"
    for bad, needle in [("maths", "unknown reward"), ("nope.py:fn", "does not exist"), ("x.py:", "unknown reward"),
                        ("pkg.mod:1fn", "not a function name"), ("a b:fn", "neither a .py file nor a module")]:
        with pytest.raises(SteerError, match=needle):
            parse_reward(bad)


def test_reward_sha256_is_the_file_hash(plugin):
    import hashlib

    assert reward_sha256(parse_reward(f"{plugin}:length")) == hashlib.sha256(plugin.read_bytes()).hexdigest()
    assert reward_sha256(parse_reward("math")) is None
    assert len(reward_sha256(parse_reward("json.decoder:scanstring"))) == 64
    with pytest.raises(SteerError, match="no module named no_such_module_xyz"):
        reward_sha256(parse_reward("no_such_module_xyz:fn"))


def test_check_values():
    assert check_values([1, 2.5, True], 3) == [1.0, 2.5, 1.0]
    np = pytest.importorskip("numpy")
    assert check_values(np.array([0.5, 1.0]), 2) == [0.5, 1.0]
    for bad, n, needle in [(1.0, 1, "not a list"), ("ab", 2, "not a list"), ([1.0], 2, "1 value(s) for 2"),
                           ([math.inf], 1, "non-finite"), (["x"], 1, "not a number"), ([None], 1, "not a number")]:
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            check_values(bad, n)


# -- exact ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("completion", "answer", "expected"), [
    (r"so \boxed{Paris}", "paris", (True, True)),
    ("  Paris. ", "Paris", (True, False)),
    ("The  answer   is 42", "the answer is 42", (True, False)),
    (r"\boxed{42}", "$42$", (True, True)),
    (r"\boxed{41}", "42", (False, True)),
    ("42 or so", "42", (False, False)),
    (r"\boxed{1/2}", "0.5", (False, True)),  # strings, not values: math-verify would say True
])
def test_exact_match(completion, answer, expected):
    assert exact_match(completion, answer) == expected


def test_normalise_text():
    assert normalise_text("  $ X  Y $. ") == "x y"
    assert normalise_text("ＡＢＣ") == "abc"  # NFKC folds full-width letters


def test_exact_grader_runs_in_process():
    with Grader(num_workers=2, reward="exact") as g:
        assert g.worker_pids == []
        grades = g.grade([(r"\boxed{Paris}", "paris"), ("London", "Paris")])
    assert [x.correct for x in grades] == [True, False]
    assert [x.has_answer for x in grades] == [True, False]


# -- the grader with a plug-in ------------------------------------------------------------------


ROWS = [{"problem": "ab", "answer": "4", "extra": [1, 2]}, {"problem": "abcd", "answer": "5"}]


@pytest.mark.parametrize("workers", [0, 1])
def test_plugin_scores_items_and_isolates_failures(plugin, workers):
    items = [("4", "4", ROWS[0]), ("x", "5", ROWS[1]), ("raise", "4", ROWS[0]), ("nan", "4", ROWS[0]),
             ("two", "4", ROWS[0]), (" 5 ", "5", ROWS[1])]
    with Grader(num_workers=workers, timeout=5.0, reward=f"{plugin}:picky") as g:
        assert g.plugin
        scores = g.score(items)
        with pytest.raises(SteerError, match="plug-in: use Grader.score"):
            g.grade([("4", "4")])
    assert scores[0] == Score(1.0, values=(1.0,))
    assert scores[1].value == pytest.approx(-0.5 + 0.004)  # the row's own fields reached the plug-in
    assert scores[2].value is None and "RuntimeError: boom" in scores[2].error
    assert scores[3].value is None and "non-finite" in scores[3].error
    assert scores[4].value is None and "2 value(s) for 1" in scores[4].error
    assert scores[5].value == 1.0


def test_plugin_call_is_killed_at_the_timeout(plugin):
    import time

    with Grader(num_workers=1, timeout=1.0, reward=f"{plugin}:picky") as g:
        g.score([("4", "4", ROWS[0])])  # worker up
        (pid,) = g.worker_pids
        start = time.monotonic()
        scores = g.score([("sleep", "4", ROWS[0]), ("4", "4", ROWS[0])])
        assert time.monotonic() - start < 10
        assert scores[0] == Score(None, True, "timed out")
        assert scores[1].value == 1.0
        assert g.worker_pids != [pid]  # the stuck worker was replaced


def test_plugin_that_does_not_import_is_one_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_module_xyz\n")
    for workers in (0, 1):
        with pytest.raises(SteerError, match="failed to import: ModuleNotFoundError: No module named"):
            with Grader(num_workers=workers, reward=f"{bad}:fn") as g:
                g.dry_run(["a"], "a", {})
    missing = tmp_path / "ok.py"
    missing.write_text("def other(c, a, r):\n    return [0.0] * len(c)\n")
    with pytest.raises(SteerError, match="has no function fn"):
        with Grader(num_workers=1, reward=f"{missing}:fn") as g:
            g.dry_run(["a"], "a", {})


@pytest.mark.parametrize(("fn", "needle"), [
    ("constant_one", "returned 1 value(s) for 2"), ("scalar", "returned float, not a list"),
    ("crash_on_empty", "ZeroDivisionError"),
])
def test_dry_run_catches_malformed_plugins(plugin, fn, needle):
    with Grader(num_workers=1, timeout=5.0, reward=f"{plugin}:{fn}") as g:
        with pytest.raises(SteerError) as err:
            g.dry_run(["4", ""], "4", ROWS[0])
    assert needle in str(err.value) and "trial call on the first problem" in str(err.value)


def test_module_plugin(tmp_path, monkeypatch):
    pkg = tmp_path / "rewardpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "scores.py").write_text("def shout(c, a, r):\n    return [float(x.isupper()) for x in c]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    # the workers start from a fork server that inherits sys.path as it was when it started;
    # PYTHONPATH makes the package importable there too, as it would be for an installed one
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{':'.join(sys.path)}")
    with Grader(num_workers=0, reward="rewardpkg.scores:shout") as g:
        assert [s.value for s in g.score([("AB", "x", {}), ("ab", "x", {})])] == [1.0, 0.0]


# -- training ------------------------------------------------------------------------------------


def train_args(model, data, out, *extra):
    return ["train", "--model", str(model), "--dataset", str(data), "--output-dir", str(out),
            "--prompts-per-step", "2", "--num-generations", "3", "--max-new-tokens", "6",
            "--set", "train.micro_batch_size=4", *extra]


def test_training_with_a_plugin_reward(tiny_lm, tiny_problems, tmp_path, plugin):
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(tiny_lm, tiny_problems, out, "--max-steps", "2", "--save-every", "1",
                                           "--reward", f"{plugin}:length", "--set", "train.grader_workers=1"))
    assert result.exit_code == 0, result.output
    settings = yaml.safe_load((out / "settings.yaml").read_text())
    import hashlib

    assert settings["train"]["reward"] == f"{plugin}:length"
    assert settings["train"]["reward_sha256"] == hashlib.sha256(plugin.read_bytes()).hexdigest()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for m in lines:
        assert m["accuracy"] is None and m["reward_errors"] == 0
        # length of the text without its stop token: at most the 6-token budget of a byte tokenizer
        assert 0 <= m["reward_mean"] <= 6 * 4

    # an edited plug-in file changes the reward: --resume refuses
    plugin.write_text(PLUGIN + "\n# edited\n")
    result = runner.invoke(app, train_args(tiny_lm, tiny_problems, out, "--max-steps", "3", "--resume",
                                           "--reward", f"{plugin}:length", "--set", "train.grader_workers=1"))
    assert result.exit_code == 2 and "train.reward_sha256" in result.output, result.output
    result = runner.invoke(app, train_args(tiny_lm, tiny_problems, out, "--max-steps", "3", "--resume",
                                           "--set", "train.grader_workers=1"))
    assert result.exit_code == 2 and "train.reward: " in result.output, result.output


def test_failing_items_get_reward_wrong_and_are_counted(tiny_lm, tiny_problems, tmp_path):
    flaky = tmp_path / "flaky.py"
    flaky.write_text(textwrap.dedent('''
        def fn(completions, answers, rows):
            if len(completions[0]) > 2 and len(completions[0]) % 2:  # the trial call passes ("4", "")
                raise ValueError("odd")
            return [2.0 for _ in completions]
    '''))
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(tiny_lm, tiny_problems, out, "--max-steps", "2", "--reward", f"{flaky}:fn",
                                           "--set", "train.grader_workers=1", "--set", "train.reward_wrong=-3"))
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    errors = sum(m["reward_errors"] for m in lines)
    assert errors > 0
    for m in lines:  # 6 completions a step: each 2.0, or -3 (reward_wrong) where the call raised
        assert m["reward_mean"] == pytest.approx((2.0 * (6 - m["reward_errors"]) - 3.0 * m["reward_errors"]) / 6)


@pytest.mark.parametrize(("body", "needle"), [
    ("def fn(c, a, r):\n    return [1.0]\n", "returned 1 value(s) for 2"),
    ("def fn(c, a, r):\n    raise KeyError('answer')\n", "KeyError"),
    ("def fn(c, a, r):\n    return [float('nan')] * len(c)\n", "non-finite"),
    ("def other(c, a, r):\n    return [0.0] * len(c)\n", "has no function fn"),
    ("import no_such_module_xyz\n", "failed to import"),
    ("def fn(c, a, r):\n    while True:\n        pass\n", "did not return within 2 s"),
])
def test_bad_plugin_is_one_line_error_before_any_write(tiny_lm, tiny_problems, tmp_path, body, needle):
    bad = tmp_path / "bad_reward.py"
    bad.write_text(body)
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(tiny_lm, tiny_problems, out, "--reward", f"{bad}:fn",
                                           "--set", "train.grader_workers=1", "--set", "train.grade_timeout=2"))
    one_line_error(result, needle)
    assert not out.exists()


def test_unknown_reward_is_a_settings_error(tiny_lm, tiny_problems, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(tiny_lm, tiny_problems, out, "--reward", "maths"))
    one_line_error(result, "unknown reward 'maths'")
    assert not out.exists()


def test_exact_reward_trains(tiny_lm, tiny_problems, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, train_args(tiny_lm, tiny_problems, out, "--max-steps", "1", "--reward", "exact",
                                           "--set", "train.grader_workers=0"))
    assert result.exit_code == 0, result.output
    (m,) = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert m["accuracy"] == 0.0 and m["reward_mean"] == -1.0  # a random tiny model never says "4"
    assert yaml.safe_load((out / "settings.yaml").read_text())["train"]["reward_sha256"] is None
