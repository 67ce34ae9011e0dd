"""RolloutWorker: one engine and the episodes that run on it (one per RolloutGroup rank).

Owns: turning tasks into trajectory rows: n samples per task, all on this worker's engine (they
share the prompt prefix), as one Arrow batch; single-turn tasks (`prompt_ids` given) and
multi-turn agent episodes (`question` given; tools through an env client); the engine's weight
updates and policy_version; pausing episodes between turns while weights change (partial rollout)
or aborting them.

Never: score, train, or import Ray (`rl/cluster.py` makes it an actor; the env client it is
given may be a remote one, it only duck-types `envs.base.EnvClient`).
"""

from __future__ import annotations

import asyncio
import json
import time

import pyarrow as pa

from rollout.agent import AgentConfig, load_hooks, run_episode
from rollout.engines import SamplingParams, make_engine
from rollout.trajectory import build_batch, record_from_generation, with_columns

#: task keys copied into trajectory columns (for rewards and judges)
TASK_COLUMNS = {"question": "question", "answer": "gold_answer", "gold_ids": "gold_ids"}


class _GatedEngine:
    """The engine as episodes see it: a new request waits while weights change, and the worker
    knows how many requests are in flight (a weight update waits for them to finish)."""

    def __init__(self, engine):
        self.engine = engine
        self.open = asyncio.Event()
        self.open.set()
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def policy_version(self) -> int:
        return self.engine.policy_version

    async def generate(self, prompt_ids, sampling, request_id=None, images=None):
        await self.open.wait()
        self.in_flight += 1
        self.idle.clear()
        try:
            if images:
                return await self.engine.generate(prompt_ids, sampling, request_id, images=images)
            return await self.engine.generate(prompt_ids, sampling, request_id)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()


class RolloutWorker:
    def __init__(self, backend: str, model_path: str, engine_kwargs: dict | None = None, env=None,
                 agent: dict | None = None, drain_timeout_s: float = 600.0):
        """env: an EnvClient (tools) for multi-turn tasks, or None. agent: AgentConfig fields plus
        "format" and "system_prompt"."""
        self.engine = make_engine(backend, model_path, **(engine_kwargs or {}))
        self.gated = _GatedEngine(self.engine)
        self.model_path = model_path
        self.env = env
        agent = dict(agent or {})
        self.format_name = agent.pop("format", "react")
        self.system_prompt = agent.pop("system_prompt", None)
        self.hooks = load_hooks(agent.pop("hooks", None))
        self.agent = AgentConfig(**agent)
        self.drain_timeout_s = drain_timeout_s
        self._template = None
        self._tokenizer = None
        self._vision = None
        self._running: set[asyncio.Task] = set()
        # episode_errors: episodes that ended with finish "error"; episode_errors/<class>: per exception class;
        # invalid_actions: model turns that were no valid action (the grammar's error observation)
        self.stats = {"groups": 0, "aborted_groups": 0, "episodes": 0, "episode_errors": 0, "invalid_actions": 0}

    # --- single-turn (the spine's task) ------------------------------------------------------

    async def generate(self, tasks: list[dict], n: int, sampling: dict) -> pa.RecordBatch:
        """tasks: dicts with uid, group, prompt_ids. Returns n rows per task, ordered (group, sample).

        With `sampling["seed"]` set, sample s of task (uid, group) uses the seed derived from it, the uid,
        the group and s (`SamplingParams.derive`): distinct and reproducible.
        """
        t0 = time.perf_counter()
        parts = await asyncio.gather(*(self._single_turn(t, n, SamplingParams(**sampling)) for t in tasks))
        self.last_generate_s = time.perf_counter() - t0
        return _concat(parts)

    async def _single_turn(self, task: dict, n: int, base: SamplingParams) -> pa.RecordBatch:
        async def one(s):
            sp = base.derive(task["uid"], task["group"], s)
            gen = await self.gated.generate(task["prompt_ids"], sp,
                                            request_id=f"{task['uid']}-{s}-{time.monotonic_ns()}")
            return record_from_generation(task["uid"], task["group"], s, task["prompt_ids"], gen)

        return build_batch(await asyncio.gather(*(one(s) for s in range(n))))

    # --- one task's group, single- or multi-turn ---------------------------------------------

    async def run_group(self, task: dict, n: int, sampling: dict) -> pa.RecordBatch:
        """The n samples of one task on this engine. Multi-turn when the task has a `question` and
        no `prompt_ids`. Returns an empty batch if the group was aborted (the caller re-queues it)."""
        me = asyncio.current_task()
        self._running.add(me)
        try:
            if "prompt_ids" in task:
                batch = await self._single_turn(task, n, SamplingParams(**sampling))
            else:
                batch = await self._episodes(task, n, SamplingParams(**sampling))
        except asyncio.CancelledError:
            self.stats["aborted_groups"] += 1
            return build_batch([])
        finally:
            self._running.discard(me)
        self.stats["groups"] += 1
        return self._text_column(_task_columns(batch, task))

    def _text_column(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """`response_text`: the response decoded with special tokens (format rewards read it)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        texts = [self._tokenizer.decode(ids, skip_special_tokens=False)
                 for ids in batch.column("response_ids").to_pylist()]
        return with_columns(batch, {"response_text": texts})

    async def _episodes(self, task: dict, n: int, sampling: SamplingParams) -> pa.RecordBatch:
        if self.env is None:
            raise ValueError(f"task {task.get('uid')!r} is multi-turn (it has a question) but this "
                             "RolloutWorker has no env client")
        template, fmt = self._agent_parts()
        # sample s gets its own seed under the step's (SamplingParams.derive): a shared seed would make the G
        # samples of a question identical on an engine that honours seeds (vLLM on GPU, HF)
        eps = await asyncio.gather(*(run_episode(self.gated, self.env, template, task,
                                                 sampling.derive(task["uid"], task.get("group", 0), s), self.agent,
                                                 fmt, self.hooks, sample=s) for s in range(n)))
        self.stats["episodes"] += n
        for e in eps:  # an episode that raised ended alone (finish "error"); the group goes on
            self.stats["invalid_actions"] += e.metrics.get("invalid_actions", 0)
            if "error" in e.metrics:
                self.stats["episode_errors"] += 1
                key = f"episode_errors/{e.metrics['error']}"
                self.stats[key] = self.stats.get(key, 0) + 1
        kept = [e.record for e in eps if e.accepted]  # the filter hook rejects episodes (the group shrinks)
        self.stats["rejected_episodes"] = self.stats.get("rejected_episodes", 0) + n - len(kept)
        return build_batch(kept, with_images=self._vision is not None)

    def _agent_parts(self):
        if self._template is None:
            from transformers import AutoTokenizer

            from rollout.vision import VisionSpec

            self._tokenizer = self._tokenizer or AutoTokenizer.from_pretrained(self.model_path)
            self._vision = VisionSpec.from_model(self.model_path, self._tokenizer)
            self._template, self._format = agent_template(self._tokenizer, self.env.tool_schemas(),
                                                          self.format_name, self.system_prompt, self._vision)
        return self._template, self._format

    # --- weights -------------------------------------------------------------------------------

    async def update_weights(self, buckets: list[bytes], version: int, abort: bool = False) -> int:
        """New weights between turns: episodes pause before their next request, the requests in
        flight finish (or, with `abort`, every running group is cancelled), then the engine loads.
        Each turn records the version that generated it (partial rollout)."""
        self.gated.open.clear()
        try:
            if abort:
                for t in list(self._running):
                    t.cancel()
            try:
                await asyncio.wait_for(self.gated.idle.wait(), self.drain_timeout_s)
            except asyncio.TimeoutError:
                raise TimeoutError(f"weight update to version {version}: {self.gated.in_flight} engine "
                                   f"request(s) still in flight after {self.drain_timeout_s:.0f}s") from None
            await self.engine.update_weights(buckets, version)
        finally:
            self.gated.open.set()
        return self.engine.policy_version

    async def policy_version(self) -> int:
        return self.engine.policy_version

    async def sleep(self) -> None:
        """Colocated placement: give the devices to the trainer (the engine's `sleep`)."""
        await self.engine.sleep()

    async def wake(self) -> None:
        await self.engine.wake()

    async def counters(self) -> dict:
        """This worker's running counts: groups, aborted groups, episodes, episode errors (by exception class),
        invalid actions, and its env client's as env_client/<name> (calls, timeouts, server_died, server_errors)."""
        return dict(self.stats) | {f"env_client/{k}": v for k, v in getattr(self.env, "stats", {}).items()}

    async def metrics(self) -> dict:
        out = dict(self.stats, in_flight_requests=self.gated.in_flight, running_groups=len(self._running))
        env_metrics = getattr(self.env, "metrics", None)
        if callable(env_metrics):
            try:
                m = env_metrics()
                out["env"] = await m if asyncio.iscoroutine(m) else m
            except Exception as err:  # metrics are best effort
                out["env_error"] = str(err)
        return out

    async def shutdown(self) -> None:
        await self.engine.shutdown()


def agent_template(tokenizer, tool_schemas: list[dict], fmt="react", system_prompt: str | None = None, vision=None):
    """(ChatTemplate, format) of multi-turn episodes: the same for the policy's rollouts and for expert
    trajectories, so SFT data and RL samples share one token layout. `fmt` is a name in
    rollout.formats.FORMATS or a format object (tests, user grammars); `vision` a VisionSpec for a VL policy."""
    from rollout.chat import ChatTemplate
    from rollout.formats import make_format

    fmt = make_format(fmt) if isinstance(fmt, str) else fmt
    default = getattr(fmt, "system_prompt", None)
    system = system_prompt if system_prompt is not None else (default(tool_schemas) if default else None)
    return ChatTemplate(tokenizer, tools=tool_schemas, system=system, vision=vision), fmt


def _concat(parts: list[pa.RecordBatch]) -> pa.RecordBatch:
    from rollout.trajectory import concat

    return concat(parts) if parts else build_batch([])


def _task_columns(batch: pa.RecordBatch, task: dict) -> pa.RecordBatch:
    """Copy the task's question / answer / gold ids onto its rows (rewards read them)."""
    cols = {}
    for key, column in TASK_COLUMNS.items():
        if key in task and task[key] is not None:
            value = task[key]
            if key == "answer" and not isinstance(value, str):
                value = json.dumps(value)
            if key == "gold_ids":
                value = [str(v) for v in value]
            cols[column] = [value] * batch.num_rows
    return with_columns(batch, cols) if cols else batch
