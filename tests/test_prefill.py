"""--prefill: text appended after the generation prompt (the reference's "append To"), in eval, train
and generate; one token unless --prefill-multi-token."""

from __future__ import annotations

import json

import pytest
from cli_helpers import one_line_error
from typer.testing import CliRunner

from steer_cli.cli import _register, app
from steer_cli.errors import SteerError

_register()
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_prefill_tokens_follow_the_prompt():
    from tiny_models import make_tokenizer

    from steer_cli.data.prompts import render_prompt

    tok = make_tokenizer()
    plain = render_prompt(tok, "What is 2+2?")
    assert render_prompt(tok, "What is 2+2?", prefill="T") == plain + tok("T", add_special_tokens=False)["input_ids"]
    with pytest.raises(SteerError, match=r"prefill 'To' is 2 tokens .*--prefill-multi-token"):
        render_prompt(tok, "What is 2+2?", prefill="To")
    two = render_prompt(tok, "What is 2+2?", prefill="To", prefill_multi_token=True)
    assert two[:len(plain)] == plain and len(two) == len(plain) + 2
    with pytest.raises(SteerError, match="append_to and prompt.prefill together"):
        render_prompt(tok, "x", prefill="T", append_to=True)


def test_eval_with_a_prefill_records_it_and_refuses_a_long_one(tiny_lm, tiny_problems, tmp_path):
    common = ["eval", "--model", tiny_lm, "--benchmarks", tiny_problems, "--limit", "2", "--max-new-tokens", "4",
              "--set", "train.grader_workers=0"]
    bad = tmp_path / "bad"
    one_line_error(invoke(*common, "--prefill", "To", "-o", bad), "is 2 tokens")
    assert not bad.exists()
    out = tmp_path / "out"
    result = invoke(*common, "--prefill", "T", "-o", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prefill"] == "T"
    assert json.loads((out / "target.json").read_text())["identity"]["prefill"] == "T"
    line = json.loads((out / "seed-0" / f"{tiny_problems.stem}.jsonl").read_text().splitlines()[0])
    plain = tmp_path / "plain"
    assert invoke(*common, "-o", plain).exit_code == 0
    plain_line = json.loads((plain / "seed-0" / f"{tiny_problems.stem}.jsonl").read_text().splitlines()[0])
    assert line["prompt_length"] == plain_line["prompt_length"] + 1
    assert "prefill" not in json.loads((plain / "target.json").read_text())["identity"]  # old outputs match
    # a prefill is part of what was evaluated: the same directory without it is another evaluation
    one_line_error(invoke(*common, "-o", out), "prefill")
