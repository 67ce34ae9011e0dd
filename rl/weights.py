"""Weight sync from the trainer to the engines (DESIGN section 3, "Weight sync").

Owns: cutting a full state (HF parameter names) into size-bounded safetensors buckets
(`iter_buckets`), and the transports that stream those buckets, versioned, from trainer rank 0 to
every engine of the RolloutGroup without ever holding the whole state a second time:

  object_store  Ray object store (the default; works on every machine). Each bucket is `ray.put` as
                soon as it is encoded and announced on a small mailbox actor; receivers fetch, apply
                and acknowledge bucket by bucket; the sender never gets more than `window` buckets
                ahead of the slowest receiver, and a bucket leaves the store once every receiver took it.
  disk          atomic files in a versioned folder on storage every node sees, the same window; bucket
                files are deleted once every receiver read them, the folder when the version is done.
  collective    torch.distributed broadcast from the sender (rank 0) to the receivers (ranks 1..N) of a
                process group of their own: NCCL on GPU, gloo on CPU (its twin, tested here). One
                bucket in flight.

A transport is one picklable object handed to both sides. Trainer rank 0 calls `send(version, buckets)`
with the buckets as they are produced; receiver i calls `receive(version, i)` (`areceive`
in async code) and gets the buckets in order, each a bytes-like safetensors blob. `stream(version, i)`
wraps that as an object an engine's `update_weights` can iterate after it crossed a Ray call.
Every wait has a timeout whose error names the version and the bucket.

Never: gather the state itself (the trainer backend does), decide when to sync (the controller) or
load weights into an engine (the engine does). The wire format of one bucket is defined once, in
`rollout/engines/base.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import AsyncIterator, Iterable, Iterator

import numpy as np
import torch

from rollout.engines.base import encode_bucket


def iter_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = 64 << 20) -> Iterator[bytes]:
    """Group (name, tensor) pairs into safetensors blobs of about `bucket_bytes` each.

    A tensor larger than the bound gets a bucket of its own; order is preserved. Lazy: with a lazy
    `named_tensors` (e.g. one gathered parameter at a time) at most one bucket's tensors are held.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    pending: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in named_tensors:
        n = t.numel() * t.element_size()
        if pending and size + n > bucket_bytes:
            yield encode_bucket(pending)
            pending, size = [], 0
        pending.append((name, t))
        size += n
    if pending:
        yield encode_bucket(pending)


@dataclass
class SendStats:
    """What one `send` did. `max_in_flight`: the most buckets sent but not yet taken by every
    receiver at any moment (the memory bound, in buckets)."""

    version: int
    buckets: int
    bytes: int
    seconds: float
    max_in_flight: int


class Transport:
    """The interface of every transport; one object, pickled to the sender and to every receiver.

    num_receivers: how many receivers take every version (receiver ids 0..num_receivers-1).
    timeout_s: the longest any single wait (for a bucket, for a receiver, for a peer) may take.
    """

    kind = ""

    def __init__(self, num_receivers: int, timeout_s: float):
        if num_receivers < 1:
            raise ValueError(f"{type(self).__name__}: num_receivers must be >= 1, got {num_receivers}")
        if timeout_s <= 0:
            raise ValueError(f"{type(self).__name__}: timeout_s must be > 0, got {timeout_s}")
        self.num_receivers, self.timeout_s = num_receivers, timeout_s

    def send(self, version: int, buckets: Iterable[bytes]) -> SendStats:
        """Stream `buckets` as `version` to every receiver; returns when every receiver took them all."""
        raise NotImplementedError

    def receive(self, version: int, receiver: int = 0) -> Iterator:
        """The buckets of `version`, in order (bytes-like). Taking the next bucket acknowledges the
        previous one: apply a bucket before asking for the next."""
        raise NotImplementedError

    async def areceive(self, version: int, receiver: int = 0) -> AsyncIterator:
        """`receive` for async code: the blocking waits run in a thread, the event loop keeps going."""
        it = self.receive(version, receiver)
        end = object()
        while (data := await asyncio.to_thread(next, it, end)) is not end:
            yield data

    def stream(self, version: int, receiver: int = 0) -> "BucketStream":
        """A picklable iterable (sync and async) of the buckets of `version` for `receiver`: what the
        controller hands to `RolloutWorker.update_weights` in place of a list of buckets."""
        return BucketStream(self, version, receiver)

    def close(self) -> None:
        """Release what this side holds (actors, groups, folders)."""

    def _check_receiver(self, receiver: int) -> None:
        if not 0 <= receiver < self.num_receivers:
            raise ValueError(f"{self.kind} transport: receiver {receiver} is not in 0..{self.num_receivers - 1}")


@dataclass
class BucketStream:
    """The buckets of one version for one receiver, iterated where they are consumed."""

    transport: Transport
    version: int
    receiver: int = 0

    def __iter__(self):
        return self.transport.receive(self.version, self.receiver)

    def __aiter__(self):
        return self.transport.areceive(self.version, self.receiver)


# --- Ray object store -------------------------------------------------------------------------


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

    def __init__(self, num_receivers: int, *, window: int = 2, timeout_s: float = 600.0):
        import ray

        super().__init__(num_receivers, timeout_s)
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

    def send(self, version: int, buckets: Iterable[bytes]) -> SendStats:
        import ray

        t0 = time.perf_counter()
        count = nbytes = 0
        for data in buckets:
            # a uint8 array travels out of band: one copy into the store, zero-copy reads
            ref = ray.put(np.frombuffer(data, dtype=np.uint8))
            self._get(self.mailbox.post.remote(version, count, [ref], self.timeout_s),
                      f"room after bucket {count} of version {version}")
            del ref
            count += 1
            nbytes += len(data)
        max_in_flight = self._get(self.mailbox.finish.remote(version, count, self.timeout_s),
                                  f"the receivers to finish version {version} ({count} bucket(s))")
        return SendStats(version, count, nbytes, time.perf_counter() - t0, max_in_flight)

    def receive(self, version: int, receiver: int = 0) -> Iterator[memoryview]:
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


# --- disk -------------------------------------------------------------------------------------


def _atomic_write(path: Path, data) -> None:
    """Readers see the whole file or none of it (no fsync: a crash loses a sync, which is resent)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


_VERSION_DIR = re.compile(r"^v\d{10}$")


class DiskTransport(Transport):
    """Buckets as files in `<folder>/v<version>/`: written under a temporary name and renamed into
    place (a reader never sees half a bucket), acknowledged per receiver in `ack-<i>` files.

    The folder must be visible to the sender and every receiver (a shared filesystem across nodes).
    Constructing the transport (in the driver, once) empties the folder of what a crashed run left.
    """

    kind = "disk"

    def __init__(self, folder: str | os.PathLike, num_receivers: int, *, window: int = 2,
                 timeout_s: float = 600.0, poll_s: float = 0.002):
        super().__init__(num_receivers, timeout_s)
        if window < 1:
            raise ValueError(f"disk transport: window must be >= 1, got {window}")
        self.folder, self.window, self.poll_s = Path(folder), window, poll_s
        self.folder.mkdir(parents=True, exist_ok=True)
        for p in self._versions():
            shutil.rmtree(p, ignore_errors=True)

    def _dir(self, version: int) -> Path:
        return self.folder / f"v{version:010d}"

    def _versions(self) -> list[Path]:
        return [p for p in self.folder.iterdir() if _VERSION_DIR.match(p.name)]

    def _poll(self, ready, what: str):
        deadline = time.monotonic() + self.timeout_s
        delay = self.poll_s
        while not (got := ready()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"disk transport ({self.folder}): waited {self.timeout_s:.0f}s for {what}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
        return got

    def _acked(self, d: Path) -> list[int]:
        out = []
        for r in range(self.num_receivers):
            try:
                out.append(int((d / f"ack-{r}").read_text() or 0))
            except (FileNotFoundError, ValueError):
                out.append(0)
        return out

    def send(self, version: int, buckets: Iterable[bytes]) -> SendStats:
        t0 = time.perf_counter()
        for p in self._versions():  # older versions a failed sync left
            if p.name < self._dir(version).name:
                shutil.rmtree(p, ignore_errors=True)
        d = self._dir(version)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        count = nbytes = max_in_flight = 0
        done = 0

        def room(index):
            nonlocal done
            done = min(self._acked(d))
            for i in range(done):
                (d / f"bucket-{i:06d}").unlink(missing_ok=True)
            return index - done < self.window

        for data in buckets:
            self._poll(lambda: room(count), f"every receiver to take bucket {count - self.window} of "
                                            f"version {version} (window {self.window})")
            _atomic_write(d / f"bucket-{count:06d}", data)
            count += 1
            nbytes += len(data)
            max_in_flight = max(max_in_flight, count - done)
        _atomic_write(d / "END", json.dumps({"buckets": count, "bytes": nbytes}).encode())
        self._poll(lambda: min(self._acked(d)) >= count,
                   f"every receiver to take all {count} bucket(s) of version {version}")
        shutil.rmtree(d, ignore_errors=True)
        return SendStats(version, count, nbytes, time.perf_counter() - t0, max_in_flight)

    def receive(self, version: int, receiver: int = 0) -> Iterator[bytes]:
        self._check_receiver(receiver)
        d = self._dir(version)
        index = 0
        while True:
            path, end = d / f"bucket-{index:06d}", d / "END"

            def ready():
                if path.exists():
                    return "bucket"
                if end.exists() and index >= json.loads(end.read_text())["buckets"]:
                    return "end"
                return None

            if self._poll(ready, f"bucket {index} of version {version} (receiver {receiver})") == "end":
                return
            yield path.read_bytes()
            index += 1
            _atomic_write(d / f"ack-{receiver}", str(index).encode())


# --- collective (torch.distributed broadcast) ------------------------------------------------

_GROUPS: dict[tuple, tuple] = {}  # (host, port, rank) -> (store, process group, device), per process
_GROUP_LOCKS: dict[tuple, threading.Lock] = {}  # one per key: joining blocks until every rank joins
_GROUPS_LOCK = threading.Lock()


class CollectiveTransport(Transport):
    """Broadcast from the sender (rank 0, the trainer's rank 0) to receivers 1..N of a process group
    of their own, rendezvous at `host:port` (a free port on the sender's node). backend: "nccl"
    (tensors on the current CUDA device), "gloo" (CPU) or "auto" (nccl where CUDA is available).

    The group is created on first use on each side and kept for the life of the process: the first
    sync must run the sender and every receiver at the same time (the controller does).
    Per bucket: a header [version, index, nbytes] then nbytes of payload; nbytes -1 ends a version.
    """

    kind = "collective"

    def __init__(self, host: str, port: int, num_receivers: int, *, backend: str = "auto",
                 timeout_s: float = 600.0):
        super().__init__(num_receivers, timeout_s)
        if backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"collective transport: backend must be auto, nccl or gloo, got {backend!r}")
        self.host, self.port, self.backend = host, int(port), backend

    def _group(self, rank: int):
        key = (self.host, self.port, rank)
        with _GROUPS_LOCK:
            lock = _GROUP_LOCKS.setdefault(key, threading.Lock())
        with lock:
            if key not in _GROUPS:
                import torch.distributed as dist

                backend = self.backend
                if backend == "auto":
                    backend = "nccl" if torch.cuda.is_available() else "gloo"
                timeout = timedelta(seconds=self.timeout_s)
                world = self.num_receivers + 1
                try:
                    store = dist.TCPStore(self.host, self.port, world, is_master=rank == 0, timeout=timeout)
                    if backend == "nccl":
                        device = torch.device("cuda", torch.cuda.current_device())
                        opts = dist.ProcessGroupNCCL.Options()
                        opts._timeout = timeout
                        pg = dist.ProcessGroupNCCL(dist.PrefixStore("weights", store), rank, world, opts)
                    else:
                        device = torch.device("cpu")
                        pg = dist.ProcessGroupGloo(dist.PrefixStore("weights", store), rank, world, timeout)
                except Exception as err:
                    raise RuntimeError(f"collective transport: rank {rank} of {world} could not join the "
                                       f"{backend} group at {self.host}:{self.port}: {err}") from err
                _GROUPS[key] = (store, pg, device)
            return _GROUPS[key][1:]

    def _broadcast(self, pg, t: torch.Tensor, what: str) -> None:
        try:
            pg.broadcast(t, 0, timedelta(seconds=self.timeout_s)).wait()
        except RuntimeError as err:
            kind = TimeoutError if "timeout" in str(err).lower() or "timed out" in str(err).lower() else RuntimeError
            raise kind(f"collective transport ({self.host}:{self.port}): {what}: {err}") from err

    def send(self, version: int, buckets: Iterable[bytes]) -> SendStats:
        pg, device = self._group(0)
        t0 = time.perf_counter()
        count = nbytes = 0
        for data in buckets:
            what = f"broadcasting bucket {count} of version {version}"
            self._broadcast(pg, torch.tensor([version, count, len(data)], dtype=torch.int64, device=device), what)
            with warnings.catch_warnings():  # read-only bytes: the root only reads them
                warnings.filterwarnings("ignore", message="The given buffer is not writable")
                payload = torch.frombuffer(data, dtype=torch.uint8)
            self._broadcast(pg, payload.to(device), what)
            count += 1
            nbytes += len(data)
        self._broadcast(pg, torch.tensor([version, count, -1], dtype=torch.int64, device=device),
                        f"ending version {version} after {count} bucket(s)")
        return SendStats(version, count, nbytes, time.perf_counter() - t0, 1 if count else 0)

    def receive(self, version: int, receiver: int = 0) -> Iterator[memoryview]:
        self._check_receiver(receiver)
        pg, device = self._group(receiver + 1)
        index = 0
        while True:
            what = f"bucket {index} of version {version} (receiver {receiver})"
            header = torch.empty(3, dtype=torch.int64, device=device)
            self._broadcast(pg, header, what)
            got_version, got_index, n = header.tolist()
            if (got_version, got_index) != (version, index):
                raise RuntimeError(f"collective transport: receiver {receiver} expected bucket {index} of "
                                   f"version {version}, the sender sent bucket {got_index} of version {got_version}")
            if n < 0:
                return
            payload = torch.empty(n, dtype=torch.uint8, device=device)
            self._broadcast(pg, payload, what)
            yield payload.cpu().numpy().data
            index += 1

    def close(self) -> None:
        with _GROUPS_LOCK:
            for key in [k for k in _GROUPS if k[:2] == (self.host, self.port)]:
                del _GROUPS[key]
                _GROUP_LOCKS.pop(key, None)


# --- choosing one ------------------------------------------------------------------------------

TRANSPORTS = {"object_store": ObjectStoreTransport, "disk": DiskTransport, "collective": CollectiveTransport}


def make_transport(kind: str, num_receivers: int, **options) -> Transport:
    """A transport by name. options: object_store (window, timeout_s); disk (folder, window,
    timeout_s); collective (host, port, backend, timeout_s)."""
    if kind not in TRANSPORTS:
        raise KeyError(f"unknown weight transport {kind!r}; known: {sorted(TRANSPORTS)}")
    return TRANSPORTS[kind](num_receivers=num_receivers, **options)
