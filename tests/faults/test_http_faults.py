"""Faults of an OpenAI-compatible endpoint, through both users of the one HTTP client (`envs/llm.py`): the LLM
judge (`reward.judge.JudgeClient`) and the visit summary (`envs.tools.summary`).

Every fault of `FAULTS` (served by a local stub on 127.0.0.1) must end, through each user, as an error that
names the URL, the model and what went wrong (for a timeout: what was awaited), within a bounded time, with no
exception escaping and no reply buffered past its cap. Then: the judge and the summary share one retry/backoff,
one rate limiter and one LRU (`envs.llm`), and the pieces of that policy behave.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import pytest

import envs.llm
import envs.tools.summary
import reward.judge_batch
import reward.judge_http
from envs.llm import LRU, MAX_REPLY_BYTES, CallError, ChatClient, HTTPCallError, TokenBucket, with_retries
from envs.tools.summary import make_summarizer
from reward.judge import JudgeClient, JudgeItem
from tests.reward.openai_stub import OpenAIStub, Reply

TIMEOUT_S = 0.3
BIG = 50_000_000  # bytes: a runaway reply
CAP = f"over the cap of {MAX_REPLY_BYTES:,} bytes (max_reply_bytes)"

# name -> (the stub's reply, or None for a closed port; what the error must say)
FAULTS = {
    "hang before the headers": (Reply(delay_s=5.0), f"no answer within {TIMEOUT_S:g} s waiting for the response "
                                                    "headers"),
    "hang in the body": (Reply(body_delay_s=5.0), f"no answer within {TIMEOUT_S:g} s waiting for the response body"),
    "50 MB, announced": (Reply(size=BIG), CAP + ": the reply announces 50,000,000 bytes (Content-Length); not read"),
    "50 MB, chunked": (Reply(size=BIG, chunked=True), CAP + ": stopped reading after"),
    "50 MB error page": (Reply(status=500, size=BIG), "HTTP 500: '{\"choices\""),
    "body cut short": (Reply(size=20_000, cut_short=True), "RemoteProtocolError"),
    "HTTP 503": (Reply(status=503, raw=b"overloaded"), "HTTP 503: 'overloaded'"),
    "HTTP 429 with Retry-After": (Reply(status=429, raw=b"slow down", headers={"Retry-After": "0"}), "HTTP 429"),
    "HTTP 401": (Reply(status=401, raw=b"bad key"), "HTTP 401 (not retried"),
    "not JSON": (Reply(raw=b"<html>bad gateway</html>"), "HTTP 200 with a body that is not JSON"),
    "not a chat completion": (Reply(raw=b'{"choices": []}'), "malformed chat-completions body (IndexError"),
    "connection refused": (None, "ConnectError"),
}


def judge_error(base_url: str) -> str:
    """The judge's verdict on one item against `base_url`: it must fall back, never raise."""
    judge = JudgeClient(base_url, "judge-model", timeout_s=TIMEOUT_S, max_retries=0)
    (result,) = judge.judge_batch_sync([JudgeItem("Capital of France?", "Paris", "Paris", "gaia")])
    assert not result.ok and result.score == 0.0
    return result.error


def summary_error(base_url: str) -> str:
    """The visit summary of one page against `base_url`: it must fail into a PageSummary, never raise."""
    summarizer = make_summarizer({"base_url": base_url, "model": "summary-model", "timeout_s": TIMEOUT_S,
                                  "max_retries": 0, "shrink_tries": 0})
    summary = asyncio.run(summarizer.summarize("the capital", "Paris is the capital of France."))
    assert not summary.ok
    return summary.error


USERS = {"judge": (judge_error, "judge-model"), "visit summary": (summary_error, "summary-model")}


@pytest.mark.parametrize("user", sorted(USERS))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_is_an_error_naming_url_model_and_what_went_wrong(fault, user):
    reply, says = FAULTS[fault]
    call, model = USERS[user]
    with OpenAIStub(lambda body, seen: reply) as stub:
        url = stub.base_url
        start = time.monotonic()
        error = call(url) if reply is not None else None
        elapsed = time.monotonic() - start
        sent = stub.sent_bytes
    if reply is None:  # the stub has stopped: its port is closed
        start = time.monotonic()
        error = call(url)
        elapsed = time.monotonic() - start
    assert f"{user} {url}/chat/completions model={model}: " in error, error
    assert says in error, error
    assert elapsed < 3.0, (fault, elapsed)
    assert sent < BIG // 2, (fault, sent)  # the client hung up long before the end of a runaway body


@pytest.mark.parametrize("chunked", [False, True], ids=["announced", "chunked"])
def test_a_50_mb_reply_is_refused_without_buffering_it(chunked):
    def script(body, seen):
        return Reply("warm") if body["messages"][-1]["content"] == "warm up" else Reply(size=BIG, chunked=chunked)

    with OpenAIStub(script) as stub:
        client = ChatClient(stub.base_url, "m", timeout_s=10, max_retries=0)
        assert asyncio.run(client.complete([{"role": "user", "content": "warm up"}])) == "warm"  # lazy imports, TLS
        tracemalloc.start()
        try:
            with pytest.raises(HTTPCallError) as err:
                asyncio.run(client.complete([{"role": "user", "content": "hi"}]))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        sent = stub.sent_bytes
    assert CAP in str(err.value) and client.url in str(err.value) and not err.value.retryable
    assert peak < 3 * MAX_REPLY_BYTES, peak  # not 50 MB (and its decoded copies)
    assert sent < BIG // 2, sent


def test_the_cap_is_configurable_for_both_users():
    with OpenAIStub(lambda body, seen: Reply(size=5000, chunked=True)) as stub:
        judge = JudgeClient(stub.base_url, "j", max_retries=0, max_reply_bytes=4096)
        (result,) = judge.judge_batch_sync([JudgeItem("q", "Paris", "Paris", "gaia")])
        summarizer = make_summarizer({"base_url": stub.base_url, "model": "s", "max_reply_bytes": 4096,
                                      "shrink_tries": 0})
        summary = asyncio.run(summarizer.summarize("g", "text"))
        assert len(stub.requests) == 2  # over the cap is not retried; the summary does not shorten for it
    for error in (result.error, summary.error):
        assert "over the cap of 4,096 bytes (max_reply_bytes): stopped reading after" in error, error


# ------------------------------------------------------------------------------- one policy, two users

def test_judge_and_summary_share_one_retry_rate_limit_and_cache_implementation():
    assert reward.judge_batch.with_retries is envs.llm.with_retries
    assert reward.judge_batch.TokenBucket is envs.llm.TokenBucket and reward.judge_batch.LRU is envs.llm.LRU
    assert reward.judge_http.ChatClient is envs.tools.summary.ChatClient is envs.llm.ChatClient


def test_both_users_back_off_through_the_shared_policy_and_honour_retry_after(monkeypatch):
    delays = []
    original = envs.llm.backoff_delay

    def recording(retry, backoff_s, backoff_max_s, retry_after=None):
        delays.append(retry_after)
        return original(retry, backoff_s, backoff_max_s, retry_after)

    acquired = []
    acquire = TokenBucket.acquire

    async def counting(self):
        acquired.append(self)
        return await acquire(self)

    monkeypatch.setattr(envs.llm, "backoff_delay", recording)
    monkeypatch.setattr(TokenBucket, "acquire", counting)
    script = (lambda body, seen: Reply(status=429, headers={"Retry-After": "0.2"}) if seen == 0
              else Reply('Correct {"evidence": "e", "summary": "s"}'))
    fast = dict(max_retries=2, backoff_s=0.001, backoff_max_s=1.0, rate_limit=1000.0)
    with OpenAIStub(script) as stub:
        judge = JudgeClient(stub.base_url, "j", **fast)
        start = time.monotonic()
        (verdict,) = judge.judge_batch_sync([JudgeItem("q", "Paris", "Paris", "gaia")])
        judge_s = time.monotonic() - start
        summarizer = make_summarizer({"base_url": stub.base_url, "model": "s", **fast})
        start = time.monotonic()
        summary = asyncio.run(summarizer.summarize("g", "text"))
        summary_s = time.monotonic() - start
    assert verdict.ok and verdict.attempts == 2 and summary.ok
    assert delays == [0.2, 0.2]  # one retry each, both through envs.llm.backoff_delay, both told the Retry-After
    assert judge_s >= 0.19 and summary_s >= 0.19
    assert len(acquired) == 4 and acquired[0] is not acquired[2]  # every request of each user took a token


def test_the_summary_client_caches_replies_in_the_shared_lru():
    with OpenAIStub(lambda body, seen: Reply('{"evidence": "e", "summary": "s"}')) as stub:
        summarizer = make_summarizer({"base_url": stub.base_url, "model": "s", "cache_size": 4})
        first = asyncio.run(summarizer.summarize("g", "text"))
        second = asyncio.run(summarizer.summarize("g", "text"))  # another loop, the same cache
        other = asyncio.run(summarizer.summarize("another goal", "text"))
        assert len(stub.requests) == 2
    assert first.ok and second == first and other.ok
    assert isinstance(summarizer.client.cache, LRU) and len(summarizer.client.cache) == 2


# -------------------------------------------------------------------------------- the policy's pieces

def test_with_retries_retries_only_retryable_errors_and_sets_attempts():
    calls = []

    async def flaky(n):
        calls.append(n)
        raise CallError("overloaded", retryable=True)

    async def refused(n):
        calls.append(n)
        raise CallError("bad key")

    with pytest.raises(CallError) as err:
        asyncio.run(with_retries(flaky, max_retries=2, backoff_s=0.0, backoff_max_s=0.0))
    assert calls == [1, 2, 3] and err.value.attempts == 3
    calls.clear()
    with pytest.raises(CallError) as err:
        asyncio.run(with_retries(refused, max_retries=5, backoff_s=0.0, backoff_max_s=0.0))
    assert calls == [1] and err.value.attempts == 1
    with pytest.raises(ZeroDivisionError):  # not a CallError: a bug, not retried
        asyncio.run(with_retries(lambda n: asyncio.sleep(1 / 0), max_retries=5, backoff_s=0.0, backoff_max_s=0.0))


def test_token_bucket_keeps_its_spacing_on_any_loop_and_a_cancelled_waiter_takes_nothing():
    bucket = TokenBucket(50.0, burst=1)  # one token per 20 ms

    async def burst():
        async def take():
            await bucket.acquire()
            return time.monotonic()

        return sorted(await asyncio.gather(*(take() for _ in range(5))))

    for _ in range(2):  # a second loop, the same bucket
        times = asyncio.run(burst())
        assert min(b - a for a, b in zip(times, times[1:])) >= 0.02 * 0.9, times

    async def cancelled():
        waiter = asyncio.create_task(bucket.acquire())
        await asyncio.sleep(0.005)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await asyncio.sleep(0.03)  # a token comes due while nobody waits
        return await bucket.acquire()

    assert asyncio.run(cancelled()) < 0.002  # no wait: the cancelled waiter did not take the token
    with pytest.raises(ValueError, match="rate_per_s > 0"):
        TokenBucket(0)
