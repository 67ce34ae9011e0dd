"""Where the roles of a run sit on the node's devices: colocated or split (`ray.placement`).

colocated (verl's hybrid engine, OpenRLHF's colocate_all): the engines and the trainer share the node's
devices and the phase in progress gets all of them. A synchronous step never generates and trains at the
same time, so giving each role its own devices leaves half of them idle in every phase.
- GPU: engines and trainer ranks share each GPU (half a GPU each in Ray's accounting, one placement group);
  the engines sleep (vLLM sleep mode level 1: weights to host memory, KV cache freed) while the trainer
  trains and wake before the weight sync; with `trainer.offload` the trainer's state leaves the GPU while
  the engines generate.
- CPU: threads are what is shared. Ray starts an actor that asks for one CPU with one OpenMP thread, so the
  trainer would train on one core while the idle engine holds the other, and the reverse during rollout.
  Colocated, each engine binds its threads to all the node's cores (divided among the engines) and each
  trainer rank uses all of them (divided among the ranks): the idle role's threads sleep, the busy one runs
  everywhere.
split: each role its own devices, as configured (what async mode needs: both roles work at once).
auto: colocated for a synchronous run on one node, else split.

Never: start actors (rl/groups.py does) or decide the order of a step (rl/controller.py does).
"""

from __future__ import annotations

import os
from contextlib import contextmanager


def resolve_placement(requested: str, mode: str, num_nodes: int) -> str:
    """The placement a run uses: `requested` unless it is "auto"."""
    if requested == "colocated" and mode == "async":
        raise ValueError("ray.placement=colocated with rollout.mode=async: async mode generates while it trains, "
                         "so the roles need their own devices; use ray.placement=split (or auto)")
    if requested != "auto":
        return requested
    return "colocated" if mode == "sync" and num_nodes == 1 else "split"


def weight_transport_for(requested: str, *, gpu: bool, placement: str, num_nodes: int, simulated: bool,
                         num_engines: int = 1, num_ranks: int = 1) -> str:
    """The weight transport a run uses (`trainer.weight_transport`, rl/weights/): `requested` unless it is
    "auto". auto: straight into the engines' processes where that path serves every engine:
    - CPU on one node: ipc (shared-memory buckets, packed in place, mapped by the engine's worker:
      benchmarks/trainer.py measured it fastest here);
    - GPU engines on GPUs of their own (split): collective (an NCCL broadcast from trainer rank 0);
    - GPU colocated: ipc with one sender per rank (rank i to the engine on its GPU, rl/weights/per_rank.py),
      where every engine has a rank on its GPU (num_engines <= num_ranks); else object_store (NCCL refuses two
      ranks of one group on one GPU);
    - CPU on several nodes: collective (gloo); simulated engines or trainer: object_store."""
    if requested != "auto":
        return requested
    if simulated:
        return "object_store"
    if gpu:
        if placement == "split":
            return "collective"
        return "ipc" if num_engines <= num_ranks else "object_store"
    return "ipc" if num_nodes == 1 else "collective"


def node_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def cpu_threads(placement: str, cores: int, num_engines: int, num_ranks: int) -> tuple[int, int]:
    """(threads per engine, threads per trainer rank) on a CPU node; (0, 0) = leave them as Ray sets them."""
    if placement != "colocated":
        return 0, 0
    return max(1, cores // num_engines), max(1, cores // num_ranks)


class Colocation:
    """The phase switch of a colocated GPU run: `with colocation.trainer_phase(): train`."""

    def __init__(self, rollout, trainer, *, active: bool, offload: bool, timeout_s: float):
        self.rollout, self.trainer = rollout, trainer
        self.active, self.offload, self.timeout_s = active, offload, timeout_s

    @contextmanager
    def trainer_phase(self):
        if not self.active:
            yield
            return
        self.rollout.call("sleep", timeout_s=self.timeout_s)
        if self.offload:
            self.trainer.call("onload", timeout_s=self.timeout_s)
        try:
            yield
        finally:
            if self.offload:
                self.trainer.call("offload", timeout_s=self.timeout_s)
            self.rollout.call("wake", timeout_s=self.timeout_s)
