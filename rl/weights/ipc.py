"""Weights by handle when the engines share the trainer's node (colocated): no copy on any wire.

Owns: `IPCTransport`. The sender packs each bucket into memory the receivers can map (CUDA memory on GPU,
a file in /dev/shm on CPU, its twin tested here) and broadcasts only its handle over a small gloo group
(`CollectiveTransport`'s framing); each receiver maps the bucket, its engine loads it, and the receivers
acknowledge before the sender lets the bucket go. The sender packs the next bucket meanwhile. verl, ROLL
and SkyRL colocate this way.

On CPU the shared files are slots, reused from bucket to bucket and from sync to sync: a fresh file costs a
page fault per 4 KiB page on both sides, several times the copy itself. A receiver maps a slot once. Its
acknowledgement of each bucket says which slots it still holds views of (an engine keeps views of a bucket
until a layer's other shards arrive; a bucket waiting in a read-ahead queue counts too), and the sender
packs only into a slot no receiver holds and no bucket in flight uses: three or four slots in practice, a
one-off file (removed once loaded) past `MAX_SLOTS`. The slot files live until `close`; a file whose
sending process is gone (a crashed run) is removed by the next transport that creates a slot.

The CUDA half (`cuda_handle` / `open_cuda_handle`, after vLLM's IPC weight-transfer engine: handles keyed
by the GPU's UUID, rebuilt on the receiver's device index) has never run here (no GPU on this machine);
everything else runs on CPU in the tests. On GPU torch's caching allocator reuses the memory.

Never: pack into a slot a receiver still holds, or leave files behind after `close`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import uuid

import torch

from rl.weights.collective import CollectiveTransport


def cuda_handle(t: torch.Tensor) -> dict:
    """{GPU UUID: the args of `rebuild_cuda_tensor`} for a CUDA tensor (torch.multiprocessing's IPC
    handle; torch keeps the memory alive until every receiver freed its mapping)."""
    from torch.multiprocessing.reductions import reduce_tensor

    _, args = reduce_tensor(t)
    return {str(torch.cuda.get_device_properties(t.device).uuid): args}


def open_cuda_handle(handle: dict) -> torch.Tensor:
    """The tensor behind `cuda_handle`, mapped on this process's current device (same physical GPU)."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    device = torch.cuda.current_device()
    gpu = str(torch.cuda.get_device_properties(device).uuid)
    if gpu not in handle:
        raise ValueError(f"ipc transport: the bucket lives on GPU(s) {sorted(handle)}, this receiver runs on {gpu}: "
                         "IPC needs the engine on the trainer rank's GPU (colocated placement)")
    args = list(handle[gpu])
    args[6] = device  # the device index slot of reduce_tensor's args
    return rebuild_cuda_tensor(*args)


MAX_SLOTS = 16  # shared files a sender keeps for reuse (the acknowledgement carries one flag per slot)


class _Slots:
    """The sender's reusable shared files of one transport, in its process (a transport is unpickled
    anew for every sync, so they live here): the slot tensors, the slots handed out for the version in
    flight (`busy`), and those the receivers' last acknowledgement said they still hold (`held`)."""

    def __init__(self):
        self.files: list[tuple[str, torch.Tensor]] = []  # (path, the mapped file)
        self.busy: set[int] = set()
        self.held: set[int] = set()


_SENDER: dict[str, _Slots] = {}  # file prefix -> the sender's slots
_RECEIVER: dict[tuple[str, int], dict[int, tuple[str, torch.Tensor]]] = {}  # (prefix, rank) -> slot -> mapping


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")  # /dev/shm and its slots are Linux's anyway


def _held_by(mapping: torch.Tensor) -> bool:
    """A view of this mapped slot is alive somewhere in this process (torch's storage use count; without
    it, always: never reuse what cannot be checked)."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    return use_count is None or use_count(mapping.untyped_storage()._cdata) > 2  # mapping and this call's handle


class IPCTransport(CollectiveTransport):
    """Buckets stay where the sender packed them; receivers on the same node map them by handle.

    host, port: the rendezvous of the gloo group that carries handles and acknowledgements.
    shm_dir: where CPU buckets live (a memory-backed filesystem).
    """

    kind = "ipc"

    def __init__(self, host: str, port: int, num_receivers: int, *, timeout_s: float = 600.0, dtype=None,
                 shm_dir: str = "/dev/shm"):
        super().__init__(host, port, num_receivers, backend="gloo", timeout_s=timeout_s, dtype=dtype)
        self.shm_dir = shm_dir

    def _prefix(self) -> str:
        return os.path.join(self.shm_dir, f"windward-ipc-{self.port}-")

    def _slots(self) -> _Slots:
        return _SENDER.setdefault(self._prefix(), _Slots())

    def _new_file(self, nbytes: int) -> tuple[str, torch.Tensor]:
        path = f"{self._prefix()}{os.getpid()}-{uuid.uuid4().hex}"
        return path, torch.from_file(path, shared=True, size=nbytes, dtype=torch.uint8)

    def _sweep(self) -> None:
        """Remove the slot files of senders that died without `close` (this prefix's, any port's)."""
        for path in glob.glob(os.path.join(glob.escape(self.shm_dir), "windward-ipc-*-*-*")):
            pid = os.path.basename(path).split("-")[3]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def allocate(self, nbytes: int) -> torch.Tensor:
        """A bucket the receivers can map: CUDA memory where the sender has a GPU, else a slot no receiver
        holds and no bucket in flight uses (grown to `nbytes` if it is smaller), or a new one."""
        if torch.cuda.is_available():
            return torch.empty(nbytes, dtype=torch.uint8, device=torch.device("cuda", torch.cuda.current_device()))
        slots = self._slots()
        free = [i for i, (path, _) in enumerate(slots.files)
                if i not in slots.busy and i not in slots.held and os.path.exists(path)]
        fits = [i for i in free if slots.files[i][1].numel() >= nbytes]
        if fits:
            i = min(fits, key=lambda j: slots.files[j][1].numel())
        elif free:  # grow one: its old file goes (no receiver holds it)
            i = free[0]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(slots.files[i][0])
            slots.files[i] = self._new_file(nbytes)
        elif len(slots.files) < MAX_SLOTS:
            if not slots.files:
                self._sweep()
            i = len(slots.files)
            slots.files.append(self._new_file(nbytes))
        else:  # every slot held or in flight: a one-off file, removed once loaded
            return self._new_file(nbytes)[1]
        slots.busy.add(i)
        return slots.files[i][1][:nbytes]

    def _open(self, pg, device, what: str) -> None:
        """Before a version: the sender learns which slots the receivers still hold (`_taken`). (The
        group is gloo on every machine, so `device` is always the host here.)"""
        if pg.rank() == 0:
            self._slots().busy.clear()  # nothing is in flight between versions
        self._agree_held(pg, what)

    def _agree_held(self, pg, what: str) -> None:
        """All ranks: a flag per slot, summed: the receivers' views of it (the sender adds nothing)."""
        flags = torch.zeros(MAX_SLOTS, dtype=torch.int64)
        if pg.rank() > 0:
            for i, (_, mapping) in _RECEIVER.get((self._prefix(), pg.rank()), {}).items():
                flags[i] = int(_held_by(mapping))
        self._wait(pg.allreduce([flags]), f"{what}: the slots the receivers hold")
        if pg.rank() == 0:
            self._slots().held = set(flags.nonzero().flatten().tolist())

    def _post(self, pg, device, data: torch.Tensor, version: int, index: int, what: str):
        path, slot = None, -1
        if data.is_cuda:
            handle = ("cuda", cuda_handle(data))
        else:
            filename = getattr(data.untyped_storage(), "filename", None)
            slots = self._slots()
            slot = next((i for i, (path, _) in enumerate(slots.files) if path == filename), -1)
            if slot < 0:  # a one-off file (removed once loaded), or not from `allocate`: copied into one
                if not filename or not filename.startswith(self._prefix()):
                    data = self._new_file(data.numel())[1].copy_(data)
                path = data.untyped_storage().filename
            handle = ("shm", data.untyped_storage().filename, data.storage_offset(), data.numel(), slot)
        blob = torch.frombuffer(bytearray(pickle.dumps(handle)), dtype=torch.uint8)
        self._broadcast(pg, self._header([version, index, data.numel(), blob.numel()], device), what)
        self._broadcast(pg, blob, what)
        flags = torch.zeros(MAX_SLOTS, dtype=torch.int64)
        ack = pg.allreduce([flags])  # done when every receiver took the bucket; says which slots they hold
        return ack, flags, data, path, slot

    def _settle(self, pending, what: str) -> None:
        ack, flags, data, path, slot = pending
        try:
            self._wait(ack, f"{what}: every receiver to take it")
        finally:
            if path:  # receivers that mapped it keep their mapping; the name goes
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            elif data.is_cuda:  # free what receivers let go of (torch keeps a block a receiver still maps)
                torch.cuda.ipc_collect()
        if not data.is_cuda:
            slots = self._slots()
            slots.busy.discard(slot)
            slots.held = set(flags.nonzero().flatten().tolist())

    def _take(self, pg, device, rank: int, n: int, extra: int, what: str, as_tensors: bool) -> torch.Tensor:
        blob = torch.empty(extra, dtype=torch.uint8)
        self._broadcast(pg, blob, what)
        handle = pickle.loads(blob.numpy().tobytes())
        if handle[0] == "cuda":
            return open_cuda_handle(handle[1])
        _, path, offset, nbytes, slot = handle
        mapped = _RECEIVER.setdefault((self._prefix(), rank), {})
        if slot in mapped and mapped[slot][0] == path:
            return mapped[slot][1][offset:offset + n]
        try:
            size = os.path.getsize(path)
        except OSError:  # from_file would create an empty file in its place
            size = -1
        if nbytes != n or size < offset + n:
            raise RuntimeError(f"ipc transport: {what}: shared bucket {path} ({nbytes} bytes at {offset}, header "
                               f"says {n}) is missing: receivers must run on the sender's node")
        mapping = torch.from_file(path, shared=True, size=size, dtype=torch.uint8)
        if slot >= 0:
            mapped[slot] = (path, mapping)  # kept: the next bucket in this slot needs no new mapping
        return mapping[offset:offset + n]

    def _taken(self, pg, device, what: str) -> None:
        self._agree_held(pg, f"{what}: acknowledging it")

    def close(self) -> None:
        for path in glob.glob(f"{glob.escape(self._prefix())}*"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        _SENDER.pop(self._prefix(), None)
        for key in [k for k in _RECEIVER if k[0] == self._prefix()]:
            del _RECEIVER[key]
        super().close()
