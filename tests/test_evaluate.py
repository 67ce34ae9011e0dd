"""The evaluation harness (SEEDS 14 item 43): re-scoring saved predictions reproduces the stored per-run
accuracies exactly (and a changed stored number is caught); Pass@k >= Pass@1; one test per task-file format;
the OpenAI-compatible engine's request and reply. The end-to-end run with an endpoint as the policy is the slow
test in tests/test_evaluate_endpoint.py."""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest

from launch.evaluate import COMPARED, record, rescore, score_batch, summarize
from rl.evaluate import pass_metrics
from rl.sft_data import write_trajectories
from rl.task_files import load_task_file
from rl.tasks import DEFAULT_QA_SCORING
from rollout.trajectory import TrajectoryRecord, build_batch, with_columns

GOLD = {0: "Paris", 1: "1969", 2: "Kubrick"}


def _episodes(k: int, seed: int = 0):
    """k runs of 3 questions; the answers right or wrong at random, some responses without a tool call."""
    rng = np.random.default_rng(seed)
    recs, texts = [], []
    for g, gold in GOLD.items():
        for s in range(k):
            answer = gold if rng.random() < 0.5 else "London"
            calls = "" if rng.random() < 0.3 else '<tool_call>{"name": "search", "arguments": {"query": ["q"]}}</tool_call>'
            texts.append(f"<think>t</think>{calls}<tool_response>r</tool_response><think>u</think><answer>{answer}</answer>")
            recs.append(TrajectoryRecord(uid=f"q{g}", group=g, sample=s, prompt_ids=[1, 2], response_ids=[3, 4],
                                         loss_mask=[1, 1], rollout_logprobs=[-0.1, -0.2], answer_text=answer,
                                         num_tool_calls=int(bool(calls))))
    batch = build_batch(recs)
    return with_columns(batch, {"response_text": texts, "question": [f"question {g}" for g in GOLD for _ in range(k)],
                                "gold_answer": [GOLD[g] for g in GOLD for _ in range(k)]})


def _saved(tmp_path, k=3):
    scoring = dict(DEFAULT_QA_SCORING)
    correct, scored = score_batch(_episodes(k), scoring, "answer")
    write_trajectories(tmp_path / "trajectories" / "eval_t.parquet", scored)
    meta = {"name": "t", "k": k, "scoring": scoring, "correct_part": "answer", "threshold": 1.0,
            "trajectories": "trajectories/eval_t.parquet"}
    return record(tmp_path, meta), correct


def test_rescore_reproduces_stored_numbers_exactly(tmp_path, capsys):
    results, correct = _saved(tmp_path)
    assert 0 < correct.mean() < 1  # not a trivial all-wrong or all-right set
    assert len(results["per_run"]) == 3 and np.mean(results["per_run"]) == pytest.approx(results["pass@1"])
    assert rescore(tmp_path) == 0
    again = json.loads((tmp_path / "rescore.json").read_text())
    stored = json.loads((tmp_path / "results.json").read_text())
    assert again["differences"] == [] and all(again[k] == stored[k] for k in COMPARED)
    # a stored number that the predictions do not give is caught
    stored["per_run"][0] += 1 / 3
    (tmp_path / "results.json").write_text(json.dumps(stored))
    assert rescore(tmp_path) == 1
    assert "per_run" in capsys.readouterr().out


def test_pass_k_at_least_pass_1():
    rng = np.random.default_rng(1)
    for _ in range(50):
        k, n = int(rng.integers(1, 6)), int(rng.integers(1, 20))
        group, sample = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
        correct = (rng.random(n * k) < rng.random()).astype(np.float64)
        m = summarize(correct, group, sample)
        assert m["pass@k"] >= m["pass@1"] - 1e-12
        assert m["pass@1"] == pytest.approx(np.mean(m["per_run"]))
    # by hand: task 0 right once of 3, task 1 never -> Pass@1 = 1/6, Pass@3 = 1/2
    m = pass_metrics(np.array([1.0, 0, 0, 0, 0, 0]), np.array([0, 0, 0, 1, 1, 1]))
    assert m["pass@1"] == pytest.approx(1 / 6) and m["pass@k"] == 0.5


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_task_file_project_jsonl(tmp_path):
    f = _write(tmp_path / "t.jsonl", [{"uid": "a", "question": "Q?", "answer": ["x", "y"], "gold_ids": ["p1"]}])
    assert load_task_file(f) == [{"uid": "a", "question": "Q?", "answer": ["x", "y"], "gold_ids": ["p1"]}]
    _write(f, [{"uid": "a", "question": "Q?", "answer": "x"}, {"uid": "a", "question": "R?", "answer": "y"}])
    with pytest.raises(ValueError, match="repeats uid 'a'"):
        load_task_file(f)


def test_task_file_webshaper(tmp_path):
    f = _write(tmp_path / "w.jsonl", [{"id": 7, "question": "Which?", "answer": "That",
                                       "formalization": "[V@X] ...", "urls": ["https://e.org"]}])
    (t,) = load_task_file(f)
    assert (t["uid"], t["answer"], t["formalization"], t["urls"]) == ("7", "That", "[V@X] ...", ["https://e.org"])
    _write(f, [{"id": 1, "question": "Which?", "formalization": "x", "urls": []}])
    with pytest.raises(ValueError, match="line 1: field 'answer' is missing"):
        load_task_file(f)


def test_task_file_bcvl_answers_as_string(tmp_path):
    f = _write(tmp_path / "bc_vl_level1.jsonl", [{"question": "Who is shown?", "image_path": "img/1.jpg",
                                                  "answers": "['Ada Lovelace', 'Lovelace']", "domain": "science"}])
    (t,) = load_task_file(f)
    assert t["answer"] == ["Ada Lovelace", "Lovelace"] and t["image_path"] == "img/1.jpg" and t["uid"] == "bc_vl_level1-0"
    _write(f, [{"question": "Q", "image_path": "i.jpg", "answers": "not a [list", "domain": "x"}])
    with pytest.raises(ValueError, match="'answers'"):
        load_task_file(f)


def test_task_file_gaia_browsecomp_simpleqa(tmp_path):
    gaia = _write(tmp_path / "gaia.jsonl", [{"task_id": "g1", "Question": "How many?", "Final answer": 3, "Level": 1}])
    assert load_task_file(gaia) == [{"uid": "g1", "question": "How many?", "answer": "3"}]
    bc = tmp_path / "browse_comp.csv"
    bc.write_text("problem,answer,problem_topic\n\"Which film, 1968?\",2001: A Space Odyssey,Art\n")
    assert load_task_file(bc)[0]["answer"] == "2001: A Space Odyssey"
    sq = tmp_path / "simple_qa.json"
    sq.write_text(json.dumps([{"problem": "Capital of France?", "answer": "Paris"}]))
    assert load_task_file(sq, format="qa")[0] == {"uid": "simple_qa-0", "question": "Capital of France?",
                                                  "answer": "Paris"}
    with pytest.raises(ValueError, match="cannot tell the task-file format"):
        load_task_file(_write(tmp_path / "x.jsonl", [{"text": "no question here"}]))


def test_openai_engine_request_and_reply():
    from envs.llm import HTTPCallError
    from rollout.engines import SamplingParams
    from rollout.engines.openai_engine import OpenAIEngine, check_settings

    e = OpenAIEngine("tok", base_url="http://127.0.0.1:9/v1", model="m")
    body = e.request_body([5, 6], SamplingParams(max_tokens=4, temperature=0.6, seed=3, stop=("</answer>",)))
    assert body["prompt"] == [5, 6] and body["logprobs"] == 0 and body["return_token_ids"] and body["seed"] == 3
    gen = e.read_reply({"choices": [{"token_ids": [7, 8], "finish_reason": "length",
                                     "logprobs": {"token_logprobs": [-0.5, -1.0], "tokens": ["a", "b"]}}]})
    assert (gen.token_ids, gen.logprobs, gen.finish_reason) == ([7, 8], [-0.5, -1.0], "length")
    old = e.read_reply({"choices": [{"finish_reason": "stop", "logprobs": {"token_logprobs": [-0.1],
                                                                             "tokens": ["token_id:42"]}}]})
    assert old.token_ids == [42]
    with pytest.raises(HTTPCallError, match="2 token ids but"):
        e.read_reply({"choices": [{"token_ids": [1, 2], "finish_reason": "stop", "logprobs": {"token_logprobs": [0]}}]})
    with pytest.raises(ValueError, match="missing"):
        check_settings({"model": "m"})


def test_wiki_corpus_search_and_visit():
    """The offline corpus: 10,033 real leads; `search` (the wiki backend) finds a page and `visit` reads it from the
    local page server."""
    from envs.tools.search import make_search_tool
    from envs.tools.visit import make_visit_tool
    from envs.wiki import NUM_LEADS, load_leads

    assert len(load_leads()) == NUM_LEADS
    search = make_search_tool({}, backend="wiki", top_k=2)
    obs = asyncio.run(search.call({"query": ["Stanley Kubrick film director"]}))
    url = re.search(r"\((http://127\.0\.0\.1:\d+/wiki/Stanley_Kubrick)\)", obs.text).group(1)
    visit = make_visit_tool({}, allow_hosts=["127.0.0.1"])
    page = asyncio.run(visit.call({"url": [url], "goal": "who he was"}))
    assert "American filmmaker" in page.text, page.text[:300]


def test_judge_choice_becomes_config():
    from launch.evaluate import DEFAULT_CONFIG, judge_overrides, parse_args
    from rl.config import load_config

    args = parse_args(["--policy", "tiny", "--judge", "hle", "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "j"])
    cfg = load_config(DEFAULT_CONFIG, judge_overrides(args), check_inputs=False)
    assert cfg.reward.fns["judge"] == {"kind": "browsecomp"} and cfg.reward.judge["backend"] == "openai"
    assert judge_overrides(parse_args(["--policy", "tiny"])) == []
    with pytest.raises(SystemExit):
        parse_args(["--policy", "tiny", "--judge", "gaia"])  # an LLM judge needs its endpoint


def test_paired_difference_pairs_the_same_questions():
    from rl.evaluate import paired_difference

    # 3 tasks x 2 runs; after: task 1 learnt (0 -> 1), the others unchanged
    before = pass_metrics(np.array([1.0, 1, 0, 0, 0, 1]), np.array([0, 0, 1, 1, 2, 2]))
    after = pass_metrics(np.array([1.0, 1, 1, 1, 0, 1]), np.array([0, 0, 1, 1, 2, 2]))
    assert before["per_task"] == {0: 1.0, 1: 0.0, 2: 0.5}
    d = paired_difference(before, after)
    assert d["difference"] == pytest.approx(1 / 3) and d["num_tasks"] == 3
    assert 0 <= d["ci"][0] <= d["difference"] <= d["ci"][1] <= 1
    # a JSON round trip (results.json) keeps the pairing: the keys become strings
    assert paired_difference(json.loads(json.dumps(before)), json.loads(json.dumps(after)))["difference"] == d["difference"]
    # one read back (a resumed pipeline's evaluation after SFT), one fresh (its evaluation after RL)
    assert paired_difference(json.loads(json.dumps(before)), after)["difference"] == d["difference"]
    with pytest.raises(ValueError, match="share no task"):
        paired_difference(before, {"per_task": {7: 1.0}})


def test_the_report_pairs_each_kind_of_question_apart():
    """The paired table has the difference over all questions and over each kind (reading, recall) apart:
    reading is the issue's headline."""
    from launch.stages import paired_lines

    group, tags = np.array([0, 0, 1, 1, 2, 2]), ["new", "new", "seen"]
    before = pass_metrics(np.array([0.0, 0, 0, 0, 1, 1]), group)
    after = pass_metrics(np.array([1.0, 1, 1, 0, 0, 0]), group)
    for e, c in ((before, [0.0, 0, 0, 0, 1, 1]), (after, [1.0, 1, 1, 0, 0, 0])):
        row_tags = np.asarray(tags, dtype=object)[group]
        e["by_tag"] = {t: pass_metrics(np.array(c)[row_tags == t], group[row_tags == t]) for t in ("new", "seen")}
    rows = [line for line in paired_lines({"sft": before, "rl": after}) if line.startswith("| rl | sft |")]
    assert [r.split(" | ")[2:5] for r in rows] == [["all", "3", "+0.167"], ["new", "2", "+0.750"],
                                                    ["seen", "1", "-1.000"]]


def test_window_means_from_per_step_mean_std_and_count():
    from rl.evaluate import trend_line, window_means

    rng = np.random.default_rng(0)
    steps = [rng.random(32) < p for p in (0.1, 0.1, 0.1, 0.3, 0.5, 0.5, 0.5)]
    hist = [{"reward/mean": float(x.mean()), "reward/std": float(x.std()), "num_trajectories": 32} for x in steps]
    w = window_means(hist, 3)
    first, last = np.concatenate(steps[:3]).astype(float), np.concatenate(steps[-3:]).astype(float)
    assert w["first"] == pytest.approx(first.mean()) and w["last"] == pytest.approx(last.mean())
    assert w["first_se"] == pytest.approx(first.std() / np.sqrt(96)) and w["last_n"] == 96
    assert w["z"] == pytest.approx((last.mean() - first.mean()) / np.hypot(first.std(), last.std()) * np.sqrt(96))
    assert "standard errors" in trend_line(hist) and trend_line(hist[:5]) is None
