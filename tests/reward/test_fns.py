"""Registered reward functions on trajectory columns, and the papers' rewards as pure RewardWorker configuration
(SEEDS 3.5, 4.3, 6.1, 7.3; checklist items 21-26), judged by the local OpenAI-compatible stub or the rule judge."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pyarrow as pa
import pytest
from openai_stub import OpenAIStub, Reply

from reward.base import make_reward
from reward.fns import MASKSEARCH_INSTRUCTION, parse_gold
from reward.rules import mask_spans
from reward.worker import RewardWorker

FAST = dict(backoff_s=0.001, backoff_max_s=0.005)
TYPES = {"question": pa.string(), "gold_answer": pa.string(), "answer_text": pa.string(),
         "response_text": pa.string(), "retrieved": pa.list_(pa.string()), "gold_ids": pa.list_(pa.string())}


def batch(**columns) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({name: pa.array(values, TYPES[name]) for name, values in columns.items()})


def col(out: pa.RecordBatch, name: str) -> np.ndarray:
    return out.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


# ------------------------------------------------------------------------------------------------ golds

def test_parse_gold_one_answer_or_a_json_list():
    assert parse_gold("Paris") == "Paris"
    assert parse_gold('["Paris", "Paris, France"]') == ["Paris", "Paris, France"]
    assert parse_gold("[1, 2]") == "[1, 2]"  # not a list of strings: one answer, as written
    assert parse_gold("[]") == "[]" and parse_gold("[unclosed") == "[unclosed"
    with pytest.raises(ValueError, match="gold_answer is null in row 3"):
        parse_gold(None, 3)


# ------------------------------------------------------------------------------------------ rule answers

def test_answer_metrics_read_answer_text_and_gold_answer():
    b = batch(answer_text=["the Paris.", "Lyon", "Paris France", None, "lyon"],
              gold_answer=["Paris", "Paris", "Paris", "Paris", json.dumps(["Paris", "Lyon"])])
    em, f1 = make_reward("exact_match"), make_reward("f1", part="f1")
    assert em.columns == ("answer_text", "gold_answer") and f1.parts == ("f1",)
    np.testing.assert_allclose(em.score(b)["answer"], [1, 0, 0, 0, 1])
    np.testing.assert_allclose(f1.score(b)["f1"], [1, 0, 2 / 3, 0, 1])
    np.testing.assert_allclose(make_reward("anls").score(batch(answer_text=["paris", "pariss", "lyon"],
                                                               gold_answer=["Paris"] * 3))["answer"],
                               [1.0, 1 - 1 / 6, 0.0])


def test_number_strict_reads_the_answer_tag_flexible_falls_back_to_the_last_number_of_the_model_text():
    texts = ["56 - 26 = 30.<|im_end|>", "<answer>30</answer>", "It is 1,234<|im_end|>", "no number here",
             "<tool_response>30</tool_response> so 29"]
    b = batch(answer_text=[None, "30", None, None, None], response_text=texts,
              gold_answer=["30", "30.0", "1234", "3", "30"])
    strict, flexible = make_reward("number"), make_reward("number", method="flexible")
    assert strict.columns == ("answer_text", "gold_answer") and "response_text" in flexible.columns
    np.testing.assert_allclose(strict.score(b)["answer"], [0, 1, 0, 0, 0])
    # the observation's "30" is the environment's, never the model's answer
    np.testing.assert_allclose(flexible.score(b)["answer"], [1, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="gold answer 'thirty' is not a number"):
        strict.score(batch(answer_text=["30"], gold_answer=["thirty"]))
    with pytest.raises(ValueError, match="unknown method 'loose'"):
        make_reward("number", method="loose")


def test_token_recall_with_and_without_the_length_penalty_item_25():
    b = batch(answer_text=["Paris France", "Paris", "France"], gold_answer=["Paris"] * 3)
    np.testing.assert_allclose(make_reward("token_recall").score(b)["answer"], [1.0, 1.0, 0.0])
    np.testing.assert_allclose(make_reward("token_recall", length_penalty=True).score(b)["answer"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(make_reward("token_recall", length_penalty=True, max_length_ratio=2.0).score(b)
                               ["answer"], [1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="max_length_ratio must be > 0"):
        make_reward("token_recall", length_penalty=True, max_length_ratio=0)


RAMP_QUESTION = "[mask] was born in [mask] in 1867." + MASKSEARCH_INSTRUCTION
RAMP_GOLD = "Marie Curie was born in Warsaw in 1867."


def test_mask_spans_cuts_the_fills_out_of_a_paragraph():
    template = RAMP_QUESTION.split(MASKSEARCH_INSTRUCTION)[0]
    assert mask_spans(template, RAMP_GOLD) == ["Marie Curie", "Warsaw"]
    assert mask_spans(template, "Marie  Curie was born\nin Warsaw, Poland in 1867.") == ["Marie  Curie",
                                                                                          "Warsaw, Poland"]
    assert mask_spans(template, "She was born in Warsaw.") is None  # wording around the masks changed
    assert mask_spans("The [mask] [mask] is tall.", "The Eiffel Tower is tall.") == ["Eiffel", "Tower"]
    assert mask_spans("no mask here", "anything") == [] and mask_spans(template, None) is None


def test_token_recall_over_masked_spans():
    preds = [RAMP_GOLD, "Curie was born in Poland in 1867.", "She was born somewhere.",
             "Marie Curie or Pierre Curie was born in Warsaw in 1867.", None]
    b = batch(question=[RAMP_QUESTION] * 5, gold_answer=[RAMP_GOLD] * 5, answer_text=preds)
    fn = make_reward("token_recall", masked_spans=True)
    assert fn.columns == ("answer_text", "gold_answer", "question")
    # gold tokens: marie curie warsaw (3)
    np.testing.assert_allclose(fn.score(b)["answer"], [1.0, 1 / 3, 0.0, 1.0, 0.0])
    penalised = make_reward("token_recall", masked_spans=True, length_penalty=True).score(b)["answer"]
    np.testing.assert_allclose(penalised, [1.0, 1 / 3, 0.0, 0.5, 0.0])  # 6 predicted tokens for 3 gold ones
    with pytest.raises(ValueError, match="row 0: the gold paragraph does not fill the masks"):
        fn.score(batch(question=[RAMP_QUESTION], gold_answer=["unrelated"], answer_text=["x"]))


# ------------------------------------------------------------------------------------------------ formats

WEBSAILOR_OK = ('<think>search it</think>\n<tool_call>{"name": "search", "arguments": {"query": ["q"]}}</tool_call>'
                "<|im_end|>\n<|im_start|>user\n<tool_response>results</tool_response><|im_end|>\n"
                "<|im_start|>assistant\n<think>found</think>\n<answer>Paris</answer><|im_end|>")
WEBSAILOR_BAD_JSON = WEBSAILOR_OK.replace('"arguments": {"query": ["q"]}', '"arguments": ')
VRAG_OK = ("<think>t</think><search>q</search><|im_end|>\n<|im_start|>user\n<image><|im_end|>\n"
           "<|im_start|>assistant\n<answer>Paris</answer>")
VRAG_NO_SEARCH = "<think>t</think><answer>Paris</answer>"
MASKSEARCH_OK = "<think>t</think><search>q</search><information>docs</information><think>u</think><answer>x</answer>"


def test_format_styles_read_response_text_item_21():
    texts = [WEBSAILOR_OK, WEBSAILOR_BAD_JSON, VRAG_OK, VRAG_NO_SEARCH, MASKSEARCH_OK, None]
    b = batch(response_text=texts)
    scores = {style: make_reward("format", style=style).score(b)["format"]
              for style in ("websailor", "evolvesearch", "vrag", "masksearch")}
    np.testing.assert_allclose(scores["websailor"], [1, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(scores["evolvesearch"], [1, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(scores["vrag"], [0, 0, 1, 0, 1, 0])  # an answer without a search scores 0
    np.testing.assert_allclose(scores["masksearch"], [0, 0, 0, 1, 1, 0])
    with pytest.raises(ValueError, match="unknown style 'webdancer'"):
        make_reward("format", style="webdancer")
    with pytest.raises(TypeError):
        make_reward("format", style="vrag", tool_names=["search"])  # vrag takes no options


def test_format_violations_are_counted_by_kind():
    fn = make_reward("format", style="websailor", tool_names=["search"])
    fn.score(batch(response_text=[WEBSAILOR_OK, WEBSAILOR_BAD_JSON, WEBSAILOR_BAD_JSON, "hello", None]))
    assert fn.metrics() == {"violations/missing <answer>": 1, "violations/text outside tags": 1,
                            "violations/tool_call 1": 2}
    fn.reset_metrics()
    assert fn.metrics() == {}


# ---------------------------------------------------------------------------------------------- retrieval

def test_ndcg_reads_retrieved_and_gold_ids_item_24():
    b = batch(retrieved=[["g"], ["x", "g"], ["x", "y", "g"], ["x", "x", "g"], ["x"], [], None, ["g"]],
              gold_ids=[["g"]] * 7 + [[]])
    values = make_reward("ndcg").score(b)["ndcg"]
    # [x, x, g]: the repeated x is de-duplicated first (SEEDS 4.3), so it scores as [x, g]
    np.testing.assert_allclose(values, [1.0, 1 / math.log2(3), 0.5, 1 / math.log2(3), 0, 0, 0, 0])
    assert round(values[1], 3) == 0.631


# ------------------------------------------------------------------------------- the papers, as configuration

def oracle(body: dict, seen: int) -> Reply:
    """A right judge for the gaia, vrag and masksearch prompts: the prediction equals the gold (case-insensitive)."""
    prompt = body["messages"][-1]["content"]
    for pattern, yes, no in (
            (r"Labeled Answer: (.*?)\n\nPredicted Answer: (.*?)\n\n", "Correct", "Incorrect"),
            (r"## Reference Answer\n(.*?)\n\n## Generated Answer\n(.*?)\n\n",
             "<judge>True</judge>", "<judge>False</judge>"),
            (r"Correct Answer: (.*?)\nModel Response: (.*)", "correct", "incorrect")):
        m = re.search(pattern, prompt, re.S)
        if m:
            return Reply(yes if m.group(1).strip().lower() == m.group(2).strip().lower() else no)
    raise AssertionError(f"unexpected prompt {prompt[:80]!r}")


@pytest.fixture()
def stub():
    with OpenAIStub(oracle) as server:
        yield server


def judge_config(server) -> dict:
    return {"backend": "openai", "base_url": server.base_url, "model": "judge", **FAST}


def test_websailor_01_format_09_judge(stub):
    w = RewardWorker({"format": {"style": "websailor"}, "judge": {"kind": "gaia"}}, composition="websailor",
                     judge=judge_config(stub))
    assert set(w.columns) == {"response_text", "question", "answer_text", "gold_answer"}
    b = batch(response_text=[WEBSAILOR_OK, WEBSAILOR_OK, WEBSAILOR_BAD_JSON, WEBSAILOR_OK],
              question=["capital of France?"] * 4, answer_text=["Paris", "Lyon", "Paris", None],
              gold_answer=["Paris", "Paris", "Paris", "Paris"])
    out = w.score(b)
    assert out.schema.names == ["reward", "reward_format", "reward_answer"]
    np.testing.assert_allclose(col(out, "reward"), [1.0, 0.1, 0.9, 0.1], rtol=1e-6)
    np.testing.assert_allclose(col(out, "reward_answer"), [1, 0, 1, 0])
    assert len(stub.requests) == 2  # the two identical (question, Paris, Paris) items are sent once; None is not
    m = w.metrics()
    assert (m["judge/items"], m["judge/requests"], m["judge/cache_hits"]) == (4, 2, 1)
    w.close()


def test_vrag_composite_gated_by_pattern_item_23(stub):
    w = RewardWorker({"format": {"style": "vrag"}, "judge": {"kind": "vrag"}, "ndcg": {}}, composition="vrag",
                     judge=judge_config(stub))
    b = batch(response_text=[VRAG_OK, VRAG_NO_SEARCH, VRAG_OK, VRAG_OK],
              question=["q1", "q2", "q3", "q4"], answer_text=["Paris", "Paris", "Lyon", "Paris"],
              gold_answer=["Paris"] * 4, retrieved=[["x", "g"], ["g"], ["g"], ["x", "y", "g"]],
              gold_ids=[["g"]] * 4)
    out = w.score(b)
    reward = col(out, "reward")
    assert round(reward[0], 3) == 0.926  # 0.7 + 0.1 + 0.2 * 0.631
    np.testing.assert_allclose(reward, [0.7 + 0.1 + 0.2 / math.log2(3), 0.0, 0.1 + 0.2, 0.7 + 0.1 + 0.2 * 0.5],
                               rtol=1e-6)
    answer = col(out, "reward_answer")
    assert np.isnan(answer[1]) and list(answer[[0, 2, 3]]) == [1, 0, 1]  # no pattern: the judge is not asked
    assert stub.count("q2") == 0 and len(stub.requests) == 3
    w.close()


def test_evolvesearch_half_of_format_plus_answer_gated_by_format():
    w = RewardWorker({"format": {"style": "evolvesearch"}, "judge": {}}, composition="evolvesearch",
                     judge={"backend": "rule"})
    b = batch(response_text=[WEBSAILOR_OK, WEBSAILOR_OK, WEBSAILOR_BAD_JSON], question=["q"] * 3,
              answer_text=["Paris", "Lyon", "Paris"], gold_answer=["Paris"] * 3)
    np.testing.assert_allclose(col(w.score(b), "reward"), [1.0, 0.5, 0.0])


def test_masksearch_format_plus_span_judge_fraction(stub):
    question = "[mask] and [mask] met [mask] in [mask]." + MASKSEARCH_INSTRUCTION
    gold = "Marie and Pierre met Paul in Paris."
    w = RewardWorker({"format": {"style": "masksearch"}, "span_judge": {}}, composition="masksearch",
                     judge=judge_config(stub))
    b = batch(response_text=[MASKSEARCH_OK, MASKSEARCH_OK, VRAG_NO_SEARCH], question=[question] * 3,
              answer_text=["Marie and Pierre met Jean in Lyon.", "They met in Paris.", gold], gold_answer=[gold] * 3)
    out = w.score(b)
    # row 0: 2 of 4 masks right; row 1: wording changed, 0 without a request; row 2: all right, format 1 (no search
    # needed by the MaskSearch grammar)
    np.testing.assert_allclose(col(out, "reward_answer"), [0.5, 0.0, 1.0])
    np.testing.assert_allclose(col(out, "reward"), [1.5, 1.0, 2.0])
    assert len(stub.requests) == 6  # 4 spans of row 0, then Paul and Paris of row 2 (Marie, Pierre are cached)
    w.close()


def test_masksearch_with_penalised_recall_and_both_answers_kept():
    question = RAMP_QUESTION
    w = RewardWorker({"format": {"style": "masksearch"},
                      "token_recall": {"masked_spans": True, "length_penalty": True},
                      "token_recall:plain": {"masked_spans": True, "part": "recall_plain"}},
                     composition="masksearch")
    b = batch(response_text=[MASKSEARCH_OK], question=[question], gold_answer=[RAMP_GOLD],
              answer_text=["Marie Curie or Pierre Curie was born in Warsaw in 1867."])
    out = w.score(b)
    assert out.schema.names == ["reward", "reward_format", "reward_answer", "reward_recall_plain"]
    np.testing.assert_allclose([col(out, n)[0] for n in out.schema.names], [1.5, 1.0, 0.5, 1.0])


# ------------------------------------------------------------------------------------- configuration errors

def test_configuration_mistakes_are_named_before_any_batch():
    with pytest.raises(ValueError, match=r"rewards 'exact_match' and 'f1' both produce the part 'answer'"):
        RewardWorker({"exact_match": {}, "f1": {}})
    with pytest.raises(KeyError, match=r"needs part\(s\) \['format'\]"):
        RewardWorker({"exact_match": {}}, composition="websailor")
    with pytest.raises(ValueError, match="JudgeReward needs a judge"):
        RewardWorker({"judge": {}})
    with pytest.raises(ValueError, match="unknown judge kind 'hle'"):
        RewardWorker({"judge": {"kind": "hle"}}, judge={"backend": "rule"})
    with pytest.raises(ValueError, match="judge backend 'dashscope' is not one of"):
        RewardWorker({"judge": {}}, judge={"backend": "dashscope"})
    with pytest.raises(ValueError, match="the gate part 'answer' comes from 'judge', which is itself gated"):
        RewardWorker({"judge": {}, "format": {}}, judge={"backend": "rule"},
                     composition={"terms": [{"name": "format", "weight": 1.0}], "gate": "answer"})
    with pytest.raises(KeyError, match="unknown reward 'judgee'"):
        RewardWorker({"judgee": {}})


def test_a_worker_built_for_its_columns_starts_nothing(tiny_model):
    w = RewardWorker({"judge": {}}, judge={"backend": "engine", "engine": "vllm", "model_path": tiny_model})
    assert w.columns == ("question", "answer_text", "gold_answer")
    assert not w.judge.started and w.metrics() == {}
    w.close()  # nothing to stop
