"""Routing tasks to engines, and the rollout producer of the controller's async mode.

Owns:
- `Dispatcher`: tasks -> RolloutWorker actors, one task (its n samples) at a time. All samples of
  a task go to one engine (they share the prompt prefix; later turns of an episode stay on its
  engine because the episode lives there); each new task goes to the engine with the fewest groups
  in flight, as groups finish, so a long tail on one engine does not idle the others; at most
  `max_inflight` groups per engine. An aborted group (empty batch) is re-queued. (Collecting finished
  groups with `ray.wait` over every group in flight costs the driver about 0.6 ms per group at 8,000
  in flight, no more than per-group done callbacks: measured for benchmarks/scale.py.)
- `AsyncRollout`: rollout of step t+1 overlapping training of step t under a bounded staleness.
  Admission is AReaL's rule, capacity = (max_staleness + version + 1) * B - (accepted + running),
  with one batch of B accepted per version: (max_staleness + 1) * B - running - accepted at this
  version. Computed from what is in flight now, every group that leaves untrained gives its slot
  back (AReaL's `on_rollout_rejected`: dropped as stale, a DAPO round that asks again at the same
  version, a skipped step), and a start at version > 0 or a resume opens one window, not one per
  version since 0. Tasks are admitted one at a time, so when `take` needs more and nothing is in
  flight the capacity is at least 1: admission never stalls. A finished group whose oldest turn is
  more than `max_staleness` versions behind the trainer is dropped and counted (completion order
  can reorder groups), so the bound holds.

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
        self.foreign = 0  # finished groups `run` did not ask for (dropped)
        self.received_bytes = 0  # Arrow bytes of the finished groups (what the engines sent the driver)

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

    def holding(self) -> str:
        """Which engines hold the groups in flight, for a timeout's message: 'engine 0: 3 (task q7, ...)'."""
        per: dict[int, list[str]] = {}
        for task, i in self.inflight.values():
            per.setdefault(i, []).append(str(task.get("uid", "?")))
        return "; ".join(f"engine {i}: {len(uids)} (tasks {', '.join(uids[:3])}{', ...' if len(uids) > 3 else ''})"
                         for i, uids in sorted(per.items())) or "none in flight"

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
            self.received_bytes += batch.nbytes
            if batch.num_rows == 0:  # aborted at a weight sync: roll it out again
                self.pending.appendleft(task)
                self.requeued += 1
                continue
            self.groups_per_engine[i] += 1
            done.append((task, batch))
        self._fill()
        return done

    def run(self, tasks: list[dict], timeout_s: float, what: str, progress: str | None = None) -> list[pa.RecordBatch]:
        """Every task's group, in the order of `tasks` (sync mode); `progress`: a bar of finished groups.
        Groups of tasks submitted before (what an async producer admitted and never took) are
        dropped as they finish and counted in `foreign`."""
        tasks = [dict(t) for t in tasks]  # own objects: a finished group finds its task by identity
        slot = {id(t): k for k, t in enumerate(tasks)}
        self.submit(tasks)
        out: list[pa.RecordBatch | None] = [None] * len(tasks)
        done = 0
        deadline = time.monotonic() + timeout_s
        bar = None
        if progress:
            import sys

            from tqdm import tqdm

            bar = tqdm(total=len(tasks), desc=progress, unit="group", file=sys.stderr)
        try:
            while done < len(tasks):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"waited {timeout_s:.0f}s for {what}: {len(tasks) - done} of "
                                       f"{len(tasks)} task groups unfinished ({len(self.inflight)} in flight: "
                                       f"{self.holding()})")
                for task, batch in self.poll(min(left, 5.0)):
                    k = slot.get(id(task))
                    if k is None:
                        self.foreign += 1
                        continue
                    out[k] = batch
                    done += 1
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return out


class AsyncRollout:
    """The producer side of async mode; the controller calls `admit` and `take` from its loop."""

    def __init__(self, dispatcher: Dispatcher, sampler, batch_size: int, max_staleness: int):
        self.dispatcher, self.sampler = dispatcher, sampler
        self.batch_size, self.max_staleness = batch_size, max_staleness
        self.produced = 0          # groups admitted so far (a statistic; admission reads `running`)
        self.waiting: deque[dict] = deque()  # tasks sampled, not admitted yet (the rest of a batch)
        self.ready: deque[tuple[dict, pa.RecordBatch]] = deque()
        self.accepted = (None, 0)  # (version, groups the latest take handed out at that version)
        self.stale_dropped = 0
        self.taken = 0             # groups handed out by `take`
        self.staleness_seen: list[int] = []

    @property
    def running(self) -> int:
        """Groups admitted and not handed out yet: finished, rolling out, or queued for an engine."""
        return len(self.ready) + self.dispatcher.outstanding

    def capacity(self, version: int) -> int:
        accepted = self.accepted[1] if self.accepted[0] == version else 0
        return (self.max_staleness + 1) * self.batch_size - self.running - accepted

    def admit(self, version: int) -> int:
        """Admit tasks while the staleness budget allows. Returns how many."""
        tasks = []
        for _ in range(max(self.capacity(version), 0)):
            if not self.waiting:
                self.waiting.extend(self.sampler.next_batch())
            tasks.append(self.waiting.popleft())
        if tasks:
            self.dispatcher.submit(tasks)
            self.produced += len(tasks)
        return len(tasks)

    def take(self, num_groups: int, version: int, timeout_s: float) -> tuple[pa.RecordBatch, dict]:
        """`num_groups` finished groups no more than `max_staleness` versions old, renumbered
        0..num_groups-1 (`group`), with the staleness metrics. What an earlier take handed out at the
        same version (a DAPO round that asked for more, a skipped step) gives its slots back."""
        deadline = time.monotonic() + timeout_s
        taken: list[pa.RecordBatch] = []
        staleness = []
        self.accepted = (version, 0)
        while len(taken) < num_groups:
            self.admit(version)
            while self.ready and len(taken) < num_groups:
                task, batch = self.ready.popleft()
                age = version - int(scalar_numpy(batch, "policy_version").min())
                if age > self.max_staleness:  # leaves `running`: its slot is free again
                    self.stale_dropped += 1
                    continue
                staleness.append(age)
                self.taken += 1
                taken.append(batch)
                self.accepted = (version, len(taken))
            if len(taken) >= num_groups:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"async rollout: waited {timeout_s:.0f}s for {num_groups} groups at policy "
                                   f"version {version}; got {len(taken)} ({self.dispatcher.outstanding} "
                                   f"outstanding, {self.stale_dropped} dropped as stale; in flight: "
                                   f"{self.dispatcher.holding()})")
            self.ready.extend(self.dispatcher.poll(min(left, 5.0)))
        self.ready.extend(self.dispatcher.poll(0))  # collect what finished meanwhile, without waiting
        self.staleness_seen += staleness
        rows = [b.num_rows for b in taken]  # renumbered once, after the one copy of `concat`
        batch = with_columns(concat(taken), {"group": np.repeat(np.arange(len(taken), dtype=np.int32), rows)})
        return batch, {"async/staleness_max": max(staleness), "async/staleness_mean": float(np.mean(staleness)),
                       "async/stale_dropped": self.stale_dropped, "async/admitted_groups": self.produced,
                       "async/requeued_groups": self.dispatcher.requeued,
                       "async/running_groups": self.running, "async/lost_groups": self.accounting()["lost"]}

    def accounting(self) -> dict:
        """Where every admitted group is: handed out, dropped as stale, or still running (finished and
        waiting, rolling out, or queued); `lost` is what none of these holds, 0 unless a group went missing."""
        out = {"admitted": self.produced, "taken": self.taken, "stale_dropped": self.stale_dropped,
               "running": self.running, "requeued": self.dispatcher.requeued}
        out["lost"] = out["admitted"] - out["taken"] - out["stale_dropped"] - out["running"]
        return out

    def outstanding_tasks(self) -> list[dict]:
        d = self.dispatcher
        return [t for t, _ in self.ready] + [t for t, _ in d.inflight.values()] + list(d.pending)

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the counters, the admitted tasks not trained on yet (their groups
        are rolled out again after a resume) and the sampled tasks not admitted yet, so no task is
        skipped or repeated."""
        strip = lambda tasks: [{k: v for k, v in t.items() if k != "n"} for t in tasks]  # noqa: E731
        return {"produced": self.produced, "stale_dropped": self.stale_dropped,
                "tasks": strip(self.outstanding_tasks()), "waiting": strip(self.waiting)}

    def load_state_dict(self, state: dict) -> None:
        self.produced, self.stale_dropped = state["produced"], state["stale_dropped"]
        self.waiting = deque(state.get("waiting", []))  # absent in checkpoints written before it existed
        self.taken = self.produced - self.stale_dropped - len(state["tasks"])  # the rest were trained on
        self.dispatcher.submit(state["tasks"])
