"""LLM judge: prompt templates and verdict parsers, and JudgeClient against a local OpenAI-compatible stub
(batching, concurrency bound, rate limit, cache, retries, timeouts, deadline, fallback), plus RuleJudge."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest
from openai_stub import OpenAIStub, Reply

from reward.judge import JudgeClient, JudgeItem, RuleJudge, cache_key
from reward.prompts import JUDGES, build_messages, parse_verdict, render_prompt

# Fast settings for every client against the stub: retries back off by a millisecond.
FAST = dict(backoff_s=0.001, backoff_max_s=0.005)


def gaia_oracle(body: dict, seen: int) -> Reply:
    """A judge that is right: "Correct" iff the predicted answer equals the labeled one (case-insensitive)."""
    m = re.search(r"Labeled Answer: (.*?)\n\nPredicted Answer: (.*?)\n\n", body["messages"][-1]["content"], re.S)
    return Reply("Correct" if m.group(1).lower() == m.group(2).lower() else "Incorrect")


def item(question: str, prediction: str | None, gold: str = "Paris", kind: str = "gaia") -> JudgeItem:
    return JudgeItem(question=question, prediction=prediction, gold=gold, kind=kind)


# --------------------------------------------------------------------------------------------- parsers

PARSER_CASES = [
    # GAIA: "Correct" / "Incorrect"
    ("gaia", "Correct", 1.0), ("gaia", "**Correct**", 1.0), ("gaia", "  correct\n", 1.0),
    ("gaia", "Incorrect.", 0.0), ("gaia", "INCORRECT", 0.0), ("gaia", "`Incorrect`", 0.0),
    ("gaia", "The predicted answer is correct.", 1.0), ("gaia", "Not correct", 0.0),
    ("gaia", "The prediction isn't correct.", 0.0),
    ("gaia", "The prediction isn’t correct.", 0.0), ("gaia", "Incorrect. The correct answer is Paris.", 0.0),
    ("gaia", "<think>is it correct? no</think>\nIncorrect", 0.0), ("gaia", "<think>it looks correct", None),
    ("gaia", "I cannot tell.", None), ("gaia", "", None), ("gaia", "Correctness unknown", None),
    # BrowseComp official grader
    ("browsecomp", "extracted_final_answer: Paris\nreasoning: same city.\ncorrect: yes\nconfidence: 90", 1.0),
    ("browsecomp", "extracted_final_answer: Lyon\n\nreasoning: differs\n\ncorrect: no\nconfidence: 100", 0.0),
    ("browsecomp", "**correct:** Yes", 1.0), ("browsecomp", "Correct: 'no'", 0.0), ("browsecomp", "CORRECT : YES", 1.0),
    ("browsecomp", "correct: ‘yes’", 1.0),
    ("browsecomp", "[correct_answer]: yes\nextracted_final_answer: yes", None),
    ("browsecomp", "The answer is correct.", None), ("browsecomp", "incorrect: yes", None),
    # SimpleQA grader
    ("simpleqa", "A", 1.0), ("simpleqa", "B", 0.0), ("simpleqa", "C", 0.0), ("simpleqa", " a ", 1.0),
    ("simpleqa", "**A**", 1.0), ("simpleqa", "(B)", 0.0), ("simpleqa", "'C'", 0.0), ("simpleqa", "A: CORRECT", 1.0),
    ("simpleqa", "C: NOT_ATTEMPTED", 0.0), ("simpleqa", "CORRECT", 1.0), ("simpleqa", "INCORRECT", 0.0),
    ("simpleqa", "NOT_ATTEMPTED", 0.0), ("simpleqa", "not attempted", 0.0), ("simpleqa", "Grade: A", 1.0),
    ("simpleqa", "The grade is B.", 0.0), ("simpleqa", "Apple", None), ("simpleqa", "D", None),
    ("simpleqa", "I am Bob", None),
    # VRAG <judge>True/False</judge>
    ("vrag", "<judge>True</judge>", 1.0), ("vrag", "<judge>False</judge>", 0.0),
    ("vrag", "<JUDGE> true </JUDGE>", 1.0), ("vrag", "The answer matches.\n<judge>**True**</judge>", 1.0),
    ("vrag", "<judge>True or False</judge>\n<judge>False</judge>", 0.0), ("vrag", "<judge>True or False</judge>", None),
    ("vrag", "<judge>True", 1.0), ("vrag", "True", None), ("vrag", "<judge>maybe</judge>", None),
    # MaskSearch checker
    ("masksearch", "correct", 1.0), ("masksearch", "incorrect", 0.0), ("masksearch", "Correct.", 1.0),
    ("masksearch", "The response is incorrect", 0.0), ("masksearch", "Paris", None),
]


@pytest.mark.parametrize("kind, reply, expected", PARSER_CASES)
def test_parse_verdict(kind, reply, expected):
    assert parse_verdict(kind, reply) == expected


def test_parse_verdict_none_reply_and_unknown_kind():
    assert parse_verdict("gaia", None) is None
    with pytest.raises(KeyError, match="unknown judge kind 'gpt'"):
        parse_verdict("gpt", "Correct")


# ---------------------------------------------------------------------------------------------- prompts

ANCHORS = {  # a phrase of each original, and the reply format it asks for
    "gaia": ("You are an evaluation assistant.", 'Please respond with "Correct"'),
    "browsecomp": ("extracted_final_answer: The final exact answer", "correct: Answer 'yes'"),
    "simpleqa": ("assign a grade of either", 'Just return the letters "A", "B", or "C"'),
    "vrag": ("You are an expert evaluation system", "<judge>True or False</judge>"),
    "masksearch": ("determine if the model's response is correct", 'output "incorrect"'),
}


@pytest.mark.parametrize("kind", sorted(JUDGES))
def test_template_renders_the_three_fields_once(kind):
    assert set(JUDGES) == set(ANCHORS)
    template, parse = JUDGES[kind]
    for field in ("{question}", "{correct_answer}", "{response}"):
        assert template.count(field) == 1, (kind, field)
    # braces and a literal placeholder inside a value are kept as they are (no second substitution)
    text = render_prompt(kind, "Q {x} {response}?", "PRED-7", "GOLD-3")
    assert "Q {x} {response}?" in text and "PRED-7" in text and "GOLD-3" in text
    assert text.index("Q {x}") < text.index("PRED-7") or kind == "browsecomp"
    for anchor in ANCHORS[kind]:
        assert anchor in text, (kind, anchor)
    assert callable(parse)


def test_messages_carry_the_originals_system_prompt_only_for_masksearch():
    assert [m["role"] for m in build_messages("masksearch", "q", "p", "g")] == ["system", "user"]
    assert build_messages("masksearch", "q", "p", "g")[0]["content"] == "You are a helpful assistant."
    for kind in ("gaia", "browsecomp", "simpleqa", "vrag"):
        assert [m["role"] for m in build_messages(kind, "q", "p", "g")] == ["user"]


# ------------------------------------------------------------------------------------ client: batching

def test_batch_is_concurrent_and_scores_follow_the_judge():
    delay = 0.3

    def slow_oracle(body, seen):
        reply = gaia_oracle(body, seen)
        reply.delay_s = delay
        return reply

    with OpenAIStub(slow_oracle) as stub:
        client = JudgeClient(stub.base_url, "judge", max_concurrency=16, **FAST)
        items = [item(f"q{i}", "paris" if i % 2 == 0 else "Lyon") for i in range(8)]
        start = time.monotonic()
        results = client.judge_batch_sync(items)
        elapsed = time.monotonic() - start
    assert [r.score for r in results] == [1.0, 0.0] * 4
    assert all(r.ok and r.attempts == 1 and not r.cached for r in results)
    assert len(stub.requests) == 8
    assert stub.max_in_flight >= 4  # they overlapped at the server
    assert elapsed < 8 * delay / 2, elapsed  # sequential would take 2.4 s
    m = client.metrics()
    assert (m["items"], m["requests"], m["failures"], m["retries"]) == (8, 8, 0, 0)
    assert m["mean_latency_s"] >= delay * 0.9


def test_max_concurrency_bounds_requests_in_flight():
    with OpenAIStub(lambda body, seen: Reply("Correct", delay_s=0.05)) as stub:
        client = JudgeClient(stub.base_url, "judge", max_concurrency=2, **FAST)
        client.judge_batch_sync([item(f"q{i}", "Paris") for i in range(6)])
    assert stub.max_in_flight == 2


def test_rate_limit_spaces_requests():
    with OpenAIStub(lambda body, seen: Reply("Correct")) as stub:
        client = JudgeClient(stub.base_url, "judge", rate_limit=20.0, burst=1, **FAST)
        start = time.monotonic()
        client.judge_batch_sync([item(f"q{i}", "Paris") for i in range(5)])
        elapsed = time.monotonic() - start
    starts = sorted(r.start for r in stub.requests)
    assert elapsed >= 4 / 20 * 0.95  # 5 requests at 20/s with a burst of 1: 4 waits of 50 ms
    assert (starts[-1] - starts[0]) / 4 >= 0.03  # spaced at the server too (the mean gap: a 2-core CPU under
    # load delays single sends, so the gap between two of them says little)


def test_request_body_is_an_openai_chat_completion_at_temperature_0():
    with OpenAIStub(gaia_oracle) as stub:
        client = JudgeClient(stub.base_url + "/", "qwen-judge", api_key="sk-test", max_tokens=17,
                             extra_body={"chat_template_kwargs": {"enable_thinking": False}}, **FAST)
        client.judge_batch_sync([item("What is the capital of France?", "Paris")])
    (req,) = stub.requests
    assert req.body["model"] == "qwen-judge" and req.body["temperature"] == 0.0 and req.body["max_tokens"] == 17
    assert req.body["chat_template_kwargs"] == {"enable_thinking": False}
    assert req.body["messages"] == build_messages("gaia", "What is the capital of France?", "Paris", "Paris")
    assert req.headers.get("Authorization") == "Bearer sk-test"


def test_every_kind_end_to_end_through_the_server():
    formats = {  # marker of the template -> (reply if right, reply if wrong)
        "You are an evaluation assistant": ("**Correct**", "Incorrect."),
        "extracted_final_answer": ("extracted_final_answer: x\nreasoning: ok\ncorrect: yes\nconfidence: 80",
                                   "extracted_final_answer: y\nreasoning: no\ncorrect: no\nconfidence: 80"),
        "assign a grade": ("A", "B"),
        "expert evaluation system": ("<judge>True</judge>", "<judge>False</judge>"),
        "model's response is correct": ("correct", "incorrect"),
    }

    def script(body, seen):
        prompt = body["messages"][-1]["content"]
        (right, wrong), = [v for marker, v in formats.items() if marker in prompt]
        return Reply(right if "RIGHT" in prompt else wrong)

    kinds = sorted(JUDGES)
    items = [item(f"q-{k}", f"{verdict}-{k}", kind=k) for k in kinds for verdict in ("RIGHT", "WRONG")]
    with OpenAIStub(script) as stub:
        results = JudgeClient(stub.base_url, "judge", **FAST).judge_batch_sync(items)
    assert [r.score for r in results] == [1.0, 0.0] * len(kinds)
    assert all(r.ok for r in results)


# ----------------------------------------------------------------------------------------- client: cache

def test_cache_identical_items_are_judged_once():
    with OpenAIStub(gaia_oracle) as stub:
        client = JudgeClient(stub.base_url, "judge", **FAST)
        batch = [item("Capital of France?", "Paris"),
                 item("  capital of  FRANCE? ", "paris "),  # same after normalisation
                 item("Capital of France?", "Paris", gold="Lyon")]  # another gold: another judgement
        first = client.judge_batch_sync(batch)
        assert stub.count("Capital of France?") == 2
        assert [r.score for r in first] == [1.0, 1.0, 0.0]
        assert [r.cached for r in first] == [False, True, False]
        assert client.metrics()["cache_hits"] == 1
        second = client.judge_batch_sync([item("capital of france?", "PARIS")])  # a new loop, the same cache
        assert len(stub.requests) == 2
    assert second[0].cached and second[0].score == 1.0 and second[0].reply == "Correct"
    assert client.metrics()["cache_hits"] == 2
    assert cache_key(batch[0]) == cache_key(batch[1]) != cache_key(batch[2])
    assert cache_key(item("q", "3.5")) != cache_key(item("q", "35"))


def test_cache_is_bounded_lru():
    with OpenAIStub(gaia_oracle) as stub:
        client = JudgeClient(stub.base_url, "judge", cache_size=2, **FAST)
        client.judge_batch_sync([item("q1", "Paris"), item("q2", "Paris")])
        client.judge_batch_sync([item("q1", "Paris")])  # q1 becomes the most recent
        client.judge_batch_sync([item("q3", "Paris")])  # evicts q2
        client.judge_batch_sync([item("q1", "Paris"), item("q2", "Paris")])
    assert stub.count("q1") == 1 and stub.count("q2") == 2
    assert client.metrics()["cache_size"] == 2


def test_item_without_prediction_scores_0_without_a_request():
    with OpenAIStub(gaia_oracle) as stub:
        results = JudgeClient(stub.base_url, "judge", **FAST).judge_batch_sync(
            [item("q", None), item("q", "   "), item("q", "Paris")])
    assert [(r.score, r.ok, r.attempts) for r in results] == [(0.0, True, 0), (0.0, True, 0), (1.0, True, 1)]
    assert len(stub.requests) == 1


# ------------------------------------------------------------------------------- client: failure handling

def test_garbage_20_times_falls_back_to_0_and_logs_a_failure(caplog):
    with OpenAIStub(lambda body, seen: Reply("I would rather not say.")) as stub:
        client = JudgeClient(stub.base_url, "judge", max_retries=19, **FAST)
        with caplog.at_level(logging.WARNING, logger="reward.judge"):
            (result,) = client.judge_batch_sync([item("q", "Paris")])
        assert len(stub.requests) == 20
        assert (result.score, result.ok, result.attempts) == (0.0, False, 20)
        assert "unparseable gaia judge reply" in result.error and result.reply == "I would rather not say."
        m = client.metrics()
        assert (m["failures"], m["retries"], m["requests"]) == (1, 19, 20)
        assert "judge fallback (score 0) for 1 of 1 items" in caplog.text and "unparseable" in caplog.text
        client.judge_batch_sync([item("q", "Paris")])  # a fallback is never cached: asked again
        assert len(stub.requests) == 40


def test_fallback_score_is_configurable_and_duplicates_share_it():
    with OpenAIStub(lambda body, seen: Reply("???")) as stub:
        client = JudgeClient(stub.base_url, "judge", max_retries=0, fallback_score=0.25, **FAST)
        results = client.judge_batch_sync([item("q", "Paris"), item("q", "Paris")])
    assert len(stub.requests) == 1
    assert [(r.score, r.ok, r.cached) for r in results] == [(0.25, False, False)] * 2
    assert client.metrics()["failures"] == 2 and client.metrics()["cache_hits"] == 0


def test_slow_item_times_out_without_stalling_the_others():
    timeout = 0.5

    def script(body, seen):
        reply = gaia_oracle(body, seen)
        reply.delay_s = 5.0 if "SLOW" in body["messages"][-1]["content"] else 0.0
        return reply

    with OpenAIStub(script) as stub:
        client = JudgeClient(stub.base_url, "judge", timeout_s=timeout, max_retries=1, **FAST)
        items = [item("SLOW question", "Paris")] + [item(f"q{i}", "Paris" if i % 2 else "Rome") for i in range(6)]
        start = time.monotonic()
        results = client.judge_batch_sync(items)
        elapsed = time.monotonic() - start
        slow_start = min(r.start for r in stub.requests if "SLOW" in r.prompt)
        others = [r for r in stub.requests if "SLOW" not in r.prompt]
    assert elapsed < 2 * timeout + 0.8, elapsed  # two cut-off attempts, not 2 x 5 s
    assert (results[0].score, results[0].ok, results[0].attempts) == (0.0, False, 2)
    assert results[0].error == (f"gave up after 2 attempts; last error: judge {stub.base_url}/chat/completions "
                                "model=judge: no answer within 0.5 s waiting for the response headers")
    assert [r.score for r in results[1:]] == [0.0, 1.0] * 3 and all(r.ok for r in results[1:])
    assert len(others) == 6 and all(r.end is not None and r.end < slow_start + timeout for r in others)


def test_batch_deadline_cuts_unfinished_items():
    def script(body, seen):
        return Reply("Correct", delay_s=5.0 if "SLOW" in body["messages"][-1]["content"] else 0.0)

    with OpenAIStub(script) as stub:
        client = JudgeClient(stub.base_url, "judge", timeout_s=10.0, batch_deadline_s=0.4, **FAST)
        start = time.monotonic()
        results = client.judge_batch_sync([item("SLOW", "Paris"), item("fast", "Paris")])
        elapsed = time.monotonic() - start
    assert elapsed < 1.5, elapsed
    assert (results[0].ok, results[0].score, results[0].attempts) == (False, 0.0, 1)
    assert "batch deadline of 0.4 s" in results[0].error
    assert (results[1].ok, results[1].score) == (True, 1.0)


def test_http_500_then_success_is_retried():
    with OpenAIStub(lambda body, seen: Reply(None, status=500) if seen == 0 else Reply("Correct")) as stub:
        client = JudgeClient(stub.base_url, "judge", max_retries=3, **FAST)
        (result,) = client.judge_batch_sync([item("q", "Paris")])
    assert (result.score, result.ok, result.attempts) == (1.0, True, 2)
    assert len(stub.requests) == 2 and client.metrics()["retries"] == 1 and client.metrics()["failures"] == 0


def test_http_429_is_retried_after_retry_after():
    def script(body, seen):
        return Reply(None, status=429, headers={"Retry-After": "0.3"}) if seen == 0 else Reply("Correct")

    with OpenAIStub(script) as stub:
        client = JudgeClient(stub.base_url, "judge", max_retries=2, backoff_s=0.001, backoff_max_s=1.0)
        (result,) = client.judge_batch_sync([item("q", "Paris")])
        first, second = stub.requests
    assert (result.score, result.ok, result.attempts) == (1.0, True, 2)
    assert second.start - first.start >= 0.28  # waited the server's Retry-After, not the 1 ms backoff


def test_http_400_is_not_retried():
    with OpenAIStub(lambda body, seen: Reply(None, status=400, raw=b'{"error": "model not found"}')) as stub:
        client = JudgeClient(stub.base_url, "judge", max_retries=5, **FAST)
        (result,) = client.judge_batch_sync([item("q", "Paris")])
    assert len(stub.requests) == 1
    assert (result.ok, result.attempts) == (False, 1)
    assert "HTTP 400" in result.error and "model not found" in result.error


def test_malformed_body_and_null_content_are_retried():
    replies = [Reply(raw=b"<html>bad gateway</html>"), Reply(raw=b'{"choices": []}'), Reply(None),
               Reply("Correct")]
    with OpenAIStub(lambda body, seen: replies[seen]) as stub:
        (result,) = JudgeClient(stub.base_url, "judge", max_retries=3, **FAST).judge_batch_sync(
            [item("q", "Paris")])
    assert (result.score, result.ok, result.attempts) == (1.0, True, 4)


def test_unreachable_server_falls_back_without_raising():
    with OpenAIStub(gaia_oracle) as stub:
        url = stub.base_url
    client = JudgeClient(url, "judge", max_retries=2, timeout_s=1.0, **FAST)  # the port is closed now
    (result,) = client.judge_batch_sync([item("q", "Paris")])
    assert (result.score, result.ok, result.attempts) == (0.0, False, 3)
    assert "ConnectError" in result.error


# ------------------------------------------------------------------------------- client: API contracts

def test_unknown_kind_raises_before_any_request():
    with OpenAIStub(gaia_oracle) as stub:
        client = JudgeClient(stub.base_url, "judge", **FAST)
        with pytest.raises(KeyError, match="item 1 has unknown kind 'hle'"):
            client.judge_batch_sync([item("q", "Paris"), item("q", "Paris", kind="hle")])
    assert stub.requests == []


def test_sync_entry_point_refuses_a_running_loop_and_async_entry_point_works():
    with OpenAIStub(gaia_oracle) as stub:
        client = JudgeClient(stub.base_url, "judge", **FAST)

        async def inside():
            with pytest.raises(RuntimeError, match="inside a running event loop"):
                client.judge_batch_sync([item("q", "Paris")])
            async with client:
                return await client.judge_batch([item("q", "Paris"), item("r", "Rome")])

        results = asyncio.run(inside())
        again = client.judge_batch_sync([item("r", "Rome")])  # another loop: new connections, same cache
    assert [r.score for r in results] == [1.0, 0.0] and again[0].cached


def test_metrics_reset_and_constructor_validation():
    with OpenAIStub(gaia_oracle) as stub:
        client = JudgeClient(stub.base_url, "judge", **FAST)
        client.judge_batch_sync([item("q", "Paris")])
    assert client.metrics()["requests"] == 1
    client.reset_metrics()
    assert client.metrics() == {"items": 0, "requests": 0, "cache_hits": 0, "retries": 0, "failures": 0,
                                "mean_latency_s": 0.0, "max_latency_s": 0.0, "cache_size": 1}
    with pytest.raises(ValueError, match=r"max_concurrency must be >= 1; timeout_s must be > 0 seconds"):
        JudgeClient("http://x/v1", "m", max_concurrency=0, timeout_s=0)
    with pytest.raises(ValueError, match="base_url must be an http"):
        JudgeClient("localhost:8000", "m")
    with pytest.raises(ValueError, match=r"extra_body may not set \['messages'\]"):
        JudgeClient("http://x/v1", "m", extra_body={"messages": []})


# ------------------------------------------------------------------------------------------- rule judge

def test_rule_judge_exact_match_and_f1():
    items = [item("q", "the Paris."), item("q", "Lyon"), item("q", "Paris France"), item("q", None),
             JudgeItem("q", "lyon", ["Paris", "Lyon"], "gaia")]
    em = RuleJudge().judge_batch_sync(items)
    assert [r.score for r in em] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert all(r.ok and not r.cached and r.error is None for r in em)
    f1_judge = RuleJudge("f1")
    f1 = asyncio.run(f1_judge.judge_batch(items))
    assert [round(r.score, 3) for r in f1] == [1.0, 0.0, 0.667, 0.0, 1.0]
    assert f1_judge.metrics()["items"] == 5 and f1_judge.metrics().keys() == JudgeClient(
        "http://x/v1", "m").metrics().keys()
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        RuleJudge("bleu")
