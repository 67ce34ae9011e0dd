"""What every LLM judge does around one request: `BatchedJudge` (SEEDS 13 item 5, 14 item 22).

Owns: the judging of a batch (cache, de-duplication, concurrency slots, rate limit, timeout, retries, batch
deadline, fallback, metrics) around one abstract request, `_complete(state, messages) -> reply text`, that a
transport implements (`reward/judge_http.py`: an OpenAI-compatible endpoint; `reward/engine_judge.py`: the
project's own engine); and `cache_key`, the key of a verdict. The retry loop, the backoff, the rate limiter and
the LRU are the shared ones of `envs/llm.py`, not copies.

Must never: raise because one request failed (each item is independent; a slow, failing or unreadable judgement
becomes the fallback score with `ok=False` and its error, and is counted and logged), block the event loop,
talk HTTP itself, or see Arrow batches (the reward function that owns the trajectory columns builds the items).

How one batch is judged (`judge_batch`, the same for every transport):
1. An item without a prediction (None or blank: no `<answer>` was extracted) scores 0.0 with no request, as in
   VRAG, where the judge is not called without an answer.
2. Items are keyed by (kind, question, prediction, gold), each normalised (Unicode NFKC, case-folded,
   whitespace collapsed) and hashed (BLAKE2b-128). A key in the LRU cache is a cache hit; identical items of
   one batch are sent once and the copies count as cache hits.
3. Each distinct key is one asyncio task. A request waits for a concurrency slot (`max_concurrency`), then for
   a token of the rate limiter (`rate_limit` requests/s, token bucket of `burst` tokens), and is cut after
   `timeout_s` seconds. Transient failures (timeout, connection error, HTTP 408/429/5xx, a malformed body) and
   unreadable replies are retried up to `max_retries` times (`envs.llm.with_retries`: exponential backoff with
   jitter, at least the server's Retry-After). Other HTTP 4xx (bad model name, bad key) are not retried. When
   the retries are spent the item gets `fallback_score` (VRAG: 20 retries, then 0.0).
4. The batch ends after `batch_deadline_s` at the latest: unfinished items are cancelled and get the fallback.
Successful verdicts enter the cache; fallbacks never do (a later batch asks again).

One judge serves one event loop at a time: the concurrency slots and the transport's own resources (JudgeClient:
the HTTP connection pool) are made on the loop that first uses them and made again when the judge finds itself
on another loop (as `judge_batch_sync` does on every call). The cache, the rate limiter and the metrics outlive
loops.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from envs.llm import LRU, CallError, TokenBucket, with_retries
from reward.judge_types import JudgeItem, JudgeResult, JudgeTransient, golds, no_answer
from reward.prompts import JUDGES, build_messages, parse_verdict

__all__ = ["BatchedJudge", "LoopState", "cache_key"]

log = logging.getLogger("reward.judge")  # every judge logs under one name


def _normalize(text: str) -> str:
    """Cache-key normalisation: NFKC, case-folded, whitespace collapsed. Deliberately lighter than SQuAD's
    (punctuation and articles stay: "3.5" and "35" must not share a verdict)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def cache_key(item: JudgeItem) -> str:
    """A stable hex key of (kind, normalised question, normalised prediction, normalised gold(s)): the same in
    every process and run (BLAKE2b-128, not Python's salted `hash`)."""
    parts = [item.kind, _normalize(item.question), _normalize(item.prediction or ""),
             "\x1e".join(_normalize(g) for g in golds(item.gold))]
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=16).hexdigest()


@dataclass(slots=True)
class LoopState:
    """What must belong to one event loop: the concurrency slots and the transport's own resources
    (`BatchedJudge._open` makes them; JudgeClient: its HTTP connection pool)."""

    loop: asyncio.AbstractEventLoop
    slots: asyncio.Semaphore
    resources: Any = None


@dataclass(slots=True)
class _Counters:
    items: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    latency_sum_s: float = 0.0
    latency_max_s: float = 0.0


class BatchedJudge:
    """Everything an LLM judge does around one request (module docstring): a subclass implements
    `_complete(state, messages) -> reply text` (raising a `CallError`: `JudgeTransient`, `JudgePermanent`, or the
    HTTP client's `HTTPCallError`), `describe()` (who is asked, for errors) and, if it holds per-loop resources,
    `_open()` / `_close(resources)`. A transport that cuts its own requests at `timeout_s` with a better message
    (the HTTP client names the phase it waited in) sets `cuts_own_timeout`.

    `max_retries` counts retries, so an item costs at most 1 + max_retries requests. `timeout_s` cuts one request;
    `batch_deadline_s` (None: no deadline) the whole batch. `cache_size` 0 turns the cache off.
    """

    cuts_own_timeout = False

    def __init__(self, *, max_concurrency: int = 32, rate_limit: float | None = None, burst: int | None = None,
                 timeout_s: float = 60.0, max_retries: int = 3, backoff_s: float = 0.5, backoff_max_s: float = 10.0,
                 batch_deadline_s: float | None = 600.0, fallback_score: float = 0.0, cache_size: int = 100_000,
                 _checks: Mapping[str, tuple[bool, str]] | None = None):
        checks = {
            **(_checks or {}),
            "max_concurrency": (max_concurrency >= 1, ">= 1"),
            "rate_limit": (rate_limit is None or rate_limit > 0, "None or > 0 requests per second"),
            "burst": (burst is None or burst >= 1, "None or >= 1"),
            "timeout_s": (timeout_s > 0, "> 0 seconds"),
            "max_retries": (max_retries >= 0, ">= 0"),
            "backoff_s": (0 <= backoff_s <= backoff_max_s, "in [0, backoff_max_s]"),
            "batch_deadline_s": (batch_deadline_s is None or batch_deadline_s > 0, "None or > 0 seconds"),
            "fallback_score": (math.isfinite(fallback_score), "finite"),
            "cache_size": (cache_size >= 0, ">= 0"),
        }
        bad = [f"{name} must be {need}" for name, (ok, need) in checks.items() if not ok]
        if bad:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(bad))
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self.burst = burst if burst is not None else max(1, math.ceil(rate_limit or 1))
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.batch_deadline_s = batch_deadline_s
        self.fallback_score = float(fallback_score)
        self._bucket = TokenBucket(rate_limit, self.burst) if rate_limit else None
        self._cache = LRU(cache_size)
        self._counters = _Counters()
        self._state: LoopState | None = None

    # -- what a transport implements ----------------------------------------------------------------------

    async def _complete(self, state: LoopState, messages: list[dict[str, str]]) -> str:
        """One request for the chat `messages` -> the judge's reply text."""
        raise NotImplementedError

    def describe(self) -> str:
        """Who is asked, as errors name it."""
        return f"judge {type(self).__name__}"

    def _open(self) -> Any:
        """Per-loop resources of the transport, made on the running loop (None: nothing)."""
        return None

    async def _close(self, resources: Any) -> None:
        """Release what `_open` made."""

    # -- public API ---------------------------------------------------------------------------------------

    async def judge_batch(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """One `JudgeResult` per item, in order. Never raises for a failed judgement; raises KeyError /
        TypeError before any request when an item names an unknown kind or has a malformed gold."""
        items = list(items)
        for i, item in enumerate(items):
            if item.kind not in JUDGES:
                raise KeyError(f"judge_batch: item {i} has unknown kind {item.kind!r}; known: {sorted(JUDGES)}")
            golds(item.gold)
        self._counters.items += len(items)
        results: list[JudgeResult | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            if no_answer(item.prediction):
                results[i] = JudgeResult(0.0, ok=True)
                continue
            key = cache_key(item)
            hit = self._cache.get(key)
            if hit is not None:
                self._counters.cache_hits += 1
                results[i] = JudgeResult(hit[0], ok=True, cached=True, reply=hit[1])
            else:
                groups.setdefault(key, []).append(i)
        if groups:
            outcomes = await self._judge_distinct({key: items[idx[0]] for key, idx in groups.items()})
            failed: list[int] = []
            for key, indices in groups.items():
                outcome = outcomes[key]
                if outcome.ok:
                    self._cache.put(key, (outcome.score, outcome.reply))
                else:
                    failed.extend(indices)
                    log.debug("judge fallback for %s item %d: %s", items[indices[0]].kind, indices[0],
                              outcome.error)
                results[indices[0]] = outcome
                for i in indices[1:]:  # identical items of this batch share the one request
                    results[i] = replace(outcome, cached=outcome.ok, attempts=0)
                    self._counters.cache_hits += outcome.ok
            if failed:  # one line per batch, not one per item: a dead judge must not flood the log
                self._counters.failures += len(failed)
                first = results[min(failed)]
                log.warning("judge fallback (score %.3g) for %d of %d items of this batch; first, item %d "
                            "(%d attempts): %s", self.fallback_score, len(failed), len(items), min(failed),
                            first.attempts, first.error)
        return results  # type: ignore[return-value]  (every slot is filled above)

    def judge_batch_sync(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """`judge_batch` for callers without an event loop: runs one on this thread (`asyncio.run`) and releases
        the per-loop resources afterwards. Must not be called from inside a running event loop (it raises
        RuntimeError there: await `judge_batch` instead, or use `reward.judge.SyncJudge`)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(f"{type(self).__name__}.judge_batch_sync was called inside a running event loop; "
                               "use `await judge.judge_batch(items)` there")

        async def run() -> list[JudgeResult]:
            try:
                return await self.judge_batch(items)
            finally:
                await self.aclose()

        return asyncio.run(run())

    def metrics(self) -> dict[str, float]:
        """Counters since the last reset: items, requests (requests sent, retries included), cache_hits,
        retries, failures (items given the fallback), mean/max latency of a request in seconds (every request
        that ended, failed ones included), cache_size (entries now)."""
        c = self._counters
        return {"items": c.items, "requests": c.requests, "cache_hits": c.cache_hits, "retries": c.retries,
                "failures": c.failures, "mean_latency_s": c.latency_sum_s / c.requests if c.requests else 0.0,
                "max_latency_s": c.latency_max_s, "cache_size": len(self._cache)}

    def reset_metrics(self) -> None:
        self._counters = _Counters()

    def clear_cache(self) -> None:
        self._cache.clear()

    async def aclose(self) -> None:
        """Release the per-loop resources (a later call makes new ones)."""
        state, self._state = self._state, None
        if state is not None:
            await self._close(state.resources)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- machinery ----------------------------------------------------------------------------------------

    def _loop_state(self) -> LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            # Resources left on another (finished) loop are dropped, not closed: that loop cannot run them now.
            self._state = LoopState(loop, asyncio.Semaphore(self.max_concurrency), self._open())
        return self._state

    async def _judge_distinct(self, todo: dict[str, JudgeItem]) -> dict[str, JudgeResult]:
        """Judge distinct items concurrently; whatever is unfinished at the batch deadline gets the fallback."""
        state = self._loop_state()
        attempts = dict.fromkeys(todo, 0)  # requests started per key, read when a task is cut off
        tasks = {key: asyncio.create_task(self._judge_one(state, item, key, attempts))
                 for key, item in todo.items()}
        try:
            await asyncio.wait(tasks.values(), timeout=self.batch_deadline_s)
        finally:  # the deadline passed, or the caller was cancelled: stop what is left
            unfinished = [t for t in tasks.values() if not t.done()]
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.gather(*unfinished, return_exceptions=True)
        outcomes = {}
        for key, task in tasks.items():
            if task.cancelled():
                outcomes[key] = self._fallback(attempts[key], f"batch deadline of {self.batch_deadline_s} s "
                                                              f"passed before a verdict of {self.describe()}", None)
            else:
                outcomes[key] = task.result()
        return outcomes

    async def _judge_one(self, state: LoopState, item: JudgeItem, key: str,
                         attempts: dict[str, int]) -> JudgeResult:
        messages = build_messages(item.kind, item.question, item.prediction or "", " | ".join(golds(item.gold)))
        last_reply: str | None = None

        async def attempt(n: int) -> JudgeResult:
            nonlocal last_reply
            attempts[key] = n
            reply = last_reply = await self._request(state, messages)
            verdict = parse_verdict(item.kind, reply)
            if verdict is None:
                raise JudgeTransient(f"unparseable {item.kind} judge reply {reply[:200]!r}")
            return JudgeResult(verdict, ok=True, attempts=n, reply=reply)

        try:
            return await with_retries(attempt, max_retries=self.max_retries, backoff_s=self.backoff_s,
                                      backoff_max_s=self.backoff_max_s, on_retry=self._count_retry)
        except CallError as exc:
            if not exc.retryable:
                return self._fallback(exc.attempts, str(exc), None)
            return self._fallback(exc.attempts, f"gave up after {exc.attempts} attempts; last error: {exc}",
                                  last_reply)
        except Exception as exc:  # a bug here must cost one item, not the batch
            return self._fallback(attempts[key], f"{type(exc).__name__}: {exc}", last_reply)

    def _count_retry(self, retry: int) -> None:
        self._counters.retries += 1

    async def _request(self, state: LoopState, messages: list[dict[str, str]]) -> str:
        """One request within a concurrency slot, a rate-limit token and `timeout_s`; its latency is counted."""
        async with state.slots:
            if self._bucket is not None:
                await self._bucket.acquire()
            self._counters.requests += 1
            start = time.perf_counter()
            try:
                async with asyncio.timeout(None if self.cuts_own_timeout else self.timeout_s):
                    return await self._complete(state, messages)
            except TimeoutError:
                raise JudgeTransient(f"{self.describe()}: timeout after {self.timeout_s:g} s waiting for the "
                                     "reply") from None
            finally:
                elapsed = time.perf_counter() - start
                self._counters.latency_sum_s += elapsed
                self._counters.latency_max_s = max(self._counters.latency_max_s, elapsed)

    def _fallback(self, attempts: int, error: str, reply: str | None) -> JudgeResult:
        return JudgeResult(self.fallback_score, ok=False, attempts=attempts, error=error, reply=reply)
