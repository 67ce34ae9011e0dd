"""Weights by handle when the engines share the trainer's node (colocated): no copy on any wire.

Owns: `IPCTransport`. The sender packs each bucket into memory the receivers can map (CUDA memory on GPU,
a file in /dev/shm on CPU, its twin tested here) and broadcasts only its handle over a small gloo group
(`CollectiveTransport`'s framing); each receiver maps the bucket, its engine loads it, and the receivers
acknowledge before the sender lets the bucket go. The sender packs the next bucket meanwhile: two
buckets held at most. verl, ROLL and SkyRL colocate this way.

The CUDA half (`cuda_handle` / `open_cuda_handle`, after vLLM's IPC weight-transfer engine: handles keyed
by the GPU's UUID, rebuilt on the receiver's device index) has never run here (no GPU on this machine);
everything else runs on CPU in the tests.

Never: reuse a bucket's memory (an engine may keep views of a bucket until a layer completes: each
bucket gets fresh memory, freed when the last view goes) or leave files behind after `close`.
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

    def allocate(self, nbytes: int) -> torch.Tensor:
        """A bucket the receivers can map: CUDA memory where the sender has a GPU, else a shared file."""
        if torch.cuda.is_available():
            return torch.empty(nbytes, dtype=torch.uint8, device=torch.device("cuda", torch.cuda.current_device()))
        return torch.from_file(f"{self._prefix()}{uuid.uuid4().hex}", shared=True, size=nbytes, dtype=torch.uint8)

    def _post(self, pg, device, data: torch.Tensor, version: int, index: int, what: str):
        if data.is_cuda:
            handle, path = ("cuda", cuda_handle(data)), None
        else:
            path = getattr(data.untyped_storage(), "filename", None)
            if not path or not path.startswith(self._prefix()):  # not from `allocate`: copy it into a file
                data = self.allocate(data.numel()).copy_(data)
                path = data.untyped_storage().filename
            handle = ("shm", path, data.storage_offset(), data.numel())
        blob = torch.frombuffer(bytearray(pickle.dumps(handle)), dtype=torch.uint8)
        self._broadcast(pg, self._header([version, index, data.numel(), blob.numel()], device), what)
        self._broadcast(pg, blob, what)
        ack = pg.allreduce([torch.zeros(1, dtype=torch.int64)])  # done when every receiver loaded the bucket
        return ack, data, path

    def _settle(self, pending, what: str) -> None:
        ack, data, path = pending
        try:
            self._wait(ack, f"{what}: every receiver to load it")
        finally:
            if path:  # receivers that mapped it keep their mapping; the name goes
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            elif data.is_cuda:  # free what receivers let go of (torch keeps a block a receiver still maps)
                torch.cuda.ipc_collect()

    def _take(self, pg, device, rank: int, n: int, extra: int, what: str, as_tensors: bool) -> torch.Tensor:
        blob = torch.empty(extra, dtype=torch.uint8)
        self._broadcast(pg, blob, what)
        handle = pickle.loads(blob.numpy().tobytes())
        if handle[0] == "cuda":
            return open_cuda_handle(handle[1])
        _, path, offset, nbytes = handle
        try:
            size = os.path.getsize(path)
        except OSError:  # from_file would create an empty file in its place
            size = -1
        if nbytes != n or size < offset + n:
            raise RuntimeError(f"ipc transport: {what}: shared bucket {path} ({nbytes} bytes at {offset}, header "
                               f"says {n}) is missing: receivers must run on the sender's node")
        return torch.from_file(path, shared=True, size=offset + n, dtype=torch.uint8)[offset:]

    def _taken(self, pg, device, what: str) -> None:
        self._wait(pg.allreduce([torch.zeros(1, dtype=torch.int64)]), f"{what}: acknowledging it")

    def close(self) -> None:
        for path in glob.glob(f"{glob.escape(self._prefix())}*"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        super().close()
