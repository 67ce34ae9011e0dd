"""Weight sync from the trainer to the engines (ARCHITECTURE section 4, "Weight sync").

Owns: the transports that stream a full state (HF parameter names), cut into size-bounded buckets in the
serving dtype (`iter_buckets`), versioned, from trainer rank 0 to every engine of the RolloutGroup without
any side holding the whole state a second time. One transport per file under a small base (`base.py`):

  object_store  (object_store.py) Ray object store, the default (works on every machine): buckets are
                `ray.put` and announced on a mailbox actor, at most `window` ahead of the slowest receiver.
  disk          (disk.py) atomic files in a versioned folder every node sees, the same window.
  collective    (collective.py) a torch.distributed broadcast (NCCL on GPU, gloo on CPU, its twin) from
                the sender to the engines' own processes: a vLLM engine's worker joins the group and loads
                bucket by bucket; no RPC, no staging.
  ipc           (ipc.py) colocated on one node: buckets stay in memory both sides map (CUDA IPC on GPU,
                /dev/shm on CPU); only handles and acknowledgements travel, over a gloo group.
  per_rank      (per_rank.py) one part per trainer rank, each streaming the whole state to the engine on
                its own device (colocated GPUs: an ipc part per rank; rl/groups.py builds it).

A transport is one picklable object handed to both sides. Trainer rank 0 calls `send(version, buckets)`
with the buckets as they are packed (`allocate`: where the transport wants them); receiver i iterates
`stream(version, i)`, which an engine's `update_weights` takes in place of a list of buckets and, for a
`portable` transport, hands to the process that holds its weights. Every wait has a timeout whose error
names the version and the bucket.

Never: gather the state (the trainer backend does), decide when to sync (the controller) or load weights
into an engine (the engine does). The wire format of one bucket is defined once, in
`rollout/engines/base.py`.
"""

from __future__ import annotations

from rl.weights.base import BucketStream, SendStats, Transport, iter_buckets
from rl.weights.collective import CollectiveTransport
from rl.weights.disk import DiskTransport
from rl.weights.ipc import IPCTransport
from rl.weights.object_store import ObjectStoreTransport
from rl.weights.per_rank import PerRankTransport

TRANSPORTS = {"object_store": ObjectStoreTransport, "disk": DiskTransport, "collective": CollectiveTransport,
              "ipc": IPCTransport}


def make_transport(kind: str, num_receivers: int, **options) -> Transport:
    """A transport by name. options: every kind (timeout_s, dtype: the serving dtype); object_store
    (window); disk (folder, window); collective (host, port, backend); ipc (host, port, shm_dir)."""
    if kind not in TRANSPORTS:
        raise KeyError(f"unknown weight transport {kind!r}; known: {sorted(TRANSPORTS)}")
    return TRANSPORTS[kind](num_receivers=num_receivers, **options)


__all__ = ["BucketStream", "CollectiveTransport", "DiskTransport", "IPCTransport", "ObjectStoreTransport",
           "PerRankTransport", "SendStats", "TRANSPORTS", "Transport", "iter_buckets", "make_transport"]
