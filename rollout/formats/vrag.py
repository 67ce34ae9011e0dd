"""The VRAG-RL grammar (SEEDS 4.2): search page images, crop a region, answer.

    <think> ... </think>
    <search> population of Zatrea </search>          -> image_search {"query": "population of Zatrea"}
    ... (observation: the page image, a user turn) ...
    <think> ... </think>
    <bbox>[120, 340, 410, 420]</bbox>                 -> crop {"bbox": [120, 340, 410, 420]}
    ... (observation: the region, zoomed) ...
    <answer> 136,585 </answer>

Owns: turning one assistant turn's text into a `VRAGAction`, the mapping of an action to a tool call
(`to_tool_call`), the fixed observation for an invalid turn, the stop strings, and the prompt.

Parsing follows VRAG-RL's `generation.py`: the first complete `<search|answer|bbox>...</...>` block decides
the action (what its regex `<(search|answer|bbox)>(.*?)</\\1>` finds, in linear time: `first_block`); a
`<bbox>` must JSON-parse to 4 finite non-negative numbers (booleans, NaN and integers past float range
refused too); anything else (no action, an empty query, a bad box) is invalid and
yields `INVALID_ACTION`, VRAG-RL's fixed user message, and the episode goes on. Generation stops at
`</search>` or `</bbox>` (stop strings, not special tokens: Qwen2.5-VL has no such tokens); the format
asks the engine to keep the stop string (`include_stop_strings`: the closing tag is part of the model's
turn, and the pattern reward looks for it), and an engine that drops it anyway leaves a search or bbox
block open at the very end of the text, which counts as closed. An answer is never cut by a stop string (the turn ends at EOS) and must be closed.

The episode key: the tools keep what each episode was shown (de-duplication, the frame of a crop), so a
tool call carries `episode_id` (see `envs/visual/tools.py`). `VRAGFormat(episode_id=...)` puts it into
every call it parses (one format object per episode: `fmt.for_episode(key)`), and `to_tool_call(action,
episode_id)` adds it to a parsed call.

Never: call tools, touch tokens or images, or raise on model output (`parse` turns any exception into
an invalid action).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from rollout.formats.react import Action, first_block

# VRAG-RL generation.py: the user message after an invalid action (a bad bbox included), between the
# "<|im_start|>user\n" and "\n<|im_end|>" the chat template adds (SEEDS 4.2)
INVALID_ACTION = (
    "Your previous action is invalid. You must conduct reasoning inside <think> and </think> first every time "
    "you get new information. After reasoning, if you find you lack some knowledge, you can call a search "
    "engine by <search> query </search> and user will return the searched results. Every time you retrieve an "
    "image, you have the option to crop it to obtain a clearer view, the format for coordinates is "
    "<bbox>[x1, y1, x2, y2]</bbox>. You can search as many times as your want. If you find no further external "
    "knowledge needed, you can directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Please try again."
)

# VRAG-RL's prompt (paper, Figure 9; data scripts): the instruction, then the question
PROMPT = (
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every time you "
    "get new information. After reasoning, if you find you lack some knowledge, you can call a search engine "
    "by <search> query </search> and user will return the searched results. Every time you retrieve an image, "
    "you have the option to crop it to obtain a clearer view, the format for coordinates is "
    "<bbox>[x1, y1, x2, y2]</bbox>. You can search as many times as your want. If you find no further external "
    "knowledge needed, you can directly provide the answer inside <answer> and </answer>, without detailed "
    "illustrations. For example, <answer> Beijing </answer>. Question: {question}"
)

_TAGS = ("search", "answer", "bbox")
_OPEN_AT_END = re.compile(r"<(search|bbox)>((?:(?!<(?:search|answer|bbox)>).)*)\Z", re.S)


@dataclass
class VRAGAction(Action):
    """An `Action` (kind "answer" | "tool_call" | "invalid") with VRAG-RL's own name for it and why."""

    op: str = ""  # "search" | "bbox" | "answer" | "invalid"
    reason: str | None = None  # what made an invalid turn invalid (for logs; the model sees INVALID_ACTION)


def parse_bbox(content: str) -> tuple[list[float] | None, str | None]:
    """VRAG-RL's check: JSON, a list of exactly 4 non-negative numbers. (box, None) or (None, why)."""
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):  # JSONDecodeError; ints past 4300 digits; nesting past the limit
        return None, f"bbox is not JSON: {content.strip()!r:.80}"
    if not isinstance(value, list) or len(value) != 4:
        return None, f"bbox must be a JSON list of 4 numbers, got {content.strip()!r:.80}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None, f"bbox values must be numbers, got {content.strip()!r:.80}"
    if not all(_finite(v) and v >= 0 for v in value):
        return None, f"bbox values must be finite and non-negative, got {content.strip()!r:.80}"
    return value, None


def _finite(v: int | float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int past float range
        return False


class VRAGFormat:
    """Parse an assistant turn: the first complete <search> / <bbox> / <answer> block decides."""

    stop_tokens: tuple[str, ...] = ()  # no special tokens end a VRAG-RL action
    include_stop_strings = True  # the action's closing tag is the model's (VRAG-RL re-appends it too)
    observation_role = "user"  # observations (images, the invalid-action message) are user turns (SEEDS 4.1)
    stop_strings = ("</search>", "</bbox>")
    invalid_action = INVALID_ACTION
    prompt = PROMPT

    def __init__(self, search_tool: str = "image_search", crop_tool: str = "crop", episode_id: str | None = None):
        self.search_tool, self.crop_tool, self.episode_id = search_tool, crop_tool, episode_id

    def for_episode(self, episode_id: str) -> VRAGFormat:
        """The same format, adding `episode_id` to every tool call it parses."""
        return VRAGFormat(self.search_tool, self.crop_tool, str(episode_id))

    def parse(self, text: str) -> VRAGAction:
        if not isinstance(text, str):
            return self._invalid(f"model output is {type(text).__name__}, not text")
        try:
            return self._parse(text)
        except Exception as err:  # a grammar bug must not end the episode: the turn is invalid, the episode goes on
            return self._invalid(f"unparsable turn ({type(err).__name__})")

    def _parse(self, text: str) -> VRAGAction:
        block = first_block(text, _TAGS)
        if block is not None:
            op, content = block[0], block[2]
        else:
            match = _OPEN_AT_END.search(text)
            if match is None:
                return self._invalid("no <search>, <bbox> or <answer> block")
            op, content = match.group(1), match.group(2)
        if op == "answer":
            return VRAGAction("answer", answer=content.strip(), op="answer")
        if op == "search":
            query = content.strip()
            if not query:
                return self._invalid("empty <search> query")
            return self._call(self.search_tool, {"query": query}, op)
        bbox, why = parse_bbox(content)
        if bbox is None:
            return self._invalid(why)
        return self._call(self.crop_tool, {"bbox": bbox}, op)

    def _call(self, name: str, arguments: dict, op: str) -> VRAGAction:
        if self.episode_id is not None:
            arguments["episode_id"] = self.episode_id
        return VRAGAction("tool_call", name=name, arguments=arguments, op=op)

    def _invalid(self, reason: str) -> VRAGAction:
        return VRAGAction("invalid", error=INVALID_ACTION, op="invalid", reason=reason)

    def to_tool_call(self, action: Action, episode_id: str | None = None) -> tuple[str, dict]:
        """(tool name, arguments) of a parsed tool call, with `episode_id` added when given. Not for
        answers or invalid turns (a ValueError: that is the caller's mistake, not the model's)."""
        if action.kind != "tool_call" or action.name is None:
            raise ValueError(f"to_tool_call: a {action.kind!r} action calls no tool")
        arguments = dict(action.arguments)
        if episode_id is not None:
            arguments["episode_id"] = str(episode_id)
        return action.name, arguments

    def format_prompt(self, question: str) -> str:
        """VRAG-RL's user prompt for a question."""
        return PROMPT.format(question=question)
