"""Async admission never stalls (rl/rollout_queue.py `AsyncRollout`), in process, without Ray.

A fake dispatcher stands in for the RolloutWorker actors: a group is stamped with the policy version
the engines served when it was submitted (its oldest turn) and finishes after as many polls as the
test says (a long-tail episode). The controller's loop is replayed: take, top up, "train", version + 1;
DAPO's extra rounds call `take` again at the same version.

Before the fix, groups dropped as stale and the groups of extra rounds kept their admission slots
for good: after max_staleness * B drops the rollout no longer overlapped training (admission stopped
topping up), and a second DAPO round at one version waited out `take`'s timeout.
"""

from __future__ import annotations

from collections import deque

import pyarrow as pa
import pytest

from rl.data import TaskSampler
from rl.rollout_queue import AsyncRollout


class FakeDispatcher:
    """What AsyncRollout uses of rl.rollout_queue.Dispatcher (submit, poll, outstanding, pending,
    inflight, requeued). `polls(k)`: how many polls the k-th submitted group takes (0: the next)."""

    def __init__(self, polls=lambda k: 0):
        self.polls, self.version = polls, 0
        self.pending: deque[dict] = deque()
        self.inflight: dict = {}  # k -> (task, [version at submission, polls left])
        self.requeued = 0
        self.submitted: list[str] = []
        self.most_in_flight = 0

    def submit(self, tasks: list[dict]) -> None:
        for task in tasks:
            k = len(self.submitted)
            self.inflight[k] = (task, [self.version, self.polls(k)])
            self.submitted.append(task["uid"])
        self.most_in_flight = max(self.most_in_flight, len(self.inflight))

    @property
    def outstanding(self) -> int:
        return len(self.pending) + len(self.inflight)

    def poll(self, timeout_s: float) -> list[tuple[dict, pa.RecordBatch]]:
        done = []
        for k, (task, state) in sorted(self.inflight.items()):
            if state[1] > 0:
                state[1] -= 1
                continue
            del self.inflight[k]
            done.append((task, pa.RecordBatch.from_pydict({
                "uid": pa.array([task["uid"]] * 2, pa.string()),
                "group": pa.array([task["group"]] * 2, pa.int32()),
                "policy_version": pa.array([state[0]] * 2, pa.int64())})))
        return done


def make(batch_size=2, max_staleness=1, polls=lambda k: 0, num_tasks=64):
    tasks = [{"uid": f"t{i}", "question": f"Q{i}?"} for i in range(num_tasks)]
    d = FakeDispatcher(polls)
    return d, AsyncRollout(d, TaskSampler(tasks, batch_size, seed=0), batch_size, max_staleness)


def run_steps(d: FakeDispatcher, p: AsyncRollout, steps: int, rounds: int = 1, version: int = 0) -> list[int]:
    """The controller's async loop; returns the staleness of every row taken."""
    d.version, ages = version, []
    for _ in range(steps):
        for _ in range(rounds):  # DAPO regeneration rounds: take again at the same version
            batch, _ = p.take(p.batch_size, version, timeout_s=1.0)
            assert sorted(set(batch.column("group").to_pylist())) == list(range(p.batch_size))
            ages += list(version - batch.column("policy_version").to_numpy())
        p.admit(version)  # top up before training: the engines have max_staleness batches to work on
        assert d.outstanding + len(p.ready) == p.max_staleness * p.batch_size, "admission lost slots: no overlap"
        version += 1
        d.version = version  # the weight sync
    # never more than (max_staleness + 1) batches of groups admitted and not trained on
    assert d.most_in_flight <= (p.max_staleness + 1) * p.batch_size
    return ages


@pytest.mark.parametrize("every", [2, 3, 5])
def test_groups_dropped_as_stale_give_their_slots_back(every):
    # every `every`-th group is a long tail (8 polls): it comes back too old and is dropped
    d, p = make(polls=lambda k: 8 if k % every == 0 else 0)
    ages = run_steps(d, p, steps=16)
    assert len(ages) == 16 * 2 * 2 and max(ages) <= p.max_staleness
    assert p.stale_dropped >= 4  # drops did happen, and every step still got its groups and its overlap


def test_a_burst_of_stale_groups_still_finishes():
    # half the window is three long tails at once; the rest keeps the steps going until they come back
    d, p = make(max_staleness=2, polls=lambda k: 30 if k in (1, 2, 3) else 0)
    ages = run_steps(d, p, steps=20)
    assert max(ages) <= 2 and p.stale_dropped == 3


def test_extra_rounds_at_one_version_never_stall():
    # DAPO: up to max_gen_rounds takes per step, the version moves once per update
    for staleness in (0, 1, 2):
        d, p = make(max_staleness=staleness, polls=lambda k: k % 3)
        ages = run_steps(d, p, steps=6, rounds=3)
        assert len(ages) == 6 * 3 * 2 * 2 and max(ages) <= staleness


def test_a_start_at_a_later_policy_version_admits_one_window():
    # after SFT the RL stage starts at policy_version > 0 (launch/stages.py): admission is the
    # window of max_staleness + 1 batches, not every version since 0
    d, p = make(max_staleness=1)
    assert p.admit(7) == (1 + 1) * 2
    run_steps(d, p, steps=3, version=7)


def test_leftovers_from_a_smaller_batch_leave_no_partial_stall():
    # max_staleness 0 and a group already in flight that is not a whole batch (what the previous
    # stage's producer left on the shared dispatcher): admitting whole batches only would wait here
    # for a whole batch of free slots that never comes
    d, p = make(max_staleness=0)
    d.submit([{"uid": "left", "group": 0, "question": "?"}])
    ages = run_steps(d, p, steps=4)
    assert ages == [0] * 16


def test_state_dict_keeps_admitted_and_sampled_tasks():
    """A checkpoint keeps every task sampled but not trained on (admitted, or waiting for a slot);
    a resumed producer rolls them out first and then goes on with the sampler."""
    d, p = make(batch_size=2, max_staleness=1, polls=lambda k: 1)
    run_steps(d, p, steps=2)
    d.submitted.clear()
    p.take(1, 2, timeout_s=1.0)  # one group of a batch handed out: the rest of the batch waits
    assert p.waiting or p.running
    state, sampler_state = p.state_dict(), p.sampler.state_dict()
    admitted = [t["uid"] for t in p.outstanding_tasks()]
    waiting = [t["uid"] for t in p.waiting]
    d2, p2 = make(batch_size=2, max_staleness=1)
    p2.sampler.load_state_dict(sampler_state)
    p2.load_state_dict(state)
    assert d2.submitted == admitted and [t["uid"] for t in p2.waiting] == waiting
    p2.admit(3)
    next_batch = [t["uid"] for t in p.sampler.next_batch()]
    assert d2.submitted == (admitted + waiting + next_batch)[:len(d2.submitted)]
