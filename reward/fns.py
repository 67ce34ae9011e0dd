"""The registered reward functions: the formulas of `rules.py`, `formats.py`, `retrieval.py` and the judges, read
off trajectory columns, so that a paper's reward is configuration of `reward.worker.RewardWorker`:

    WebSailor (SEEDS 3.5)   rewards={"format": {"style": "websailor"}, "judge": {"kind": "gaia"}},
                            composition="websailor"
    VRAG-RL (4.3)           rewards={"format": {"style": "vrag"}, "judge": {"kind": "vrag"}, "ndcg": {}},
                            composition="vrag"            (the judge is not called where the pattern is 0)
    EvolveSearch (6.1)      rewards={"format": {"style": "evolvesearch"}, "judge": {}}, composition="evolvesearch"
    MaskSearch (7.3)        rewards={"format": {"style": "masksearch"}, "span_judge": {}}, composition="masksearch"
                            (or "token_recall": {"masked_spans": True, "length_penalty": True} for the answer)

Owns: one class per registered name (`reward.base.register_reward`), the columns each reads, and the parsing
of the task columns: `gold_answer` is one answer, or several acceptable ones as a JSON list of strings
(`parse_gold`); `answer_text` is the extracted final answer (None: the response has none, scores 0);
`response_text` is the whole response decoded with special tokens (observations included: the format checkers
strip them).

Must never: compute a formula itself (they live in rules / formats / retrieval / prompts), talk to a judge
other than through the `SyncJudge` the worker hands over, or import Ray.

Conventions. Every function takes `part=` (the name of the part it produces; defaults are the shared names
of `reward.compose`: "format", "answer", "ndcg"), so two answer metrics can be kept side by side, e.g.
rewards={"judge": {}, "f1": {"part": "f1"}}. Functions marked `gateable` (judge, span_judge, reward_model)
take `active`, a boolean row mask: rows outside it are not scored and hold NaN (the composition's gate zeroes
them). Functions marked `needs_judge` get the worker's judge as `judge=`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from reward.base import register_reward
from reward.formats import (evolvesearch_format, masksearch_format, strip_observations, vrag_pattern,
                            webwatcher_format, websailor_format)
from reward.judge import JudgeItem
from reward.prompts import JUDGES
from reward.retrieval import ndcg
from reward.rules import (anls, exact_match, f1_score, last_number, mask_spans, number_match, span_judge_fraction,
                          token_recall)

__all__ = ["parse_gold", "string_column", "active_mask", "MASKSEARCH_INSTRUCTION", "FORMAT_STYLES"]

# SEEDS 7.1: the instruction appended to a RAMP query after the masked paragraph.
MASKSEARCH_INSTRUCTION = "\n\nFill in all the [mask] and output the whole paragraph without changing its format."


def parse_gold(value: str | None, row: int = -1) -> str | list[str]:
    """The acceptable answers of `gold_answer`: a JSON list of strings (non-empty) becomes a list, any other
    string is one answer as it is ("[1, 2]", a list of numbers, stays the string "[1, 2]")."""
    if value is None:
        raise ValueError(f"gold_answer is null in row {row}: every task scored by an answer reward needs one")
    if value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list) and parsed and all(isinstance(g, str) for g in parsed):
            return parsed
    return value


def string_column(batch: pa.RecordBatch, column: str) -> list[str | None]:
    return batch.column(column).to_pylist()


def _golds(batch: pa.RecordBatch) -> list[str | list[str]]:
    return [parse_gold(v, i) for i, v in enumerate(string_column(batch, "gold_answer"))]


def active_mask(active: np.ndarray | None, n: int) -> np.ndarray:
    if active is None:
        return np.ones(n, dtype=bool)
    active = np.asarray(active, dtype=bool)
    if active.shape != (n,):
        raise ValueError(f"active mask has shape {active.shape} for {n} rows")
    return active


# ------------------------------------------------------------------------------------------- rule answers

class _AnswerMetric:
    """A rule metric of `reward.rules` on (answer_text, gold_answer), max over acceptable golds."""

    columns = ("answer_text", "gold_answer")
    metric: Callable[..., float]

    def __init__(self, part: str = "answer", **options: Any):
        self.part = part
        self.parts = (part,)
        self.options = options
        type(self).metric(None, "x", **options)  # a wrong option fails here, not in the middle of a step

    @classmethod
    def options_of(cls, kwargs: dict) -> tuple[Callable[..., Any], dict, tuple[str, ...]]:
        """The metric the options go to, those options and the metric's own data arguments (RewardWorker checks
        the options' types at load)."""
        return cls.metric, {k: v for k, v in kwargs.items() if k != "part"}, ("pred", "gold")

    def predictions(self, batch: pa.RecordBatch) -> list[str | None]:
        return string_column(batch, "answer_text")

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        fn = type(self).metric
        values = [fn(pred, gold, **self.options) for pred, gold in zip(self.predictions(batch), _golds(batch))]
        return {self.part: np.asarray(values, dtype=np.float64)}


@register_reward("exact_match")
class ExactMatch(_AnswerMetric):
    """SQuAD-normalised exact match, 1/0 (`reward.rules.exact_match`)."""

    metric = staticmethod(exact_match)


@register_reward("f1")
class F1(_AnswerMetric):
    """SQuAD token F1 (`reward.rules.f1_score`)."""

    metric = staticmethod(f1_score)


@register_reward("anls")
class ANLS(_AnswerMetric):
    """ANLS with `threshold` (VRAG uses 0.5; `reward.rules.anls`): an eval / alternative metric (SEEDS 14 #26)."""

    metric = staticmethod(anls)

    def __init__(self, part: str = "answer", threshold: float = 0.5):
        super().__init__(part, threshold=threshold)


@register_reward("number")
class NumberMatch(_AnswerMetric):
    """1/0: the answer is the gold number (`reward.rules.number_match`), for verifiable numeric tasks.

    method="strict": the answer is what `<answer></answer>` holds (`answer_text`); none scores 0.
    method="flexible": where the response has no answer tag, the last number of the model's own text
    (`response_text`, observations stripped) is its answer: verl's GSM8K "flexible" extraction, for a pretrained
    model that answers in prose before it has learnt the tags."""

    metric = staticmethod(number_match)

    def __init__(self, part: str = "answer", method: str = "strict"):
        if method not in ("strict", "flexible"):
            raise ValueError(f"number: unknown method {method!r}; allowed: 'strict', 'flexible'")
        super().__init__(part)
        self.method = method
        if method == "flexible":
            self.columns = (*self.columns, "response_text")

    def predictions(self, batch: pa.RecordBatch) -> list[str | None]:
        preds = super().predictions(batch)
        if self.method == "strict":
            return preds
        return [p if p is not None else last_number(None if t is None else strip_observations(t))
                for p, t in zip(preds, string_column(batch, "response_text"))]


@register_reward("token_recall")
class TokenRecall:
    """MaskSearch token-level recall (SEEDS 7.3; `reward.rules.token_recall`), optionally length-penalised.

    masked_spans=False: recall of `answer_text` against the gold answer(s).
    masked_spans=True: RAMP tasks; `question` is the masked paragraph (plus `MASKSEARCH_INSTRUCTION`),
    `gold_answer` the original paragraph, `answer_text` the model's filled paragraph; the recall is over the
    masked spans, both sides cut out by `reward.rules.mask_spans` and joined. An answer that changed the text
    around the masks scores 0."""

    def __init__(self, part: str = "answer", length_penalty: bool = False, max_length_ratio: float = 1.0,
                 masked_spans: bool = False, mask: str = "[mask]", instruction: str = MASKSEARCH_INSTRUCTION):
        token_recall(None, "x", length_penalty=length_penalty, max_length_ratio=max_length_ratio)
        self.part, self.parts = part, (part,)
        self.length_penalty, self.max_length_ratio = length_penalty, max_length_ratio
        self.masked_spans, self.mask, self.instruction = masked_spans, mask, instruction
        self.columns = ("answer_text", "gold_answer") + (("question",) if masked_spans else ())

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        preds = string_column(batch, "answer_text")
        if self.masked_spans:
            pairs = [_ramp_spans(q, pred, gold, self.mask, self.instruction, row)
                     for row, (q, pred, gold) in enumerate(zip(string_column(batch, "question"), preds,
                                                                string_column(batch, "gold_answer")))]
            preds = [None if p is None else " ".join(p) for p, _ in pairs]
            golds: list = [" ".join(g) for _, g in pairs]
        else:
            golds = _golds(batch)
        values = [token_recall(p, g, length_penalty=self.length_penalty, max_length_ratio=self.max_length_ratio)
                  for p, g in zip(preds, golds)]
        return {self.part: np.asarray(values, dtype=np.float64)}


def _ramp_spans(question: str | None, prediction: str | None, gold: str | None, mask: str, instruction: str,
                row: int) -> tuple[list[str] | None, list[str]]:
    """(predicted spans or None, gold spans) of a RAMP row; a gold paragraph that does not fit its own masked
    question is a data error and raises."""
    template = (question or "").split(instruction)[0]
    gold_spans = mask_spans(template, gold, mask)
    if not gold_spans:
        raise ValueError(f"row {row}: the gold paragraph does not fill the masks of the question (question "
                         f"{template[:80]!r}..., gold {str(gold)[:80]!r}...); a MaskSearch reward needs the masked "
                         f"paragraph as `question` and the original paragraph as `gold_answer`")
    return mask_spans(template, prediction, mask), gold_spans


# ------------------------------------------------------------------------------------------------ formats

FORMAT_STYLES: dict[str, Callable[..., Any]] = {
    "websailor": websailor_format,      # also WebDancer / WebShaper (SEEDS 3.5, 3.6, 5.4)
    "evolvesearch": evolvesearch_format,  # SEEDS 6.1
    "masksearch": masksearch_format,    # SEEDS 7.3
    "vrag": vrag_pattern,               # SEEDS 4.3 r_Pat
    "webwatcher": webwatcher_format,    # SEEDS 9.1: several tool calls a turn
}


@register_reward("format")
class FormatReward:
    """The 0/1 format score of `style` (a key of FORMAT_STYLES) on `response_text`; other keyword arguments go
    to the checker (e.g. tool_names, min_tool_calls for websailor). A null response_text scores 0. The first
    violation of each failed row is counted by kind in `metrics()` (e.g. "missing <answer>")."""

    columns = ("response_text",)

    def __init__(self, style: str = "websailor", part: str = "format", **options: Any):
        if style not in FORMAT_STYLES:
            raise ValueError(f"format reward: unknown style {style!r}; known: {sorted(FORMAT_STYLES)}")
        self.style, self.part, self.parts, self.options = style, part, (part,), options
        self.check = FORMAT_STYLES[style]
        self.check("", **options)  # a wrong option fails here
        self._violations: dict[str, int] = {}

    @staticmethod
    def options_of(kwargs: dict) -> tuple[Callable[..., Any], dict, tuple[str, ...]]:
        """The checker the options go to, those options and its data argument (RewardWorker checks the options'
        types at load)."""
        options = {k: v for k, v in kwargs.items() if k not in ("style", "part")}
        return FORMAT_STYLES.get(kwargs.get("style", "websailor"), lambda response_text: None), options, \
            ("response_text",)

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        values = np.zeros(batch.num_rows, dtype=np.float64)
        for i, text in enumerate(string_column(batch, "response_text")):
            result = self.check(text or "", **self.options)
            score, reason = result if isinstance(result, tuple) else (result, "missing <search> or <answer>")
            values[i] = score
            if not score:
                kind = reason.split(" at char")[0].split(":")[0].split(" (")[0]
                self._violations[kind] = self._violations.get(kind, 0) + 1
        return {self.part: values}

    def metrics(self) -> dict[str, float]:
        return {f"violations/{kind}": n for kind, n in sorted(self._violations.items())}

    def reset_metrics(self) -> None:
        self._violations = {}


# ---------------------------------------------------------------------------------------------- retrieval

@register_reward("ndcg")
class NDCG:
    """VRAG-RL r_Ret: NDCG of the de-duplicated `retrieved` ids against `gold_ids` (`reward.retrieval.ndcg`)."""

    columns = ("retrieved", "gold_ids")

    def __init__(self, part: str = "ndcg"):
        self.part, self.parts = part, (part,)

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        values = [ndcg(r or [], g or []) for r, g in zip(batch.column("retrieved").to_pylist(),
                                                         batch.column("gold_ids").to_pylist())]
        return {self.part: np.asarray(values, dtype=np.float64)}


# ------------------------------------------------------------------------------------------------- judges

class _JudgeFn:
    gateable = True
    needs_judge = True

    def __init__(self, judge: Any, kind: str, part: str):
        if kind not in JUDGES:
            raise ValueError(f"{type(self).__name__}: unknown judge kind {kind!r}; known: {sorted(JUDGES)}")
        if judge is None:
            raise ValueError(f"{type(self).__name__} needs a judge: give the RewardWorker judge={{'backend': "
                             "'rule' | 'openai' | 'engine', ...}")
        self.judge, self.kind, self.part, self.parts = judge, kind, part, (part,)


@register_reward("judge")
class JudgeReward(_JudgeFn):
    """LLM-as-judge verdict on (question, answer_text, gold_answer) with the `kind` prompt of
    `reward.prompts.JUDGES` (gaia, browsecomp, simpleqa, vrag, masksearch): 1.0 / 0.0, the judge's fallback
    score where it failed, 0.0 without a request where there is no answer, NaN outside `active`."""

    columns = ("question", "answer_text", "gold_answer")

    def __init__(self, judge: Any = None, kind: str = "gaia", part: str = "answer"):
        super().__init__(judge, kind, part)

    def score(self, batch: pa.RecordBatch, active: np.ndarray | None = None) -> dict[str, np.ndarray]:
        rows = np.flatnonzero(active_mask(active, batch.num_rows))
        values = np.full(batch.num_rows, np.nan)
        if rows.size:
            questions, preds = string_column(batch, "question"), string_column(batch, "answer_text")
            golds = string_column(batch, "gold_answer")
            items = [JudgeItem(questions[i] or "", preds[i], parse_gold(golds[i], int(i)), self.kind) for i in rows]
            values[rows] = [r.score for r in self.judge.judge(items)]
        return {self.part: values}


@register_reward("span_judge")
class SpanJudgeReward(_JudgeFn):
    """MaskSearch model-based reward (SEEDS 7.3): the fraction of masks whose predicted span the judge calls
    correct (`reward.rules.span_judge_fraction`), one judge request per mask, all rows' masks in one batch.
    Columns as `token_recall(masked_spans=True)`: an answer that changed the text around the masks scores 0
    without a request."""

    columns = ("question", "answer_text", "gold_answer")

    def __init__(self, judge: Any = None, kind: str = "masksearch", part: str = "answer", mask: str = "[mask]",
                 instruction: str = MASKSEARCH_INSTRUCTION):
        super().__init__(judge, kind, part)
        self.mask, self.instruction = mask, instruction

    def score(self, batch: pa.RecordBatch, active: np.ndarray | None = None) -> dict[str, np.ndarray]:
        rows = np.flatnonzero(active_mask(active, batch.num_rows))
        values = np.full(batch.num_rows, np.nan)
        questions, preds, golds = (string_column(batch, c) for c in ("question", "answer_text", "gold_answer"))
        items: list[JudgeItem] = []
        owners: list[tuple[int, int]] = []  # (row, number of masks) per row that asks the judge
        for i in rows:
            pred_spans, gold_spans = _ramp_spans(questions[i], preds[i], golds[i], self.mask, self.instruction, i)
            if pred_spans is None:
                values[i] = 0.0
                continue
            template = (questions[i] or "").split(self.instruction)[0]
            items += [JudgeItem(template, p, g, self.kind) for p, g in zip(pred_spans, gold_spans)]
            owners.append((int(i), len(gold_spans)))
        if items:
            verdicts = [r.score >= 0.5 for r in self.judge.judge(items)]
            at = 0
            for row, k in owners:
                values[row] = span_judge_fraction(verdicts[at:at + k])
                at += k
        return {self.part: values}

