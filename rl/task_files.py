"""Task files of benchmarks and data sets -> the project's tasks ({uid, question, answer[, ...]}), for the
evaluation harness (`launch/evaluate.py`, SEEDS 14 item 43).

Owns: reading the formats below (a few lines each), `detect_format`, and `write_tasks` (the project's jsonl that
`data.task=file` reads). Formats (`format=`):
  jsonl      the project's own rows {uid, question, answer (a string or a list)[, gold_ids]} (rl/data.py file_tasks)
  webshaper  WebShaper rows {id, question, answer, formalization, urls} (SEEDS 8.1); formalization and urls kept
  bcvl       BrowseComp-VL rows {question, image_path, answers, domain}; `answers` a list, or a list written as a
             string ("['a', 'b']"); image_path and domain kept
  qa         question + answer files of GAIA ("Question", "Final answer", "task_id"), BrowseComp and SimpleQA
             ("problem", "answer"), HLE ("question", "answer", "id"), or plain {question, answer}
Files: .jsonl, .json (a list of rows), .csv or .parquet. `auto` picks the format from the first row's keys.

Fields are checked as rl/data.py file_tasks checks them: question, image_path and domain are strings; an answer a
string, a list of strings or a finite number (written as its text: 3 -> "3"); an id a string or an integer;
gold_ids and urls lists of strings. Nothing else is converted (a question of 1987, a uid of true, gold_ids "p7").

Never: fetch anything, guess a missing field (a bad row is a ValueError naming the file, the row and the field),
or import Ray, torch or the engines.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

from rl.data import read_rows

FORMATS = ("auto", "jsonl", "webshaper", "bcvl", "qa")
QUESTION_KEYS = ("question", "Question", "problem", "prompt")
ANSWER_KEYS = ("answer", "Final answer", "final_answer", "Answer", "gold")
ID_KEYS = ("uid", "id", "task_id", "qid")


def detect_format(row: dict, where: str) -> str:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be an object, got {type(row).__name__}")
    if "formalization" in row:
        return "webshaper"
    if "image_path" in row and "answers" in row:
        return "bcvl"
    if "uid" in row and "question" in row and "answer" in row:
        return "jsonl"
    if any(k in row for k in QUESTION_KEYS) and any(k in row for k in ANSWER_KEYS):
        return "qa"
    raise ValueError(f"{where}: cannot tell the task-file format from the keys {sorted(row)}; give format= "
                     f"one of {FORMATS[1:]}")


def _wrong(row: dict, key: str, where: str, want: str) -> ValueError:
    """The error for a field of the wrong kind, in rl/data.py's words (file, line or row, field, value)."""
    value = row[key]
    return ValueError(f"{where}: field {key!r} is {type(value).__name__} {value!r:.80}, expected {want}")


def _text(row: dict, key: str, where: str) -> str:
    """A non-empty string field; nothing is converted (a question of 1987 is an error, not "1987")."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{where}: field {key!r} is missing or empty")
    if not isinstance(value, str):
        raise _wrong(row, key, where, "a string")
    return value


def _answer(row: dict, key: str, where: str) -> str | list[str]:
    """An answer: a non-empty string, a non-empty list of them (several acceptable answers), or a finite number,
    written as its text (GAIA and SimpleQA write numbers as numbers in some copies: 3 -> "3")."""
    value = row.get(key)
    if isinstance(value, list):
        if value and all(isinstance(a, str) and a.strip() for a in value):
            return value
        raise _wrong(row, key, where, "a string, a number or a non-empty list of non-empty strings")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise _wrong(row, key, where, "a string or a finite number")
        return str(value)
    return _text(row, key, where)


def _strings(row: dict, key: str, where: str) -> list[str]:
    """An optional list of non-empty strings (gold_ids, urls): absent or null is [], anything else an error
    (a string is not taken for a list of its characters)."""
    value = row.get(key)
    if value is None:
        return []
    if not (isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)):
        raise _wrong(row, key, where, "a list of non-empty strings")
    return value


def _uid(row: dict, keys: tuple[str, ...], where: str, default: str) -> str:
    """The row's id (the first of `keys` that is set; an integer id is written as its text), else `default`."""
    key = next((k for k in keys if row.get(k) not in (None, "")), None)
    if key is None:
        return default
    value = row[key]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _wrong(row, key, where, "a string or an integer id")
    return value


def _first_key(row: dict, keys: tuple[str, ...], what: str, where: str) -> str:
    for k in keys:
        if k in row:
            return k
    raise ValueError(f"{where}: no {what} field (one of {list(keys)}); the row has {sorted(row)}")


def _answers(value, where: str) -> list[str]:
    """BC-VL's answers: a list, or a list written as a string."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"{where}: field 'answers' {value!r:.80} is neither a list nor a list written as a "
                             f"string") from None
    if isinstance(value, str):
        value = [value]
    if not (isinstance(value, (list, tuple)) and value and all(isinstance(a, str) and a.strip() for a in value)):
        raise ValueError(f"{where}: field 'answers' must be a non-empty list of strings, got {value!r:.80}")
    return list(value)


def _row_task(fmt: str, row: dict, where: str, default_uid: str) -> dict:
    if fmt == "webshaper":
        task = {"uid": _uid(row, ("id",), where, default_uid), "question": _text(row, "question", where),
                "answer": _answer(row, "answer", where), "formalization": row.get("formalization"),
                "urls": _strings(row, "urls", where)}
    elif fmt == "bcvl":
        domain = row.get("domain")
        if domain is not None and not isinstance(domain, str):
            raise _wrong(row, "domain", where, "a string")
        task = {"uid": _uid(row, ("id",), where, default_uid), "question": _text(row, "question", where),
                "answer": _answers(row.get("answers"), where), "image_path": _text(row, "image_path", where),
                "domain": domain or ""}
    else:  # jsonl (checked again by rl/data.py when data.task=file reads it) and question + answer files
        q = _first_key(row, QUESTION_KEYS, "question", where)
        a = _first_key(row, ANSWER_KEYS, "answer", where)
        task = {"uid": _uid(row, ID_KEYS, where, default_uid), "question": _text(row, q, where),
                "answer": _answer(row, a, where)}
        gold_ids = _strings(row, "gold_ids", where)
        if gold_ids:
            task["gold_ids"] = gold_ids
    return task


def load_task_file(path: str | Path, format: str = "auto", limit: int | None = None) -> list[dict]:
    """The tasks of a task file (module docstring), the first `limit` of them (None: all); uids unique (a repeat
    is an error naming both rows)."""
    if format not in FORMATS:
        raise ValueError(f"task file format {format!r} is not one of {FORMATS}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"task file limit must be a whole number >= 1 (None: every task), got {limit!r}")
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no tasks")
    fmt = detect_format(rows[0][1], rows[0][0]) if format == "auto" else format
    tasks, seen = [], {}
    for i, (where, row) in enumerate(rows[:limit]):
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a row must be an object, got {type(row).__name__}")
        task = _row_task(fmt, row, where, f"{Path(path).stem}-{i}")
        if task["uid"] in seen:
            raise ValueError(f"{where} repeats uid {task['uid']!r} of {seen[task['uid']]}")
        seen[task["uid"]] = where
        tasks.append(task)
    return tasks


def write_tasks(tasks: list[dict], path: str | Path) -> Path:
    """The project's jsonl ({uid, question, answer[, gold_ids]} and any extra keys) that data.task=file reads."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks), encoding="utf-8")
    return p
