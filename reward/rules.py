"""Rule rewards on answer strings: exact match, token F1, token recall, mask-judge fraction, ANLS.

Owns: the string metrics that turn a predicted answer and its gold answer(s) into a number in [0, 1], the
SQuAD answer normalisation they share, and pulling the final answer out of a response (`extract_answer`).

Must never: call a model or a service (the LLM judge lives elsewhere; `span_judge_fraction` only averages
verdicts it is given), look at tags other than the answer tag (format checks live in `reward/formats.py`),
or import anything of the project. Pure functions on Python strings.

Conventions shared by every metric here:
* `pred` may be None, meaning "the response has no answer" (what `extract_answer` returns then); it scores 0.
* `gold` is one acceptable answer (str) or a list of them; the score is the max over the list. An empty list
  is a data error and raises ValueError.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

__all__ = [
    "normalize_answer",
    "exact_match",
    "f1_score",
    "token_recall",
    "span_judge_fraction",
    "anls",
    "levenshtein_distance",
    "extract_answer",
    "mask_spans",
    "number_match",
    "last_number",
]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """SQuAD answer normalisation: lowercase, drop ASCII punctuation, drop articles, collapse whitespace.

    Same steps and order as the official SQuAD v1.1 / HotpotQA evaluation scripts, so exact match and F1 here
    reproduce benchmark numbers: `lower -> remove string.punctuation (no space inserted, "Jean-Paul" ->
    "jeanpaul") -> replace \\b(a|an|the)\\b by a space -> " ".join(split())`.
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(gold: str | Sequence[str], metric: str) -> list[str]:
    if isinstance(gold, str):
        return [gold]
    golds = list(gold)
    if not golds:
        raise ValueError(f"{metric}: gold is an empty list; give at least one acceptable answer")
    for i, g in enumerate(golds):
        if not isinstance(g, str):
            raise TypeError(f"{metric}: gold[{i}] is {type(g).__name__}, expected str")
    return golds


def _max_over_golds(pred: str | None, gold: str | Sequence[str], metric: str,
                    score: Callable[[str, str], float]) -> float:
    golds = _golds(gold, metric)
    if pred is None:
        return 0.0
    return max(score(pred, g) for g in golds)


def exact_match(pred: str | None, gold: str | Sequence[str]) -> float:
    """Exact match after SQuAD normalisation: `EM = max_g 1[normalize(pred) == normalize(g)]`, 1.0 or 0.0."""
    return _max_over_golds(pred, gold, "exact_match",
                           lambda p, g: float(normalize_answer(p) == normalize_answer(g)))


def _f1(pred: str, gold: str) -> float:
    pred_tokens = normalize_answer(pred).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(pred: str | None, gold: str | Sequence[str]) -> float:
    """SQuAD token F1 on normalised whitespace tokens, max over golds.

    `overlap = |tok(pred) ∩ tok(g)|` (multiset), `P = overlap/|tok(pred)|`, `R = overlap/|tok(g)|`,
    `F1 = 2PR/(P+R)`. If either side has no token after normalisation, F1 is 1.0 when both are empty, else 0.0
    (SQuAD v2 rule).
    """
    return _max_over_golds(pred, gold, "f1_score", _f1)


def token_recall(pred: str | None, gold: str | Sequence[str], length_penalty: bool = False,
                 max_length_ratio: float = 1.0) -> float:
    """MaskSearch token-level recall (SEEDS 7.3), optionally with a length penalty; max over golds.

        Recall = |tok(pred) ∩ tok(gold)| / |tok(gold)|        (multiset intersection, normalised tokens)

    Recall alone is hackable: listing many candidate spans never lowers it. With `length_penalty=True`
    (the penalty form is ours, [M]: SEEDS only says recall "needs a length penalty"):

        score = Recall · min(1, max_length_ratio · |tok(gold)| / |tok(pred)|)

    A prediction up to `max_length_ratio` times as long as the gold is not penalised; beyond that the score
    shrinks in proportion to the excess. Why this form: with the default ratio 1.0 the score is exactly
    min(precision, recall), and listing k equally long candidates, one of them right, scores 1/k, the same as
    the expected recall of committing to one of them at random, so hedging earns nothing. Raise the ratio to
    tolerate verbose but honest answers. Example: pred "Paris France", gold "Paris": recall 1.0, penalised 0.5.

    An empty gold (no token after normalisation) scores 1.0 against an empty prediction, else 0.0.
    """
    if max_length_ratio <= 0:
        raise ValueError(f"token_recall: max_length_ratio must be > 0, got {max_length_ratio}")

    def recall(p: str, g: str) -> float:
        pred_tokens = normalize_answer(p).split()
        gold_tokens = normalize_answer(g).split()
        if not gold_tokens:
            return float(not pred_tokens)
        overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        score = overlap / len(gold_tokens)
        if length_penalty and pred_tokens:
            score *= min(1.0, max_length_ratio * len(gold_tokens) / len(pred_tokens))
        return score

    return _max_over_golds(pred, gold, "token_recall", recall)


def span_judge_fraction(judgements: Sequence[bool]) -> float:
    """MaskSearch model-based reward (SEEDS 7.3): fraction of masks the judge called correct.

        R = (1/k) Σ_{j=1..k} 1[judge says span j is correct]        (k masks; R = 0 when k = 0)

    `judgements` holds one verdict per mask, True/False (1/0 accepted). Anything else raises, naming the
    position, because a stray string such as "False" would otherwise count as correct.
    """
    if not judgements:
        return 0.0
    for i, j in enumerate(judgements):
        if isinstance(j, str) or j not in (True, False):
            raise TypeError(f"span_judge_fraction: judgements[{i}] = {j!r}; expected a bool per mask")
    return sum(bool(j) for j in judgements) / len(judgements)


def levenshtein_distance(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; unit costs) by the two-row dynamic programme, O(|a|·|b|)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(pred: str | None, gold: str | Sequence[str], threshold: float = 0.5) -> float:
    """ANLS as VRAG's `calculate_anls` (SEEDS 4.3, 14 item 26): an eval / alternative metric, not the trained reward.

        NLD = lev(p, g) / max(|p|, |g|)          (NLD = 0 when both are empty)
        ANLS = max_g ( 1 − NLD  if NLD < threshold  else 0 )

    Strings are compared case-insensitively and stripped of surrounding whitespace (`s.strip().lower()`),
    nothing else. VRAG's RL path calls it with threshold 0.5 (its function default is 0.7); 0.5 is also the
    DocVQA standard. Since lev(p, g) ≥ ||p| − |g||, a length gap alone that reaches the threshold scores 0
    without running the quadratic edit distance (long rambling predictions stay cheap).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"anls: threshold must be in (0, 1], got {threshold}")

    def score(p: str, g: str) -> float:
        p, g = p.strip().lower(), g.strip().lower()
        longest = max(len(p), len(g))
        if longest == 0:
            return 1.0
        if abs(len(p) - len(g)) / longest >= threshold:
            return 0.0
        nld = levenshtein_distance(p, g) / longest
        return 1.0 - nld if nld < threshold else 0.0

    return _max_over_golds(pred, gold, "anls", score)


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def _as_number(text: str) -> float | None:
    """The number `text` is, when it is nothing but one number ("30", "-4", "1,234", "2.50", " 30. "), else None
    ("30 apples": words around a number are not stripped)."""
    text = text.strip().rstrip(".").strip()
    if not _NUMBER.fullmatch(text):
        return None
    return float(text.replace(",", ""))


def last_number(text: str | None) -> str | None:
    """The last number written in `text` ("... so 56 - 26 = 30." -> "30"), or None if it has none: the
    "flexible" answer extraction of verl's and TRL's GSM8K rewards, for a model that answers in prose."""
    if text is None:
        return None
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def number_match(pred: str | None, gold: str | Sequence[str]) -> float:
    """1.0 when `pred` is a number equal to the gold number ("30" == "30.0" == "+30"; "1,234" == "1234"), else 0.0.
    A gold answer that is not one number is a data error (ValueError names it)."""
    def score(p: str, g: str) -> float:
        want = _as_number(g)
        if want is None:
            raise ValueError(f"number_match: gold answer {g!r} is not a number")
        got = _as_number(p)
        return float(got is not None and abs(got - want) <= 1e-9 * max(1.0, abs(want)))

    return _max_over_golds(pred, gold, "number_match", score)


def extract_answer(text: str, tag: str = "answer") -> str | None:
    """The stripped content of the LAST `<tag>...</tag>` block in `text`, or None if there is none.

    As VRAG's `get_answer_from_predict_str`: find the last closing tag, then the last opening tag before it.
    Call it on text whose observations were removed (`reward.formats.strip_observations`), so that an
    `<answer>` quoted inside a tool response is never taken for the model's.
    """
    if not tag or not re.fullmatch(r"[A-Za-z_][\w\-]*", tag):
        raise ValueError(f"extract_answer: tag must be a bare tag name such as 'answer', got {tag!r}")
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    end = text.rfind(close_tag)
    if end == -1:
        return None
    start = text.rfind(open_tag, 0, end)
    if start == -1:
        return None
    return text[start + len(open_tag):end].strip()


def mask_spans(template: str, text: str | None, mask: str = "[mask]") -> list[str] | None:
    """The spans that fill the masks of `template` in `text`, in order, or None when `text` does not keep the
    template's wording around the masks (MaskSearch RAMP, SEEDS 7.1: "Fill in all the [mask] and output the
    whole paragraph without changing its format").

    The literal pieces between masks must appear in `text` in order; any run of whitespace matches any other,
    and the ends are stripped. Each span is the shortest non-empty text between its neighbouring pieces, stripped.
    A template without a mask gives []. Used on the model's answer and on the gold paragraph alike:
    `mask_spans("[mask] was born in [mask].", "Curie was born in Warsaw.") == ["Curie", "Warsaw"]`.
    """
    if not mask:
        raise ValueError("mask_spans: mask must be a non-empty marker such as '[mask]'")
    if text is None:
        return None
    pieces = template.strip().split(mask)
    if len(pieces) == 1:
        return []

    last = len(pieces) - 1
    pattern = ""
    for i, piece in enumerate(pieces):
        words = piece.split()
        if words:
            pattern += (r"\s*" if i > 0 else "") + r"\s+".join(map(re.escape, words)) + (r"\s*" if i < last else "")
        elif piece and 0 < i < last:  # two masks a space apart: the spans are separated by whitespace
            pattern += r"\s+"
        if i < last:
            pattern += "(.+?)"
    match = re.fullmatch(pattern, text.strip(), re.DOTALL)
    if match is None:
        return None
    return [span.strip() for span in match.groups()]
