"""The LLM judge behind an OpenAI-compatible endpoint: `JudgeClient`.

Owns: the `BatchedJudge` transport that sends one judge request to `POST {base_url}/chat/completions` of any
OpenAI-compatible server (vLLM, SGLang, DashScope, OpenAI) through the project's one HTTP client,
`envs.llm.ChatClient` (reply streamed and capped at `max_reply_bytes`, errors naming the URL, the model and what
was awaited), on a connection pool per event loop.

Must never: retry, rate-limit or cache by itself (`BatchedJudge` does, with `envs.llm`'s shared policy), speak
HTTP other than through `envs.llm`, or import anything of the project but `envs.llm` and the judge modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from envs.llm import MAX_REPLY_BYTES, ChatClient, http_pool
from reward.judge_batch import BatchedJudge, LoopState

__all__ = ["JudgeClient"]


class JudgeClient(BatchedJudge):
    """Batched LLM-as-judge over an OpenAI-compatible chat-completions endpoint (`reward/judge_batch.py`).

    base_url: up to and including the API root, e.g. "http://127.0.0.1:8000/v1" (requests go to
    {base_url}/chat/completions). model: the served model name. Every request sends temperature 0 and
    `max_tokens`; `extra_body` is merged into it (e.g. {"chat_template_kwargs": {"enable_thinking": False}}
    for a Qwen3 judge on vLLM). `max_reply_bytes` caps a reply (4 MiB). The other settings are `BatchedJudge`'s.
    """

    cuts_own_timeout = True  # the HTTP client cuts a request at timeout_s and names the phase it waited in

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, max_tokens: int = 1024,
                 extra_body: Mapping[str, Any] | None = None, max_reply_bytes: int = MAX_REPLY_BYTES,
                 **settings: Any):
        super().__init__(**settings)
        self.chat = ChatClient(base_url, model, api_key=api_key, timeout_s=self.timeout_s, temperature=0.0,
                               max_tokens=max_tokens, extra_body=extra_body, max_reply_bytes=max_reply_bytes,
                               service="judge")
        self.url, self.model = self.chat.url, model

    def __repr__(self) -> str:  # no key in reprs and logs
        return f"JudgeClient({self.url!r}, model={self.model!r})"

    def describe(self) -> str:
        return f"judge {self.url} model={self.model}"

    def _open(self) -> httpx.AsyncClient:
        return http_pool(self.timeout_s, max_connections=self.max_concurrency)

    async def _close(self, resources: httpx.AsyncClient) -> None:
        await resources.aclose()

    async def _complete(self, state: LoopState, messages: list[dict[str, str]]) -> str:
        return await self.chat.complete_once(messages, state.resources)
