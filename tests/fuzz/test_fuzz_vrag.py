"""Fuzz the VRAG-RL grammar: 10,000+ adversarial model turns (tests/fuzz/harness.py, fixed seed) through
parse, the tool layer (an EnvServer with tools of the image_search and crop schemas that echo their
arguments: rendering page images would take the suite's whole budget) and the Qwen3 chat template's
observation ids (user turns, VRAG-RL's role); then the same turns, as token ids, through the real agent
loop. Nothing escapes; every turn is an action or the invalid-action message; no episode ends with finish
"error"."""

from __future__ import annotations

import asyncio

import pytest

from envs.server import EnvServer
from envs.visual.tools import CropTool, ImageSearchTool
from rollout.chat import ChatTemplate
from rollout.formats.vrag import INVALID_ACTION, VRAGFormat
from tests.fuzz.harness import COUNTS, Echo, VRAGGrammar, fuzz_episodes, fuzz_turns, report


def make_env() -> EnvServer:
    return EnvServer([Echo(ImageSearchTool.schema), Echo(CropTool.schema)])


@pytest.fixture(scope="module")
def template(qwen3_tok):
    return ChatTemplate(qwen3_tok)


def test_vrag_turns_become_actions_or_invalid_action_observations(template):
    counts, crashes = asyncio.run(fuzz_turns(VRAGFormat(), make_env(), template, VRAGGrammar()))
    report("vrag turns", counts, crashes)
    assert not crashes, crashes[:5]
    assert sum(c["inputs"] for c in counts.values()) == sum(COUNTS.values()) >= 10_000
    assert counts["valid"]["tool_call"] > 0 and counts["valid"]["answer"] > 0
    for cls in ("deep_json", "huge_numbers", "nan_infinity", "wrong_types", "surrogate_escapes"):
        assert counts[cls]["invalid"] > 0, cls  # a bad <bbox> is an invalid action (VRAG-RL's rule)
    assert counts["random_unicode"]["bad_arguments"] > 0  # a lone surrogate in a <search> query
    assert counts["huge_strings"]["bad_arguments"] > 0


def test_vrag_turns_through_the_agent_loop(template):
    counts, crashes = asyncio.run(fuzz_episodes(VRAGFormat(), make_env(), template, VRAGGrammar()))
    report("vrag episodes", counts, crashes)
    assert not crashes, crashes[:5]
    assert counts["inputs"] >= 9_500 and counts["turns"] >= counts["inputs"] and counts["finish_error"] == 0
    assert counts["observations"][INVALID_ACTION] > 0
