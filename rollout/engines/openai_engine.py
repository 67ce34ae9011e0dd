"""OpenAI-compatible completions endpoint as an engine of the protocol (`base.Engine`): a policy served elsewhere
(`vllm serve`, SGLang, any server of /v1/completions that takes prompt token ids) driven token-in/token-out.

Owns: the request body of one `generate` (POST {base_url}/completions with the prompt as token ids, the sampling
parameters, `logprobs: 0` for the sampled token's logprob, `return_token_ids` / `return_tokens_as_token_ids` so
that the reply names the sampled ids, not text to re-tokenize) and the reading of its reply. The call goes through
the project's one HTTP client (`envs/llm.py` post_json: timeout, retries with backoff, reply cap, errors that
name the engine, the URL and the model).

Logprobs: vLLM serves the logprobs of its `--logprobs-mode` (default raw_logprobs: before temperature); the project's
own vLLM engine asks for processed_logprobs. For evaluation this does not matter; a trainer reading an endpoint's
logprobs should serve with `--logprobs-mode processed_logprobs`.

Never: tokenize or detokenize (the agent loop keeps the ids); load weights (an endpoint's model is its own:
`update_weights` is an error that says so); send images (a VL policy runs on the vllm or hf backend).
"""

from __future__ import annotations

import re
from typing import Iterable

from envs.llm import HTTPCallError, api_key_from_env, post_json

from .base import Generation, SamplingParams

_TOKEN_ID = re.compile(r"^token_id:(-?\d+)$")
_FINISH = {"stop": "stop", "length": "length", "abort": "abort", "eos": "stop"}


class OpenAIEngine:
    def __init__(self, model_path: str, *, base_url: str, model: str, api_key_env: str | None = None,
                 seed: int = 0, request_timeout_s: float = 600.0, max_retries: int = 3, backoff_s: float = 0.5,
                 cpu_threads: int = 0, sleep_mode: bool = False, extra_body: dict | None = None):
        """model_path: the local folder of the served model's tokenizer (the agent loop builds prompts with it);
        base_url: the API root, e.g. http://127.0.0.1:8000/v1; model: the served model name. cpu_threads and
        sleep_mode are placement options of local engines: an endpoint has none (accepted, unused)."""
        if not (isinstance(base_url, str) and base_url.startswith(("http://", "https://"))):
            raise ValueError(f"engine 'openai': base_url {base_url!r} must be an http(s) URL such as "
                             "'http://127.0.0.1:8000/v1' (rollout.openai.base_url)")
        if not (isinstance(model, str) and model):
            raise ValueError("engine 'openai': model must be the served model name (rollout.openai.model)")
        reserved = sorted({"model", "prompt", "max_tokens", "logprobs"} & set(extra_body or {}))
        if reserved:
            raise ValueError(f"engine 'openai': extra_body may not set {reserved}; they are built per request")
        self.url = base_url.rstrip("/") + "/completions"
        self.model, self.model_path, self.seed = model, model_path, seed
        self._headers = {}
        key = api_key_from_env(api_key_env, "engine 'openai'")
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self.timeout_s, self.max_retries, self.backoff_s = request_timeout_s, max_retries, backoff_s
        self.extra_body = dict(extra_body or {})
        self.policy_version = 0
        self.requests = 0

    def __repr__(self) -> str:
        return f"OpenAIEngine({self.url!r}, model={self.model!r})"

    def request_body(self, prompt_ids: list[int], sampling: SamplingParams) -> dict:
        body = {"model": self.model, "prompt": list(prompt_ids), "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "logprobs": 0, "n": 1,
                "return_token_ids": True, "return_tokens_as_token_ids": True, "skip_special_tokens": False,
                "include_stop_str_in_output": sampling.include_stop_str, "ignore_eos": sampling.ignore_eos}
        if sampling.top_k > 0:
            body["top_k"] = sampling.top_k
        if sampling.seed is not None:
            body["seed"] = int(sampling.seed) & ((1 << 63) - 1)
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.stop_token_ids:
            body["stop_token_ids"] = list(sampling.stop_token_ids)
        return body | self.extra_body

    def read_reply(self, data) -> Generation:
        """A completions body -> Generation; anything malformed is an HTTPCallError naming what is wrong."""
        def bad(what: str) -> HTTPCallError:
            return HTTPCallError("engine 'openai'", self.url, f"malformed completions reply: {what}: "
                                 f"{str(data)[:200]!r}", 200, model=self.model)

        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise bad("no choices[0]") from None
        logprobs = choice.get("logprobs") or {}
        values = logprobs.get("token_logprobs")
        ids = choice.get("token_ids")
        if ids is None:  # older servers: the ids only inside the logprobs' token strings
            tokens = logprobs.get("tokens") or []
            matches = [_TOKEN_ID.match(t) if isinstance(t, str) else None for t in tokens]
            if not all(matches):
                raise bad("no token_ids, and logprobs.tokens are not 'token_id:N' strings "
                          "(return_tokens_as_token_ids unsupported?)")
            ids = [int(m.group(1)) for m in matches]
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise bad("token_ids is not a list of integers")
        if not isinstance(values, list) or len(values) != len(ids):
            raise bad(f"{len(ids)} token ids but logprobs.token_logprobs is "
                      f"{'a list of ' + str(len(values)) if isinstance(values, list) else type(values).__name__}")
        finish = _FINISH.get(choice.get("finish_reason"))
        if finish is None:
            raise bad(f"finish_reason {choice.get('finish_reason')!r}")
        return Generation(ids, [float("nan") if v is None else float(v) for v in values], finish,
                          policy_version=self.policy_version)

    async def generate(self, prompt_ids: list[int], sampling: SamplingParams, request_id: str | None = None,
                       images: list | None = None) -> Generation:
        if images:
            raise ValueError("engine 'openai' sends token ids only; a vision-language policy runs on rollout.backend "
                             "vllm or hf")
        self.requests += 1
        data = await post_json(self.url, self.request_body(prompt_ids, sampling), service="engine 'openai'",
                               headers=self._headers, timeout_s=self.timeout_s, max_retries=self.max_retries,
                               backoff_s=self.backoff_s, model=self.model)
        return self.read_reply(data)

    async def update_weights(self, buckets: Iterable[bytes], version: int) -> None:
        raise RuntimeError(f"engine 'openai' ({self.url}, model {self.model}) serves the endpoint's own weights; "
                           "it cannot be trained or synced (evaluate with it, train with rollout.backend vllm or hf)")

    async def sleep(self) -> None:
        return None

    async def wake(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None


SETTINGS = ("base_url", "model", "api_key_env", "max_retries", "backoff_s", "extra_body")


def check_settings(settings: dict) -> None:
    """rollout.openai, checked before anything starts: known keys, base_url and model given (no request made)."""
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; allowed: {list(SETTINGS)}")
    missing = [k for k in ("base_url", "model") if not settings.get(k)]
    if missing:
        raise ValueError(f"missing {missing} (e.g. base_url: http://127.0.0.1:8000/v1, model: the served name)")
    OpenAIEngine("unused", **{k: v for k, v in settings.items() if k != "api_key_env"})
