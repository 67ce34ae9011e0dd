"""DynamicBench's report grader (SEEDS 10; SEEDS 14 item 42): probe question-answer pairs extracted from a reference
report, then a judge that checks each probe against the generated report (correct / cannot judge / incorrect) and
scores it on Accuracy, Completeness, Readability, Applicability and Length, each an integer 1-10.

Owns: the prompts (ours, [M]: the paper's prompts are not public), `parse_grade` and `parse_probes` (strict: a
reply is read or it is None; nothing is guessed: a score must be a JSON integer in [1, 10], never 7.5 or "7"),
`grade_report` / `extract_probes` (an unreadable reply is asked again up to `retries` times, then a recorded
failure with every reply kept), and the scripted grader of offline runs (`scripted_probes`, `scripted_grade_reply`:
word-overlap rules that answer in the judge's own reply format, so the same parser reads them).

`ask(messages) -> reply text` is any async callable: `envs.llm.ChatClient(...).complete` for a real judge.

Never: import anything of the project outside `envs/`; turn an unreadable reply into a score.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

from envs.dynamicbench.writer import json_span

METRICS = ("accuracy", "completeness", "readability", "applicability", "length")
VERDICTS = ("correct", "cannot judge", "incorrect")
_VERDICT_WORDS = {"correct": "correct", "incorrect": "incorrect", "cannot judge": "cannot judge",
                  "can't judge": "cannot judge", "cannot_judge": "cannot judge", "can not judge": "cannot judge"}
Ask = Callable[[list[dict]], Awaitable[str]]

PROBE_PROMPT = """Read the reference report below and write {n} question-answer pairs about its key details \
(names, numbers, dates, places). Each answer is a short phrase copied from the report.

Reference report:
<<<
{reference}
>>>

Answer with a JSON list only: [{{"question": "...", "answer": "..."}}, ...]"""

GRADE_PROMPT = """You grade a generated report. The probes below are question-answer pairs taken from a reference \
report on the same subject.

Probes:
{probes}

Generated report:
<<<
{report}
>>>

For each probe, in order, say whether the generated report states its answer correctly ("correct"), states \
something else ("incorrect"), or does not let you judge ("cannot judge"). Then score the report with integers from \
1 (worst) to 10 (best): accuracy (agreement with the probes), completeness (coverage of the subject's key \
details), readability, applicability (useful, well organised for a reader who must act on it) and length \
(appropriate for the subject).

Answer with a JSON object only:
{{"probes": ["correct" | "cannot judge" | "incorrect", ...], "accuracy": N, "completeness": N, \
"readability": N, "applicability": N, "length": N}}"""


@dataclass(frozen=True)
class Probe:
    question: str
    answer: str


@dataclass
class Grade:
    """Five integers in [1, 10] and the probe verdicts, or `ok` False with `error` and every reply kept."""

    ok: bool
    scores: dict[str, int] = field(default_factory=dict)
    verdicts: list[str] = field(default_factory=list)
    attempts: int = 0
    error: str | None = None
    replies: list[str] = field(default_factory=list)


def parse_grade(reply: str | None, num_probes: int) -> tuple[dict[str, int], list[str]] | None:
    """(scores, verdicts) from a judge reply, or None when it cannot be read exactly (module docstring)."""
    if not isinstance(reply, str):
        return None
    data = json_span(reply, "{", "}")
    if not isinstance(data, dict) or set(data) != set(METRICS) | {"probes"}:
        return None
    scores = {}
    for m in METRICS:
        v = data[m]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 10:
            return None
        scores[m] = v
    probes = data["probes"]
    if not isinstance(probes, list) or len(probes) != num_probes or not all(isinstance(p, str) for p in probes):
        return None
    verdicts = [_VERDICT_WORDS.get(p.strip().lower()) for p in probes]
    if None in verdicts:
        return None
    return scores, verdicts


def parse_probes(reply: str | None) -> list[Probe] | None:
    if not isinstance(reply, str):
        return None
    data = json_span(reply, "[", "]")
    if not isinstance(data, list) or not data:
        return None
    out = []
    for item in data:
        if not (isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str)
                and item["question"].strip() and item["answer"].strip()):
            return None
        out.append(Probe(item["question"].strip(), item["answer"].strip()))
    return out


def grade_messages(report: str, probes: Sequence[Probe]) -> list[dict]:
    listed = "\n".join(f"{i + 1}. Q: {p.question} A: {p.answer}" for i, p in enumerate(probes))
    return [{"role": "user", "content": GRADE_PROMPT.format(probes=listed, report=report)}]


async def grade_report(report: str, probes: Sequence[Probe], ask: Ask, retries: int = 2) -> Grade:
    """Ask the judge; an unreadable reply is asked again (at most `retries` more times), then a recorded failure.
    A failed call (the client's own retries spent) is recorded the same way, never raised."""
    replies: list[str] = []
    messages = grade_messages(report, probes)
    for attempt in range(1, retries + 2):
        try:
            reply = await ask(messages)
        except Exception as err:  # the client's error names the endpoint; it is this report's failure, recorded
            return Grade(False, attempts=attempt, error=f"judge call failed: {err}", replies=replies)
        replies.append(reply)
        parsed = parse_grade(reply, len(probes))
        if parsed is not None:
            return Grade(True, parsed[0], parsed[1], attempt, replies=replies)
    return Grade(False, attempts=retries + 1, error=f"no readable grade in {retries + 1} replies", replies=replies)


async def extract_probes(reference: str, ask: Ask, n: int = 5, retries: int = 2) -> list[Probe]:
    """Probe pairs of a reference report by an LLM; ValueError (with the last reply) when none can be read."""
    messages = [{"role": "user", "content": PROBE_PROMPT.format(n=n, reference=reference)}]
    reply = None
    for _ in range(retries + 1):
        reply = await ask(messages)
        probes = parse_probes(reply)
        if probes:
            return probes[:n]
    raise ValueError(f"probe extraction: no readable list of question-answer pairs in {retries + 1} replies; "
                     f"last: {str(reply)[:200]!r}")


# --- the scripted grader of offline runs -------------------------------------------------------------------

_SENT = re.compile(r"(?<=[.!?])\s+")
_NUMBER = re.compile(r"\b\d[\d,.]*\d\b|\b\d\b")
_CAPITAL = re.compile(r"\b[A-Z][a-z]{2,}(?:\s+[A-Z][a-z]{2,})*")
_WORD = re.compile(r"[a-z0-9]{4,}")


def scripted_probes(reference: str, n: int = 5) -> list[Probe]:
    """Fill-in-the-blank probes: per sentence, its first number, else its last capitalised name (not the first
    word): the sentence with that span blanked is the question, the span the answer."""
    out = []
    for sentence in _SENT.split(reference):
        m = _NUMBER.search(sentence)
        if m is None:
            names = [c for c in _CAPITAL.finditer(sentence) if c.start() > 0]
            m = names[-1] if names else None
        if m is not None:
            out.append(Probe(f"Fill the blank: {sentence[:m.start()]}___{sentence[m.end():]}", m.group(0)))
        if len(out) == n:
            break
    return out


def scripted_grade_reply(report: str, probes: Sequence[Probe], target_words: int = 300) -> str:
    """A judge's reply by rules: a probe is correct when its answer is in the report, incorrect when the report
    has at least half of the question's words but not the answer, else cannot judge; the five scores from those
    counts, the sentence length, the sections and the length against `target_words`."""
    low = report.lower()
    words = set(_WORD.findall(low))
    verdicts = []
    for p in probes:
        q = set(_WORD.findall(p.question.lower()))
        if p.answer.lower() in low:
            verdicts.append("correct")
        elif q and len(q & words) * 2 >= len(q):
            verdicts.append("incorrect")
        else:
            verdicts.append("cannot judge")
    n = max(len(probes), 1)
    sentences = [s for s in _SENT.split(report) if s.strip()] or [""]
    mean_len = sum(len(s.split()) for s in sentences) / len(sentences)
    scale = lambda x: 1 + round(9 * min(1.0, max(0.0, x)))  # noqa: E731
    scores = {"accuracy": scale(verdicts.count("correct") / n),
              "completeness": scale(1 - verdicts.count("cannot judge") / n),
              "readability": scale(1 - abs(mean_len - 20) / 30),
              "applicability": scale(report.count("\n## ") / 4),
              "length": scale(len(report.split()) / target_words)}
    return json.dumps({"probes": verdicts} | scores)
