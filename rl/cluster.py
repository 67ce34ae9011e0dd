"""Ray actor groups: placement groups per role, "run on every rank", "split over ranks".

Owns: starting or joining Ray (`connect`), `ActorGroup` (one placement group, one actor per
bundle, rank wiring; or several ranks per actor process, `per_actor`), timed waits that name what they
waited for (`wait`), and the rendezvous of a torch.distributed group (rank 0's node address and a free port).

Never: know what the workers do. Worker classes stay plain Python classes in their own folders
(testable without Ray); this module is the only place they become actors.

Works with a local `ray.init()` (a laptop, CI) and inside `ray job submit` (Ray sets
RAY_ADDRESS for the job's driver; `connect` then joins that cluster).
"""

from __future__ import annotations

import inspect
import math
import os
import socket
from pathlib import Path
from typing import Any, Sequence

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

REPO_ROOT = Path(__file__).resolve().parents[1]


def connect(address: str | None = None, num_cpus: int | None = None, cpus_needed: float = 0.0) -> str:
    """Join the cluster at `address`, the job's cluster (RAY_ADDRESS), or start a private local one.

    A local cluster gets at least `cpus_needed` logical CPUs (they are scheduling tokens, not cores)
    and the repository on the workers' PYTHONPATH. Returns how it connected, for the log.
    """
    if ray.is_initialized():
        return "already connected"
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
        return f"joined {address or os.environ['RAY_ADDRESS']}"
    cpus = num_cpus or max(os.cpu_count() or 1, math.ceil(cpus_needed))
    ray.init(address="local", num_cpus=cpus, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}})
    return f"started a local Ray ({cpus} logical CPUs)"


def worker_pythonpath() -> str:
    """The PYTHONPATH a Ray worker of a cluster this repository starts gets: the repository, then the caller's."""
    return os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)


def wait(refs, timeout_s: float, what: str, names: Sequence[str] | None = None):
    """ray.get with a timeout whose error says what was being waited for and, for a list of refs, which of
    them had not answered (`names[i]` for refs[i]; by default their positions)."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"waited {timeout_s:.0f}s for {what}; no answer{pending_part(refs, names)}") from None


def pending_part(refs, names: Sequence[str] | None = None, show: int = 8) -> str:
    """' from a, b (2 of 5)': the refs of a list that are not ready yet, by name ('' for a single ref)."""
    if not isinstance(refs, (list, tuple)) or len(refs) < 2:
        return ""
    _, pending = ray.wait(list(refs), num_returns=len(refs), timeout=0)
    late = {id(r) for r in pending}
    labels = [names[i] if names else f"#{i}" for i, r in enumerate(refs) if id(r) in late]
    more = f", ... {len(labels) - show} more" if len(labels) > show else ""
    return f" from {', '.join(labels[:show])}{more} ({len(labels)} of {len(refs)})"


def node_free_port() -> tuple[str, int]:
    """(this process's node address, a free port there)."""
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ray.util.get_node_ip_address(), port


class ActorGroup:
    """`num` actors of one worker class, one per bundle of a placement group of their own.

    `kwargs_for(rank)` gives each rank its constructor arguments. `call` runs a method on every
    rank with the same arguments; `call_split` gives rank i its own first argument.

    `per_actor` > 1 hosts that many ranks in one actor process (`_Hosted`: one event loop for all of them),
    e.g. 128 simulated engines in 8 processes; `actors[i]` is then a `RankHandle`, used like an actor
    handle (`actors[i].method.remote(...)`, `__ray_call__` included), and `hosts` are the processes.
    """

    def __init__(self, cls: type, num: int, *, name: str, num_cpus: float, num_gpus: float = 0.0,
                 kwargs_for=lambda rank: {}, strategy: str = "PACK", timeout_s: float = 600.0,
                 max_concurrency: int | None = None, pg=None, per_actor: int = 1):
        """`pg`: a placement group shared with another group (colocated placement, rl/placement.py): rank i
        goes to its bundle i; it is not this group's to remove. `num_cpus`, `num_gpus`: per rank."""
        if num < 1:
            raise ValueError(f"{name}: an actor group needs at least one actor, got {num}")
        if per_actor < 1 or (per_actor > 1 and (num_gpus or pg is not None)):
            raise ValueError(f"{name}: per_actor={per_actor}; several ranks share a process only without GPUs "
                             "and without a shared placement group")
        self.name, self.num, self.timeout_s = name, num, timeout_s
        ranks = [list(range(a, min(a + per_actor, num))) for a in range(0, num, per_actor)]
        self.own_pg = pg is None
        if pg is None:
            bundles = [{"CPU": num_cpus * len(r)} | ({"GPU": num_gpus} if num_gpus else {}) for r in ranks]
            pg = placement_group(bundles, strategy=strategy, name=f"windward-{name}")
            wait(pg.ready(), timeout_s, f"the placement group of {name} ({len(bundles)} x {bundles[0]}); "
                                        "does the cluster have these resources?")
        self.pg = pg
        opts = dict(num_gpus=num_gpus)
        if max_concurrency or per_actor > 1:
            opts["max_concurrency"] = max_concurrency or 1000 * per_actor

        def place(i):
            return PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)

        if per_actor == 1:
            remote_cls = ray.remote(cls)
            self.actors = [remote_cls.options(**opts, num_cpus=num_cpus, scheduling_strategy=place(i))
                           .remote(**kwargs_for(i)) for i in range(num)]
            self.hosts = self.actors
        else:
            host = ray.remote(_Hosted)
            self.hosts = [host.options(**opts, num_cpus=num_cpus * len(r), scheduling_strategy=place(j))
                          .remote(cls, [kwargs_for(i) for i in r]) for j, r in enumerate(ranks)]
            self.actors = [RankHandle(self.hosts[j], k) for j, r in enumerate(ranks) for k in range(len(r))]

    def call_async(self, method: str, *args, **kwargs) -> list:
        return [getattr(a, method).remote(*args, **kwargs) for a in self.actors]

    def call(self, method: str, *args, timeout_s: float | None = None, **kwargs) -> list:
        return wait(self.call_async(method, *args, **kwargs), timeout_s or self.timeout_s,
                    f"{self.name}.{method} on {self.num} rank(s)", self.rank_names())

    def call_split(self, method: str, shards: Sequence[Any], *args, timeout_s: float | None = None,
                   **kwargs) -> list:
        if len(shards) != self.num:
            raise ValueError(f"{self.name}.{method}: {len(shards)} shards for {self.num} ranks")
        refs = [getattr(a, method).remote(s, *args, **kwargs) for a, s in zip(self.actors, shards)]
        return wait(refs, timeout_s or self.timeout_s, f"{self.name}.{method} on {self.num} rank(s)",
                    self.rank_names())

    def rank_names(self) -> list[str]:
        return [f"{self.name} rank {i}" for i in range(self.num)]

    def rendezvous(self) -> tuple[str, int]:
        """Address and free port on rank 0's node, for torch.distributed."""
        return wait(ray.remote(num_cpus=0)(node_free_port).options(
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=0),
        ).remote(), self.timeout_s, f"a free port on the node of {self.name} rank 0")

    def shutdown(self) -> None:
        for a in self.hosts:
            ray.kill(a)
        if self.own_pg:
            remove_placement_group(self.pg)


class _Hosted:
    """Several ranks of one worker class in one actor process (an async actor: the ranks' coroutines share
    its event loop). `call(rank, method, ...)` runs a worker method, awaiting it if it is a coroutine."""

    def __init__(self, cls: type, kwargs: list[dict]):
        self.workers = [cls(**kw) for kw in kwargs]

    async def call(self, rank: int, method: str, *args, **kwargs):
        out = getattr(self.workers[rank], method)(*args, **kwargs)
        return await out if inspect.isawaitable(out) else out

    async def apply(self, rank: int, fn, *args, **kwargs):
        out = fn(self.workers[rank], *args, **kwargs)
        return await out if inspect.isawaitable(out) else out


class RankHandle:
    """One rank of a `_Hosted` process, used like its actor handle: `handle.method.remote(*args)`, and
    `handle.__ray_call__.remote(fn, *args)` runs fn(worker, *args) there."""

    def __init__(self, host, rank: int):
        self.host, self.rank = host, rank

    def __getattr__(self, method: str):
        if method.startswith("__") and method != "__ray_call__":
            raise AttributeError(method)
        return _RankMethod(self.host, self.rank, method)

    def __repr__(self) -> str:
        return f"RankHandle({self.host}, rank={self.rank})"


class _RankMethod:
    def __init__(self, host, rank: int, method: str):
        self.host, self.rank, self.method = host, rank, method

    def remote(self, *args, **kwargs):
        if self.method == "__ray_call__":
            return self.host.apply.remote(self.rank, *args, **kwargs)
        return self.host.call.remote(self.rank, self.method, *args, **kwargs)


def embedding_servers(models: dict, rerankers: dict | None = None, *, num_cpus: float = 1.0,
                      max_concurrency: int = 64, timeout_s: float = 600.0, max_batch: int = 64,
                      max_wait_ms: float = 5.0) -> list:
    """One `envs.embedding.server.EmbeddingServer` actor per alive node (pinned there), named
    `server_name(node_id)` so that the dense backend, reranker, memory and retrievers of every actor on the node
    share it (`make_embedder({"kind": "server", "model": name})`). Returns the handles; `ray.kill` ends them."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from envs.embedding.server import EmbeddingServer, server_name
    from envs.search_backends import make_embedder

    alive = [n for n in ray.nodes() if n.get("Alive")]
    # a node that can never host one (a head started with --num-cpus=0) is skipped, not waited on
    nodes = [n["NodeID"] for n in alive if n.get("Resources", {}).get("CPU", 0) >= num_cpus]
    if not nodes:
        raise ValueError(f"embedding servers: no alive node has {num_cpus} CPU for a server (embedding.num_cpus)")
    actor = ray.remote(EmbeddingServer)
    handles = []
    try:
        for node in nodes:
            handles.append(actor.options(name=server_name(node), num_cpus=num_cpus, max_concurrency=max_concurrency,
                                         scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                           .remote(models, rerankers, build=make_embedder, max_batch=max_batch,
                                   max_wait_ms=max_wait_ms))
        wait([h.info.remote() for h in handles], timeout_s,
             f"{len(handles)} embedding server(s) to load {sorted(models)} and rerankers {sorted(rerankers or {})}")
    except BaseException:  # none left behind holding its name and its model
        for h in handles:
            try:
                ray.kill(h)
            except Exception:
                pass
        raise
    return handles
