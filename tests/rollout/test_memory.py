"""Memp procedural memory (SEEDS 12; SEEDS 14 item 41): the deprecation rule, validation never adding a failure,
reflect rewriting exactly the workflow the failed task retrieved, the retrievers and the builders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rollout.memory import LLMBuilder, MemoryStore, Outcome, RuleBuilder, extract_facts, parse_steps
from rollout.memory.retrieve import ave_fact, retrieve

Q1 = "A certain country includes Brenvo. What is the name of this country?"
Q2 = "A certain city is the setting of Saisbrai Orchard. What is the population of this city?"
Q3 = "A certain country includes Trulge. What is the name of this country?"
TRAJ = ('<think>The question names Brenvo.</think><tool_call>{"name": "search", "arguments": {"query": ["Brenvo"]}}'
        '</tool_call>\n<tool_response>A search for Brenvo found: http://w/Brenvo</tool_response>'
        '<tool_call>{"name": "visit", "arguments": {"url": ["http://w/Brenvo"]}}</tool_call>'
        '<tool_response>Brenvo is a city in Shuvurtres.</tool_response><answer>Shuvurtres</answer>')


def use(store, key, query, success, text="<answer>x</answer>"):
    store.retrieve(query, key=key)
    return store.update([Outcome(key, query, text, float(success), success)])


def test_used_three_times_with_one_success_is_deleted():
    store = MemoryStore(update="validation", threshold=-1.0)  # every memory is retrieved every time
    m = store.add(Q1, TRAJ)
    use(store, "a", Q3, True)
    use(store, "b", Q3, False)
    assert m.id in store.records and store.records[m.id].hit == 2  # hit < 3: kept whatever the rate
    counts = use(store, "c", Q3, False)
    assert m.id not in store.records and counts["deprecated"] == 1
    assert store.records[1].hit == 2  # the memory task "a" added was used twice since: kept
    # 2 successes of 3 stays
    keep = MemoryStore(update="validation", threshold=-1.0)
    k = keep.add(Q1, TRAJ)
    for key, ok in (("a", True), ("b", False), ("c", True)):
        use(keep, key, Q3, ok)
    assert keep.records[k.id].hit == 3 and keep.records[k.id].success == 2


def test_validation_never_adds_a_failure_vanilla_does():
    for rule, added in (("validation", 0), ("vanilla", 1)):
        store = MemoryStore(update=rule)
        counts = store.update([Outcome("t", Q1, TRAJ, 0.0, False), Outcome("t", Q1, TRAJ, 0.1, False)])
        assert counts["added"] == added and len(store.records) == added, rule
    store = MemoryStore(update="validation")
    store.update([Outcome("t", Q1, "<answer>wrong</answer>", 0.0, False), Outcome("t", Q1, TRAJ, 1.0, True)])
    (only,) = store.records.values()
    assert "Shuvurtres" in only.trajectory  # the successful sample, not the failed one


def test_reflect_rewrites_exactly_the_retrieved_workflow():
    store = MemoryStore(update="reflect", top_k=1)
    near, far = store.add(Q1, TRAJ), store.add(Q2, TRAJ.replace("Brenvo", "Saisbrai Orchard"))
    before = {r.id: (r.script, r.trajectory) for r in store.records.values()}
    assert [r.id for r in store.retrieve(Q3, key="t")] == [near.id]
    counts = store.update([Outcome("t", Q3, "<answer>no idea</answer>", 0.0, False)])
    assert counts == {"used": 1, "deprecated": 0, "added": 0, "reflected": 1, "size": 2}
    assert store.records[near.id].script != before[near.id][0] and "failed" in store.records[near.id].script
    assert store.records[near.id].trajectory == before[near.id][1]
    assert (store.records[far.id].script, store.records[far.id].trajectory) == before[far.id]


def test_query_retrieval_threshold_and_top_k():
    store = MemoryStore(retrieve="query", top_k=2)
    a, b = store.add(Q1, TRAJ), store.add(Q2, TRAJ)
    assert [r.id for r in store.retrieve(Q3)] == [a.id]  # Q2 below the 0.5 cosine threshold
    store.threshold = -1.0
    assert [r.id for r in store.retrieve(Q3)] == [a.id, b.id]
    store.k = 1
    assert len(store.retrieve(Q3)) == 1
    assert MemoryStore().retrieve(Q1) == []


def test_ave_fact_and_random():
    q = {"ask": np.array([1.0, 0.0]), "context": np.array([0.0, 1.0])}
    mems = [{"ask": np.array([1.0, 0.0])}, {"ask": np.array([0.0, 1.0]), "context": np.array([0.0, 1.0])}, {}]
    np.testing.assert_allclose(ave_fact(q, mems), [1.0, 0.5, 0.0])  # mean over shared keys only
    assert retrieve("ave_fact", 1, None, num=3, query_facts=q, memory_facts=mems) == [(0, 1.0)]
    store = MemoryStore(retrieve="random", top_k=2)
    for i in range(5):
        store.add(f"{Q1} {i}", TRAJ)
    first = [r.id for r in store.retrieve(Q1, key="u")]
    assert len(set(first)) == 2 and first == [r.id for r in store.retrieve(Q1, key="u")]  # same task, same draw
    facts = MemoryStore(retrieve="ave_fact", top_k=1)
    a = facts.add(Q1, TRAJ)
    facts.add(Q2, TRAJ)
    assert [r.id for r in facts.retrieve(Q3)] == [a.id]


def test_builders_and_facts():
    facts = extract_facts(Q2)
    assert facts == {"entities": "Saisbrai Orchard", "ask": "What is the population of this city?",
                     "context": "A certain city is the setting of <name>."}
    p = parse_steps(TRAJ + '<tool_call>{"name": broken</tool_call>')
    assert [s.tool for s in p.steps] == ["search", "visit", "invalid"] and p.answer == "Shuvurtres"
    script = RuleBuilder().script(Q1, TRAJ)
    assert "Brenvo" not in script and "<a name from the question>" in script and "step 1" in script
    store = MemoryStore(build="trajectory")
    r = store.add(Q1, TRAJ)
    assert r.script == "" and "Shuvurtres" in r.trajectory and r.facts["entities"] == "Brenvo"
    with pytest.raises(ValueError, match="reflect"):
        MemoryStore(build="trajectory", update="reflect")


def test_llm_builder_uses_the_reply_and_survives_a_bad_one():
    replies = iter(["1. search the named entity\n2. read its page", "no tags at all",
                    "<Analysis>read first</Analysis><Workflow>1. search\n2. visit\n3. answer</Workflow>"])

    async def complete(messages):
        assert messages[0]["role"] == "system" and "Task:" in messages[1]["content"]
        return next(replies)

    b = LLMBuilder(complete)
    assert b.script(Q1, TRAJ) == "1. search the named entity\n2. read its page"
    assert b.reflect("old", 0.0, Q1, TRAJ) == "old" and b.failures == 1  # malformed: the old workflow stays
    assert b.reflect("old", 0.0, Q1, TRAJ) == "1. search\n2. visit\n3. answer"


def test_save_and_load_round_trip(tmp_path):
    store = MemoryStore(update="validation", top_k=1)
    store.add(Q1, TRAJ)
    use(store, "a", Q3, True)
    store.retrieve(Q3, key="pending")
    path = store.save(tmp_path / "memory.json")
    again = MemoryStore(update="validation", top_k=1)
    assert again.load(path) == 2
    assert again.state_dict() == json.loads(path.read_text()) == store.state_dict()
    (tmp_path / "bad.json").write_text('{"format_version": 1, "next_id": 1, "records": [{"idx": 0}]}')
    with pytest.raises(ValueError, match="record 0"):
        again.load(tmp_path / "bad.json")


def test_memory_hook_appends_retrieved_memory_to_the_system_prompt():
    import asyncio

    from transformers import AutoTokenizer

    from envs.base import LocalEnv
    from rl.models import build_tiny_model
    from rollout.agent import EpisodeHooks, run_episode
    from rollout.chat import ChatTemplate
    from rollout.engines import Generation, SamplingParams

    tok = AutoTokenizer.from_pretrained(str(build_tiny_model()))
    store = MemoryStore(top_k=1)
    store.add(Q1, TRAJ)
    seen = []

    class Engine:
        async def generate(self, prompt_ids, sampling, request_id=None):
            seen.append(tok.decode(prompt_ids))
            ids = tok.encode("<answer>Shuvurtres</answer>", add_special_tokens=False)
            return Generation(ids, [0.0] * len(ids), "stop", policy_version=0)

    async def memory(task):  # what rl/memory_group.py's hook does through the shared actor
        return store.prompt(store.retrieve(task["question"], key=task["uid"]))

    template = ChatTemplate(tok, system="BASE SYSTEM")
    for hooks in (EpisodeHooks(memory=memory), EpisodeHooks()):
        ep = asyncio.run(run_episode(Engine(), LocalEnv([]), template, {"uid": "t9", "question": Q3},
                                     SamplingParams(max_tokens=64), hooks=hooks))
        assert ep.record.finish == "answer"
    with_memory, without = seen
    assert "BASE SYSTEM" in with_memory and "[Memory 1]" in with_memory and "<a name from the question>" in with_memory
    assert "[Memory 1]" not in without and "BASE SYSTEM" in without
    assert store.retrieved == {"t9": [0]}
