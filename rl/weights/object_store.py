"""Weights through the Ray object store (the default: works on every machine).

Owns: `ObjectStoreTransport` and its mailbox actor. Each bucket is `ray.put` as soon as it is packed and
announced on a small mailbox actor; receivers fetch, load and acknowledge bucket by bucket; the sender
never gets more than `window` buckets ahead of the slowest receiver, and a bucket leaves the store once
every receiver took it.

Never: hand buckets to a process outside Ray (a vLLM worker cannot `ray.get`: the engine then loads the
buckets it receives over its own RPC, one at a time).
"""

from __future__ import annotations

import asyncio
import time
from typing import Iterable, Iterator

from rl.weights.base import SendStats, Transport
from rollout.engines.base import host_bytes


class _Mailbox:
    """A Ray async actor: the announcements of one version's buckets, and the receivers' progress.

    `refs[i]` keeps bucket i alive in the object store until every receiver took it; `acked[r]` is
    the number of buckets receiver r is done with. The sender waits while `window` buckets are out.
    """

    def __init__(self, num_receivers: int, window: int):
        self.n, self.window = num_receivers, window
        self.changed = asyncio.Condition()
        self._reset(None)

    def _reset(self, version) -> None:
        self.version, self.refs, self.count = version, {}, None
        self.acked = [0] * self.n
        self.max_in_flight = 0

    def _use(self, version: int, who: str) -> None:
        if self.version is None or version > self.version:
            self._reset(version)  # a newer version drops whatever an older one left
            self.changed.notify_all()
        elif version < self.version:
            raise ValueError(f"{who} asked for weight version {version}, but version {self.version} "
                             "superseded it")

    def _release(self) -> None:
        done = min(self.acked)
        for i in [i for i in self.refs if i < done]:
            del self.refs[i]

    async def _wait(self, pred, timeout_s: float, what: str) -> None:
        try:
            await asyncio.wait_for(self.changed.wait_for(pred), timeout_s)
        except asyncio.TimeoutError:
            raise TimeoutError(f"waited {timeout_s:.0f}s for {what}; receivers done with "
                               f"{self.acked} bucket(s) of version {self.version}") from None

    async def post(self, version: int, index: int, ref: list, timeout_s: float) -> int:
        """Announce bucket `index`; return once there is room for the next one."""
        async with self.changed:
            self._use(version, "the sender")
            self.refs[index] = ref[0]
            self.max_in_flight = max(self.max_in_flight, len(self.refs))
            self.changed.notify_all()
            await self._wait(lambda: self.version != version or index + 1 - min(self.acked) < self.window,
                             timeout_s, f"every receiver to take bucket {index + 1 - self.window} of "
                                        f"version {version} (window {self.window})")
            if self.version != version:
                raise ValueError(f"version {version} was superseded by {self.version} while sending")
            return len(self.refs)

    async def finish(self, version: int, count: int, timeout_s: float) -> int:
        """The last bucket was `count - 1`; return once every receiver took all of them."""
        async with self.changed:
            self._use(version, "the sender")
            self.count = count
            self.changed.notify_all()
            await self._wait(lambda: self.version != version or min(self.acked) >= count, timeout_s,
                             f"every receiver to take all {count} bucket(s) of version {version}")
            out = self.max_in_flight
            self.refs.clear()
            return out

    async def get(self, version: int, index: int, receiver: int, timeout_s: float):
        """Receiver `receiver` is done with buckets < index: the ref of bucket `index` (in a list,
        so it travels as a ref), or None after the last one."""
        async with self.changed:
            self._use(version, f"receiver {receiver}")
            self.acked[receiver] = max(self.acked[receiver], index)
            self._release()
            self.changed.notify_all()
            await self._wait(lambda: self.version != version or index in self.refs
                             or (self.count is not None and index >= self.count),
                             timeout_s, f"bucket {index} of version {version} (receiver {receiver})")
            if self.version != version:
                raise ValueError(f"receiver {receiver}: version {version} was superseded by {self.version}")
            return [self.refs[index]] if index in self.refs else None


class ObjectStoreTransport(Transport):
    """Buckets through the Ray object store, announced on a mailbox actor (created here: build the
    transport in the driver after `ray.init`). window: buckets the sender may have out at once."""

    kind = "object_store"

    def __init__(self, num_receivers: int, *, window: int = 2, timeout_s: float = 600.0, dtype=None):
        import ray

        super().__init__(num_receivers, timeout_s, dtype)
        if window < 1:
            raise ValueError(f"object_store transport: window must be >= 1, got {window}")
        self.window = window
        self.mailbox = ray.remote(num_cpus=0)(_Mailbox).remote(num_receivers, window)

    def _get(self, ref, what: str):
        import ray

        try:
            return ray.get(ref, timeout=self.timeout_s + 30)  # the mailbox's own timeout fires first
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"object_store transport: waited {self.timeout_s + 30:.0f}s for {what}") from None

    def send(self, version: int, buckets: Iterable) -> SendStats:
        import ray

        t0 = time.perf_counter()
        count = nbytes = largest = 0
        for data in buckets:
            # a uint8 array travels out of band: one copy into the store, zero-copy reads
            ref = ray.put(host_bytes(data))
            self._get(self.mailbox.post.remote(version, count, [ref], self.timeout_s),
                      f"room after bucket {count} of version {version}")
            del ref
            count += 1
            nbytes += len(data)
            largest = max(largest, len(data))
        max_in_flight = self._get(self.mailbox.finish.remote(version, count, self.timeout_s),
                                  f"the receivers to finish version {version} ({count} bucket(s))")
        return SendStats(version, count, nbytes, time.perf_counter() - t0, max_in_flight, largest)

    def receive(self, version: int, receiver: int = 0, as_tensors: bool = False) -> Iterator[memoryview]:
        self._check_receiver(receiver)
        index = 0
        while True:
            got = self._get(self.mailbox.get.remote(version, index, receiver, self.timeout_s),
                            f"bucket {index} of version {version} (receiver {receiver})")
            if got is None:
                return
            # a read-only view of the store's shared memory, no copy (it pins the object while alive)
            yield self._get(got[0], f"the data of bucket {index} of version {version}").data
            index += 1

    def close(self) -> None:
        import ray

        ray.kill(self.mailbox)
