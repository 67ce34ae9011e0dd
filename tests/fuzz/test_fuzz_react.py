"""Fuzz the ReAct grammar (WebSailor / WebDancer): 10,000+ adversarial model turns (tests/fuzz/harness.py,
fixed seed) through parse, the tool layer (an EnvServer with the real search tool over BM25 and the visit
and python schemas) and the Qwen3 chat template's observation ids; then the same turns, as token ids,
through the real agent loop. Nothing escapes; every turn is an action or an invalid-action observation;
no episode ends with finish "error"."""

from __future__ import annotations

import pytest

from envs.search_backends import BM25Backend, Passage
from envs.tools.python import PythonTool
from envs.tools.search import SearchTool
from envs.tools.visit import VisitTool
from rollout.formats.react import INVALID_TOOL_CALL, NO_ACTION, ReActFormat
from tests.fuzz.common import Echo, fuzz_episodes, fuzz_turns, report
from tests.fuzz.harness import COUNTS, ReActGrammar


def make_env():
    from envs.server import EnvServer

    passages = [Passage(f"p{i}", w, f"{w} is a page about {w} and the city of Zatrea.", f"http://w/{w}")
                for i, w in enumerate(["Zatrea", "Brenvo", "Kyoto", "museum"])]
    return EnvServer([SearchTool(BM25Backend(passages)), Echo(VisitTool.schema), Echo(PythonTool.schema)])


def test_react_turns_become_actions_or_invalid_action_observations(qwen3_template):
    counts, crashes = fuzz_turns(ReActFormat(), make_env(), qwen3_template, ReActGrammar())
    report("react turns", counts, crashes)
    assert not crashes, crashes[:5]
    assert sum(c["inputs"] for c in counts.values()) == sum(COUNTS.values()) >= 10_000
    # the classes reach the paths they are meant for
    assert counts["valid"]["tool_call"] > 0 and counts["valid"]["answer"] > 0
    for cls in ("wrong_types", "surrogate_escapes", "nan_infinity", "huge_numbers", "huge_strings"):
        assert counts[cls]["bad_arguments"] > 0, cls
    assert counts["deep_json"]["invalid"] > 0 and counts["deep_json"]["bad_arguments"] > 0
    assert counts["random_bytes"]["none"] > 0


def test_react_turns_through_the_agent_loop(qwen3_template):
    counts, crashes = fuzz_episodes(ReActFormat(), make_env(), qwen3_template, ReActGrammar())
    report("react episodes", counts, crashes)
    assert not crashes, crashes[:5]
    assert counts["episodes"] > 0 and counts["turns"] >= 10_000 and counts["finish_error"] == 0
    assert counts["observations"].get(INVALID_TOOL_CALL, 0) > 0 and counts["observations"].get(NO_ACTION, 0) > 0


@pytest.fixture(scope="module")
def qwen3_template():
    from transformers import AutoTokenizer

    from rl.models import build_tiny_model
    from rollout.chat import ChatTemplate

    tok = AutoTokenizer.from_pretrained(str(build_tiny_model(tokenizer="qwen3")))
    return ChatTemplate(tok, tools=make_env().tool_schemas())
