"""The VRAG-RL grammar: valid, invalid and malformed turns; the tool calls it makes; it never raises."""

from __future__ import annotations

import asyncio
import random

import pytest

from envs.base import LocalEnv
from envs.registry import build_tools
from envs.world import generate_world
from rollout.formats.vrag import INVALID_ACTION, VRAGFormat


@pytest.fixture
def fmt():
    return VRAGFormat()


def test_valid_turns(fmt):
    a = fmt.parse("<think>I need the chart.</think>\n<search> population of Zatrea </search>")
    assert (a.kind, a.op, a.name, a.arguments) == ("tool_call", "search", "image_search",
                                                    {"query": "population of Zatrea"})
    a = fmt.parse("<think>zoom</think><bbox>[12, 30.5, 240, 400]</bbox>")
    assert (a.kind, a.op, a.name, a.arguments) == ("tool_call", "bbox", "crop", {"bbox": [12, 30.5, 240, 400]})
    a = fmt.parse("<think>done</think>\n<answer> 136,585 </answer>")
    assert (a.kind, a.op, a.answer, a.error) == ("answer", "answer", "136,585", None)


def test_the_first_complete_block_decides(fmt):
    assert fmt.parse("<answer>x</answer><search>q</search>").kind == "answer"
    assert fmt.parse("<search>q</search><answer>x</answer>").op == "search"
    assert fmt.parse("<bbox>[1, 2, 3, 4]</bbox><search>q</search>").op == "bbox"
    assert fmt.parse("<search>unclosed <answer>x</answer>").answer == "x"  # VRAG-RL's regex skips the open tag


def test_a_block_cut_by_its_stop_string_still_counts(fmt):
    assert "</search>" in fmt.stop_strings and "</bbox>" in fmt.stop_strings and fmt.stop_tokens == ()
    assert fmt.parse("<think>t</think>\n<search>population of Gabi").arguments == {"query": "population of Gabi"}
    assert fmt.parse("<bbox>[0, 0, 10, 10]").arguments == {"bbox": [0, 0, 10, 10]}
    assert fmt.parse("<answer>cut by the length limit").kind == "invalid"  # an answer must be closed


@pytest.mark.parametrize("text, why", [
    ("I think the answer is 12.", "no <search>"),
    ("<think>only thinking</think>", "no <search>"),
    ("", "no <search>"),
    ("<search>   </search>", "empty"),
    ("<bbox>[1, 2, 3]</bbox>", "4 numbers"),
    ("<bbox>[1, 2, 3, 4, 5]</bbox>", "4 numbers"),
    ("<bbox>1, 2, 3, 4</bbox>", "not JSON"),
    ("<bbox>[1, 2, 3, 4</bbox>", "not JSON"),
    ("<bbox>{\"x\": 1}</bbox>", "4 numbers"),
    ("<bbox>[\"1\", 2, 3, 4]</bbox>", "numbers"),
    ("<bbox>[true, 2, 3, 4]</bbox>", "numbers"),
    ("<bbox>[-1, 2, 3, 4]</bbox>", "non-negative"),
    ("<bbox>[NaN, 2, 3, 4]</bbox>", "finite"),
    ("<bbox>[1e999, 2, 3, 4]</bbox>", "finite"),
    ("<bbox>" + "[" * 5000 + "</bbox>", "JSON"),
])
def test_invalid_turns_yield_the_fixed_observation(fmt, text, why):
    a = fmt.parse(text)
    assert a.kind == "invalid" and a.op == "invalid" and a.error == INVALID_ACTION
    assert why in a.reason
    assert INVALID_ACTION.startswith("Your previous action is invalid.")
    assert "<bbox>[x1, y1, x2, y2]</bbox>" in INVALID_ACTION and INVALID_ACTION.endswith("Please try again.")


def test_malformed_output_never_raises(fmt):
    rng = random.Random(0)
    pieces = ["<search>", "</search>", "<bbox>", "</bbox>", "<answer>", "</answer>", "<think>", "</think>", "[",
              "]", ",", "1", "-2", "3.5", "NaN", "\"", "{", "}", "x", " ", "\n", "<|im_end|>", "\x00", "é"]
    for _ in range(3000):
        a = fmt.parse("".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))))
        assert a.kind in ("answer", "tool_call", "invalid")
        assert (a.error == INVALID_ACTION) == (a.kind == "invalid")
    for odd in (None, 12, b"<search>q</search>", ["<answer>x</answer>"]):
        assert fmt.parse(odd).kind == "invalid"


def test_tool_calls_carry_the_episode_key(fmt):
    bound = fmt.for_episode("task-7/3")
    assert bound.parse("<search>q</search>").arguments == {"query": "q", "episode_id": "task-7/3"}
    assert fmt.parse("<search>q</search>").arguments == {"query": "q"}  # the shared format adds none
    action = fmt.parse("<bbox>[1, 2, 3, 4]</bbox>")
    assert fmt.to_tool_call(action, "ep") == ("crop", {"bbox": [1, 2, 3, 4], "episode_id": "ep"})
    assert action.arguments == {"bbox": [1, 2, 3, 4]}  # not mutated
    named = VRAGFormat(search_tool="search", crop_tool="zoom")
    assert named.to_tool_call(named.parse("<search>q</search>")) == ("search", {"query": "q"})
    with pytest.raises(ValueError, match="calls no tool"):
        fmt.to_tool_call(fmt.parse("<answer>x</answer>"))
    assert "Question: Who?" in fmt.format_prompt("Who?")


def test_parsed_calls_drive_the_visual_tools():
    env = LocalEnv(build_tools({"image_search": {}, "crop": {}}, {"world": generate_world(0, "tiny")}))
    fmt = VRAGFormat().for_episode("e")
    found = asyncio.run(env.call(*fmt.to_tool_call(fmt.parse("<search>Population of cities</search>"))))
    assert not found.error and found.images and found.metadata["episode_id"] == "e"
    w, h = found.metadata["shown_size"]
    zoom = asyncio.run(env.call(*fmt.to_tool_call(fmt.parse(f"<bbox>[0, 0, {w // 2}, {h // 2}]</bbox>"))))
    assert not zoom.error and zoom.metadata["source"] == found.metadata["image_id"]
    outside = asyncio.run(env.call(*fmt.to_tool_call(fmt.parse(f"<bbox>[{w + 1}, 0, {w + 9}, 9]</bbox>"))))
    assert outside.error and "outside the image" in outside.text
