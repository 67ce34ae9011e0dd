"""LLM-as-judge in the reward path, the front door: a judge from configuration, and a judge for synchronous callers.

Owns: `make_judge` (configuration -> a judge of one of `JUDGE_BACKENDS`) and `SyncJudge` (a judge on an event loop
of its own, for synchronous callers such as the RewardWorker). The parts, one idea a module, are named here so
that callers import the judge from one place:
    reward/judge_types.py   JudgeItem, JudgeResult, the Judge protocol, JudgeTransient / JudgePermanent
    reward/judge_batch.py   BatchedJudge: cache, de-duplication, concurrency, rate limit, retries, deadline,
                            fallback, metrics around one request; cache_key
    reward/judge_http.py    JudgeClient: the request to an OpenAI-compatible endpoint (through envs/llm.py)
    reward/engine_judge.py  EngineJudge: the request to the project's own engine
    reward/judge_rule.py    RuleJudge: exact match / F1, offline
    reward/prompts.py       the prompts of the papers and the parsers of their verdicts
SEEDS 13 item 5 and 14 item 22.

Must never: judge anything itself, import Ray, or import the engines but lazily in `make_judge` (so that
`import reward` never loads torch or vLLM).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from reward.judge_batch import BatchedJudge, cache_key
from reward.judge_http import JudgeClient
from reward.judge_rule import RuleJudge
from reward.judge_types import Judge, JudgeItem, JudgePermanent, JudgeResult, JudgeTransient

__all__ = ["JudgeItem", "JudgeResult", "Judge", "BatchedJudge", "JudgeTransient", "JudgePermanent", "JudgeClient",
           "RuleJudge", "JUDGE_BACKENDS", "make_judge", "SyncJudge", "cache_key"]

JUDGE_BACKENDS = ("rule", "openai", "engine")
BUILD_TIMEOUT_S = 900.0  # a judge's construction at most (an engine judge loads its model)


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
                try:
                    self._judge = asyncio.run_coroutine_threadsafe(build(), loop).result(BUILD_TIMEOUT_S)
                except concurrent.futures.TimeoutError:
                    raise TimeoutError(f"the judge ({self.config.get('backend', 'rule')}) was not built within "
                                       f"{BUILD_TIMEOUT_S:.0f} s (its engine loading or its endpoint's check)") from None
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
