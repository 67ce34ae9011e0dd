"""The ReAct grammar of WebSailor / WebDancer / WebWatcher (SEEDS 3.6).

    <think> ... </think>
    <tool_call>
    {"name": "search", "arguments": {"query": ["q1", "q2"]}}
    </tool_call>
    ... (observation turn: <tool_response> ... </tool_response>) ...
    <think> ... </think>
    <answer> ... </answer>

Owns: turning one assistant turn's text into an `Action` (answer, tool call, invalid, none), the
fixed observation texts for invalid turns, `ParallelReActFormat` (WebWatcher, SEEDS 9.1: several
<tool_call> blocks in one turn, run concurrently by the agent loop; `Action.calls` holds them in order,
an unparsable block an invalid action among them), and `first_block` (the first complete <tag>...</tag>, found
in linear time; the VRAG-RL grammar uses it too). An invalid call yields the fixed error observation.

Never: call tools or touch tokens; raise on model output, whatever it is (JSON nested past the
recursion limit, numbers past float range, text that is not text): `parse` returns an action or an
invalid one, always.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field

# SEEDS 3.6 (WebSailor react_agent.py): the observation for a tool call that does not parse
INVALID_TOOL_CALL = 'Error: Tool call is not a valid JSON. Tool call must contain a valid "name" and "arguments" field.'
NO_ACTION = ("Error: no action found. Think inside <think></think>, then either call a tool inside "
             "<tool_call></tool_call> or give the final answer inside <answer></answer>.")

_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)


@dataclass
class Action:
    kind: str  # "answer" | "tool_call" | "invalid" | "none"
    answer: str | None = None
    name: str | None = None
    arguments: dict = field(default_factory=dict)
    error: str | None = None
    calls: list["Action"] = field(default_factory=list)  # a multi-call turn: each call in order (ParallelReActFormat)


# SEEDS 3.6 (WebSailor prompt.py, abridged): the tools themselves are rendered by the chat template
SYSTEM_PROMPT = (
    "You are a Web Information Seeking Master. Your task is to thoroughly seek the internet for information and "
    "provide accurate answers to questions. As you proceed, adhere to the following principles:\n"
    "1. Persistent Actions for Answers: You will engage in many interactions, delving deeply into the topic to "
    "explore all possible aspects until a satisfactory answer is found.\n"
    "2. Repeated Verification: Before presenting a Final Answer, cross-check and validate the information you've "
    "gathered to confirm its accuracy and reliability.\n"
    "3. Attention to Detail: Carefully analyze each information source to ensure that your data is current, "
    "relevant, and from credible origins.\n\n"
    "Think inside <think></think>, call one tool per turn inside <tool_call></tool_call> as JSON "
    '{"name": ..., "arguments": ...}, and give the final answer inside <answer></answer>.')


class ReActFormat:
    """Parse an assistant turn. The first of <answer> / <tool_call> decides, as in the harness."""

    def system_prompt(self, tools: list[dict]) -> str:
        return SYSTEM_PROMPT

    # generation stops at the end of a tool call (the harness also stops at "<tool_response>")
    stop_tokens = ("</tool_call>",)
    stop_strings = ("<tool_response>",)

    def parse(self, text: str) -> Action:
        if not isinstance(text, str):
            return Action("none", error=NO_ACTION)
        try:
            return self._parse(text)
        except Exception:  # a grammar bug must not end the episode: the turn is invalid, the episode goes on
            return Action("invalid", error=INVALID_TOOL_CALL)

    def _parse(self, text: str) -> Action:
        text = text.split("<tool_response>")[0]  # anything after a hallucinated observation is cut
        answer, call = first_block(text, ("answer",)), _TOOL_CALL.search(text)
        if answer and (not call or answer[1] < call.start()):
            return Action("answer", answer=answer[2].strip())
        if call:
            return parse_call(call.group(1))
        return Action("none", error=NO_ACTION)


def parse_call(body: str) -> Action:
    """The JSON inside one <tool_call> block -> a tool_call action, or the invalid action."""
    try:
        obj = json.loads(body.strip())
    except (ValueError, RecursionError):  # JSONDecodeError; ints past 4300 digits; nesting past the limit
        return Action("invalid", error=INVALID_TOOL_CALL)
    if not (isinstance(obj, dict) and isinstance(obj.get("name"), str)
            and isinstance(obj.get("arguments", {}), dict)):
        return Action("invalid", error=INVALID_TOOL_CALL)
    return Action("tool_call", name=obj["name"], arguments=obj.get("arguments", {}))


class ParallelReActFormat(ReActFormat):
    """WebWatcher's turns (SEEDS 9.1): any number of <tool_call> blocks before the end of the turn, run
    concurrently, their results returned in the calls' order (rollout/agent.py `call_tools`). Generation
    does not stop at the first </tool_call>; it stops at the end of the turn or a hallucinated
    <tool_response>. One block parses exactly as in ReActFormat. At most `max_calls` blocks are read."""

    stop_tokens = ()
    max_calls = 128  # WebWatcher's thread pool: 128 workers
    # SEEDS 9.1: results go back as "<|im_start|>user\n<tool_response>\n...\n</tool_response><|im_end|>"
    observation_role = "user"

    def wrap_observation(self, text: str) -> str:
        return f"<tool_response>\n{text}\n</tool_response>"

    def system_prompt(self, tools: list[dict]) -> str:
        return SYSTEM_PROMPT.replace("call one tool per turn inside <tool_call></tool_call>",
                                     "call one or more tools per turn, each inside its own <tool_call></tool_call>")

    def _parse(self, text: str) -> Action:
        text = text.split("<tool_response>")[0]
        answer, first = first_block(text, ("answer",)), _TOOL_CALL.search(text)
        if answer and (not first or answer[1] < first.start()):
            return Action("answer", answer=answer[2].strip())
        if not first:
            return Action("none", error=NO_ACTION)
        calls, at = [], 0
        for m in itertools.islice(_TOOL_CALL.finditer(text), self.max_calls):
            if first_block(text[at:m.start()], ("answer",)):  # calls after an answer (outside any call) are not read
                break
            calls.append(parse_call(m.group(1)))
            at = m.end()
        if len(calls) == 1:
            return calls[0]
        head = calls[0]
        return Action("tool_call", name=head.name, arguments=head.arguments, calls=calls)


def first_block(text: str, tags: tuple[str, ...]) -> tuple[str, int, str] | None:
    """(tag, start, content) of the first complete `<tag>content</tag>` of `tags`, or None: what the
    regex `<(tag|...)>(.*?)</\\1>` finds, in linear time (the regex is quadratic in unclosed opening tags:
    a turn of 20,000 "<answer>" takes seconds). An opening tag starts a complete block exactly when its
    closing tag follows it, so per tag only its first opening can start the first block."""
    best = None
    for tag in tags:
        start = text.find(f"<{tag}>")
        if start < 0 or (best is not None and start >= best[1]):
            continue
        end = text.find(f"</{tag}>", start + len(tag) + 2)
        if end >= 0:
            best = (tag, start, text[start + len(tag) + 2:end])
    return best
