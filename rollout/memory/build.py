"""Build: a finished trajectory -> procedural memory (SEEDS 12.2 "Build").

    trajectory        the gold trajectory itself, step by step (thought, tool call, observation head)
    script            the trajectory abstracted into a high-level workflow
    proceduralization both

Two builders with one interface (`trajectory`, `script`, `reflect`): `RuleBuilder`, deterministic and offline
(the workflow is the trajectory's tool calls with every argument value that came from the question or from an
earlier observation replaced by where it came from), and `LLMBuilder`, which asks a chat model through any
`complete(messages) -> str` coroutine (envs/llm.py ChatClient.complete) in Memp's `direct` build policy, and
rewrites a retrieved workflow after a failure as `<Analysis>..</Analysis><Workflow>..</Workflow>` (the reflect
update). `extract_facts` gives the key facts of a task (the `facts` and `ave_fact` retrievers).

Never: raise on a malformed trajectory or model reply (an empty workflow, or the old one kept, counted in
`failures`); import Ray or anything of `rl/`.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Awaitable, Callable

_EVENT = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_response>(.*?)</tool_response>|<answer>(.*?)</answer>", re.S)
_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_NAME = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:of\s+|the\s+)?[A-Z][\w'-]*)*")


@dataclass
class Step:
    tool: str
    arguments: dict
    thought: str = ""
    observation: str = ""


@dataclass
class Parsed:
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None


def parse_steps(text: str) -> Parsed:
    """The tool calls (with the thought before each and the observation after it) and the answer of a ReAct
    trajectory's decoded text. A call that is not valid JSON becomes a step of tool "invalid"."""
    out, last = Parsed(), 0
    for m in _EVENT.finditer(text or ""):
        call, obs, answer = m.groups()
        if call is not None:
            thoughts = _THINK.findall(text[last:m.start()])
            try:
                data = json.loads(call)
                tool, args = str(data.get("name", "invalid")), data.get("arguments") or {}
                args = args if isinstance(args, dict) else {"value": args}
            except (ValueError, AttributeError):
                tool, args = "invalid", {"text": call.strip()[:200]}
            out.steps.append(Step(tool, args, thoughts[-1].strip() if thoughts else ""))
        elif obs is not None and out.steps and not out.steps[-1].observation:
            out.steps[-1].observation = obs.strip()
        elif answer is not None:
            out.answer = answer.strip()
        last = m.end()
    return out


def extract_facts(question: str) -> dict[str, str]:
    """Key facts of a task, by rule: `entities` (the capitalised names it mentions, sentence starts excepted),
    `ask` (the sentence that asks, names removed: what is wanted) and `context` (the rest, names removed: how
    the unknown relates to what is given). Tasks of one kind share `ask` and `context`, not `entities`."""
    sentences = [s.strip() for s in re.split(r"(?<=[.?!])\s+", question.strip()) if s.strip()]
    names = []
    for s in sentences:
        for m in _NAME.finditer(s):
            if m.start() > 0 or " " in m.group(0):  # a sentence's first word alone is no name
                names.append(m.group(0) if m.start() > 0 else m.group(0).split(" ", 1)[1])
    strip = lambda s: re.sub(r"\s+", " ", " ".join(_without(s, names).split())).strip()  # noqa: E731
    asks = [s for s in sentences if s.endswith("?")] or sentences[-1:]
    return {"entities": ", ".join(dict.fromkeys(names)), "ask": strip(" ".join(asks)),
            "context": strip(" ".join(s for s in sentences if s not in asks))}


def _without(text: str, names: list[str]) -> str:
    for n in sorted(set(names), key=len, reverse=True):
        text = text.replace(n, "<name>")
    return text


def _source(value: str, question: str, observations: list[str]) -> str:
    """Where an argument value came from: the question, an earlier step's observation, or neither."""
    if value and value in question:
        return "<a name from the question>"
    for i in range(len(observations) - 1, -1, -1):
        if value and value in observations[i]:
            return f"<from the result of step {i + 1}>"
    return value[:80]


class RuleBuilder:
    """The deterministic builder: no model, the same memory for the same trajectory."""

    def __init__(self, observation_chars: int = 200):
        self.observation_chars = observation_chars
        self.failures = 0

    def trajectory(self, question: str, text: str) -> str:
        """The trajectory, step by step (observations cut to `observation_chars`)."""
        p = parse_steps(text)
        lines = [f"Task: {question}"]
        for i, s in enumerate(p.steps, 1):
            lines.append(f"Step {i}: " + (f"(thought: {s.thought}) " if s.thought else "")
                         + f"{s.tool} {json.dumps(s.arguments, ensure_ascii=False)}")
            if s.observation:
                lines.append(f"  -> {s.observation[:self.observation_chars]}")
        lines.append(f"Answer: {p.answer}" if p.answer is not None else "No answer given.")
        return "\n".join(lines)

    def script(self, question: str, text: str) -> str:
        """The workflow: each call with its argument values replaced by where they came from."""
        p = parse_steps(text)
        observations: list[str] = []
        lines = []
        for i, s in enumerate(p.steps, 1):
            args = {k: ([_source(str(x), question, observations) for x in v] if isinstance(v, list)
                        else _source(str(v), question, observations)) for k, v in s.arguments.items()}
            lines.append(f"{i}. call {s.tool} with " + ", ".join(f"{k} = {v}" for k, v in args.items()))
            observations.append(s.observation)
        if p.answer is not None:
            lines.append(f"{len(lines) + 1}. answer inside <answer></answer>: "
                         + _source(p.answer, question, observations))
        return "\n".join(lines)

    def reflect(self, workflow: str, reward: float, question: str, text: str) -> str:
        """Rewrite a workflow that a failed task retrieved: keep its steps, replace its note with what the
        failed run did (its calls and how it ended), so the next reader knows the pitfall."""
        p = parse_steps(text)
        calls = ", ".join(s.tool for s in p.steps) or "no tool call"
        ended = f"answered {p.answer!r}" if p.answer is not None else "gave no answer"
        steps = [ln for ln in workflow.splitlines() if not ln.startswith("Note: ")]
        return "\n".join(steps + [f"Note: a run that followed this workflow failed (reward {reward:.2f}): it made "
                                  f"{calls} and {ended}; follow every step and answer only from a page that was read."])


SCRIPT_PROMPT = ("You turn an agent's successful trajectory into a reusable workflow for tasks of the same kind. "
                 "Write short numbered steps naming the tool to call and how to choose its arguments, in general terms "
                 "(no names or values specific to this task). Reply with the steps only.")
REFLECT_PROMPT = ("A workflow was retrieved for a task and the agent failed it. Given the workflow, the reward and the "
                  "failed trajectory, analyse what went wrong and rewrite the workflow so it avoids the failure. Reply "
                  "exactly as <Analysis>...</Analysis><Workflow>...</Workflow>.")
_WORKFLOW = re.compile(r"<Workflow>(.*?)</Workflow>", re.S)


class LLMBuilder(RuleBuilder):
    """Scripts and reflections written by a chat model; `complete(messages) -> str` is a coroutine (envs/llm.py
    ChatClient.complete). The trajectory build is the rule one (it is the trajectory). A reply without a
    workflow keeps the old workflow (reflect) or falls back to the rule script; `failures` counts those."""

    def __init__(self, complete: Callable[[list[dict]], Awaitable[str]], observation_chars: int = 200,
                 max_chars: int = 4000):
        super().__init__(observation_chars)
        self.complete, self.max_chars = complete, max_chars

    def _ask(self, system: str, user: str) -> str | None:
        try:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            return asyncio.run(self.complete(messages))
        except Exception as err:  # the endpoint failed for good: the rule output stands
            self.failures += 1
            self.last_error = f"{type(err).__name__}: {err}"
            return None

    def script(self, question: str, text: str) -> str:
        reply = self._ask(SCRIPT_PROMPT, f"Task: {question}\n\nTrajectory:\n{self.trajectory(question, text)}")
        if not reply or not reply.strip():
            self.failures += reply is not None
            return super().script(question, text)
        return reply.strip()[:self.max_chars]

    def reflect(self, workflow: str, reward: float, question: str, text: str) -> str:
        reply = self._ask(REFLECT_PROMPT, f"Task: {question}\n\nWorkflow:\n{workflow}\n\nReward: {reward}\n\n"
                                          f"Failed trajectory:\n{self.trajectory(question, text)}")
        m = _WORKFLOW.search(reply or "")
        if not m or not m.group(1).strip():
            self.failures += reply is not None
            return workflow
        return m.group(1).strip()[:self.max_chars]
