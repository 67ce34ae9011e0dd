"""Format rewards: does a finished response follow its method's tag grammar?

Owns: the tag grammars of the agent methods and their 0/1 format scores (SEEDS 3.5/3.6 WebSailor and
WebDancer, 4.3 VRAG-RL, 6.1 EvolveSearch, 7.3 MaskSearch), the shared ReAct grammar checker `react_format`,
and `strip_observations`, which removes environment text before anything is scored.

Must never: judge whether an answer is right (that is `reward/rules.py` and the judge), repair or rewrite a
response (a checker only reads), or import anything of the project. Pure functions on Python strings.

Input convention. `response_text` is everything after the prompt, decoded WITH special tokens, so the chat
template's turn markers are visible: observations sit between assistant turns as, e.g.,
`<|im_end|>\\n<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n`.
Between blocks a grammar tolerates only whitespace and the turn markers in `TURN_SEPARATORS`; any other
character outside a block is a violation. In particular a user message that is not wrapped in the
observation tag (e.g. a harness's "you have reached the maximum context length" nudge) makes the format 0.

Checkers return `(score, reason)`: `(1.0, "ok")`, or `(0.0, reason)` where the reason names the FIRST
violation in text order, e.g. "tool_call 2: invalid JSON (...)", "missing <answer> (...)",
"text outside tags at char 17: 'Hello'" — meant for logs and for counting failure kinds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Sequence
from typing import NamedTuple

__all__ = [
    "TURN_SEPARATORS",
    "strip_observations",
    "react_format",
    "websailor_format",
    "evolvesearch_format",
    "masksearch_format",
    "vrag_pattern",
]

# Chat-template turn markers (Qwen2.5 / Qwen3 ChatML) tolerated between blocks; they carry no meaning for a
# grammar. Checkers take `separators=` to replace them for other templates.
TURN_SEPARATORS: tuple[str, ...] = ("<|im_start|>assistant", "<|im_start|>user", "<|im_end|>",
                                    "<|endoftext|>")

OK = (1.0, "ok")

_VISION_SPAN = re.compile(r"<\|vision_start\|>.*?<\|vision_end\|>", re.DOTALL)  # an image's tokens in a turn
_USER_SPAN = re.compile(r"<\|im_start\|>user.*?(?:<\|im_end\|>|\Z)", re.DOTALL)


def strip_observations(text: str, observation_tags: Sequence[str] = ("tool_response",)) -> str:
    """Remove what the environment wrote, so that only model-generated text is scored (VRAG, SEEDS 4.3).

    Removes, in this order and replacing each with nothing:
    1. every chat-template user turn `<|im_start|>user ... <|im_end|>` (VRAG strips exactly these; multi-line
       spans included, i.e. DOTALL);
    2. every `<tag> ... </tag>` block for tag in `observation_tags` (WebSailor `<tool_response>` by default,
       MaskSearch / Search-R1 `<information>` when asked), wherever it sits.
    A span still open at the end of the text (a trajectory cut by the token limit inside an observation) is
    removed up to the end: observation text is never scored, even truncated. Matching is non-greedy, so the
    first closing marker ends a span.
    """
    text = _USER_SPAN.sub("", text)
    for tag in observation_tags:
        text = re.sub(rf"<{re.escape(tag)}>.*?(?:</{re.escape(tag)}>|\Z)", "", text, flags=re.DOTALL)
    return text


def vrag_pattern(response_text: str) -> float:
    """VRAG-RL pattern reward r_Pat (SEEDS 4.3; checklist item 21), on the text after `strip_observations`:

        r_Pat = 1[ contains <search>…</search> ] · 1[ contains <answer>…</answer> ]

    Blocks may be empty and may appear anywhere and in any order (VRAG's `re.search(r'<answer>.*?</answer>')`);
    an answer without any search scores 0, and VRAG's composite is gated on this score (`reward/compose.py`).
    """
    text = strip_observations(response_text)
    has_search = re.search(r"<search>.*?</search>", text, re.DOTALL) is not None
    has_answer = re.search(r"<answer>.*?</answer>", text, re.DOTALL) is not None
    return float(has_search and has_answer)


class _Block(NamedTuple):
    tag: str
    content: str
    start: int  # char offset of the opening tag


class _Junk(NamedTuple):
    start: int
    snippet: str


class _Unclosed(NamedTuple):
    tag: str
    start: int


class _Nested(NamedTuple):
    tag: str
    inner: str
    start: int


def _scan(text: str, tags: Sequence[str], observation_tag: str,
          separators: Sequence[str]) -> Iterator[_Block | _Junk | _Unclosed | _Nested]:
    """Split `text` into tag blocks, skipping whitespace and separators; stop at the first thing that is neither.

    Model-written blocks are checked for nested grammar tags (a `<think>` holding an `<answer>` is not a
    think); an observation block's content is the environment's business and is never inspected.
    """
    pos, n = 0, len(text)
    while True:
        while pos < n:  # skip whitespace and turn separators
            if text[pos].isspace():
                pos += 1
                continue
            sep = next((s for s in separators if text.startswith(s, pos)), None)
            if sep is None:
                break
            pos += len(sep)
        if pos >= n:
            return
        tag = next((t for t in tags if text.startswith(f"<{t}>", pos)), None)
        if tag is None:
            yield _Junk(pos, text[pos:pos + 40])
            return
        body_start = pos + len(tag) + 2
        end = text.find(f"</{tag}>", body_start)
        if end == -1:
            yield _Unclosed(tag, pos)
            return
        content = text[body_start:end]
        if tag != observation_tag:
            inner = next((t for t in tags if f"<{t}>" in content or f"</{t}>" in content), None)
            if inner is not None:
                yield _Nested(tag, inner, pos)
                return
        yield _Block(tag, content, pos)
        pos = end + len(tag) + 3


_JSON_TYPE = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}


def _tool_call_problem(content: str, tool_names: Collection[str] | None) -> str | None:
    """What is wrong with one `<tool_call>` body (SEEDS 3.6: JSON {"name": str, "arguments": object}), or None."""
    try:
        call = json.loads(content)
    except json.JSONDecodeError as err:
        return f"invalid JSON ({err.msg} at line {err.lineno} column {err.colno})"
    if not isinstance(call, dict):
        kind = _JSON_TYPE.get(type(call), type(call).__name__)
        return f'JSON is {kind}, expected an object with "name" and "arguments"'
    name = call.get("name")
    if not isinstance(name, str) or not name:
        return '"name" missing or not a non-empty string'
    if not isinstance(call.get("arguments"), dict):
        return '"arguments" missing or not an object'
    if tool_names is not None and name not in tool_names:
        return f"unknown tool {name!r} (known: {', '.join(sorted(tool_names))})"
    return None


def react_format(response_text: str, *, action_tag: str, observation_tag: str, min_actions: int = 1,
                 tool_names: Collection[str] | None = None,
                 separators: Sequence[str] = TURN_SEPARATORS, multi_actions: bool = False) -> tuple[float, str]:
    """The ReAct tag grammar shared by WebSailor, WebDancer, EvolveSearch and MaskSearch:

        response := ( <think>…</think> <ACTION>…</ACTION> <OBSERVATION>…</OBSERVATION> )^{≥ min_actions}
                    <think>…</think> <answer>…</answer>

    with only whitespace and `separators` between blocks and after the answer. Block contents:
    * think: anything without a grammar tag in it (may be empty);
    * action `tool_call`: JSON object with "name" (non-empty str; one of `tool_names` when given) and
      "arguments" (object); action `search` (or any other tag): non-empty text; neither may contain a grammar tag;
    * observation: anything (the environment wrote it);
    * answer: non-empty text without a grammar tag.
    With `multi_actions` (WebWatcher) a turn may hold several actions before its one observation.
    Returns `(1.0, "ok")` or `(0.0, first violation)`.
    """
    tags = ("think", action_tag, observation_tag, "answer")
    if len(set(tags)) != 4:
        raise ValueError(f"react_format: action_tag {action_tag!r} and observation_tag {observation_tag!r} "
                         "must differ from each other and from 'think' and 'answer'")
    # state -> the block tags allowed next
    expected = {"start": ("think",), "thought": (action_tag, "answer"),
                "acted": (observation_tag, action_tag) if multi_actions else (observation_tag,),
                "observed": ("think",), "done": ()}
    state, n_actions, last = "start", 0, None
    for item in _scan(response_text, tags, observation_tag, separators):
        if isinstance(item, _Unclosed):
            return 0.0, f"unclosed <{item.tag}> at char {item.start}"
        if isinstance(item, _Nested):
            return 0.0, f"<{item.tag}> at char {item.start} contains a <{item.inner}> tag"
        if isinstance(item, _Junk):
            where = "text after </answer>" if state == "done" else "text outside tags"
            return 0.0, f"{where} at char {item.start}: {item.snippet!r}"
        if item.tag not in expected[state]:
            if state == "done":
                return 0.0, f"block after </answer>: <{item.tag}> at char {item.start}"
            wanted = " or ".join(f"<{t}>" for t in expected[state])
            return 0.0, f"<{item.tag}> at char {item.start}: expected {wanted} after {last or 'the start'}"
        if item.tag == "think":
            state = "thought"
        elif item.tag == action_tag:
            n_actions += 1
            if action_tag == "tool_call":
                problem = _tool_call_problem(item.content, tool_names)
            else:
                problem = None if item.content.strip() else "empty"
            if problem is not None:
                return 0.0, f"{action_tag} {n_actions}: {problem}"
            state = "acted"
        elif item.tag == observation_tag:
            state = "observed"
        else:  # answer
            if not item.content.strip():
                return 0.0, f"empty <answer> at char {item.start}"
            if n_actions < min_actions:
                return 0.0, (f"<answer> after {n_actions} {action_tag} block(s); "
                             f"at least {min_actions} required")
            state = "done"
        last = f"</{item.tag}>"
    if state != "done":
        return 0.0, f"missing <answer> (response ends after {last or 'nothing: empty response'})"
    return OK


def websailor_format(response_text: str, tool_names: Collection[str] | None = None, min_tool_calls: int = 1,
                     separators: Sequence[str] = TURN_SEPARATORS) -> tuple[float, str]:
    """WebSailor / WebDancer / WebShaper R_format (SEEDS 3.5 Eq. 5, 3.6, 5.4): ReAct with JSON tool calls.

        ( <think>…</think> <tool_call>{"name": …, "arguments": {…}}</tool_call>
          <tool_response>…</tool_response> )+
        <think>…</think> <answer>…</answer>

    At least `min_tool_calls` cycles (1: the grammar of SEEDS 3.6 shows one or more). See `react_format`.
    """
    return react_format(response_text, action_tag="tool_call", observation_tag="tool_response",
                        min_actions=min_tool_calls, tool_names=tool_names, separators=separators)


def webwatcher_format(response_text: str, tool_names: Collection[str] | None = None, min_tool_calls: int = 1,
                      separators: Sequence[str] = TURN_SEPARATORS) -> tuple[float, str]:
    """WebWatcher's R_format (SEEDS 9.1-9.2): the WebSailor grammar where a turn may make several
    <tool_call>s (run concurrently) before its one <tool_response>. `min_tool_calls` counts calls. The images
    of an observation (vision spans, before its <tool_response>) are the environment's, not checked."""
    response_text = _VISION_SPAN.sub("", response_text)
    return react_format(response_text, action_tag="tool_call", observation_tag="tool_response",
                        min_actions=min_tool_calls, tool_names=tool_names, separators=separators, multi_actions=True)


def evolvesearch_format(response_text: str, action_tag: str = "tool_call",
                        tool_names: Collection[str] | None = None, min_actions: int = 1,
                        separators: Sequence[str] = TURN_SEPARATORS) -> tuple[float, str]:
    """EvolveSearch R_f ∈ {0, 1}, "exact template match" (SEEDS 6.1): the same ReAct grammar as WebSailor.

    EvolveSearch's template is thought–action–observation ending in think + answer, i.e. exactly
    `websailor_format` when the action is a JSON `<tool_call>` (the default). With `action_tag="search"` the
    action is a plain-text `<search>query</search>`, still answered by a `<tool_response>`. The exact tags of
    the paper are not verified [M]; the grammar is. R_f gates the answer reward (`COMPOSITIONS["evolvesearch"]`).
    """
    if action_tag not in ("tool_call", "search"):
        raise ValueError(f"evolvesearch_format: action_tag must be 'tool_call' or 'search', got {action_tag!r}")
    return react_format(response_text, action_tag=action_tag, observation_tag="tool_response",
                        min_actions=min_actions, tool_names=tool_names, separators=separators)


def masksearch_format(response_text: str, min_searches: int = 0,
                      separators: Sequence[str] = TURN_SEPARATORS) -> tuple[float, str]:
    """MaskSearch RL format reward (SEEDS 7.2/7.3; Search-R1-style grammar, [M]):

        ( <think>…</think> <search>query</search> <information>…</information> )*
        <think>…</think> <answer>…</answer>

    `<information>` blocks are the retrieved passages the environment inserts. Zero searches are allowed by
    default, as in Search-R1's sequence check (a think followed directly by the answer is well-formed);
    whether searching pays is left to the answer reward. See `react_format`.
    """
    return react_format(response_text, action_tag="search", observation_tag="information",
                        min_actions=min_searches, separators=separators)
