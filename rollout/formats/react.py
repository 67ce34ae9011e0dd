"""The ReAct grammar of WebSailor / WebDancer / WebWatcher (SEEDS 3.6).

    <think> ... </think>
    <tool_call>
    {"name": "search", "arguments": {"query": ["q1", "q2"]}}
    </tool_call>
    ... (observation turn: <tool_response> ... </tool_response>) ...
    <think> ... </think>
    <answer> ... </answer>

Owns: turning one assistant turn's text into an `Action` (answer, tool call, invalid, none), and
the fixed observation texts for invalid turns. An invalid call yields the fixed error observation;
nothing here raises on model output.

Never: call tools or touch tokens.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

# SEEDS 3.6 (WebSailor react_agent.py): the observation for a tool call that does not parse
INVALID_TOOL_CALL = 'Error: Tool call is not a valid JSON. Tool call must contain a valid "name" and "arguments" field.'
NO_ACTION = ("Error: no action found. Think inside <think></think>, then either call a tool inside "
             "<tool_call></tool_call> or give the final answer inside <answer></answer>.")

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)


@dataclass
class Action:
    kind: str  # "answer" | "tool_call" | "invalid" | "none"
    answer: str | None = None
    name: str | None = None
    arguments: dict = field(default_factory=dict)
    error: str | None = None


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
        text = text.split("<tool_response>")[0]  # anything after a hallucinated observation is cut
        answer, call = _ANSWER.search(text), _TOOL_CALL.search(text)
        if answer and (not call or answer.start() < call.start()):
            return Action("answer", answer=answer.group(1).strip())
        if call:
            try:
                obj = json.loads(call.group(1).strip())
            except (json.JSONDecodeError, ValueError):
                return Action("invalid", error=INVALID_TOOL_CALL)
            if not (isinstance(obj, dict) and isinstance(obj.get("name"), str)
                    and isinstance(obj.get("arguments", {}), dict)):
                return Action("invalid", error=INVALID_TOOL_CALL)
            return Action("tool_call", name=obj["name"], arguments=obj.get("arguments", {}))
        return Action("none", error=NO_ACTION)
