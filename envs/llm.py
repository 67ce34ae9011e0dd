"""The one OpenAI-compatible HTTP client, and the call policy every model or service call shares.

Owns: `post_once` / `post_json` (a JSON POST, its reply streamed and capped), `ChatClient` (`POST
{base_url}/chat/completions` of any OpenAI-compatible server: vLLM's `vllm serve`, SGLang, DashScope, OpenAI),
and the pieces of policy its users share instead of copying: `with_retries` and `backoff_delay` (retries with
backoff and Retry-After), `TokenBucket` (rate limit), `LRU` (bounded cache), `CallError` / `HTTPCallError`
(what a failed call says), `shared_ssl_context` (the process's one TLS context). Users: the visit summary
(`envs/tools/summary.py`), the HTTP search backends (`envs/search_backends.py`), the tool server's retries
(`envs/server.py`) and the LLM judge of `reward/` (`reward/judge_batch.py`, `reward/judge_http.py`; DESIGN
section 1 lets `reward/` import this module).

Retries: a `CallError` with `retryable` set (a timeout, a connection error, HTTP 408, 429 or 5xx, a body that is
not JSON or not a chat completion) is retried up to `max_retries` times after
    delay_k = U(0.5, 1) * min(backoff_max_s, backoff_s * 2^(k-1))        (k = 1, 2, ... the retry number)
and at least the server's Retry-After (capped at backoff_max_s). Any other 4xx is not retried: a bad key or
a bad model name does not get better by asking again (and vLLM answers 400 for a prompt longer than the
model's context: the visit summary reacts to that by shortening the page, see `envs/tools/summary.py`).
Nor is a reply over `max_reply_bytes` (4 MiB by default): its body is streamed and reading stops at the cap (a
body whose Content-Length is over the cap is not read at all).

Every error names the service, the URL, the model (if any) and what was awaited, e.g.
    judge http://h:8000/v1/chat/completions model=qwen: no answer within 30 s waiting for the response headers

Never: import anything of the project outside `envs/`; log or repeat an API key; buffer a reply past its cap;
keep a connection pool across event loops (`post_json` and `ChatClient.complete` open one per call: a model
call costs far more than a local connect; a caller on one loop may pass its own, `http_pool`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
import random
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx

__all__ = ["CallError", "HTTPCallError", "backoff_delay", "with_retries", "TokenBucket", "LRU", "shared_ssl_context",
           "http_pool", "post_once", "post_json", "ChatClient", "reply_text", "api_key_from_env", "MAX_REPLY_BYTES"]

MAX_REPLY_BYTES = 4 * 2**20  # a chat completion or a search result is KBs; a body past this is a fault
_ERROR_BODY_BYTES = 4096  # read of an error reply: enough to quote it
_rng = random.Random()
T = TypeVar("T")


# ------------------------------------------------------------------------------------------------- errors

class CallError(RuntimeError):
    """A failed call to a model or a service. `retryable`: asking again may help; `retry_after`: the server's
    hint in seconds; `attempts`: calls made (set by `with_retries`)."""

    def __init__(self, message: str, *, retryable: bool = False, retry_after: float | None = None,
                 attempts: int = 1):
        super().__init__(message)
        self.retryable, self.retry_after, self.attempts = retryable, retry_after, attempts


class HTTPCallError(CallError):
    """A failed HTTP call: "{service} {url} model={model}: {detail}". `status` is the last HTTP status (None:
    no answer: timeout, refused connection)."""

    def __init__(self, service: str, url: str, detail: str, status: int | None = None, retryable: bool = False,
                 attempts: int = 1, retry_after: float | None = None, model: str | None = None):
        where = f"{service} {url}" + (f" model={model}" if model else "")
        super().__init__(f"{where}: {detail}", retryable=retryable, retry_after=retry_after, attempts=attempts)
        self.service, self.url, self.model, self.detail, self.status = service, url, model, detail, status

    def gave_up(self) -> HTTPCallError:
        """This (retryable) error once the retries are spent."""
        return HTTPCallError(self.service, self.url, f"gave up after {self.attempts} attempts; last error: "
                             f"{self.detail}", self.status, True, self.attempts, model=self.model)


# ------------------------------------------------------------------------------------ retries, rate, cache

def backoff_delay(retry: int, backoff_s: float, backoff_max_s: float, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number `retry` (1, 2, ...): exponential with jitter, >= Retry-After."""
    delay = min(backoff_max_s, backoff_s * 2 ** (retry - 1)) * _rng.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, backoff_max_s))
    return delay


async def with_retries(attempt: Callable[[int], Awaitable[T]], *, max_retries: int, backoff_s: float,
                       backoff_max_s: float, on_retry: Callable[[int], None] | None = None) -> T:
    """`await attempt(1)`, `attempt(2)`, ... until one returns. A retryable `CallError` is retried (at most
    `max_retries` times, after `backoff_delay`; `on_retry(k)` is told before retry k waits); anything else, or
    the last error once the retries are spent, propagates with its `attempts` set."""
    for n in range(1, max_retries + 2):
        try:
            return await attempt(n)
        except CallError as exc:
            exc.attempts = n
            if not exc.retryable or n > max_retries:
                raise
            delay = backoff_delay(n, backoff_s, backoff_max_s, exc.retry_after)
        if on_retry is not None:
            on_retry(n)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


class TokenBucket:
    """At most `rate_per_s` acquisitions a second on average, `burst` at once (default max(1, rate)).

    A waiter takes a token only when one is there (it sleeps until then and looks again), so acquisitions keep
    their spacing even when a waiter wakes late, and one that is cancelled takes nothing; the order among
    waiters is not promised. Nothing in it belongs to an event loop: one bucket serves any loop, and no waiter
    can block the others. `acquire` returns the seconds waited."""

    def __init__(self, rate_per_s: float, burst: int | None = None):
        if not rate_per_s > 0 or (burst is not None and burst < 1):
            raise ValueError(f"TokenBucket: need rate_per_s > 0 (got {rate_per_s}) and burst None or >= 1 "
                             f"(got {burst})")
        self.rate = float(rate_per_s)
        self.capacity = float(burst if burst is not None else max(1.0, rate_per_s))
        self.tokens, self.stamp = self.capacity, time.monotonic()

    async def acquire(self) -> float:
        start = time.monotonic()
        while True:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return now - start
            await asyncio.sleep((1.0 - self.tokens) / self.rate)


class LRU:
    """A bounded mapping that forgets the least recently used key first; `max_size` 0 keeps nothing."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._data: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        """The value, or None (and the key becomes the most recent)."""
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        if self.max_size <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


# --------------------------------------------------------------------------------------------------- HTTP

def is_transient(status: int) -> bool:
    return status in (408, 429) or status >= 500


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The Retry-After header in seconds (None: absent, or an HTTP date, which the backoff replaces)."""
    try:
        seconds = float(headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one costs ~50 ms of CPU on the event loop, which would hold up
    every other call if each pool built its own (benchmarks/env_throughput.py)."""
    return ssl.create_default_context()


def http_pool(timeout_s: float, max_connections: int | None = None) -> httpx.AsyncClient:
    """A connection pool for one event loop: every phase cut after `timeout_s`, no redirects, the process's
    one TLS context."""
    limits = (httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
              if max_connections else httpx.Limits())
    return httpx.AsyncClient(timeout=timeout_s, limits=limits, follow_redirects=False, verify=shared_ssl_context())


class _TooLarge(Exception):
    pass


async def _read_body(response: httpx.Response, cap: int, *, truncate: bool = False) -> bytes:
    """The decoded body, read no further than `cap` bytes: past it, the first `cap` bytes (`truncate`) or
    `_TooLarge` (a Content-Length over the cap is refused before any read)."""
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > cap:
        raise _TooLarge(f"the reply announces {int(declared):,} bytes (Content-Length); not read")
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            if truncate:
                break
            raise _TooLarge(f"stopped reading after {size:,} bytes")
    return b"".join(chunks)[:cap]


def _awaited(exc: BaseException, phase: str) -> str:
    if isinstance(exc, httpx.PoolTimeout):
        return "a free connection of the pool"
    if isinstance(exc, httpx.ConnectTimeout):
        return "a connection"
    if isinstance(exc, httpx.WriteTimeout):
        return "the request to be sent"
    return phase


async def post_once(http: httpx.AsyncClient, url: str, payload: Any, *, service: str, timeout_s: float,
                    model: str | None = None, headers: Mapping[str, str] | None = None,
                    max_reply_bytes: int = MAX_REPLY_BYTES) -> Any:
    """One POST of `payload` as JSON on the pool `http` -> the decoded JSON reply, or `HTTPCallError` (naming
    `service`, `url`, `model` and, on a timeout, what was awaited), retryable as the module docstring says."""

    def fail(detail: str, status: int | None = None, retryable: bool = False, retry_after: float | None = None):
        return HTTPCallError(service, url, detail, status, retryable, retry_after=retry_after, model=model)

    phase = "the response headers"
    try:
        async with asyncio.timeout(timeout_s):
            async with http.stream("POST", url, json=payload, headers=dict(headers or {})) as response:
                status, phase = response.status_code, "the response body"
                if status >= 400:
                    text = (await _read_body(response, _ERROR_BODY_BYTES, truncate=True)).decode(errors="replace")
                    if is_transient(status):
                        raise fail(f"HTTP {status}: {text[:300]!r}", status, True, retry_after_s(response.headers))
                    raise fail(f"HTTP {status} (not retried: a bad key, model name or request fails again): "
                               f"{text[:300]!r}", status)
                try:
                    body = await _read_body(response, max_reply_bytes)
                except _TooLarge as exc:
                    raise fail(f"reply over the cap of {max_reply_bytes:,} bytes (max_reply_bytes): {exc}",
                               status) from None
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise fail(f"no answer within {timeout_s:g} s waiting for {_awaited(exc, phase)}", retryable=True) from None
    except httpx.TransportError as exc:
        raise fail(f"{type(exc).__name__}: {exc}", retryable=True) from None
    try:
        return json.loads(body)
    except ValueError:
        raise fail(f"HTTP {status} with a body that is not JSON: {body[:200]!r}", status, True) from None


async def post_json(url: str, payload: Any, *, service: str, headers: Mapping[str, str] | None = None,
                    timeout_s: float = 30.0, max_retries: int = 3, backoff_s: float = 0.5,
                    backoff_max_s: float = 10.0, max_reply_bytes: int = MAX_REPLY_BYTES,
                    model: str | None = None) -> Any:
    """`post_once` on a pool of its own, retried by `with_retries`; the decoded JSON answer or `HTTPCallError`."""
    async with http_pool(timeout_s) as http:
        try:
            return await with_retries(
                lambda _: post_once(http, url, payload, service=service, timeout_s=timeout_s, model=model,
                                    headers=headers, max_reply_bytes=max_reply_bytes),
                max_retries=max_retries, backoff_s=backoff_s, backoff_max_s=backoff_max_s)
        except HTTPCallError as exc:
            raise (exc.gave_up() if exc.retryable else exc) from None


def reply_text(data: Any) -> str:
    """`choices[0].message.content` of a chat-completions body: a list of content parts is joined, a null
    content (everything went to a reasoning field) is ''. Raises KeyError/IndexError/TypeError if malformed."""
    content = data["choices"][0]["message"]["content"]
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise TypeError(f"message.content is {type(content).__name__}, not text")
    return content


def api_key_from_env(name: str | None, what: str) -> str | None:
    """The value of environment variable `name` (None when no name is given); a named but unset or empty
    variable is a ValueError that says so (and never prints a value)."""
    if not name:
        return None
    value = os.environ.get(name, "")
    if not value:
        raise ValueError(f"{what}: environment variable {name!r} (api_key_env) is not set; export it, or set "
                         f"api_key_env to null for an endpoint without a key (a local vLLM server)")
    return value


# ------------------------------------------------------------------------------------------- chat client

class ChatClient:
    """An OpenAI-compatible chat-completions client. `base_url` is the API root ("http://127.0.0.1:8000/v1");
    requests go to {base_url}/chat/completions with `model`, the messages, `temperature`, `max_tokens` (when
    given) and `extra_body` (e.g. {"chat_template_kwargs": {"enable_thinking": False}} for Qwen3 on vLLM).

    `complete` is retried, rate-limited (`rate_limit` requests/s, `burst`; None: no limit) and cached (an LRU of
    `cache_size` replies keyed by the request body; 0: off); `complete_once` is one request on a caller's pool
    (the judge retries and caches verdicts itself). `service` names the user in errors ("judge", "visit summary")."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 3, backoff_s: float = 0.5, backoff_max_s: float = 10.0,
                 temperature: float = 0.7, max_tokens: int | None = None,
                 extra_body: Mapping[str, Any] | None = None, max_reply_bytes: int = MAX_REPLY_BYTES,
                 rate_limit: float | None = None, burst: int | None = None, cache_size: int = 0,
                 service: str = "chat"):
        checks = {
            "base_url": (isinstance(base_url, str) and base_url.startswith(("http://", "https://")),
                         "an http(s) URL such as 'http://127.0.0.1:8000/v1'"),
            "model": (isinstance(model, str) and bool(model), "the served model name"),
            "timeout_s": (timeout_s > 0, "> 0 seconds"),
            "max_retries": (max_retries >= 0, ">= 0"),
            "backoff_s": (0 <= backoff_s <= backoff_max_s, "in [0, backoff_max_s]"),
            "max_tokens": (max_tokens is None or max_tokens >= 1, "None or >= 1"),
            "max_reply_bytes": (max_reply_bytes >= 1, ">= 1"),
            "rate_limit": (rate_limit is None or rate_limit > 0, "None or > 0 requests per second"),
            "burst": (burst is None or burst >= 1, "None or >= 1"),
            "cache_size": (cache_size >= 0, ">= 0"),
        }
        bad = [f"{name} must be {need}" for name, (ok, need) in checks.items() if not ok]
        reserved = sorted({"model", "messages"} & set(extra_body or {}))
        if reserved:
            bad.append(f"extra_body may not set {reserved}; they are built per request")
        if bad:
            raise ValueError(f"{service} client: " + "; ".join(bad))
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.service = model, service
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.temperature, self.max_tokens = temperature, max_tokens
        self.extra_body = dict(extra_body or {})
        self.max_reply_bytes = max_reply_bytes
        self.bucket = TokenBucket(rate_limit, burst) if rate_limit else None
        self.cache = LRU(cache_size)
        self.requests = 0

    def __repr__(self) -> str:  # no key in reprs and logs
        return f"ChatClient({self.url!r}, model={self.model!r})"

    def request_body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body | self.extra_body

    async def complete_once(self, messages: list[dict[str, Any]], http: httpx.AsyncClient) -> str:
        """One request on the pool `http` (after a rate-limit token) -> the reply text, or `HTTPCallError`; a
        body that is not a chat completion is retryable, as a body that is not JSON."""
        if self.bucket is not None:
            await self.bucket.acquire()
        self.requests += 1
        data = await post_once(http, self.url, self.request_body(messages), service=self.service,
                               timeout_s=self.timeout_s, model=self.model, headers=self._headers,
                               max_reply_bytes=self.max_reply_bytes)
        try:
            return reply_text(data)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise HTTPCallError(self.service, self.url, f"malformed chat-completions body ({type(exc).__name__}: "
                                f"{exc}): {str(data)[:200]!r}", 200, True, model=self.model) from None

    async def complete(self, messages: list[dict[str, Any]]) -> str:
        """The assistant's reply text (from the cache when on); `HTTPCallError` when the endpoint fails for good."""
        key = None
        if self.cache.max_size:
            canonical = json.dumps(self.request_body(messages), sort_keys=True, ensure_ascii=False)
            key = hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        async with http_pool(self.timeout_s) as http:
            try:
                reply = await with_retries(lambda _: self.complete_once(messages, http), max_retries=self.max_retries,
                                           backoff_s=self.backoff_s, backoff_max_s=self.backoff_max_s)
            except HTTPCallError as exc:
                raise (exc.gave_up() if exc.retryable else exc) from None
        if key is not None:
            self.cache.put(key, reply)
        return reply
