"""HTTP JSON calls with retries, and the OpenAI-compatible chat client the tools use (the visit summary).

Owns: `post_json` (one JSON POST, retried on transient failures, with a deadline per attempt), `HTTPCallError`
(what a failed call says: which service, which URL, which status, whether retrying could help) and
`ChatClient` (`POST {base_url}/chat/completions` of any OpenAI-compatible server: vLLM's `vllm serve`,
SGLang, DashScope, OpenAI).

Retries (the same rule as the judge client of `reward/`, which `envs/` may not import): a timeout, a
connection error, HTTP 408, 429 or 5xx, or a body that is not JSON is retried up to `max_retries` times after
    delay_k = U(0.5, 1) * min(backoff_max_s, backoff_s * 2^(k-1))        (k = 1, 2, ... the retry number)
and at least the server's Retry-After (capped at backoff_max_s). Any other 4xx is not retried: a bad key or
a bad model name does not get better by asking again (and vLLM answers 400 for a prompt longer than the
model's context: the visit summary reacts to that by shortening the page, see `envs/tools/summary.py`).

Never: import anything of the project outside `envs/`; log or repeat an API key; keep a connection pool
across event loops (each call opens its own `httpx.AsyncClient`: a model call costs far more than a local
connect, and a tool object may be used from several loops).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections.abc import Mapping
from typing import Any

import httpx

__all__ = ["HTTPCallError", "post_json", "ChatClient", "reply_text", "api_key_from_env"]

_rng = random.Random()


class HTTPCallError(RuntimeError):
    """A call that failed for good. `status` is the last HTTP status (None: no answer: timeout, refused
    connection); `retryable` says whether the failure was transient (it was retried and still failed)."""

    def __init__(self, service: str, url: str, detail: str, status: int | None = None, retryable: bool = False,
                 attempts: int = 1, retry_after: float | None = None):
        super().__init__(f"{service} ({url}): {detail}")
        self.service, self.url, self.detail, self.status = service, url, detail, status
        self.retryable, self.attempts, self.retry_after = retryable, attempts, retry_after


def backoff_delay(retry: int, backoff_s: float, backoff_max_s: float, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number `retry` (1, 2, ...): exponential with jitter, >= Retry-After."""
    delay = min(backoff_max_s, backoff_s * 2 ** (retry - 1)) * _rng.uniform(0.5, 1.0)
    if retry_after is not None:
        delay = max(delay, min(retry_after, backoff_max_s))
    return delay


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:  # absent, or an HTTP date: the backoff applies
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _is_transient(status: int) -> bool:
    return status in (408, 429) or status >= 500


async def post_json(url: str, payload: Any, *, service: str, headers: Mapping[str, str] | None = None,
                    timeout_s: float = 30.0, max_retries: int = 3, backoff_s: float = 0.5,
                    backoff_max_s: float = 10.0) -> Any:
    """POST `payload` as JSON, return the decoded JSON answer, or raise `HTTPCallError` naming `service`.

    Each attempt is cut after `timeout_s`; transient failures are retried (module docstring)."""
    error: HTTPCallError | None = None
    from envs.tools.visit import shared_ssl_context

    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, verify=shared_ssl_context()) as client:
        for attempt in range(1, max_retries + 2):
            if error is not None:
                await asyncio.sleep(backoff_delay(attempt - 1, backoff_s, backoff_max_s, error.retry_after))
            try:
                async with asyncio.timeout(timeout_s):
                    response = await client.post(url, json=payload, headers=dict(headers or {}))
            except (TimeoutError, httpx.TimeoutException):
                error = HTTPCallError(service, url, f"no answer within {timeout_s:g} s", None, True, attempt)
                continue
            except httpx.TransportError as exc:
                error = HTTPCallError(service, url, f"{type(exc).__name__}: {exc}", None, True, attempt)
                continue
            status = response.status_code
            if status >= 400:
                text = response.text[:300]
                if _is_transient(status):
                    error = HTTPCallError(service, url, f"HTTP {status}: {text!r}", status, True, attempt,
                                          _retry_after(response))
                    continue
                raise HTTPCallError(service, url, f"HTTP {status} (not retried): {text!r}", status, False, attempt)
            try:
                return response.json()
            except ValueError:
                error = HTTPCallError(service, url, f"HTTP {status} with a body that is not JSON: "
                                      f"{response.text[:200]!r}", status, True, attempt)
    assert error is not None
    raise HTTPCallError(service, url, f"gave up after {error.attempts} attempts; last error: {error.detail}",
                        error.status, True, error.attempts)


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


class ChatClient:
    """An OpenAI-compatible chat-completions client. `base_url` is the API root ("http://127.0.0.1:8000/v1");
    requests go to {base_url}/chat/completions with `model`, the messages, `temperature`, `max_tokens` (when
    given) and `extra_body` (e.g. {"chat_template_kwargs": {"enable_thinking": False}} for Qwen3 on vLLM)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 3, backoff_s: float = 0.5, backoff_max_s: float = 10.0,
                 temperature: float = 0.7, max_tokens: int | None = None,
                 extra_body: Mapping[str, Any] | None = None):
        checks = {
            "base_url": (isinstance(base_url, str) and base_url.startswith(("http://", "https://")),
                         "an http(s) URL such as 'http://127.0.0.1:8000/v1'"),
            "model": (isinstance(model, str) and bool(model), "the served model name"),
            "timeout_s": (timeout_s > 0, "> 0 seconds"),
            "max_retries": (max_retries >= 0, ">= 0"),
            "backoff_s": (0 <= backoff_s <= backoff_max_s, "in [0, backoff_max_s]"),
            "max_tokens": (max_tokens is None or max_tokens >= 1, "None or >= 1"),
        }
        bad = [f"{name} must be {need}" for name, (ok, need) in checks.items() if not ok]
        reserved = sorted({"model", "messages"} & set(extra_body or {}))
        if reserved:
            bad.append(f"extra_body may not set {reserved}")
        if bad:
            raise ValueError("ChatClient: " + "; ".join(bad))
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.temperature, self.max_tokens = temperature, max_tokens
        self.extra_body = dict(extra_body or {})
        self.requests = 0

    def __repr__(self) -> str:  # no key in reprs and logs
        return f"ChatClient({self.url!r}, model={self.model!r})"

    async def complete(self, messages: list[dict[str, Any]]) -> str:
        """The assistant's reply text. Raises `HTTPCallError` when the endpoint fails for good (a malformed
        body counts as transient and is retried)."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(self.extra_body)
        self.requests += 1
        data = await post_json(self.url, body, service=f"chat model {self.model!r}", headers=self._headers,
                               timeout_s=self.timeout_s, max_retries=self.max_retries, backoff_s=self.backoff_s,
                               backoff_max_s=self.backoff_max_s)
        try:
            return reply_text(data)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise HTTPCallError(f"chat model {self.model!r}", self.url,
                                f"malformed chat-completions body ({type(exc).__name__}: {exc}): "
                                f"{str(data)[:200]!r}", 200, False) from None
