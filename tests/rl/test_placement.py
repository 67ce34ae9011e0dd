"""Placement (rl/placement.py): which placement and weight transport a run gets, the CPU thread shares, and the
order of the phase switch of a colocated GPU run."""

from __future__ import annotations

import pytest

from rl.placement import Colocation, cpu_threads, resolve_placement, weight_transport_for


def test_auto_is_colocated_for_a_sync_run_on_one_node_and_split_otherwise():
    assert resolve_placement("auto", "sync", 1) == "colocated"
    assert resolve_placement("auto", "async", 1) == "split"
    assert resolve_placement("auto", "sync", 4) == "split"
    assert resolve_placement("split", "sync", 1) == "split"
    with pytest.raises(ValueError, match="ray.placement=colocated with rollout.mode=async"):
        resolve_placement("colocated", "async", 1)


def test_auto_weight_transport_goes_straight_into_the_engines_where_that_serves_them_all():
    def auto(**kw):
        return weight_transport_for("auto", **({"gpu": False, "placement": "colocated", "num_nodes": 1,
                                                "simulated": False} | kw))

    assert auto() == "ipc" and auto(placement="split") == "ipc"  # CPU, one node: shared memory
    assert auto(num_nodes=2) == "collective"
    assert auto(gpu=True, placement="split") == "collective"  # NCCL into engines on GPUs of their own
    assert auto(gpu=True, num_engines=8, num_ranks=8) == "ipc"  # colocated GPUs: each rank to its GPU's engine
    assert auto(gpu=True, num_engines=8, num_ranks=4) == "object_store"  # 4 engines share no GPU with a rank
    assert auto(simulated=True) == "object_store"
    assert weight_transport_for("disk", gpu=True, placement="split", num_nodes=4, simulated=False) == "disk"


def test_colocated_cpu_roles_each_get_every_core_split_keeps_rays_threads():
    assert cpu_threads("colocated", cores=2, num_engines=1, num_ranks=1) == (2, 2)
    assert cpu_threads("colocated", cores=16, num_engines=2, num_ranks=4) == (8, 4)
    assert cpu_threads("colocated", cores=2, num_engines=4, num_ranks=1) == (1, 2)
    assert cpu_threads("split", cores=16, num_engines=2, num_ranks=4) == (0, 0)


class _Group:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def call(self, method, timeout_s=None):
        self.log.append(f"{self.name}.{method}")


@pytest.mark.parametrize("offload", [False, True])
def test_trainer_phase_sleeps_the_engines_and_wakes_them_even_when_training_fails(offload):
    log = []
    colo = Colocation(_Group("rollout", log), _Group("trainer", log), active=True, offload=offload, timeout_s=1)
    with pytest.raises(RuntimeError):
        with colo.trainer_phase():
            log.append("train")
            raise RuntimeError("boom")
    want = ["rollout.sleep", "trainer.onload", "train", "trainer.offload", "rollout.wake"]
    assert log == (want if offload else [w for w in want if not w.startswith("trainer.")])
    log.clear()
    with Colocation(_Group("rollout", log), _Group("trainer", log), active=False, offload=True,
                    timeout_s=1).trainer_phase():
        log.append("train")
    assert log == ["train"]
