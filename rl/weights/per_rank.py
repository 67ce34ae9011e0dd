"""One sender per trainer rank: each rank streams the whole state to the engines on its own device.

Owns: `PerRankTransport`, a transport made of parts, one per sending rank; part r carries the buckets of
rank r to the engines it serves (engine i is served by rank i: colocated placement puts engine i and
rank i on GPU i). verl, ROLL and SkyRL colocate this way: a CUDA IPC handle opens only on the GPU that
holds the memory, so rank 0 alone cannot serve the engines on the other GPUs, and NCCL refuses two ranks
of one group on one GPU. Every rank gathers the full state anyway (FSDP2's all-gathers); with a part, it
also packs and sends it (`rl/trainer/base.py send_weights`).

The parts are ordinary transports (`IPCTransport` for colocated GPUs; on CPU the same code runs on shared
memory, tested here) with one receiver each; a part's failure names its rank.

Never: let an engine be served by a rank on another device, or a rank send to an engine it does not serve.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from rl.weights.base import BucketStream, SendStats, Transport


class PerRankTransport(Transport):
    """parts[r]: the transport of rank r, with one receiver: engine r. Ranks past the engines send nothing."""

    kind = "per_rank"
    portable = True
    per_rank = True  # the trainer has every rank with a part send (`send_weights`)

    def __init__(self, parts: list[Transport]):
        if not parts:
            raise ValueError("per_rank transport: no parts (one per engine)")
        if any(p.num_receivers != 1 for p in parts):
            raise ValueError("per_rank transport: every part serves exactly one engine")
        super().__init__(len(parts), parts[0].timeout_s, parts[0].dtype)
        self.parts = parts

    def sender(self, rank: int) -> Transport | None:
        """The part rank `rank` sends through, or None (a rank with no engine on its device)."""
        return self.parts[rank] if 0 <= rank < len(self.parts) else None

    def allocate(self, nbytes: int):
        raise RuntimeError("per_rank transport: pack through the rank's own part (`sender(rank).allocate`)")

    def send(self, version: int, buckets: Iterable) -> SendStats:
        raise RuntimeError("per_rank transport: each rank sends through its own part (`sender(rank).send`)")

    def receive(self, version: int, receiver: int = 0, as_tensors: bool = False) -> Iterator:
        self._check_receiver(receiver)
        return self.parts[receiver].receive(version, 0, as_tensors)

    def stream(self, version: int, receiver: int = 0) -> BucketStream:
        """Engine `receiver`'s stream: its part's, which that engine's worker can iterate itself."""
        self._check_receiver(receiver)
        return self.parts[receiver].stream(version, 0)

    def close(self) -> None:
        errors = []
        for p in self.parts:
            try:
                p.close()
            except Exception as err:  # close every part; report what failed
                errors.append(repr(err))
        if errors:
            raise RuntimeError(f"per_rank transport: closing its parts: {'; '.join(errors)}")
