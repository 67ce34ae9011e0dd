"""Routing and async admission through real RolloutWorker actors (HF engine, tiny model):
a task whose tool hangs does not hold the other engine up (least-loaded routing as groups finish);
async admission keeps staleness within max_staleness and every row carries its policy_version; a
sync rollout after an async stage gets its own groups, not what the async producer left in flight; a group call
that runs out of time names the ranks that did not answer."""

from __future__ import annotations

import asyncio
import sys
import time

import numpy as np
import pyarrow as pa
import pytest
import ray

from envs.base import LocalEnv, Observation
from rl.cluster import ActorGroup, connect
from rl.data import TaskSampler
from rl.rollout_queue import AsyncRollout, Dispatcher
from rollout.formats.react import Action, ReActFormat
from rollout.worker import RolloutWorker

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class EveryTurnCalls(ReActFormat):
    def parse(self, text):
        return Action("tool_call", name="lookup", arguments={})


class Lookup:
    name = "lookup"
    schema = {"name": "lookup", "description": "look up", "parameters": {"type": "object", "properties": {}}}

    async def call(self, arguments):
        return Observation("ok")


SAMPLING = {"max_tokens": 4, "temperature": 1.0}


@pytest.fixture(scope="module")
def ray_session():
    connect(None, num_cpus=4)
    yield
    ray.shutdown()


def workers(tiny_model, env, num=2, max_tool_calls=1):
    agent = {"format": EveryTurnCalls(), "max_tool_calls": max_tool_calls, "max_tokens_per_turn": 4,
             "max_context_tokens": 1024}
    return ActorGroup(RolloutWorker, num, name="rollout-test", num_cpus=0.5,
                      kwargs_for=lambda i: dict(backend="hf", model_path=tiny_model,
                                                engine_kwargs={"dtype": "float32", "seed": i}, env=env, agent=agent),
                      timeout_s=120)


def test_long_tail_task_does_not_idle_the_other_engine(tiny_model, ray_session):
    class SlowTool:
        name = "lookup"
        schema = Lookup.schema

        async def call(self, arguments):
            await asyncio.sleep(float(arguments.get("sleep", 0)))
            return Observation("ok")

    group = workers(tiny_model, LocalEnv([SlowTool()], timeout_s=30))
    try:
        # engine 0 gets the first task; its grammar asks the tool to sleep 6 s (a long-tail episode)
        ray.get(group.actors[0].__ray_call__.remote(
            lambda w: setattr(w, "_format", None) or setattr(w, "format_name", _slow_format(6.0))), timeout=60)
        d = Dispatcher(group.actors, n=2, sampling=SAMPLING, max_inflight=1)
        tasks = [{"uid": f"t{i}", "group": i, "question": f"Q{i}?"} for i in range(8)]
        t0 = time.perf_counter()
        batches = d.run(tasks, timeout_s=120, what="test rollout")
        wall = time.perf_counter() - t0
        assert [b.column("uid")[0].as_py() for b in batches] == [t["uid"] for t in tasks]
        assert all(b.num_rows == 2 and len(set(b.column("uid").to_pylist())) == 1 for b in batches)
        # engine 0 was busy with its slow task; engine 1 took every other task as groups finished
        assert d.groups_per_engine == [1, 7], d.groups_per_engine
        assert wall < 6.0 + 6.0, wall
    finally:
        group.shutdown()


def _slow_format(seconds):
    class Slow(ReActFormat):
        def parse(self, text):
            return Action("tool_call", name="lookup", arguments={"sleep": seconds})

    return Slow()


def test_async_admission_bounds_staleness(tiny_model, ray_session):
    group = workers(tiny_model, LocalEnv([Lookup()], timeout_s=30), num=1)
    try:
        tasks = [{"uid": f"t{i}", "question": f"Q{i}?"} for i in range(32)]
        sampler = TaskSampler(tasks, batch_size=2, seed=0)
        d = Dispatcher(group.actors, n=2, sampling=SAMPLING, max_inflight=8)
        producer = AsyncRollout(d, sampler, batch_size=2, max_staleness=1)
        from rollout.engines.base import encode_bucket

        state = ray.get(group.actors[0].__ray_call__.remote(
            lambda w: {k: v.detach().clone() for k, v in w.engine.model.state_dict().items()}), timeout=60)
        bucket = encode_bucket(state.items())
        version, seen = 0, []
        for step in range(5):
            producer.admit(version)
            assert producer.produced <= (1 + version + 1) * 2  # the admission rule
            batch, m = producer.take(2, version, timeout_s=60)
            assert batch.num_rows == 4 and sorted(set(batch.column("group").to_pylist())) == [0, 1]
            versions = batch.column("policy_version").to_numpy()
            assert np.all(version - versions <= 1) and m["async/staleness_max"] <= 1
            seen += list(version - versions)
            time.sleep(0.2)  # "training"
            version += 1
            assert ray.get(group.actors[0].update_weights.remote([bucket], version), timeout=60) == version
        assert max(seen) == 1  # rollouts did overlap training (some rows are one version behind)
    finally:
        group.shutdown()


@ray.remote(num_cpus=0)
class Echo:
    """A stand-in engine: one row per sample naming the task it rolled out."""

    def run_group(self, task, n, sampling):
        time.sleep(task.get("sleep", 0.0))
        return pa.RecordBatch.from_pydict({"uid": [task["uid"]] * n, "question": [task["question"]] * n})


def test_a_sync_rollout_ignores_groups_an_async_producer_left(ray_session):
    d = Dispatcher([Echo.remote()], n=1, sampling={}, max_inflight=4)
    # admitted by the RL stage's async producer and never taken; one has the uid and group of an
    # evaluation task
    d.submit([{"uid": "e0", "group": 0, "question": "rl", "sleep": 0.3}, {"uid": "r7", "group": 1, "question": "rl"}])
    tasks = [{"uid": f"e{i}", "group": i, "question": "eval"} for i in range(3)]
    batches = d.run(tasks, timeout_s=60, what="test evaluation")
    assert [(b.column("uid")[0].as_py(), b.column("question")[0].as_py()) for b in batches] == \
        [("e0", "eval"), ("e1", "eval"), ("e2", "eval")]
    assert d.foreign == 2 and d.outstanding == 0


class Sleeper:
    def __init__(self, rank):
        self.rank = rank

    def nap(self, seconds_by_rank):
        time.sleep(seconds_by_rank[self.rank])
        return self.rank


def test_a_group_call_that_times_out_names_the_ranks_that_did_not_answer(ray_session):
    group = ActorGroup(Sleeper, 3, name="sleepers", num_cpus=0.1, kwargs_for=lambda i: {"rank": i}, timeout_s=60)
    assert group.call("nap", [0, 0, 0]) == [0, 1, 2]
    with pytest.raises(TimeoutError, match=r"waited 2s for sleepers.nap on 3 rank\(s\); no answer from "
                                           r"sleepers rank 1 \(1 of 3\)"):
        group.call("nap", [0, 30, 0], timeout_s=2)
    group.shutdown()


def test_a_timeout_of_the_rollout_names_the_engines_holding_the_late_groups():
    d = Dispatcher([None, None], n=2, sampling={})
    d.inflight = {object(): ({"uid": f"q{k}"}, k % 2) for k in range(9)}
    assert d.holding() == "engine 0: 5 (tasks q0, q2, q4, ...); engine 1: 4 (tasks q1, q3, q5, ...)"
    d.inflight = {}
    assert d.holding() == "none in flight"
