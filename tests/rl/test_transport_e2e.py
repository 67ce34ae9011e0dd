"""Every weight transport through the real loop (2 FSDP ranks, spine task): the engines serve each new
version (the probe changes after each sync) and the trainer's own logprobs. `collective` and `ipc` go
straight into the vLLM engine's worker process (gloo broadcast; shared memory, the CPU twin of CUDA IPC),
`disk` into the HF engine. The object store is the default of every other end-to-end test."""

from __future__ import annotations

import glob

import pytest
import ray

from launch.common import ROOT
from rl.config import load_config
from rl.controller import train


@pytest.mark.slow
@pytest.mark.parametrize("transport, backend", [("disk", "hf"), ("collective", "vllm"), ("ipc", "vllm")])
def test_transport_end_to_end(tmp_path, transport, backend):
    cfg = load_config(ROOT / "launch/configs/spine.yaml",
                      ["run.steps=2", "run.progress=false", f"rollout.backend={backend}", "data.batch_size=4",
                       f"trainer.weight_transport={transport}", f"run.dir={tmp_path}", "trainer.weight_bucket_mb=1"])
    try:
        summary = train(cfg, tmp_path)
    finally:
        ray.shutdown()
    hist = summary["history"]
    assert [h["policy_version"] for h in hist] == [1, 2]
    assert hist[0]["probe/logprob"] != hist[1]["probe/logprob"]
    assert max(h["train/logprob_diff"] for h in hist) < 2e-2  # the engine serves the trainer's weights
    assert not glob.glob("/dev/shm/windward-ipc-*")  # shared buckets go once loaded
