import os
from pathlib import Path

import pytest


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository (benchmark files; never copied into the repo)."""
    path = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if not path.is_dir():
        if os.environ.get("STEER_REQUIRE_SHARED") == "1":
            pytest.fail(f"STEER_REQUIRE_SHARED=1 but {path} is missing; put the benchmark files "
                        "there (<name>/test.jsonl) or unset STEER_REQUIRE_SHARED")
        pytest.skip("../shared/data not found beside the repository; benchmark-file tests need it")
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A tiny random Qwen2 model with a byte tokenizer and a ChatML template, saved like a checkpoint."""
    from tiny_models import save_tiny_lm

    return save_tiny_lm(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_problems(tmp_path_factory) -> Path:
    """A few arithmetic problems as a local .jsonl training set."""
    import json

    path = tmp_path_factory.mktemp("data") / "problems.jsonl"
    rows = [{"problem": f"What is {a}+{b}?", "answer": str(a + b)} for a, b in
            [(2, 2), (3, 5), (1, 1), (7, 2), (4, 4), (6, 1), (9, 9), (5, 3)]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def uninterrupted_demo_run(tmp_path_factory) -> Path:
    """The demo trained with demo_runs.ARGS without interruption: what every interrupted and
    resumed run must equal bit for bit."""
    from demo_runs import train_demo

    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = train_demo(out)
    assert done.returncode == 0, done.stderr
    return out


class CoinGrader:
    """Stands in for the math grader: 'correct' by a hash of the text, so rewards vary
    deterministically and random tiny models still produce non-zero advantages."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def grade(self, items):
        import hashlib

        from steer_cli.rewards.pool import Grade

        out = []
        for text, _ in items:
            bit = hashlib.sha256(text.encode()).digest()[0] & 1
            out.append(Grade(correct=bool(bit), has_answer=True, strict=False, timed_out=False))
        return out


@pytest.fixture
def coin_grader(monkeypatch):
    import steer_cli.rewards.pool

    monkeypatch.setattr(steer_cli.rewards.pool, "Grader", CoinGrader)
    return CoinGrader
