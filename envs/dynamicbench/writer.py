"""DynamicBench's report system (SEEDS 10): section planning -> per-section query formulation and search (dual path:
the local report store and web search) -> section writing (tables allowed) -> merge. Two settings: with documents
(the retrieved blocks are given to the section writer) and without (the model's own knowledge only).

Owns: the writer's prompts (ours, [M]), the strict readers of the plan and the queries, `ReportWriter.write`, and
`ScriptedWriter` (the offline stand-in of the LLM: a fixed plan, the subject as the query, sections copied from
the evidence it is shown; it reads only what the prompts show it).

`ask(messages) -> text` is any async callable (`envs.llm.ChatClient(...).complete` for a real model). An unreadable
plan is asked again, then the report fails with a recorded error; an unreadable query list falls back to
"subject section" and is counted (`Report.query_fallbacks`); a call that fails (the client's retries spent, a
timeout, a retrieval backend's error) fails the report with the error, naming the step and section; it is never
raised. The merge is by rule: "# subject" then every section
under "## title" in plan order [M].

Never: import anything of the project outside `envs/`; search in the without-documents setting; raise for one
report's failed call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from envs.dynamicbench.store import ReportStore, dual_search

Ask = Callable[[list[dict]], Awaitable[str]]

PLAN_PROMPT = """TASK: plan
Plan a report on "{subject}" in {n} sections. Answer with a JSON list of the section titles only."""

QUERY_PROMPT = """TASK: queries
Report on "{subject}", section "{section}". Write up to {k} search queries that find the facts this section needs. \
Answer with a JSON object only: {{"queries": ["...", ...]}}"""

SECTION_PROMPT = """TASK: section
Write the section "{section}" of a report on "{subject}". Be factual and specific; a markdown table is welcome where \
it helps. Write the section's text only, without its title.
{evidence}"""

EVIDENCE_HEAD = "Documents (use them; prefer them to what you remember):"

# the writer as an agent: one episode through the agent loop writes the whole report (launch/dynamicbench.py)
AGENT_TASK = """Write a report on "{subject}" in {n} sections. {how}Give the whole report in markdown inside \
<answer></answer>: "# {subject}", then each section under "## <title>"; a markdown table is welcome where it helps."""
AGENT_HOW = {True: "First search the report store and the web with the search tool, then write from what it returns. ",
             False: "Write from what you know; there is no tool. "}


@dataclass
class Report:
    subject: str
    with_docs: bool
    ok: bool
    text: str = ""
    plan: list[str] = field(default_factory=list)
    queries: dict[str, list[str]] = field(default_factory=dict)
    evidence: dict[str, list[str]] = field(default_factory=dict)  # section -> ids of the blocks/hits shown
    query_fallbacks: int = 0
    error: str | None = None


def json_span(reply: str, open_: str, close: str) -> Any:
    """The JSON value from the first `open_` to the last `close` of a model's reply, or None (never a guess)."""
    start, end = reply.find(open_), reply.rfind(close)
    if start < 0 or end <= start:
        return None
    try:
        return json.loads(reply[start:end + 1])
    except ValueError:
        return None


def parse_plan(reply: str, n: int) -> list[str] | None:
    data = json_span(reply, "[", "]") if isinstance(reply, str) else None
    if not (isinstance(data, list) and data and all(isinstance(s, str) and s.strip() for s in data)):
        return None
    return [s.strip() for s in data][:n]


def parse_queries(reply: str, k: int) -> list[str] | None:
    data = json_span(reply, "{", "}") if isinstance(reply, str) else None
    queries = data.get("queries") if isinstance(data, dict) else None
    if not (isinstance(queries, list) and queries and all(isinstance(q, str) and q.strip() for q in queries)):
        return None
    return [q.strip() for q in queries][:k]


class _CallFailed(Exception):
    """A writer's call that failed for good; `ReportWriter.write` records it as the report's error."""


class ReportWriter:
    def __init__(self, ask: Ask, store: ReportStore | None = None, web: Any = None, sections: int = 4,
                 queries_per_section: int = 2, k_local: int = 2, k_web: int = 0, retries: int = 2):
        if sections < 1 or queries_per_section < 1:
            raise ValueError("ReportWriter: sections and queries_per_section must be >= 1")
        self.ask, self.store, self.web = ask, store, web
        self.sections, self.k, self.k_local, self.k_web, self.retries = sections, queries_per_section, k_local, \
            k_web, retries

    async def write(self, subject: str, with_docs: bool) -> Report:
        """The report on `subject`; a failure (no readable plan, a failed call) is `Report.ok` False with the
        error, and what was planned and retrieved before it is kept."""
        report = Report(subject, with_docs, ok=False)
        try:
            return await self._write(report, subject, with_docs)
        except _CallFailed as failed:
            report.error = str(failed)
            return report

    async def _call(self, messages: list[dict], step: str) -> str:
        try:
            return await self.ask(messages)
        except Exception as err:  # the client's error names the endpoint or engine; this report's failure
            raise _CallFailed(f"writer call failed ({step}): {type(err).__name__}: {err}") from None

    async def _write(self, report: Report, subject: str, with_docs: bool) -> Report:
        for _ in range(self.retries + 1):
            reply = await self._call([{"role": "user", "content": PLAN_PROMPT.format(
                subject=subject, n=self.sections)}], "plan")
            plan = parse_plan(reply, self.sections)
            if plan:
                break
        else:
            report.error = f"no readable section plan in {self.retries + 1} replies; last: {str(reply)[:300]!r}"
            return report
        report.plan = plan
        parts = [f"# {subject}"]
        for section in plan:
            evidence = ""
            if with_docs:
                reply = await self._call([{"role": "user", "content": QUERY_PROMPT.format(
                    subject=subject, section=section, k=self.k)}], f"queries of section {section!r}")
                queries = parse_queries(reply, self.k)
                if queries is None:
                    queries, report.query_fallbacks = [f"{subject} {section}"], report.query_fallbacks + 1
                report.queries[section] = queries
                hits, seen = [], set()
                for q in queries:
                    try:
                        found = dual_search(q, self.store, self.web, self.k_local, self.k_web)
                    except Exception as err:  # an embedder server or web backend that fails: this report's failure
                        raise _CallFailed(f"retrieval failed (query {q!r} of section {section!r}): "
                                          f"{type(err).__name__}: {err}") from None
                    for h in found:
                        if (h.id or h.url) not in seen:
                            seen.add(h.id or h.url)
                            hits.append(h)
                report.evidence[section] = [h.id or h.url for h in hits]
                evidence = EVIDENCE_HEAD + "\n" + "\n".join(f"[{i + 1}] {h.title}: {h.text or h.snippet}"
                                                             for i, h in enumerate(hits))
            text = await self._call([{"role": "user", "content": SECTION_PROMPT.format(
                subject=subject, section=section, evidence=evidence)}], f"section {section!r}")
            parts.append(f"## {section}\n\n{text.strip()}")
        report.text, report.ok = "\n\n".join(parts) + "\n", True
        return report


class ScriptedWriter:
    """The offline writer LLM: `await ScriptedWriter()(messages)` answers the three prompts above by rule."""

    PLAN = ("Overview", "Key facts", "Background", "Outlook")
    _SUBJECT = re.compile(r'on "(.*?)"')

    async def __call__(self, messages: list[dict]) -> str:
        prompt = messages[-1]["content"]
        task = prompt.split("\n", 1)[0]
        subject = (self._SUBJECT.search(prompt) or [None, "the subject"])[1]
        if task == "TASK: plan":
            n = int(re.search(r"in (\d+) sections", prompt).group(1))
            return json.dumps(list(self.PLAN[:n]))
        if task == "TASK: queries":
            return json.dumps({"queries": [subject]})
        if task == "TASK: section":
            section = re.search(r'section "(.*?)"', prompt).group(1)
            if EVIDENCE_HEAD not in prompt:
                return f"This section on {section.lower()} of {subject} is written without documents."
            docs = prompt.split(EVIDENCE_HEAD, 1)[1].strip().splitlines()
            i = self.PLAN.index(section) if section in self.PLAN else 0
            pick = docs[i % len(docs)] if docs else ""
            return re.sub(r"^\[\d+\]\s*", "", pick) or f"No document speaks of {subject}."
        raise ValueError(f"ScriptedWriter: unknown prompt {task!r}")


_RESULT = re.compile(r"^\d+\. \[[^\]\n]*\]\([^)\n]*\)\n(?:[A-Z][A-Za-z ]*: [^\n]*\n)*\n([^\n]+)", re.M)


class ScriptedAgentWriter:
    """The offline writer as an agent, for one episode (`next_turn(observation) -> str`, the ReAct grammar): with
    documents, one `search` call for the subject, then the report whose section i is the text of result i (in
    turn); without, the report written without documents. The plan is `ScriptedWriter.PLAN`. It reads only what
    the conversation shows it."""

    def __init__(self, subject: str, sections: int, with_docs: bool):
        self.subject, self.plan, self.with_docs = subject, list(ScriptedWriter.PLAN[:sections]), with_docs
        self.turns = 0

    def next_turn(self, observation: str | None) -> str:
        self.turns += 1
        if self.with_docs and self.turns == 1:
            call = json.dumps({"name": "search", "arguments": {"query": [self.subject]}})
            return f"<think>\nI will search for {self.subject}.\n</think>\n<tool_call>\n{call}\n</tool_call>"
        docs = _RESULT.findall(observation or "") if self.with_docs else []
        parts = [f"# {self.subject}"]
        for i, title in enumerate(self.plan):
            body = docs[i % len(docs)] if docs else \
                f"This section on {title.lower()} of {self.subject} is written without documents."
            parts.append(f"## {title}\n\n{body}")
        return "<think>\nI write the report.\n</think>\n<answer>\n" + "\n\n".join(parts) + "\n</answer>"
