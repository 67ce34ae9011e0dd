"""The scripted world expert through the real agent loop (ReAct grammar, chat template, search and
visit on the local world server): it solves SailorFog questions by acting only through the tools,
and its trajectories have the policy's format (loss mask on its own turns only)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from transformers import AutoTokenizer

from envs.base import LocalEnv
from envs.registry import build_tools
from envs.world import SearchIndex, WorldServer, generate_world, sailorfog_qa
from envs.world.expert import WorldExpert
from rl.models import build_tiny_model
from rollout.agent import AgentConfig, run_episode
from rollout.chat import ChatTemplate
from rollout.engines import SamplingParams
from rollout.formats import ReActFormat
from rollout.scripted import TextPolicyEngine


@pytest.fixture(scope="module")
def world_env():
    world = generate_world(seed=0, size="tiny")
    with WorldServer(world) as server:
        host = server.base_url.split("//")[1]
        ctx = {"index": SearchIndex.from_world(world, server.base_url), "allow_hosts": [host], "world": world}
        yield world, server.base_url, LocalEnv(build_tools({"search": {}, "visit": {}}, ctx), timeout_s=30)


def test_expert_solves_through_the_tools(world_env):
    world, base_url, env = world_env
    tok = AutoTokenizer.from_pretrained(str(build_tiny_model(tokenizer="qwen3")))
    fmt = ReActFormat()
    template = ChatTemplate(tok, tools=env.tool_schemas(), system=fmt.system_prompt(env.tool_schemas()))
    tasks = sailorfog_qa(world, n=12, seed=3)

    async def episode(task):
        expert = WorldExpert(world, task, base_url)
        engine = TextPolicyEngine(expert.next_turn, tok)
        return await run_episode(engine, env, template, task, SamplingParams(max_tokens=512),
                                 AgentConfig(max_tool_calls=12, max_context_tokens=16000), fmt)

    eps = asyncio.run(_all(episode, tasks))
    solved = [e for e, t in zip(eps, tasks) if e.record.answer_text == t["answer"]]
    assert len(solved) >= 10, [(e.record.answer_text, t["answer"], e.record.finish) for e, t in zip(eps, tasks)]
    for e in solved:
        r = e.record
        assert r.finish == "answer" and r.num_tool_calls >= 2
        calls = [m["content"] for m in e.messages if m["role"] == "assistant"]
        assert '"name": "search"' in calls[0] and '"name": "visit"' in "".join(calls)
        # the answer was read from a page the tools returned
        assert any(r.answer_text in m["content"] for m in e.messages if m["role"] == "tool")
        mask = np.array(r.loss_mask)
        ids = np.array(r.response_ids)
        model_text = tok.decode(ids[mask == 1])
        assert "<answer>" in model_text and "<tool_response>" not in model_text


async def _all(fn, items):
    return await asyncio.gather(*(fn(t) for t in items))


def test_explicit_thoughts_restate_the_question_and_quote_the_line_each_step_rests_on(world_env):
    """sft.expert_thoughts=explicit: every turn after a page read restates the question and quotes a sentence
    of the page just read: the one naming the page it follows next, or the one stating the answer. The
    actions (calls and answers) are the brief expert's."""
    world, base_url, env = world_env
    tok = AutoTokenizer.from_pretrained(str(build_tiny_model(tokenizer="qwen3")))
    fmt = ReActFormat()
    template = ChatTemplate(tok, tools=env.tool_schemas(), system=fmt.system_prompt(env.tool_schemas()))
    tasks = sailorfog_qa(world, n=8, seed=5)

    async def episode(task, thoughts):
        engine = TextPolicyEngine(WorldExpert(world, task, base_url, thoughts=thoughts).next_turn, tok)
        return await run_episode(engine, env, template, task, SamplingParams(max_tokens=512),
                                 AgentConfig(max_tool_calls=12, max_context_tokens=16000), fmt)

    brief = asyncio.run(_all(lambda t: episode(t, "brief"), tasks))
    explicit = asyncio.run(_all(lambda t: episode(t, "explicit"), tasks))
    followed = 0
    for b, e, task in zip(brief, explicit, tasks):
        assert e.record.answer_text == b.record.answer_text and e.record.num_tool_calls == b.record.num_tool_calls
        msgs = [m for m in e.messages if m["role"] in ("assistant", "tool")]
        for before, after in zip(msgs, msgs[1:]):
            if before["role"] == "tool" and "The useful information" in before["content"]:  # after a page read
                before, turn = before["content"], after["content"]
                assert f"The question: {task['question']}" in turn
                quoted = turn.split("The page says: ")[1].split("\n")[0]
                assert quoted in before and quoted.endswith(".")
                followed += '"name": "visit"' in turn
    assert followed >= 1  # at least one episode follows a link from a page (2 pages read)
    with pytest.raises(ValueError, match="brief"):
        WorldExpert(world, tasks[0], base_url, thoughts="verbose")
