"""launch/evaluate.py and rl/task_files.py refuse what they would otherwise ignore or mangle: training settings and
settings its own flags own, --k/--limit below 1, flags that do not apply, task-file fields of the wrong kind (named
by file, line and field); exit code 2 and no output folder before every check has passed."""

from __future__ import annotations

import json

import pytest

from launch.evaluate import main, parse_args
from rl.task_files import load_task_file

SAMPLE = "launch/configs/wiki_qa_sample.jsonl"


class Started(Exception):
    """Raised by the stand-in RLGroups: the command got past every check (and nothing is started)."""


@pytest.fixture(autouse=True)
def no_groups(monkeypatch):
    import rl.groups

    def groups(cfg, train=True):
        raise Started(cfg, train)

    monkeypatch.setattr(rl.groups, "RLGroups", groups)


def _refused(capsys, tmp_path, *argv) -> str:
    """main() on `argv` exits 2 (from argparse or main's own error path) without making --out; -> stderr."""
    out = tmp_path / "out"
    try:
        rc = main(["--policy", "tiny", "--tasks", SAMPLE, "--out", str(out), *argv])
    except SystemExit as stop:
        rc = stop.code
    except Started:
        rc = "started"
    assert rc == 2
    assert not out.exists()
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [(["--k", "0"], "--k"), (["--limit", "0"], "--limit"),
                                        (["--limit", "-1"], "--limit")])
def test_k_and_limit_must_be_at_least_one(capsys, tmp_path, argv, flag):
    assert f"{flag} must be >= 1" in _refused(capsys, tmp_path, *argv)


def test_task_file_limit_is_a_count(tmp_path):
    assert len(load_task_file(SAMPLE, limit=2)) == 2
    for bad in (0, -1):
        with pytest.raises(ValueError, match="limit must be a whole number >= 1"):
            load_task_file(SAMPLE, limit=bad)


@pytest.mark.parametrize("argv, flag", [
    (["--judge", "rule", "--judge-url", "http://127.0.0.1:9/v1"], "--judge-url"),
    (["--judge-model", "j"], "--judge-model"),
    (["--served-model", "m"], "--served-model"),
    (["--tokenizer", "/some/folder"], "--tokenizer"),
])
def test_flags_that_do_not_apply_are_refused(capsys, tmp_path, argv, flag):
    assert f"error: {flag} " in _refused(capsys, tmp_path, *argv)


def test_flags_that_apply_are_accepted():
    parse_args(["--policy", "http://127.0.0.1:9/v1", "--served-model", "m", "--tokenizer", "/t"])
    parse_args(["--policy", "tiny", "--judge", "gaia", "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j"])
    with pytest.raises(SystemExit) as stop:
        parse_args(["--rescore", "d", "--k", "2"])  # re-scoring reads its settings from d
    assert stop.value.code == 2


@pytest.mark.parametrize("override", ["trainer.lr=0.9", "algo.kl_coef=0.7", "run.steps=99", "sft.epochs=9",
                                      "rollout.mode=async", "rollout.max_staleness=3", "pipeline.stages=[eval_x]",
                                      "rollout={mode: async, max_tokens: 8}"])
def test_training_settings_are_refused(capsys, tmp_path, override):
    err = _refused(capsys, tmp_path, override)
    key = override.split("=")[0] if "{" not in override else "rollout.mode"
    assert f"'{key}' (from the command line) would be read by nothing" in err and "does not train" in err


@pytest.mark.parametrize("argv, key, flag", [(["model.path=tiny"], "model.path", "--policy"),
                                             (["data.path=x.jsonl"], "data.path", "--tasks"),
                                             (["--k", "2", "eval.k=4"], "eval.k", "--k")])
def test_settings_of_evaluate_flags_are_refused(capsys, tmp_path, argv, key, flag):
    assert f"'{key}' (from the command line) is what {flag} sets" in _refused(capsys, tmp_path, *argv)


def test_nothing_is_created_before_the_checks(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"uid": "a", "question": 1987, "answer": "x"}) + "\n")
    assert "line 1: field 'question' is int 1987" in _refused(capsys, tmp_path, "--tasks", str(bad))
    assert "'agent.max_turns'" in _refused(capsys, tmp_path, "agent.max_turns=0")  # found by load_config
    assert "--ignore-images" in _refused(capsys, tmp_path, "--ignore-images")  # no task has an image


def test_checked_settings_reach_the_groups(tmp_path):
    """A good command line: the folder, its tasks.jsonl and the settings the evaluation is run with."""
    out = tmp_path / "out"
    with pytest.raises(Started) as started:
        main(["--policy", "tiny", "--tasks", SAMPLE, "--out", str(out), "--k", "2", "--limit", "3",
              "eval.temperature=0.3"])
    cfg, train = started.value.args
    assert not train and cfg.run.dir == str(out.resolve()) and cfg.eval.k == 2
    assert cfg.eval.temperature == 0.3 and cfg.data.path == str(out.resolve() / "tasks.jsonl")
    assert len((out / "tasks.jsonl").read_text().splitlines()) == cfg.data.num_tasks == 3


def _one(tmp_path, row: str, **kw) -> list[dict]:
    f = tmp_path / "t.jsonl"
    f.write_text(row + "\n")
    return load_task_file(f, **kw)


@pytest.mark.parametrize("row, message", [
    ('{"uid": "a", "question": 1987, "answer": "x"}', "field 'question' is int 1987, expected a string"),
    ('{"uid": "a", "question": NaN, "answer": "x"}', "field 'question' is float nan, expected a string"),
    ('{"uid": true, "question": "q", "answer": "x"}', "field 'uid' is bool True"),
    ('{"uid": 1.5, "question": "q", "answer": "x"}', "field 'uid' is float 1.5"),
    ('{"uid": "a", "question": "q", "answer": NaN}', "field 'answer' is float nan, expected a string or a finite"),
    ('{"uid": "a", "question": "q", "answer": true}', "field 'answer' is bool True"),
    ('{"uid": "a", "question": "q", "answer": ["x", 3]}', "field 'answer' is list"),
    ('{"uid": "a", "question": "q", "answer": "x", "gold_ids": "page-7"}', "field 'gold_ids' is str 'page-7'"),
    ('{"uid": "a", "question": "q", "answer": "x", "gold_ids": [null, 3]}', "field 'gold_ids' is list [None, 3]"),
    ('{"id": "a", "question": "q", "answer": "x", "formalization": {}, "urls": "http://a.org"}',
     "field 'urls' is str 'http://a.org', expected a list of non-empty strings"),
    ('{"id": null, "question": "q", "answer": "x", "formalization": {}, "urls": [1]}', "field 'urls' is list [1]"),
    ('{"question": "q", "image_path": "i.jpg", "answers": ["a"], "domain": 3}', "field 'domain' is int 3"),
])
def test_task_file_fields_of_the_wrong_kind_are_refused(tmp_path, row, message):
    with pytest.raises(ValueError, match="t.jsonl: line 1: " + message.replace("[", r"\[").replace("(", r"\(")):
        _one(tmp_path, row)


def test_task_file_numbers_convert_only_for_answers_and_ids(tmp_path):
    assert _one(tmp_path, '{"uid": "a", "question": "q", "answer": 2.5, "gold_ids": []}') == \
        [{"uid": "a", "question": "q", "answer": "2.5"}]
    (t,) = _one(tmp_path, '{"id": null, "question": "q", "answer": 7, "formalization": "f", "urls": null}')
    assert (t["uid"], t["answer"], t["urls"]) == ("t-0", "7", [])
    (t,) = _one(tmp_path, '{"question": "q", "image_path": "i.jpg", "answers": ["a"], "domain": null}')
    assert t["domain"] == ""
