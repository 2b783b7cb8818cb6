import json
from pathlib import Path

import pytest

from steer_cli.data.datasets import TRAIN_SETS, load_train_set
from steer_cli.data.records import FieldMap, Problem, rows_to_problems
from steer_cli.errors import SteerError

FIXTURES = Path(__file__).parent / "fixtures" / "data"


@pytest.mark.shared_data
def test_gsm8k_train_from_data_dir(shared_data):
    problems, skipped = load_train_set("gsm8k", data_dir=shared_data)
    assert (len(problems), skipped) == (7473, 0)
    assert problems[0].answer == "72"
    assert problems[0].id == "gsm8k:0" and problems[-1].id == "gsm8k:7472"
    # '####' answers lose their thousands separators
    first = json.loads((shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[0])
    assert problems[0].problem == first["question"]
    assert all("," not in p.answer for p in problems)
    assert load_train_set("GSM8K", data_dir=shared_data, limit=5)[0] == problems[:5]


@pytest.mark.shared_data
def test_data_dir_without_the_set_falls_back_to_the_hub(shared_data, monkeypatch):
    import datasets

    seen = []

    def fake_load_dataset(path, config=None, *, split):
        seen.append((path, config, split))
        return [{"problem": "p", "answer": "1", "solution": "s"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    problems, skipped = load_train_set("deepscaler", data_dir=shared_data)
    assert seen == [("agentica-org/DeepScaleR-Preview-Dataset", None, "train")]
    assert (problems, skipped) == ([Problem("deepscaler:0", "p", "1")], 0)


def test_bad_rows_are_skipped_and_counted():
    problems, skipped = load_train_set(str(FIXTURES / "train_some_bad.jsonl"))
    assert skipped == 3
    assert [p.answer for p in problems] == ["7", "1000", "42"]
    # ids keep the row index of the file, bad rows included
    assert [p.id for p in problems] == ["train_some_bad:0", "train_some_bad:2", "train_some_bad:5"]


def test_zero_usable_rows_says_what_was_expected_and_found(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"problem": "a", "answer": ""}\n{"problem": "b", "answer": null}\n')
    with pytest.raises(SteerError) as err:
        load_train_set(path)
    message = str(err.value)
    assert "2 rows read" in message
    assert "problem=problem,answer=answer" in message and "found columns: problem, answer" in message

    with pytest.raises(SteerError, match="found columns: problem, answer"):
        load_train_set(path, fields=FieldMap("prompt", "target"))


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(SteerError, match="holds no rows"):
        load_train_set(path)


def test_malformed_jsonl_names_file_and_line():
    with pytest.raises(SteerError) as err:
        load_train_set(FIXTURES / "malformed.jsonl")
    assert "malformed.jsonl, line 3: invalid JSON" in str(err.value)


def test_file_that_is_not_json():
    with pytest.raises(SteerError, match=r"not_json\.jsonl, line 1: invalid JSON"):
        load_train_set(FIXTURES / "not_json.jsonl")


def test_not_json_under_a_json_name(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(SteerError, match="not UTF-8|invalid JSON"):
        load_train_set(path)
    path.write_text("problem,answer\n1+1,2\n")
    with pytest.raises(SteerError, match="invalid JSON"):
        load_train_set(path)


def test_json_list_and_jsonl_named_json(tmp_path):
    rows = [{"question": "q1", "final_answer": ["$1$"]}, {"question": "q2", "final_answer": ["2", "3"]}]
    (tmp_path / "list.json").write_text(json.dumps({"version": 1, "data": rows}))
    problems, skipped = load_train_set(tmp_path / "list.json")
    assert ([p.answer for p in problems], skipped) == (["1", "2, 3"], 0)
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in rows))
    assert load_train_set(tmp_path / "lines.json")[0] == [
        Problem("lines:0", "q1", "1"), Problem("lines:1", "q2", "2, 3")]


def test_parquet_file_and_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "myset"
    folder.mkdir()
    table = pa.table({
        "id": ["a", "b", "c"],
        "problem": ["Compute 1+1.", "", "Compute 2.5*2."],
        "solution": ["It is \\boxed{2}.", "\\boxed{0}", "So \\boxed{5}."],
    })
    pq.write_table(table, folder / "train.parquet")
    problems, skipped = load_train_set(folder)
    assert skipped == 1
    assert [(p.id, p.answer) for p in problems] == [("a", "2"), ("c", "5")]
    assert load_train_set(str(folder / "train.parquet")) == (problems, 1)
    with pytest.raises(SteerError, match="no test data file"):
        load_train_set(tmp_path, split="test")


def test_named_set_local_file_with_other_columns_is_guessed(tmp_path):
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "train.jsonl").write_text(json.dumps({"question": "x?", "answer": 3.0}) + "\n")
    problems, _ = load_train_set("math", data_dir=tmp_path)
    assert problems == [Problem("math:0", "x?", "3")]


def test_hub_id_and_errors(monkeypatch, tmp_path):
    import datasets

    def fake_load_dataset(path, config=None, *, split):
        if path == "someone/their-set":
            return [{"Question": "q", "Answer": 12}]
        raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_train_set("someone/their-set") == ([Problem("someone/their-set:0", "q", "12")], 0)
    with pytest.raises(SteerError, match="could not load training set ummagumm-a/cot-free-dataset_dedup, split train"):
        load_train_set("gsm8k")
    with pytest.raises(SteerError, match="did you mean 'deepscaler'"):
        load_train_set("deepscale")
    with pytest.raises(SteerError, match="does not exist"):
        load_train_set("gsm8k", data_dir=tmp_path / "nope")
    with pytest.raises(SteerError, match="does not exist"):
        load_train_set("nowhere/train.jsonl")


def test_named_sets_table():
    assert TRAIN_SETS["deepscaler"].hub_id == "agentica-org/DeepScaleR-Preview-Dataset"
    # Table 4's runs: the reference's one set, its rows of each source (tests/test_table4_data.py).
    assert (TRAIN_SETS["gsm8k"].hub_id, TRAIN_SETS["gsm8k"].config) == ("ummagumm-a/cot-free-dataset_dedup", None)
    assert TRAIN_SETS["math"].fields == FieldMap("problem", "answer") and TRAIN_SETS["math"].source == "math"


def test_rows_to_problems_answer_kinds():
    rows = [
        {"p": "a", "x": "work\n#### 1,234"},
        {"p": "b", "x": "no marker"},
    ]
    assert rows_to_problems(rows, FieldMap("p", "x", answer_kind="gsm8k"), source="s") == (
        [Problem("s:0", "a", "1234")], 1)
    assert rows_to_problems([{"p": "a", "x": ["$x$", 2.0]}], FieldMap("p", "x", answer_kind="list"),
                            source="s") == ([Problem("s:0", "a", "x, 2")], 0)
    with pytest.raises(SteerError, match="row 1"):
        rows_to_problems(rows, FieldMap("p", "x", answer_kind="gsm8k"), source="s", strict=True)


def test_field_map_spec():
    assert FieldMap.from_spec("problem=q, answer=sol, kind=boxed_in, id=k") == FieldMap(
        "q", "sol", id="k", answer_kind="boxed_in")
    with pytest.raises(SteerError, match="unknown answer kind"):
        FieldMap.from_spec("kind=latex")
    with pytest.raises(SteerError, match="bad field map"):
        FieldMap.from_spec("question")
