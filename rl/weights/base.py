"""The small base every weight transport shares (SkyRL's `weight_sync/` is the model).

Owns: cutting a full state (HF parameter names) into size-bounded buckets (`iter_buckets`; one bucket is a
1-D uint8 tensor in the wire format of `rollout/engines/base.py`, written once, in the serving dtype), the
`Transport` interface, `SendStats`, and `BucketStream`, the picklable handle a receiver iterates.

Never: gather the state (the trainer backend does), decide when to sync (the controller), load weights
into an engine (the engine does), or import Ray at module level.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, replace
from typing import AsyncIterator, Callable, Iterable, Iterator

import torch

from rollout.engines.base import BucketWriter, wire_dtype


def iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = 64 << 20,
                 dtype: torch.dtype | None = None, allocate: Callable[[int], torch.Tensor] | None = None
                 ) -> Iterator[torch.Tensor]:
    """Group (name, tensor) pairs into buckets of about `bucket_bytes` each (`BucketWriter`).

    dtype: the engines' serving dtype (floating tensors are cast while packed; sizes count in it);
    allocate(nbytes): where a bucket lives (host memory by default; a transport may hand its own: CUDA,
    shared memory, a buffer it reuses). Each tensor is copied into its bucket as it arrives, so with a
    lazy `named_tensors` (one gathered parameter at a time) only one bucket and one tensor are held. A
    tensor larger than the bound gets a bucket of its own; order is preserved.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    writer = None
    for name, t in named_tensors:
        if writer is not None and not writer.fits(name, t):
            yield writer.finish()
            writer = None
        if writer is None:
            writer = BucketWriter(max(bucket_bytes, t.numel() * wire_dtype(t, dtype).itemsize), dtype, allocate)
        writer.add(name, t)
    if writer is not None:
        yield writer.finish()


def as_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A serving dtype from its name ("bfloat16") or itself; None stays None (send as trained)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    got = getattr(torch, str(dtype), None)
    if not isinstance(got, torch.dtype) or not got.is_floating_point:
        raise ValueError(f"weight transport: dtype must name a floating torch dtype (e.g. 'bfloat16'), got {dtype!r}")
    return got


@dataclass
class SendStats:
    """What one `send` did. `max_in_flight`: the most buckets sent but not yet taken by every receiver
    at any moment (the memory bound, in buckets); `max_bucket_bytes`: the largest bucket."""

    version: int
    buckets: int
    bytes: int
    seconds: float
    max_in_flight: int
    max_bucket_bytes: int = 0


class Transport:
    """The interface of every transport; one object, pickled to the sender and to every receiver.

    num_receivers: how many receivers take every version (receiver ids 0..num_receivers-1).
    timeout_s: the longest any single wait (for a bucket, for a receiver, for a peer) may take.
    dtype: the engines' serving dtype; the sender casts floating tensors to it (None: as trained).
    `portable`: a receiver may iterate a stream of this transport in any process of the node (a vLLM
    worker, not only a Ray actor), so an engine can take the buckets straight into its worker.
    """

    kind = ""
    portable = False

    def __init__(self, num_receivers: int, timeout_s: float, dtype: str | torch.dtype | None = None):
        if num_receivers < 1:
            raise ValueError(f"{type(self).__name__}: num_receivers must be >= 1, got {num_receivers}")
        if timeout_s <= 0:
            raise ValueError(f"{type(self).__name__}: timeout_s must be > 0, got {timeout_s}")
        self.num_receivers, self.timeout_s, self.dtype = num_receivers, timeout_s, as_dtype(dtype)

    def allocate(self, nbytes: int) -> torch.Tensor:
        """Memory for one bucket on the sender (`iter_buckets(allocate=...)`): host memory by default."""
        return torch.empty(nbytes, dtype=torch.uint8)

    def send(self, version: int, buckets: Iterable) -> SendStats:
        """Stream `buckets` (uint8 tensors from `iter_buckets`, or bytes-like) as `version` to every
        receiver; returns when every receiver took them all."""
        raise NotImplementedError

    def receive(self, version: int, receiver: int = 0, as_tensors: bool = False) -> Iterator:
        """The buckets of `version`, in order: bytes-like in host memory, or (`as_tensors`, where the
        transport has them as tensors) 1-D uint8 tensors where they arrived, host or GPU. Taking the next
        bucket acknowledges the previous one: load a bucket before asking for the next, and keep no
        reference to it (views an engine keeps are fine: such a bucket's memory is not reused)."""
        raise NotImplementedError

    async def areceive(self, version: int, receiver: int = 0, as_tensors: bool = False) -> AsyncIterator:
        """`receive` for async code: the blocking waits run in a thread, the event loop keeps going."""
        it = self.receive(version, receiver, as_tensors)
        end = object()
        while (data := await asyncio.to_thread(next, it, end)) is not end:
            yield data

    def stream(self, version: int, receiver: int = 0) -> "BucketStream":
        """A picklable iterable (sync and async) of the buckets of `version` for `receiver`: what the
        controller hands to `RolloutWorker.update_weights` in place of a list of buckets."""
        return BucketStream(self, version, receiver)

    def close(self) -> None:
        """Release what this side holds (actors, groups, folders, shared memory)."""

    def _check_receiver(self, receiver: int) -> None:
        if not 0 <= receiver < self.num_receivers:
            raise ValueError(f"{self.kind} transport: receiver {receiver} is not in 0..{self.num_receivers - 1}")


def read_ahead(it: Iterator, depth: int, timeout_s: float, what: str) -> Iterator:
    """Iterate `it` in a thread, up to `depth` items ahead of the consumer: the next bucket arrives while
    the engine loads this one. Errors reach the consumer; no wait lasts longer than `timeout_s`."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        """Hand `entry` over unless the consumer has stopped (it may stop with the queue full: a failed load)."""
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run():
        try:
            for item in it:
                handed = put((item, None))
                del item  # a reused buffer must not look held by this thread
                if not handed:
                    return
            put((end, None))
        except BaseException as err:  # the consumer re-raises it
            put((end, err))

    thread = threading.Thread(target=run, name=f"read-ahead {what}", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item, err = items.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"waited {timeout_s:.0f}s for the next bucket of {what}") from None
            if err is not None:
                raise err
            if item is end:
                return
            yield item
            del item
    finally:
        stop.set()


@dataclass
class BucketStream:
    """The buckets of one version for one receiver, iterated where they are consumed. An engine whose
    weights live in another process (vLLM's worker) hands a `portable` stream over to that process and
    takes the buckets there as tensors where they arrived (`for_engine()`: host, or the GPU for NCCL and
    CUDA IPC), the next one received while it loads this one."""

    transport: Transport
    version: int
    receiver: int = 0
    tensors: bool = False
    ahead: int = 0

    @property
    def portable(self) -> bool:
        return self.transport.portable

    def for_engine(self, ahead: int = 1) -> "BucketStream":
        """This stream delivering 1-D uint8 tensors where the transport has them, received `ahead`
        bucket(s) ahead of the consumer (one more bucket held)."""
        return replace(self, tensors=True, ahead=ahead)

    def __iter__(self):
        it = self.transport.receive(self.version, self.receiver, self.tensors)
        if self.ahead:
            return read_ahead(it, self.ahead, self.transport.timeout_s + 30,
                              f"version {self.version} (receiver {self.receiver})")
        return it

    def __aiter__(self):
        return self.transport.areceive(self.version, self.receiver, self.tensors)
