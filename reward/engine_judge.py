"""The LLM judge served inside the RewardGroup on the project's own inference engine.

Owns: `EngineJudge`, the `BatchedJudge` transport that renders a judge request with the judge tokenizer's chat
template, sends the token ids to an engine (`rollout.engines`: vLLM or HF) at temperature 0 and decodes the
reply; and `start_engine_judge`, which starts that engine from configuration. Cache, de-duplication,
concurrency, timeouts, retries, fallback and metrics are `reward.judge_batch.BatchedJudge`'s, exactly as for an
OpenAI-compatible endpoint.

Every distinct item of a batch is one concurrent `engine.generate` call (`max_concurrency` defaults to 1024):
the engine's continuous batching does the batching, as vLLM's OpenAI server would, without an HTTP hop.

Deviation from DESIGN section 1 (`reward/` may import only the trajectory schema): this module imports
`rollout.engines`, and only here, lazily inside functions, so that `import reward` never loads torch or vLLM.
The alternative, an HTTP server around the same engine, would cost a process and a hop per request and add
nothing; the Engine protocol is the narrower contract.

Must never: tokenize with special-token parsing on judged text it did not template (the question, prediction and
gold are message contents; the chat template places them), import Ray, or raise for one failed request.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from reward.judge_batch import BatchedJudge, LoopState
from reward.judge_types import JudgePermanent, JudgeTransient

__all__ = ["EngineJudge", "start_engine_judge"]


class EngineJudge(BatchedJudge):
    """Batched LLM-as-judge on an engine object (anything with `async generate(prompt_ids, SamplingParams,
    request_id) -> Generation`, see `rollout.engines.base.Engine`) and the judge model's tokenizer.

    Each request: `tokenizer.apply_chat_template(messages, add_generation_prompt=True, **chat_template_kwargs)`
    -> ids -> greedy generation of at most `max_tokens` -> `tokenizer.decode(ids, skip_special_tokens=True)`.
    `chat_template_kwargs` defaults to {"enable_thinking": False} (a Qwen3 judge answers without a reasoning
    block; templates that do not know the flag ignore it). `owns_engine`: `aclose` shuts the engine down.
    The engine must live on the event loop that calls `judge_batch` (use `reward.judge.SyncJudge`).
    """

    def __init__(self, engine: Any, tokenizer: Any, *, max_tokens: int = 64,
                 chat_template_kwargs: Mapping[str, Any] | None = None, owns_engine: bool = False,
                 max_concurrency: int = 1024, **settings: Any):
        super().__init__(max_concurrency=max_concurrency, **settings, _checks={
            "max_tokens": (max_tokens >= 1, ">= 1"),
            "tokenizer": (getattr(tokenizer, "chat_template", None) is not None,
                          "a tokenizer with a chat template (set tokenizer.chat_template)"),
        })
        from rollout.engines import SamplingParams  # the one import of the engines from reward/ (see above)

        self.engine = engine
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.chat_template_kwargs = dict({"enable_thinking": False} if chat_template_kwargs is None
                                         else chat_template_kwargs)
        self.owns_engine = owns_engine
        self.sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        self._ids = itertools.count()

    def describe(self) -> str:
        return f"judge engine {type(self.engine).__name__} model={getattr(self.tokenizer, 'name_or_path', '?')}"

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  **self.chat_template_kwargs)
        return self.tokenizer.encode(text, add_special_tokens=False)

    async def _complete(self, state: LoopState, messages: list[dict[str, str]]) -> str:
        try:
            prompt_ids = self.prompt_ids(messages)
        except Exception as exc:  # a template that cannot render these messages fails the same way every time
            raise JudgePermanent(f"judge chat template failed: {type(exc).__name__}: {exc}") from None
        try:
            gen = await self.engine.generate(prompt_ids, self.sampling, request_id=f"judge-{next(self._ids)}")
        except TimeoutError as exc:  # the engine's own request timeout
            raise JudgeTransient(f"engine timeout: {exc}") from None
        except ValueError as exc:  # vLLM refuses a prompt longer than max_model_len: it would refuse it again
            raise JudgePermanent(f"the judge engine refused the request ({len(prompt_ids)} prompt tokens): "
                                 f"{exc}") from None
        if gen.finish_reason == "abort":
            raise JudgeTransient("the judge engine aborted the request")
        return self.tokenizer.decode(gen.token_ids, skip_special_tokens=True)

    async def aclose(self) -> None:
        await super().aclose()
        if self.owns_engine and self.engine is not None:
            engine, self.engine = self.engine, None
            await engine.shutdown()


def start_engine_judge(model_path: str, *, engine: str = "vllm", engine_kwargs: Mapping[str, Any] | None = None,
                       tokenizer_path: str | None = None, **settings: Any) -> EngineJudge:
    """Start `rollout.engines.make_engine(engine, model_path, **engine_kwargs)` and the judge on it (it owns the
    engine). Call it on the event loop the judge will serve. `tokenizer_path` defaults to `model_path`.
    A vLLM judge on CPU wants e.g. engine_kwargs={"max_model_len": 4096, "kv_cache_gib": 2,
    "gpu_memory_utilization": 0.3, "enforce_eager": True} (shared/ASSETS.md)."""
    from transformers import AutoTokenizer

    from rollout.engines import make_engine  # the one import of the engines from reward/ (module docstring)

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or model_path))
    judge = EngineJudge(None, tokenizer, owns_engine=True, **settings)  # settings checked before the engine starts
    judge.engine = make_engine(engine, str(model_path), **dict(engine_kwargs or {}))
    return judge
