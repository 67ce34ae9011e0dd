"""Fuzz the ReAct grammar (WebSailor / WebDancer): 10,000+ adversarial model turns (tests/fuzz/harness.py,
fixed seed) through parse, the tool layer (an EnvServer with the real search tool over BM25, and tools with
the visit and python schemas that echo their arguments) and the Qwen3 chat template's observation ids; then
the same turns, as token ids, through the real agent loop. Nothing escapes; every turn is an action or an
invalid-action observation; no episode ends with finish "error"."""

from __future__ import annotations

import asyncio

import pytest

from envs.search_backends import BM25Backend, Passage
from envs.server import EnvServer
from envs.tools.python import PythonTool
from envs.tools.search import SearchTool
from envs.tools.visit import VisitTool
from rollout.chat import ChatTemplate
from rollout.formats.react import INVALID_TOOL_CALL, NO_ACTION, ReActFormat
from tests.fuzz.harness import COUNTS, Echo, ReActGrammar, fuzz_episodes, fuzz_turns, report


def make_env() -> EnvServer:
    passages = [Passage(f"p{i}", w, f"{w} is a page about {w} and the city of Zatrea.", f"http://w/{w}")
                for i, w in enumerate(["Zatrea", "Brenvo", "Kyoto", "museum"])]
    return EnvServer([SearchTool(BM25Backend(passages)), Echo(VisitTool.schema), Echo(PythonTool.schema)])


@pytest.fixture(scope="module")
def template(qwen3_tok):
    return ChatTemplate(qwen3_tok, tools=make_env().tool_schemas())


def test_react_turns_become_actions_or_invalid_action_observations(template):
    counts, crashes = asyncio.run(fuzz_turns(ReActFormat(), make_env(), template, ReActGrammar()))
    report("react turns", counts, crashes)
    assert not crashes, crashes[:5]
    assert sum(c["inputs"] for c in counts.values()) == sum(COUNTS.values()) >= 10_000
    # the classes reach the paths they are meant for
    assert counts["valid"]["tool_call"] > 0 and counts["valid"]["answer"] > 0
    for cls in ("random_unicode", "wrong_types", "surrogate_escapes", "nan_infinity", "huge_numbers", "huge_strings"):
        assert counts[cls]["bad_arguments"] > 0, cls
    assert counts["deep_json"]["invalid"] > 0 and counts["deep_json"]["bad_arguments"] > 0
    assert counts["random_bytes"]["none"] > 0 and counts["tags_in_arguments"]["tool_call"] > 0


def test_react_turns_through_the_agent_loop(template):
    counts, crashes = asyncio.run(fuzz_episodes(ReActFormat(), make_env(), template, ReActGrammar()))
    report("react episodes", counts, crashes)
    assert not crashes, crashes[:5]
    assert counts["inputs"] >= 9_500 and counts["turns"] >= counts["inputs"] and counts["finish_error"] == 0
    assert counts["observations"][INVALID_TOOL_CALL] > 0 and counts["observations"][NO_ACTION] > 0
