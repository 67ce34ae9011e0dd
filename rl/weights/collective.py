"""Weights over a torch.distributed group of their own, straight into the engines' processes.

Owns: `CollectiveTransport`: a broadcast from the sender (rank 0, the trainer's rank 0) to receivers
1..N, NCCL on GPU (buckets packed on the device, received on the device) and gloo on CPU (its twin,
tested here). A receiver is whatever process iterates the stream: the transport is portable, so a vLLM
engine hands the stream to its worker process, which joins the group and loads bucket by bucket
(`rollout/engines/vllm_ext.py`); nothing crosses an RPC or the RolloutWorker. The sender packs the next
bucket while the previous one is on the wire (two buckets held at most). Host buffers are reused: the
sender's once their broadcast is done, a tensor-taking receiver's (a vLLM worker) once no view of them is
left, since on CPU a fresh buffer's page faults cost about five copies.

Per bucket: a header [version, index, nbytes, extra] then the payload; nbytes -1 ends a version.
`rl/weights/ipc.py` reuses this framing with a handle in place of the payload.

Never: create more than one group per (address, rank) and process, or wait without a timeout.
"""

from __future__ import annotations

import threading
import time
import warnings
from datetime import timedelta
from typing import Iterable, Iterator

import torch

from rl.weights.base import SendStats, Transport

_GROUPS: dict[tuple, tuple] = {}  # (host, port, rank) -> (store, process group, device), per process
_GROUP_LOCKS: dict[tuple, threading.Lock] = {}  # one per key: joining blocks until every rank joins
_GROUPS_LOCK = threading.Lock()
# (host, port, rank) -> host-memory bucket buffers to reuse: a fresh buffer costs a page fault per 4 KiB
# page, about five times the copy itself; kept for the life of the process (at most SPARE per rank)
_SPARE: dict[tuple, list[torch.Tensor]] = {}
SPARE = 3  # the bucket an engine keeps views of, the one it loads, the one arriving


def _as_tensor(data, device: torch.device | None = None) -> torch.Tensor:
    """A bucket as a 1-D uint8 tensor, moved to `device` if given and elsewhere."""
    if not torch.is_tensor(data):
        with warnings.catch_warnings():  # read-only bytes: the root only reads them
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            data = torch.frombuffer(data, dtype=torch.uint8)
    data = data.reshape(-1)
    return data if device is None else data.to(device)


def _delivered(t: torch.Tensor, as_tensors: bool):
    """What a receiver yields: the tensor when asked for tensors, else a host uint8 array (bytes-like)."""
    return t if as_tensors else t.cpu().numpy()


def _unshared(buf: torch.Tensor) -> bool:
    """No tensor but `buf` uses its memory: no view an engine kept of a bucket (a layer waiting for the
    rest of its shards), no bucket a consumer still holds. (torch's storage use count; without it, never.)"""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    return use_count is not None and use_count(buf.untyped_storage()._cdata) <= 2  # buf and this call's handle


class CollectiveTransport(Transport):
    """Broadcast from the sender (rank 0) to receivers 1..N of a process group of their own,
    rendezvous at `host:port` (a free port on the sender's node). backend: "nccl" (tensors on the
    current CUDA device), "gloo" (CPU) or "auto" (nccl where CUDA is available).

    The group is created on first use on each side and kept for the life of the process: the first
    sync must run the sender and every receiver at the same time (the controller does), and a receiver
    must always iterate in the same process (the engine's worker, once it did).
    """

    kind = "collective"
    portable = True

    def __init__(self, host: str, port: int, num_receivers: int, *, backend: str = "auto",
                 timeout_s: float = 600.0, dtype=None):
        super().__init__(num_receivers, timeout_s, dtype)
        if backend not in ("auto", "nccl", "gloo"):
            raise ValueError(f"{self.kind} transport: backend must be auto, nccl or gloo, got {backend!r}")
        self.host, self.port, self.backend = host, int(port), backend

    def _backend(self) -> str:
        if self.backend == "auto":
            return "nccl" if torch.cuda.is_available() else "gloo"
        return self.backend

    def _device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self._backend() == "nccl" else torch.device("cpu")

    def allocate(self, nbytes: int) -> torch.Tensor:
        """Pack where the broadcast reads: the GPU for NCCL, host memory for gloo (a buffer an earlier
        bucket left, once its broadcast is done)."""
        return self._buffer(0, nbytes, exact=True)

    def _buffer(self, rank: int, nbytes: int, exact: bool = False) -> torch.Tensor:
        """A 1-D uint8 buffer of `nbytes` (at least, unless `exact`) for this rank: a spare one no tensor
        uses any more, or a new one (GPU memory is not kept: torch's caching allocator reuses it)."""
        device = self._device()
        if device.type == "cpu":
            for buf in _SPARE.get((self.host, self.port, rank), []):
                if (buf.numel() == nbytes if exact else buf.numel() >= nbytes) and _unshared(buf):
                    return buf[:nbytes]
        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        if device.type == "cpu":
            spare = _SPARE.setdefault((self.host, self.port, rank), [])
            spare.append(buf)
            del spare[:-SPARE]
        return buf[:nbytes]

    def _group(self, rank: int):
        key = (self.host, self.port, rank)
        with _GROUPS_LOCK:
            lock = _GROUP_LOCKS.setdefault(key, threading.Lock())
        with lock:
            if key not in _GROUPS:
                import torch.distributed as dist

                backend, device = self._backend(), self._device()
                timeout = timedelta(seconds=self.timeout_s)
                world = self.num_receivers + 1
                try:
                    store = dist.TCPStore(self.host, self.port, world, is_master=rank == 0, timeout=timeout)
                    prefixed = dist.PrefixStore("weights", store)
                    if backend == "nccl":
                        opts = dist.ProcessGroupNCCL.Options()
                        opts._timeout = timeout
                        pg = dist.ProcessGroupNCCL(prefixed, rank, world, opts)
                    else:
                        pg = dist.ProcessGroupGloo(prefixed, rank, world, timeout)
                except Exception as err:
                    raise RuntimeError(f"{self.kind} transport: rank {rank} of {world} could not join the "
                                       f"{backend} group at {self.host}:{self.port}: {err}") from err
                _GROUPS[key] = (store, pg, device)
            return _GROUPS[key][1:]

    def _wait(self, work, what: str) -> None:
        try:
            work.wait(timedelta(seconds=self.timeout_s))
        except RuntimeError as err:
            text = str(err).lower()
            kind = TimeoutError if "timeout" in text or "timed out" in text else RuntimeError
            raise kind(f"{self.kind} transport ({self.host}:{self.port}): {what}: {err}") from err

    def _broadcast(self, pg, t: torch.Tensor, what: str) -> None:
        try:
            work = pg.broadcast([t])
        except RuntimeError as err:
            raise RuntimeError(f"{self.kind} transport ({self.host}:{self.port}): {what}: {err}") from err
        self._wait(work, what)

    def _header(self, values: list[int], device) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=device)

    # --- what travels per bucket (ipc.py sends a handle instead) -----------------------------

    def _post(self, pg, device, data: torch.Tensor, version: int, index: int, what: str):
        """Announce and start sending one bucket; returns what `_settle` waits for."""
        data = _as_tensor(data, device)
        self._broadcast(pg, self._header([version, index, data.numel(), 0], device), what)
        return pg.broadcast([data]), data

    def _settle(self, pending, what: str) -> None:
        """Block until the receivers hold the bucket `_post` started (it may then be freed)."""
        work, _ = pending
        self._wait(work, what)

    def _take(self, pg, device, rank: int, n: int, extra: int, what: str, as_tensors: bool) -> torch.Tensor:
        # a reused buffer only for tensors, whose views the use count sees; a bytes-like is always fresh
        payload = self._buffer(rank, n) if as_tensors else torch.empty(n, dtype=torch.uint8, device=device)
        self._broadcast(pg, payload, what)
        return payload

    def _taken(self, pg, device, what: str) -> None:
        """The consumer is done with the bucket (nothing to say for a broadcast payload)."""

    def _open(self, pg, device, what: str) -> None:
        """Both sides, before a version's first bucket (nothing to agree on for a broadcast)."""

    # --- the two sides ----------------------------------------------------------------------

    def send(self, version: int, buckets: Iterable) -> SendStats:
        pg, device = self._group(0)
        t0 = time.perf_counter()
        self._open(pg, device, f"opening version {version}")
        count = nbytes = largest = 0
        pending, what = None, ""
        for data in buckets:  # packing this bucket overlapped the previous one's transfer
            data = _as_tensor(data)
            if pending is not None:
                self._settle(pending, what)
            what = f"sending bucket {count} of version {version}"
            pending = self._post(pg, device, data, version, count, what)
            count += 1
            nbytes += data.numel()
            largest = max(largest, data.numel())
        if pending is not None:
            self._settle(pending, what)
        self._broadcast(pg, self._header([version, count, -1, 0], device),
                        f"ending version {version} after {count} bucket(s)")
        return SendStats(version, count, nbytes, time.perf_counter() - t0, 1 if count else 0, largest)

    def receive(self, version: int, receiver: int = 0, as_tensors: bool = False) -> Iterator:
        self._check_receiver(receiver)
        pg, device = self._group(receiver + 1)
        self._open(pg, device, f"opening version {version} (receiver {receiver})")
        index = 0
        while True:
            what = f"bucket {index} of version {version} (receiver {receiver})"
            header = torch.empty(4, dtype=torch.int64, device=device)
            self._broadcast(pg, header, what)
            got_version, got_index, n, extra = header.tolist()
            if (got_version, got_index) != (version, index):
                raise RuntimeError(f"{self.kind} transport: receiver {receiver} expected bucket {index} of "
                                   f"version {version}, the sender sent bucket {got_index} of version {got_version}")
            if n < 0:
                return
            yield _delivered(self._take(pg, device, receiver + 1, n, extra, what, as_tensors), as_tensors)
            self._taken(pg, device, what)
            index += 1

    def close(self) -> None:
        with _GROUPS_LOCK:
            for key in [k for k in _GROUPS if k[:2] == (self.host, self.port)]:
                del _GROUPS[key]
                _GROUP_LOCKS.pop(key, None)
            for key in [k for k in _SPARE if k[:2] == (self.host, self.port)]:
                del _SPARE[key]
