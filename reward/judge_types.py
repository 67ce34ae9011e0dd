"""What a judge is asked and what it answers: the types every judge shares, and the `Judge` protocol.

Owns: `JudgeItem` (one judgement asked for), `JudgeResult` (one given), `Judge` (what a reward function needs of
a judge: `JudgeClient`, `EngineJudge` and `RuleJudge` all are one), `JudgeTransient` / `JudgePermanent` (how a
judge transport says that one request failed, worth retrying or not) and the reading of an item's gold
answers (`golds`).

Must never: call a model, hold state, or import anything of the project but `envs.llm.CallError` (the one
error type the shared retry policy reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from envs.llm import CallError

__all__ = ["JudgeItem", "JudgeResult", "Judge", "JudgeTransient", "JudgePermanent", "golds", "no_answer"]


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
    """What a reward function needs of a judge."""

    async def judge_batch(self, items: Sequence[JudgeItem]) -> list[JudgeResult]: ...

    def metrics(self) -> dict[str, float]: ...

    def reset_metrics(self) -> None: ...

    def clear_cache(self) -> None: ...

    async def aclose(self) -> None: ...


class JudgeTransient(CallError):
    """A failed request worth retrying (timeout, engine abort, an unreadable verdict). A transport raises it (or
    another retryable `envs.llm.CallError`, such as the HTTP client's) from `_complete`; `retry_after` (seconds)
    is the server's hint, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message, retryable=True, retry_after=retry_after)


class JudgePermanent(CallError):
    """A failed request that would fail again (bad model name, bad key, a prompt the server refuses)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=False)


def golds(gold: str | Sequence[str]) -> list[str]:
    """An item's gold answers as a list; TypeError for anything but a str or a non-empty sequence of str."""
    answers = [gold] if isinstance(gold, str) else list(gold)
    if not answers or not all(isinstance(g, str) for g in answers):
        raise TypeError(f"JudgeItem.gold must be a str or a non-empty sequence of str, got {gold!r}")
    return answers


def no_answer(prediction: str | None) -> bool:
    return prediction is None or not prediction.strip()
