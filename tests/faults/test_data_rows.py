"""Task rows from a file (rl/data.py `file_tasks`): a wrong type names the file, the line (jsonl) or row
(parquet) and the field; nothing is converted behind the user's back; good rows of every allowed
shape load as they are."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rl.data import file_tasks

GOOD = {"uid": "q1", "question": "Who wrote it?", "answer": "Ann"}


def jsonl(tmp_path, rows, blank_first=False):
    path = tmp_path / "tasks.jsonl"
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows]
    path.write_text(("\n" if blank_first else "") + "\n".join(lines) + "\n")
    return path


WRONG = [  # (field, value, what the error says is expected)
    ("question", 17, "a non-empty string"),
    ("question", ["Who?"], "a non-empty string"),
    ("question", "   ", "a non-empty string"),
    ("answer", 1987, 'a string \\(write a number as "1987"\\)'),
    ("answer", 3.5, "a string"),
    ("answer", True, "a string"),
    ("answer", {"text": "Ann"}, "a string"),
    ("answer", ["Ann", 2], "a string .* or a list of strings"),
    ("answer", ["Ann", ""], "a string .* or a list of strings"),
    ("uid", 5, 'a non-empty string \\(write a number as "17"\\)'),
    ("uid", ["a"], "a non-empty string"),
    ("gold_ids", "page-3", "a list of non-empty strings"),
    ("gold_ids", [3, 4], "a list of non-empty strings"),
    ("gold_ids", {"page": 3}, "a list of non-empty strings"),
]


@pytest.mark.parametrize("field,value,expect", WRONG, ids=[f"{f}={v!r}" for f, v, _ in WRONG])
def test_a_wrong_type_names_file_line_and_field(tmp_path, field, value, expect):
    path = jsonl(tmp_path, [GOOD, {**GOOD, "uid": "q2", field: value}], blank_first=True)
    with pytest.raises(ValueError, match=rf"{path}: line 3: field '{field}' is {type(value).__name__} .*"
                                         rf"expected {expect}"):
        file_tasks(str(path))


PARQUET = WRONG[:2] + WRONG[3:5] + WRONG[9:11]  # the values a parquet column can hold


@pytest.mark.parametrize("field,value,expect", PARQUET, ids=[f"{f}={v!r}" for f, v, _ in PARQUET])
def test_a_wrong_type_in_parquet_names_the_row(tmp_path, field, value, expect):
    path = tmp_path / "tasks.parquet"
    pq.write_table(pa.Table.from_pylist([{**GOOD, field: value}]), path)
    with pytest.raises(ValueError, match=rf"{path}: row 1: field '{field}' is"):
        file_tasks(str(path))


@pytest.mark.parametrize("line,says", [  # line 3: the file starts with a blank line
    ("[1, 2]", "line 3 is a JSON list, not an object"),
    ('"Who?"', "line 3 is a JSON str, not an object"),
    ("17", "line 3 is a JSON int, not an object"),
    ('{"uid": "q2", "question": "Q?"}', r"line 3 has no \['answer'\]"),
    ('{"uid": "q2", "question": "Q?", "answer": []}', r"line 3 has no \['answer'\]"),
    ('{"uid": "q2", "question": "", "answer": "A"}', r"line 3 has no \['question'\]"),
    ('{"uid": "q1", "question": "Q?", "answer": "Ann"}', "line 3 repeats uid 'q1'"),
    ('{"uid": "q2", "question": "Q?", "answer": "A"', "line 3 is not valid JSON"),
    # a gold answer that normalises to nothing would match an empty reply: every rollout right
    ('{"uid": "q2", "question": "Q?", "answer": " "}', "line 3: answer ' ' is empty once normalised"),
    ('{"uid": "q2", "question": "Q?", "answer": "The"}', "line 3: answer 'The' is empty once normalised"),
    ('{"uid": "q2", "question": "Q?", "answer": ["Oslo", "?!"]}', r"line 3: answer '\?!' is empty once normalised"),
])
def test_a_bad_row_names_its_line(tmp_path, line, says):
    path = jsonl(tmp_path, [GOOD, line], blank_first=True)
    with pytest.raises(ValueError, match=rf"{path}: {says}"):
        file_tasks(str(path))


def test_good_rows_load_as_they_are(tmp_path):
    rows = [GOOD,
            {"question": "Which years?", "answer": ["1987", "1988"], "gold_ids": ["p1", "p2"], "extra": 1},
            {"uid": "q3", "question": "Where?", "answer": "Oslo", "gold_ids": None},
            {"uid": "q4", "question": "What?", "answer": "x", "gold_ids": []}]
    path = jsonl(tmp_path, rows)
    assert file_tasks(str(path)) == [
        GOOD,
        {"uid": "tasks-1", "question": "Which years?", "answer": ["1987", "1988"], "gold_ids": ["p1", "p2"]},
        {"uid": "q3", "question": "Where?", "answer": "Oslo"},
        {"uid": "q4", "question": "What?", "answer": "x"}]
    assert [t["uid"] for t in file_tasks(str(path), limit=2)] == ["q1", "tasks-1"]


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "tasks.jsonl"
    text = json.dumps(GOOD) + "\n" + '{"uid": "q2", "question": "caf\u00e9?", "answer": "x"}\n'
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{path}: line 2 is not UTF-8 text"):
        file_tasks(str(path))


def test_a_line_separator_inside_a_row_is_text_and_a_json_file_names_its_syntax_error(tmp_path):
    """U+2028 (which evaluate.py's own tasks.jsonl writes raw) is not a line break of JSON Lines."""
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({**GOOD, "question": "Who\u2028wrote it?"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert file_tasks(str(path))[0]["question"] == "Who\u2028wrote it?"
    broken = tmp_path / "tasks.json"
    broken.write_text('[{"question": "Q?", "answer": "A"},\n {')
    with pytest.raises(ValueError, match=rf"{broken}: not valid JSON \(line 2, column 3"):
        file_tasks(str(broken))
