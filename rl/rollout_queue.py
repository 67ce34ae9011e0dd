"""Routing tasks to engines, and the rollout producer of the controller's async mode.

Owns:
- `Dispatcher`: tasks -> RolloutWorker actors, one task (its n samples) at a time. All samples of
  a task go to one engine (they share the prompt prefix; later turns of an episode stay on its
  engine because the episode lives there); each new task goes to the engine with the fewest groups
  in flight, as groups finish, so a long tail on one engine does not idle the others; at most
  `max_inflight` groups per engine. An aborted group (empty batch) is re-queued.
- `AsyncRollout`: rollout of step t+1 overlapping training of step t under a bounded staleness.
  Admission (AReaL): whole batches of tasks are admitted while
  admitted <= max_staleness + version + 1 (in batches), i.e. capacity = (max_staleness + version + 1)
  * B - produced; a finished group whose oldest turn is more than `max_staleness` versions behind
  the trainer is dropped and counted (completion order can reorder groups), so the bound holds.

Never: score or train; wait without a timeout that names what it waited for.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import pyarrow as pa
import ray

from rollout.trajectory import concat, scalar_numpy, with_columns


class Dispatcher:
    def __init__(self, actors: list, n: int, sampling: dict, max_inflight: int = 16):
        self.actors, self.n, self.sampling, self.max_inflight = actors, n, sampling, max_inflight
        self.pending: deque[dict] = deque()
        self.inflight: dict = {}                 # ref -> (task, engine index)
        self.load = [0] * len(actors)
        self.groups_per_engine = [0] * len(actors)
        self.requeued = 0

    def submit(self, tasks: list[dict]) -> None:
        self.pending.extend(tasks)
        self._fill()

    def _fill(self) -> None:
        while self.pending:
            i = int(np.argmin(self.load))
            if self.load[i] >= self.max_inflight:
                return
            task = self.pending.popleft()
            # a task may carry its own sampling (evaluation) and group size (pre-filter)
            ref = self.actors[i].run_group.remote(task, task.get("n", self.n), task.get("sampling", self.sampling))
            self.inflight[ref] = (task, i)
            self.load[i] += 1

    @property
    def outstanding(self) -> int:
        return len(self.pending) + len(self.inflight)

    def poll(self, timeout_s: float) -> list[tuple[dict, pa.RecordBatch]]:
        """Finished groups (waits up to `timeout_s` for the first one)."""
        if not self.inflight:
            return []
        refs = list(self.inflight)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout_s)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done = []
        for ref in ready:
            task, i = self.inflight.pop(ref)
            self.load[i] -= 1
            batch = ray.get(ref)
            if batch.num_rows == 0:  # aborted at a weight sync: roll it out again
                self.pending.appendleft(task)
                self.requeued += 1
                continue
            self.groups_per_engine[i] += 1
            done.append((task, batch))
        self._fill()
        return done

    def run(self, tasks: list[dict], timeout_s: float, what: str, progress: str | None = None) -> list[pa.RecordBatch]:
        """Every task's group, in the order of `tasks` (sync mode); `progress`: a bar of finished groups."""
        self.submit(tasks)
        by_key = {}
        deadline = time.monotonic() + timeout_s
        bar = None
        if progress:
            import sys

            from tqdm import tqdm

            bar = tqdm(total=len(tasks), desc=progress, unit="group", file=sys.stderr)
        try:
            while len(by_key) < len(tasks):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"waited {timeout_s:.0f}s for {what}: {len(tasks) - len(by_key)} of "
                                       f"{len(tasks)} task groups unfinished ({len(self.inflight)} in flight)")
                for task, batch in self.poll(min(left, 5.0)):
                    by_key[(task["uid"], task["group"])] = batch
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return [by_key[(t["uid"], t["group"])] for t in tasks]


class AsyncRollout:
    """The producer side of async mode; the controller calls `admit` and `take` from its loop."""

    def __init__(self, dispatcher: Dispatcher, sampler, batch_size: int, max_staleness: int):
        self.dispatcher, self.sampler = dispatcher, sampler
        self.batch_size, self.max_staleness = batch_size, max_staleness
        self.produced = 0          # groups admitted so far
        self.ready: deque[tuple[dict, pa.RecordBatch]] = deque()
        self.stale_dropped = 0
        self.staleness_seen: list[int] = []

    def capacity(self, version: int) -> int:
        return (self.max_staleness + version + 1) * self.batch_size - self.produced

    def admit(self, version: int) -> int:
        """Admit whole batches of new tasks while the staleness budget allows. Returns how many."""
        admitted = 0
        while self.capacity(version) >= self.batch_size:
            tasks = self.sampler.next_batch()
            self.dispatcher.submit(tasks)
            self.produced += len(tasks)
            admitted += len(tasks)
        return admitted

    def take(self, num_groups: int, version: int, timeout_s: float) -> tuple[pa.RecordBatch, dict]:
        """`num_groups` finished groups no more than `max_staleness` versions old, renumbered
        0..num_groups-1 (`group`), with the staleness metrics."""
        deadline = time.monotonic() + timeout_s
        taken: list[pa.RecordBatch] = []
        staleness = []
        while len(taken) < num_groups:
            self.admit(version)
            while self.ready and len(taken) < num_groups:
                task, batch = self.ready.popleft()
                age = version - int(scalar_numpy(batch, "policy_version").min())
                if age > self.max_staleness:
                    self.stale_dropped += 1
                    continue
                staleness.append(age)
                taken.append(with_columns(batch, {"group": np.full(batch.num_rows, len(taken), np.int32)}))
            if len(taken) >= num_groups:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"async rollout: waited {timeout_s:.0f}s for {num_groups} groups at policy "
                                   f"version {version}; got {len(taken)} ({self.dispatcher.outstanding} "
                                   f"outstanding, {self.stale_dropped} dropped as stale)")
            self.ready.extend(self.dispatcher.poll(min(left, 5.0)))
        self.ready.extend(self.dispatcher.poll(0))  # collect what finished meanwhile, without waiting
        self.staleness_seen += staleness
        return concat(taken), {"async/staleness_max": max(staleness), "async/staleness_mean": float(np.mean(staleness)),
                               "async/stale_dropped": self.stale_dropped, "async/admitted_groups": self.produced,
                               "async/requeued_groups": self.dispatcher.requeued}

    def outstanding_tasks(self) -> list[dict]:
        d = self.dispatcher
        return [t for t, _ in self.ready] + [t for t, _ in d.inflight.values()] + list(d.pending)

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the admission count and the admitted tasks not trained on yet
        (their groups are rolled out again after a resume, so no task is skipped)."""
        tasks = [{k: v for k, v in t.items() if k != "n"} for t in self.outstanding_tasks()]
        return {"produced": self.produced, "stale_dropped": self.stale_dropped, "tasks": tasks}

    def load_state_dict(self, state: dict) -> None:
        self.produced, self.stale_dropped = state["produced"], state["stale_dropped"]
        self.dispatcher.submit(state["tasks"])
