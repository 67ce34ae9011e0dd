"""The procedural memory of a run (SEEDS 12) as one Ray actor that every rollout worker shares.

    rollout worker, per episode:  hooks.memory(task) -> MemoryActor.retrieve(question, uid) -> system prompt
    controller, after each step:  MemoryGroup.update(trajectories, rewards)  (memory.mode=online)
    checkpoints and the run folder: memory.json (resume continues with the same memory)

Owns: `MemoryActor` (rollout/memory MemoryStore behind a named actor), `MemoryGroup` (the driver's handle:
building from a batch, updates, saving, loading), `episode_hooks` (what `agent.hooks` names on the workers;
RLGroups sets it when memory.enabled) and `check_memory` (the config's dry run).

Never: decide when to update (the controller and the recipes do); wait without a timeout.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from rollout.agent import EpisodeHooks
from rollout.memory import LLMBuilder, MemoryStore, Outcome
from rollout.trajectory import reward_part_column, scalar_numpy

MEMORY_ACTOR = "windward-memory"
HOOKS = "rl.memory_group:episode_hooks"
RETRIEVE_TIMEOUT_S = 120.0  # one retrieval (an embedder on CPU may take a second per new query)


def store_kwargs(memory, seed: int) -> dict:
    """MemoryStore arguments of a `memory:` config section (rl/config.py MemoryConfig)."""
    return dict(build=memory.build, retrieve=memory.retrieve, update=memory.update, top_k=memory.top_k,
                threshold=memory.threshold, embedder=memory.embedder, seed=seed,
                max_prompt_chars=memory.max_prompt_chars)


def make_builder(memory):
    if memory.builder != "llm":
        return None
    from envs.llm import ChatClient

    client = ChatClient(**dict(memory.llm or {}), service="memory builder")
    return LLMBuilder(client.complete)


def check_memory(cfg) -> None:
    """The config's dry run: the store, its embedder spec and the LLM client construct; agent.hooks is free."""
    m = cfg.memory
    if m.builder == "llm" and not m.llm:
        raise ValueError("memory.builder=llm needs memory.llm: {base_url, model} of an OpenAI-compatible server")
    if cfg.agent.hooks not in (None, HOOKS):
        raise ValueError(f"memory.enabled sets agent.hooks to {HOOKS!r} itself (the memory hook); leave agent.hooks "
                         f"unset, got {cfg.agent.hooks!r}")
    if m.update == "reflect" and m.build == "trajectory":
        raise ValueError("memory.update=reflect rewrites a workflow: it needs build script or proceduralization")
    kind = m.embedder if isinstance(m.embedder, str) else dict(m.embedder).get("kind")
    if kind == "hashing":  # cheap to build here; a model-backed embedder is built by the actor at start
        MemoryStore(**store_kwargs(m, cfg.run.seed))
    make_builder(m)


class MemoryActor:
    """A MemoryStore in a Ray actor (methods run one at a time: retrievals and updates never interleave)."""

    def __init__(self, settings: dict, builder_spec=None):
        self.settings = dict(settings)
        self.store = MemoryStore(**settings, builder=make_builder(builder_spec) if builder_spec else None)
        self.retrievals = 0

    def retrieve(self, query: str, key: str | None = None) -> str | None:
        self.retrievals += 1
        return self.store.prompt(self.store.retrieve(query, key=key))

    def update(self, outcomes: list[dict]) -> dict:
        return self.store.update([Outcome(**o) for o in outcomes])

    def add(self, outcomes: list[dict], source: str) -> int:
        for o in outcomes:
            self.store.add(o["query"], o["text"], source=source)
        return len(self.store.records)

    def configure(self, **settings) -> None:
        """New settings (e.g. another update rule), the records kept."""
        state = self.store.state_dict()
        self.settings |= settings
        self.store = MemoryStore(**self.settings, builder=self.store.builder)
        self.store.load_state_dict(state)

    def clear(self) -> None:
        self.store.clear()

    def save(self, path: str) -> int:
        self.store.save(path)
        return len(self.store.records)

    def load(self, path: str) -> int:
        return self.store.load(path)

    def state(self) -> dict:
        return self.store.state_dict() | {"retrievals": self.retrievals}


def outcomes(batch: pa.RecordBatch, correct_part: str, threshold: float = 1.0) -> list[dict]:
    """One Outcome (as a dict) per trajectory row: uid, question, decoded text, reward, success (the reward part
    `correct_part` >= threshold, as the evaluations count it)."""
    column = reward_part_column(batch, correct_part, f"memory: reward.correct_part={correct_part!r}")
    ok = scalar_numpy(batch, column).astype(np.float64) >= threshold
    reward = scalar_numpy(batch, "reward").astype(np.float64)
    uid, question = batch.column("uid").to_pylist(), batch.column("question").to_pylist()
    text = batch.column("response_text").to_pylist()
    return [{"key": str(u), "query": str(q), "text": t or "", "reward": float(r), "success": bool(s)}
            for u, q, t, r, s in zip(uid, question, text, reward, ok)]


class MemoryGroup:
    """The driver's handle on the run's memory actor."""

    def __init__(self, memory, seed: int, timeout_s: float):
        self.mode, self.timeout = memory.mode, timeout_s
        try:  # a memory actor left by an earlier run of this driver goes first
            ray.kill(ray.get_actor(MEMORY_ACTOR))
        except ValueError:
            pass
        self.actor = ray.remote(MemoryActor).options(name=MEMORY_ACTOR, num_cpus=0).remote(
            store_kwargs(memory, seed), memory if memory.builder == "llm" else None)
        self._call("state")

    def _call(self, method: str, *args, **kwargs):
        from rl.cluster import wait

        return wait(getattr(self.actor, method).remote(*args, **kwargs), self.timeout, f"the memory actor's {method}")

    def update(self, batch: pa.RecordBatch, correct_part: str) -> dict:
        """Memp's update from one step's trajectories and rewards; metrics `memory/*`."""
        counts = self._call("update", outcomes(batch, correct_part))
        return {f"memory/{k}": v for k, v in counts.items()}

    def add_successes(self, batch: pa.RecordBatch, correct_part: str, source: str) -> int:
        """Offline build: a memory from each task's first successful trajectory (e.g. the expert's)."""
        seen, rows = set(), []
        for o in outcomes(batch, correct_part):
            if o["success"] and o["key"] not in seen:
                seen.add(o["key"])
                rows.append(o)
        return self._call("add", rows, source)

    def configure(self, **settings) -> None:
        self._call("configure", **settings)

    def clear(self) -> None:
        self._call("clear")

    def save(self, path: Path) -> int:
        return self._call("save", str(path))

    def load(self, path: Path) -> int:
        return self._call("load", str(path))

    def state(self) -> dict:
        return self._call("state")

    def shutdown(self) -> None:
        ray.kill(self.actor)


# --- on the rollout workers -------------------------------------------------------------------------

_actor = None


async def memory_prompt(task: dict) -> str | None:
    """The memory text for one episode: the shared actor retrieves for the task's question, logged under its uid."""
    global _actor
    try:
        if _actor is None:  # a blocking lookup: off the worker's event loop
            _actor = await asyncio.wait_for(asyncio.to_thread(ray.get_actor, MEMORY_ACTOR), RETRIEVE_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise TimeoutError(f"looking up the memory actor {MEMORY_ACTOR!r} took over {RETRIEVE_TIMEOUT_S:.0f} s "
                           f"(task {task['uid']!r})") from None
    ref = _actor.retrieve.remote(str(task["question"]), str(task["uid"]))
    try:
        return await asyncio.wait_for(asyncio.wrap_future(ref.future()), RETRIEVE_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise TimeoutError(f"the memory actor {MEMORY_ACTOR!r} did not answer a retrieval for task {task['uid']!r} "
                           f"within {RETRIEVE_TIMEOUT_S:.0f} s") from None


def episode_hooks() -> EpisodeHooks:
    """agent.hooks = rl.memory_group:episode_hooks: retrieved memory appended to every episode's system prompt."""
    return EpisodeHooks(memory=memory_prompt)
