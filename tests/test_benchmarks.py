import json
from pathlib import Path

import pytest

from steer_cli.data.benchmarks import (
    ALL_BENCHMARKS,
    BENCHMARKS,
    PAPER_BENCHMARKS,
    get_benchmark,
    load_benchmark,
    resolve_benchmarks,
)
from steer_cli.data.records import FieldMap, Problem, _last_boxed, normalize_answer
from steer_cli.errors import SteerError

FIXTURES = Path(__file__).parent / "fixtures" / "data"

EXPECTED_COUNTS = {
    "aime24": 30,
    "aime25": 30,
    "amc23": 40,
    "math500": 500,
    "minerva_math": 272,
    "olympiadbench": 675,
    "gsm8k": 1319,
}


def _raw_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- the shared benchmark files -------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_every_shared_benchmark_row_loads_with_an_answer(shared_data, name):
    problems = load_benchmark(name, shared_data)
    assert len(problems) == EXPECTED_COUNTS[name]
    assert all(p.problem.strip() and p.answer.strip() for p in problems)
    assert len({p.id for p in problems}) == len(problems)


@pytest.mark.shared_data
def test_shared_answers_spot_checks(shared_data):
    gsm8k = load_benchmark("gsm8k", shared_data)
    assert gsm8k[0].answer == "18"
    assert gsm8k[0].problem.startswith("Janet")
    assert gsm8k[0].id == "0"

    amc = load_benchmark("amc23", shared_data)
    assert _raw_rows(shared_data / "amc23" / "test.jsonl")[0]["answer"] == 27.0
    assert amc[0].answer == "27"
    assert all("." not in p.answer for p in amc)  # every AMC23 answer is a whole number

    aime24 = load_benchmark("aime24", shared_data)
    assert (aime24[0].id, aime24[0].answer) == ("60", "204")
    aime25 = load_benchmark("aime25", shared_data)
    assert (aime25[0].id, aime25[0].answer) == ("I-1", "70")

    math500 = load_benchmark("math500", shared_data)
    assert math500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert math500[0].id == "test/precalculus/807.json"


@pytest.mark.shared_data
def test_shared_minerva_answer_is_last_boxed_of_solution(shared_data):
    raw = _raw_rows(shared_data / "minerva_math" / "test.jsonl")
    problems = load_benchmark("minerva_math", shared_data)
    assert problems[0].answer == "1.6"
    for row, p in zip(raw, problems):
        solution = row["solution"]
        start = solution.rindex("\\boxed{") + len("\\boxed{")
        # the boxed content is a prefix of the tail whose braces balance at its end
        tail = solution[start:].lstrip()
        assert tail.startswith(p.answer)
        assert tail[len(p.answer):].lstrip().startswith("}")
        assert p.answer.count("{") == p.answer.count("}")


@pytest.mark.shared_data
def test_shared_olympiadbench_list_answers(shared_data):
    raw = _raw_rows(shared_data / "olympiadbench" / "test.jsonl")
    problems = load_benchmark("olympiadbench", shared_data)
    assert problems[0].answer == "2"
    by_raw = {r["final_answer"][0]: p.answer for r, p in zip(raw, problems)}
    assert by_raw["$\\frac{1}{2 n+2}$"] == "\\frac{1}{2 n+2}"
    assert by_raw["$69$,$84$"] == "69, 84"
    # no answer is still one whole math span (prose answers with several spans stay as written)
    assert not any(p.answer[:1] == p.answer[-1:] == "$" and p.answer.count("$") == 2 for p in problems)


@pytest.mark.shared_data
def test_limit_takes_the_first_problems(shared_data):
    full = load_benchmark("math500", shared_data)
    assert load_benchmark("MATH500", shared_data, limit=3) == full[:3]
    with pytest.raises(SteerError, match="limit"):
        load_benchmark("math500", shared_data, limit=0)


@pytest.mark.shared_data
def test_a_shared_file_loads_by_path_with_guessed_fields(shared_data):
    by_name = load_benchmark("gsm8k", shared_data)
    by_path = load_benchmark(str(shared_data / "gsm8k" / "test.jsonl"))
    assert [p.answer for p in by_path] == [p.answer for p in by_name]
    minerva = load_benchmark(shared_data / "minerva_math")  # directory with test.jsonl
    assert [p.answer for p in minerva] == [p.answer for p in load_benchmark("minerva", shared_data)]


# --- the registry ----------------------------------------------------------------------------


def test_registry_protocol():
    assert PAPER_BENCHMARKS == ("aime25", "aime24", "amc23", "math500", "minerva_math", "olympiadbench")
    assert set(BENCHMARKS) == set(ALL_BENCHMARKS)
    for name in ("aime24", "aime25", "amc23"):
        assert (BENCHMARKS[name].samples, BENCHMARKS[name].metric) == (32, "avg@32")
    for name in ("math500", "minerva_math", "olympiadbench", "gsm8k"):
        assert (BENCHMARKS[name].samples, BENCHMARKS[name].metric) == (1, "pass@1")
    assert [BENCHMARKS[n].display_name for n in PAPER_BENCHMARKS] == [
        "AIME25", "AIME24", "AMC23", "MATH500", "MinervaMath", "OlympiadBench"]
    assert BENCHMARKS["aime25"].hub.configs == ("AIME2025-I", "AIME2025-II")
    assert BENCHMARKS["gsm8k"].hub.configs == ("main",)


def test_resolve_paper_all_and_lists():
    assert resolve_benchmarks("paper") == list(PAPER_BENCHMARKS)
    assert resolve_benchmarks("all") == list(ALL_BENCHMARKS)
    assert resolve_benchmarks("gsm8k, paper") == ["gsm8k", *PAPER_BENCHMARKS]
    assert resolve_benchmarks(["math500", "aime24,math500"]) == ["math500", "aime24"]
    assert resolve_benchmarks("aime24,my/own.jsonl") == ["aime24", "my/own.jsonl"]


def test_resolve_is_case_insensitive_and_takes_display_names():
    assert resolve_benchmarks("MATH500,minerva,OlympiadBench,AIME24,Gsm8K") == [
        "math500", "minerva_math", "olympiadbench", "aime24", "gsm8k"]
    assert resolve_benchmarks("MinervaMath") == ["minerva_math"]
    assert get_benchmark("Aime25").name == "aime25"


def test_resolve_unknown_name_suggests_and_lists():
    with pytest.raises(SteerError) as err:
        resolve_benchmarks("aime24,math50")
    message = str(err.value)
    assert "did you mean 'math500'" in message
    for name in ALL_BENCHMARKS:
        assert name in message
    with pytest.raises(SteerError, match="no benchmarks given"):
        resolve_benchmarks(" , ")


# --- local files and errors ------------------------------------------------------------------


def test_missing_data_dir_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SteerError, match=f"data directory {missing} does not exist"):
        load_benchmark("aime24", missing)


def test_missing_benchmark_file_lists_candidates(tmp_path):
    (tmp_path / "aime24").mkdir()
    with pytest.raises(SteerError) as err:
        load_benchmark("aime24", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "aime24" / "test.jsonl") in message
    assert str(tmp_path / "aime24.jsonl") in message
    assert "\n" not in message


def test_flat_layout_and_strictness(tmp_path):
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "  "}]
    (tmp_path / "amc23.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # a benchmark must be complete: one empty answer is an error that names the row
    with pytest.raises(SteerError, match="row 1"):
        load_benchmark("amc23", tmp_path)
    (tmp_path / "amc23.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert [(p.id, p.answer) for p in load_benchmark("amc23", tmp_path)] == [("amc23:0", "2")]


def test_malformed_jsonl_names_the_line():
    with pytest.raises(SteerError, match=r"malformed\.jsonl, line 3: invalid JSON"):
        load_benchmark(str(FIXTURES / "malformed.jsonl"))


def test_column_json_with_solutions_loads_boxed_answers():
    problems = load_benchmark(str(FIXTURES / "bench_columns.json"))
    assert [p.answer for p in problems] == ["32", "\\frac{3}{4}"]
    assert [p.id for p in problems] == ["bench_columns:0", "bench_columns:1"]


def test_parquet_file_with_explicit_fields(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mine.parquet"
    table = pa.table({"q": ["Compute 3*3.", "Name two primes."], "a": [[9.0], [2.0, 3.5]]})
    pq.write_table(table, path)
    problems = load_benchmark(path, fields=FieldMap("q", "a", answer_kind="list"))
    assert [p.answer for p in problems] == ["9", "2, 3.5"]
    with pytest.raises(SteerError, match="cannot tell which columns"):
        load_benchmark(path)


def test_unknown_name_that_is_not_a_path():
    with pytest.raises(SteerError, match="did you mean 'olympiadbench'"):
        load_benchmark("olympiadbenc")
    with pytest.raises(SteerError, match="does not exist"):
        load_benchmark("no/such/file.jsonl")


def test_hub_path_concatenates_configs_and_maps_fields(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, config=None, *, split):
        calls.append((path, config, split))
        if path == "opencompass/AIME2025":
            part = config.rsplit("-", 1)[1]
            return [{"question": f"{part} q{i}", "answer": str(i)} for i in range(2)]
        if path == "Maxwell-Jia/AIME_2024":
            return [{"ID": "2024-I-1", "Problem": "p", "Solution": "s", "Answer": 204}]
        raise AssertionError(path)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    aime25 = load_benchmark("aime25")
    assert calls == [("opencompass/AIME2025", "AIME2025-I", "test"),
                     ("opencompass/AIME2025", "AIME2025-II", "test")]
    assert [(p.id, p.problem, p.answer) for p in aime25] == [
        ("aime25:0", "I q0", "0"), ("aime25:1", "I q1", "1"),
        ("aime25:2", "II q0", "0"), ("aime25:3", "II q1", "1")]
    assert load_benchmark("AIME24")[0] == Problem("2024-I-1", "p", "204")


def test_hub_failure_becomes_one_line_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'HuggingFaceH4/MATH-500' on the Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SteerError) as err:
        load_benchmark("math500")
    assert "--data-dir" in str(err.value) and "\n" not in str(err.value)


# --- answer normalisation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (27.0, "27"), (-1.0, "-1"), (0.5, "0.5"), (204, "204"), (" 70 \n", "70"),
        ("$2n$", "2n"), ("$ x^2 $", "x^2"), (["$2$", "$3$"], "2, 3"), ([], None), (None, None),
        ("   ", None), (float("nan"), None), ("$a$ and $b$", "$a$ and $b$"), ("025", "025"),
    ],
)
def test_normalize_answer(value, expected):
    assert normalize_answer(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{1} then \\boxed{\\frac{a}{b}} done", "\\frac{a}{b}"),
        ("\\boxed{{x}+{y}}", "{x}+{y}"),
        ("\\boxed {7}", "7"),
        ("\\boxed{3} and a broken \\boxed{4", "3"),
        ("no box", None),
    ],
)
def test_last_boxed(text, expected):
    assert _last_boxed(text) == expected
