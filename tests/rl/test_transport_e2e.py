"""Every weight transport through the real loop (2 FSDP ranks, spine task): the engines serve each new
version (the probe follows the weights) and the trainer's own logprobs. `collective` goes straight into
the vLLM engine's worker process (a gloo broadcast), `ipc` (shared memory, the CPU twin of CUDA IPC) and
`disk` into the HF engine (tests/rl/test_weights_vllm.py takes them into a vLLM worker). The object store
is the default of every other end-to-end test."""

from __future__ import annotations

import glob

import pytest
import ray

from launch.common import ROOT
from rl.config import load_config
from rl.controller import train


@pytest.mark.slow
@pytest.mark.parametrize("transport, backend", [("disk", "hf"), ("ipc", "hf"), ("collective", "vllm")])
def test_transport_end_to_end(tmp_path, transport, backend):
    cfg = load_config(ROOT / "launch/configs/spine.yaml",
                      ["run.steps=3", "run.progress=false", f"rollout.backend={backend}", "data.batch_size=4",
                       f"trainer.weight_transport={transport}", f"run.dir={tmp_path}", "trainer.weight_bucket_mb=1"])
    try:
        summary = train(cfg, tmp_path)
    finally:
        ray.shutdown()
    hist = summary["history"]
    assert [h["policy_version"] for h in hist] == [1, 2, 3]
    assert len({h["probe/logprob"] for h in hist}) > 1  # the weights changed (a first step may not move them)
    assert max(h["train/logprob_diff"] for h in hist) < 2e-2  # and the engine serves the trainer's weights
    assert not glob.glob("/dev/shm/windward-ipc-*")  # shared buckets go once loaded
