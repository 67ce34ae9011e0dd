"""RolloutWorker on the HF engine (no Ray): multi-turn groups carry the task columns; a weight update
pauses episodes between turns and each turn records its version (partial rollout); an abort
cancels running groups and returns them empty (the dispatcher re-queues them)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from envs.base import LocalEnv, Observation
from rollout.formats import FORMATS
from rollout.formats.react import Action, ReActFormat
from rollout.worker import RolloutWorker


class EveryTurnCalls(ReActFormat):
    """Test grammar: every model turn calls the `wait` tool (a random policy writes no tool calls)."""

    def parse(self, text):
        return Action("tool_call", name="wait", arguments={})


FORMATS["every_turn_calls"] = f"{__name__}:EveryTurnCalls"  # this module, importable by name


class Wait:
    name = "wait"
    schema = {"name": "wait", "description": "waits", "parameters": {"type": "object", "properties": {}}}

    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, 0

    async def call(self, arguments):
        self.calls += 1
        await asyncio.sleep(self.seconds)
        return Observation("waited", metadata={"retrieved": [f"page-{self.calls}"]})


SAMPLING = {"max_tokens": 4, "temperature": 1.0}


def worker(tiny_model, tool, max_tool_calls=3):
    return RolloutWorker("hf", tiny_model, {"dtype": "float32"}, env=LocalEnv([tool], timeout_s=30),
                         agent={"format": "every_turn_calls", "max_tool_calls": max_tool_calls,
                                "max_tokens_per_turn": 4, "max_context_tokens": 2048})


def test_multi_turn_group_has_task_columns(tiny_model):
    w = worker(tiny_model, Wait(0.0))
    task = {"uid": "q1", "group": 3, "question": "Who founded X?", "answer": ["Ann", "Anne"], "gold_ids": ["p1"]}
    batch = asyncio.run(w.run_group(task, 2, SAMPLING))
    assert batch.num_rows == 2
    assert batch.column("group").to_pylist() == [3, 3] and batch.column("sample").to_pylist() == [0, 1]
    assert batch.column("question").to_pylist() == ["Who founded X?"] * 2
    assert batch.column("gold_answer").to_pylist() == ['["Ann", "Anne"]'] * 2
    assert batch.column("gold_ids").to_pylist() == [["p1"], ["p1"]]
    assert batch.column("num_tool_calls").to_pylist() == [3, 3]
    assert batch.column("finish").to_pylist() == ["max_turns"] * 2
    assert batch.column("num_turns").to_pylist() == [4, 4]
    assert len(batch.column("retrieved")[0].as_py()) == 3  # the tools' page ids, in order
    for mask, lps in zip(batch.column("loss_mask").to_pylist(), batch.column("rollout_logprobs").to_pylist()):
        mask, lps = np.array(mask), np.array(lps)
        assert mask.sum() > 0 and (mask == 0).sum() > 0  # model turns and observations
        assert np.all(lps[mask == 0] == 0) and np.all(lps[mask == 1] < 0)


def test_weight_update_mid_episode_is_recorded_per_turn(tiny_model):
    w = worker(tiny_model, Wait(0.5), max_tool_calls=2)
    vocab = w.engine.model.config.vocab_size

    async def scenario():
        from rollout.engines.base import encode_bucket

        # new weights with a zero output layer: every token then has logprob exactly -log(vocab)
        state = {k: v.detach().clone() for k, v in w.engine.model.state_dict().items()}
        for k in state:
            if k.endswith("lm_head.weight") or k.endswith("embed_tokens.weight"):
                state[k].zero_()
        group = asyncio.create_task(w.run_group({"uid": "q", "group": 0, "question": "Q?"}, 2, SAMPLING))
        await asyncio.sleep(0.25)  # the episodes are inside their first tool call
        assert await w.update_weights([encode_bucket(state.items())], 7) == 7
        return await group

    batch = asyncio.run(scenario())
    assert batch.num_rows == 2
    # the row keeps the oldest version that generated any of its turns
    assert batch.column("policy_version").to_pylist() == [0, 0]
    uniform = -np.log(vocab)
    for mask, lps in zip(batch.column("loss_mask").to_pylist(), batch.column("rollout_logprobs").to_pylist()):
        mask, lps = np.array(mask), np.array(lps)
        turns = np.split(lps, np.nonzero(np.diff(mask) != 0)[0] + 1)
        model_turns = [t for t, m in zip(turns, np.split(mask, np.nonzero(np.diff(mask) != 0)[0] + 1)) if m[0] == 1]
        assert len(model_turns) == 3
        assert not np.allclose(model_turns[0], uniform, atol=1e-4)   # turn 1: the old weights
        for later in model_turns[1:]:                                 # turns 2-3: the new weights
            np.testing.assert_allclose(later, uniform, atol=1e-4)


def test_abort_cancels_running_groups(tiny_model):
    w = worker(tiny_model, Wait(5.0), max_tool_calls=2)

    async def scenario():
        from rollout.engines.base import encode_bucket

        bucket = encode_bucket({k: v.detach().clone() for k, v in w.engine.model.state_dict().items()}.items())
        group = asyncio.create_task(w.run_group({"uid": "q", "group": 0, "question": "Q?"}, 2, SAMPLING))
        await asyncio.sleep(0.5)
        t0 = asyncio.get_running_loop().time()
        await w.update_weights([bucket], 1, abort=True)
        out = await group
        return out, asyncio.get_running_loop().time() - t0

    batch, seconds = asyncio.run(scenario())
    assert batch.num_rows == 0 and w.stats["aborted_groups"] == 1
    assert seconds < 4.0  # did not wait for the 5 s tool


def test_multi_turn_task_without_env_is_a_clear_error(tiny_model):
    w = RolloutWorker("hf", tiny_model, {"dtype": "float32"})
    with pytest.raises(ValueError, match="no env client"):
        asyncio.run(w.run_group({"uid": "q", "group": 0, "question": "Q?"}, 2, SAMPLING))


def memory_hooks():
    """Recipe hooks (imported by name on the worker): a memory system prompt per task, observations
    rewritten, and episodes of sample 1 rejected."""
    from rollout.agent import EpisodeHooks

    return EpisodeHooks(system_prompt=lambda task: f"MEMORY for {task['uid']}",
                        observation=lambda task, obs: Observation(obs.text.upper(), metadata=obs.metadata),
                        accept=lambda record: record.sample != 1)


def test_episode_hooks_by_name_reach_the_worker(tiny_model):
    w = RolloutWorker("hf", tiny_model, {"dtype": "float32"}, env=LocalEnv([Wait(0.0)], timeout_s=30),
                      agent={"format": "every_turn_calls", "max_tool_calls": 1, "max_tokens_per_turn": 4,
                             "max_context_tokens": 2048, "hooks": f"{__name__}:memory_hooks"})
    batch = asyncio.run(w.run_group({"uid": "q9", "group": 0, "question": "Who?"}, 3, SAMPLING))
    assert batch.column("sample").to_pylist() == [0, 2]  # sample 1 rejected by the filter hook
    assert w.stats["rejected_episodes"] == 1
    text = batch.column("response_text").to_pylist()[0]
    assert "WAITED" in text and "waited" not in text
    prompt = w._tokenizer.decode(batch.column("prompt_ids").to_pylist()[0])
    assert "MEMORY for q9" in prompt
    with pytest.raises(ValueError, match="agent.hooks"):
        RolloutWorker("hf", tiny_model, {"dtype": "float32"}, env=LocalEnv([Wait(0.0)]),
                      agent={"hooks": "no_such_module:make"})


def _model_turns(batch) -> list[tuple[int, ...]]:
    """Each sample's own tokens (loss mask 1): what the policy sampled, observations left out."""
    return [tuple(t for t, m in zip(ids, mask) if m)
            for ids, mask in zip(batch.column("response_ids").to_pylist(), batch.column("loss_mask").to_pylist())]


@pytest.mark.parametrize("seed", [1234, None], ids=["step-seed", "no-seed"])
def test_multi_turn_group_samples_differ_on_an_engine_that_honours_seeds(tiny_model, seed):
    """The G samples of a question must differ at temperature 1: a seed shared by every sample (step-seed), or the
    engine's own seed replayed on every request (no-seed, evaluation's path), made them identical on the HF engine
    (and on vLLM on GPU, which honours seeds). With the same step seed the group is reproducible."""
    sampling = dict(SAMPLING, max_tokens=6) | ({"seed": seed} if seed is not None else {})
    w = worker(tiny_model, Wait(0.0), max_tool_calls=1)
    task = {"uid": "q1", "group": 0, "question": "Who founded X?"}
    turns = _model_turns(asyncio.run(w.run_group(task, 4, sampling)))
    assert len(set(turns)) == 4, turns
    if seed is not None:
        again = _model_turns(asyncio.run(worker(tiny_model, Wait(0.0), max_tool_calls=1).run_group(task, 4, sampling)))
        assert again == turns
