"""LLM-as-judge in the reward path: async, batched, cached, retried, with a deterministic fallback.

Owns: `JudgeItem` / `JudgeResult` (one judgement asked for, one given); `BatchedJudge`, the part every LLM judge
shares (cache, de-duplication, concurrency slots, rate limit, timeouts, retries, batch deadline, fallback,
metrics) around one abstract request; `JudgeClient`, its transport to any OpenAI-compatible
`POST {base_url}/chat/completions` endpoint (vLLM, SGLang, DashScope, OpenAI); `RuleJudge` (the same interface on
exact match / F1, offline and deterministic: the default of the embedded world, whose gold answers are exact);
`make_judge` (a judge from configuration) and `SyncJudge` (a judge on an event loop of its own, for synchronous
callers such as the RewardWorker). The judge served on the project's own engine is `reward/engine_judge.py`.
SEEDS 13 item 5 and 14 item 22; prompts and verdict parsers live in `reward/prompts.py`.

Must never: raise because one request failed (each item is independent; a slow, failing or unreadable judgement
becomes the fallback score with `ok=False` and its error, and is counted and logged), block the event loop,
import Ray or anything of the project but `reward.rules` and `reward.prompts` (and, lazily in `make_judge`,
`reward.engine_judge`), or see Arrow batches (the reward function that owns the trajectory columns builds the
items).

How one batch is judged (`BatchedJudge.judge_batch`, the same for every transport):
1. An item without a prediction (None or blank: no `<answer>` was extracted) scores 0.0 with no request, as in
   VRAG, where the judge is not called without an answer.
2. Items are keyed by (kind, question, prediction, gold), each normalised (Unicode NFKC, case-folded,
   whitespace collapsed) and hashed (BLAKE2b-128). A key in the LRU cache is a cache hit; identical items of
   one batch are sent once and the copies count as cache hits.
3. Each distinct key is one asyncio task. A request waits for a concurrency slot (`max_concurrency`), then for
   a token of the rate limiter (`rate_limit` requests/s, token bucket of `burst` tokens), and is cut after
   `timeout_s` seconds. Transient failures (timeout, connection error, HTTP 408/429/5xx, a malformed body) and
   unreadable replies are retried up to `max_retries` times after exponential backoff with jitter,
       delay_k = U(0.5, 1) · min(backoff_max_s, backoff_s · 2^(k-1))     (k = 1, 2, ... the retry number)
   (at least the server's Retry-After, capped at backoff_max_s). Other HTTP 4xx (bad model name, bad key) are
   not retried. When the retries are spent the item gets `fallback_score` (VRAG: 20 retries, then 0.0).
4. The batch ends after `batch_deadline_s` at the latest: unfinished items are cancelled and get the fallback.
Successful verdicts enter the cache; fallbacks never do (a later batch asks again).

One judge serves one event loop at a time: the concurrency slots, the rate limiter and the transport's own
resources (JudgeClient: the HTTP connection pool) are made on the loop that first uses them and made again when
the judge finds itself on another loop (as `judge_batch_sync` does on every call). The cache and the metrics
outlive loops. `SyncJudge` keeps one loop for the judge's whole life, so connections and an engine persist.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx

from reward.prompts import JUDGES, build_messages, parse_verdict
from reward.rules import exact_match, f1_score

__all__ = ["JudgeItem", "JudgeResult", "Judge", "BatchedJudge", "JudgeTransient", "JudgePermanent", "JudgeClient",
           "RuleJudge", "JUDGE_BACKENDS", "make_judge", "SyncJudge", "cache_key"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JudgeItem:
    """One judgement to make: is `prediction` a correct answer to `question`, given `gold`?

    `prediction` None means the response had no answer (it scores 0.0 without a request). `gold` is one answer
    or several acceptable ones; an LLM judge sees several joined by " | " [M: our choice, the papers have one
    gold per question]; `RuleJudge` takes the max over them. `kind` names the prompt: a key of
    `reward.prompts.JUDGES` ("gaia", "browsecomp", "simpleqa", "vrag", "masksearch")."""

    question: str
    prediction: str | None
    gold: str | Sequence[str]
    kind: str


@dataclass(frozen=True, slots=True)
class JudgeResult:
    """The verdict on one item. `ok` False means `score` is the fallback and `error` says why; `cached` True means
    no request was made for this item (cache, or an identical item of the same batch); `attempts` counts the
    requests made for it; `reply` is the judge's last reply text, if any."""

    score: float
    ok: bool
    cached: bool = False
    attempts: int = 0
    error: str | None = None
    reply: str | None = None


class Judge(Protocol):
    """What a reward function needs of a judge: `JudgeClient`, `EngineJudge` and `RuleJudge` all are one."""

    async def judge_batch(self, items: Sequence[JudgeItem]) -> list[JudgeResult]: ...

    def metrics(self) -> dict[str, float]: ...

    def reset_metrics(self) -> None: ...

    def clear_cache(self) -> None: ...

    async def aclose(self) -> None: ...


# -------------------------------------------------------------------------------------------- keys, cache

def _normalize(text: str) -> str:
    """Cache-key normalisation: NFKC, case-folded, whitespace collapsed. Deliberately lighter than SQuAD's
    (punctuation and articles stay: "3.5" and "35" must not share a verdict)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds or not all(isinstance(g, str) for g in golds):
        raise TypeError(f"JudgeItem.gold must be a str or a non-empty sequence of str, got {gold!r}")
    return golds


def _no_answer(prediction: str | None) -> bool:
    return prediction is None or not prediction.strip()


def cache_key(item: JudgeItem) -> str:
    """A stable hex key of (kind, normalised question, normalised prediction, normalised gold(s)): the same in
    every process and run (BLAKE2b-128, not Python's salted `hash`)."""
    parts = [item.kind, _normalize(item.question), _normalize(item.prediction or ""),
             "\x1e".join(_normalize(g) for g in _golds(item.gold))]
    return hashlib.blake2b("\x1f".join(parts).encode("utf-8"), digest_size=16).hexdigest()


class _LRU:
    """A bounded mapping that forgets the least recently used key first; size 0 keeps nothing."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._data: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    def get(self, key: str) -> tuple[float, str | None] | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value: tuple[float, str | None]) -> None:
        if self.max_size <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


# ------------------------------------------------------------------------------------------ rate limiting

class _TokenBucket:
    """At most `rate` acquisitions per second on average, `burst` at once. Waiters are served in arrival
    order (they queue on the lock, and the holder sleeps until its token is due)."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self.tokens) / self.rate)


@dataclass(slots=True)
class _LoopState:
    """What must belong to one event loop: the concurrency slots, the rate limiter, and the transport's own
    resources (`BatchedJudge._open` makes them; JudgeClient: its HTTP connection pool)."""

    loop: asyncio.AbstractEventLoop
    slots: asyncio.Semaphore
    bucket: _TokenBucket | None
    resources: Any = None


class JudgeTransient(Exception):
    """A failed request worth retrying (timeout, connection error, overload, malformed reply body). A transport
    raises it from `_complete`; `retry_after` (seconds) is the server's hint, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class JudgePermanent(Exception):
    """A failed request that would fail again (bad model name, bad key, a prompt the server refuses)."""


@dataclass(slots=True)
class _Counters:
    items: int = 0
    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    failures: int = 0
    latency_sum_s: float = 0.0
    latency_max_s: float = 0.0


def _reply_text(data: Any) -> str:
    """`choices[0].message.content` of a chat-completions body; a list of content parts is joined; a null
    content (e.g. everything went to a reasoning field) is ''."""
    content = data["choices"][0]["message"]["content"]
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise TypeError(f"message.content is {type(content).__name__}")
    return content


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:  # an HTTP date: not worth parsing, the backoff applies
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


# ------------------------------------------------------------------------------------- the shared machinery

class BatchedJudge:
    """Everything an LLM judge does around one request (see the module docstring): a subclass implements
    `_complete(state, messages) -> reply text` (raising `JudgeTransient` / `JudgePermanent`) and, if it holds
    per-loop resources, `_open()` / `_close(resources)`.

    `max_retries` counts retries, so an item costs at most 1 + max_retries requests. `timeout_s` cuts one request;
    `batch_deadline_s` (None: no deadline) the whole batch. `cache_size` 0 turns the cache off.
    """

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
        self._cache = _LRU(cache_size)
        self._counters = _Counters()
        self._state: _LoopState | None = None
        self._rng = random.Random()

    # -- what a transport implements ----------------------------------------------------------------------

    async def _complete(self, state: _LoopState, messages: list[dict[str, str]]) -> str:
        """One request for the chat `messages` -> the judge's reply text."""
        raise NotImplementedError

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
            _golds(item.gold)
        self._counters.items += len(items)
        results: list[JudgeResult | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            if _no_answer(item.prediction):
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
        RuntimeError there: await `judge_batch` instead, or use `SyncJudge`)."""
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
        self._cache = _LRU(self._cache.max_size)

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

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            # Resources left on another (finished) loop are dropped, not closed: that loop cannot run them now.
            self._state = _LoopState(
                loop=loop,
                slots=asyncio.Semaphore(self.max_concurrency),
                bucket=_TokenBucket(self.rate_limit, self.burst) if self.rate_limit else None,
                resources=self._open(),
            )
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
                                                              "passed before a verdict", None)
            else:
                outcomes[key] = task.result()
        return outcomes

    async def _judge_one(self, state: _LoopState, item: JudgeItem, key: str,
                         attempts: dict[str, int]) -> JudgeResult:
        messages = build_messages(item.kind, item.question, item.prediction or "", " | ".join(_golds(item.gold)))
        error, reply, delay = "no request made", None, 0.0
        try:
            for attempt in range(1, self.max_retries + 2):
                if attempt > 1:
                    self._counters.retries += 1
                    await asyncio.sleep(delay)
                attempts[key] = attempt
                try:
                    reply = await self._request(state, messages)
                except JudgePermanent as exc:
                    return self._fallback(attempt, str(exc), None)
                except JudgeTransient as exc:
                    error, delay = str(exc), self._backoff(attempt, exc.retry_after)
                    continue
                verdict = parse_verdict(item.kind, reply)
                if verdict is not None:
                    return JudgeResult(verdict, ok=True, attempts=attempt, reply=reply)
                error, delay = f"unparseable {item.kind} judge reply {reply[:200]!r}", self._backoff(attempt)
            return self._fallback(attempts[key], f"gave up after {attempts[key]} attempts; last error: {error}",
                                  reply)
        except Exception as exc:  # a bug here must cost one item, not the batch
            return self._fallback(attempts[key], f"{type(exc).__name__}: {exc}", reply)

    async def _request(self, state: _LoopState, messages: list[dict[str, str]]) -> str:
        """One request within a concurrency slot, a rate-limit token and `timeout_s`; its latency is counted."""
        async with state.slots:
            if state.bucket is not None:
                await state.bucket.acquire()
            self._counters.requests += 1
            start = time.perf_counter()
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await self._complete(state, messages)
            except TimeoutError:
                raise JudgeTransient(f"timeout after {self.timeout_s} s") from None
            finally:
                elapsed = time.perf_counter() - start
                self._counters.latency_sum_s += elapsed
                self._counters.latency_max_s = max(self._counters.latency_max_s, elapsed)

    def _backoff(self, attempt: int, retry_after: float | None = None) -> float:
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)) * self._rng.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max_s))
        return delay

    def _fallback(self, attempts: int, error: str, reply: str | None) -> JudgeResult:
        return JudgeResult(self.fallback_score, ok=False, attempts=attempts, error=error, reply=reply)


# ---------------------------------------------------------------------------------------------- the client

class JudgeClient(BatchedJudge):
    """Batched LLM-as-judge over an OpenAI-compatible chat-completions endpoint (see the module docstring).

    base_url: up to and including the API root, e.g. "http://127.0.0.1:8000/v1" (requests go to
    {base_url}/chat/completions). model: the served model name. Every request sends temperature 0 and
    `max_tokens`; `extra_body` is merged into it (e.g. {"chat_template_kwargs": {"enable_thinking": False}}
    for a Qwen3 judge on vLLM). The other settings are `BatchedJudge`'s.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, max_tokens: int = 1024,
                 extra_body: Mapping[str, Any] | None = None, **settings: Any):
        super().__init__(**settings, _checks={
            "base_url": (base_url.startswith(("http://", "https://")), "an http(s) URL such as "
                         "'http://127.0.0.1:8000/v1'"),
            "model": (bool(model), "the served model name"),
            "max_tokens": (max_tokens >= 1, ">= 1"),
        })
        reserved = {"model", "messages"} & set(extra_body or {})
        if reserved:
            raise ValueError(f"JudgeClient: extra_body may not set {sorted(reserved)}; they are built per item")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})

    def _open(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s), limits=limits, headers=headers)

    async def _close(self, resources: httpx.AsyncClient) -> None:
        await resources.aclose()

    async def _complete(self, state: _LoopState, messages: list[dict[str, str]]) -> str:
        """One chat-completions request -> the reply text."""
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens,
                **self.extra_body}
        try:
            response = await state.resources.post(self.url, json=body)
        except httpx.TimeoutException:
            raise JudgeTransient(f"timeout after {self.timeout_s} s") from None
        except httpx.TransportError as exc:
            raise JudgeTransient(f"{type(exc).__name__} on {self.url}: {exc}") from None
        status = response.status_code
        if status == 408 or status == 429 or status >= 500:
            raise JudgeTransient(f"HTTP {status}: {response.text[:200]!r}", _retry_after(response))
        if status >= 400:
            raise JudgePermanent(f"HTTP {status} from {self.url} (not retried; check the model name "
                                 f"{self.model!r}, the API key and the request): {response.text[:300]!r}")
        try:
            return _reply_text(response.json())
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise JudgeTransient(f"malformed chat-completions body ({type(exc).__name__}: {exc}): "
                                 f"{response.text[:200]!r}") from None


# ------------------------------------------------------------------------------------------ the rule judge

class RuleJudge:
    """The `JudgeClient` interface on rule metrics of `reward.rules`: "exact_match" (SQuAD-normalised, 1/0) or
    "f1" (token F1 in [0, 1]); max over several golds. Offline, deterministic, instant: never fails, never
    caches (nothing to save); `kind` is ignored."""

    _METRICS = {"exact_match": exact_match, "f1": f1_score}

    def __init__(self, metric: str = "exact_match"):
        if metric not in self._METRICS:
            raise ValueError(f"RuleJudge: unknown metric {metric!r}; known: {sorted(self._METRICS)}")
        self.metric = metric
        self._score = self._METRICS[metric]
        self._items = 0

    async def judge_batch(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        return self.judge_batch_sync(items)

    def judge_batch_sync(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        """Plain computation: safe to call with or without an event loop."""
        items = list(items)
        self._items += len(items)
        return [JudgeResult(float(self._score(item.prediction, item.gold)), ok=True) for item in items]

    def metrics(self) -> dict[str, float]:
        """The same keys as `JudgeClient.metrics`; only `items` moves."""
        return {"items": self._items, "requests": 0, "cache_hits": 0, "retries": 0, "failures": 0,
                "mean_latency_s": 0.0, "max_latency_s": 0.0, "cache_size": 0}

    def reset_metrics(self) -> None:
        self._items = 0

    def clear_cache(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


# ------------------------------------------------------------------------------------ from configuration

JUDGE_BACKENDS = ("rule", "openai", "engine")


def make_judge(config: Mapping[str, Any]) -> Judge:
    """A judge from plain configuration data (e.g. a RewardWorker's `judge=` argument):

        {"backend": "rule", "metric": "exact_match" | "f1"}
        {"backend": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "judge", ...JudgeClient settings}
        {"backend": "engine", "engine": "vllm" | "hf", "model_path": DIR, "engine_kwargs": {...}, ...}
            (the judge model served inside this process on the project's engine: `reward.engine_judge`)

    Every other key goes to the judge's constructor. Call it on the event loop the judge will serve (an engine
    binds to the loop it starts on): `SyncJudge` does.
    """
    config = dict(config)
    backend = config.pop("backend", None)
    if backend not in JUDGE_BACKENDS:
        raise ValueError(f"judge backend {backend!r} is not one of {JUDGE_BACKENDS}; e.g. "
                         "{'backend': 'openai', 'base_url': 'http://127.0.0.1:8000/v1', 'model': 'judge'}")
    if backend == "rule":
        factory: Any = RuleJudge
    elif backend == "openai":
        factory = JudgeClient
    else:
        from reward.engine_judge import start_engine_judge  # imports the engines only when asked for

        factory = start_engine_judge
    try:
        return factory(**config)
    except TypeError as exc:
        raise TypeError(f"judge backend {backend!r}: {exc}") from None


class SyncJudge:
    """A judge on an event loop of its own, for synchronous callers (the RewardWorker's `score`).

    The loop runs on a daemon thread for the judge's whole life, so HTTP connections and an engine persist from
    batch to batch and every request of a batch is in flight at once. Nothing starts until the first `judge`
    call (or `start()`): a RewardWorker built only to read its `columns` costs nothing. `judge` may be called
    from any thread, also from inside another running loop (it blocks that caller until the batch is judged).
    """

    def __init__(self, config: Mapping[str, Any]):
        if dict(config).get("backend") not in JUDGE_BACKENDS:
            raise ValueError(f"judge backend {dict(config).get('backend')!r} is not one of {JUDGE_BACKENDS}")
        self.config = dict(config)
        self._judge: Judge | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._judge is not None

    def start(self) -> SyncJudge:
        with self._lock:
            if self._judge is not None:
                return self
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="windward-judge-loop", daemon=True)
            thread.start()

            async def build() -> Judge:
                return make_judge(self.config)

            try:
                self._judge = asyncio.run_coroutine_threadsafe(build(), loop).result()
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout=10)
                loop.close()
                raise
            self._loop, self._thread = loop, thread
        return self

    def judge(self, items: Sequence[JudgeItem]) -> list[JudgeResult]:
        self.start()
        return asyncio.run_coroutine_threadsafe(self._judge.judge_batch(items), self._loop).result()

    def metrics(self) -> dict[str, float]:
        return self._judge.metrics() if self._judge is not None else {}

    def reset_metrics(self) -> None:
        if self._judge is not None:
            self._judge.reset_metrics()

    def clear_cache(self) -> None:
        if self._judge is not None:
            self._judge.clear_cache()

    def close(self) -> None:
        """Close the judge (an engine it started is shut down) and stop the loop. Idempotent."""
        with self._lock:
            judge, loop, thread = self._judge, self._loop, self._thread
            self._judge = self._loop = self._thread = None
        if judge is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(judge.aclose(), loop).result(timeout=120)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            if not thread.is_alive():
                loop.close()
