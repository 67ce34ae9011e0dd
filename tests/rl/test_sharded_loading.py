"""FSDP2 loading without a full copy per rank (rl/trainer/fsdp.py `_load_sharded`), measured.

Two gloo ranks build the FSDP2 trainer on a ~200 MB fp32 model. Rank 0 reads the weights; rank 1 starts on the
meta device and receives its shards, so its peak memory grows by about its half of the model, where reading the
model on every rank (as DeepSpeed does, and this trainer did) costs the full model plus the shard. Rank 0, which
reads the model, shows the measurement sees a full copy when there is one. Both ranks then hold the same weights
as the model file (the 2-rank backend tests check a train step against a single process).
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.rl.dist_ranks import leave_rank, start_rank


def _reset_peak() -> float:
    """Start a new peak-memory window (Linux: writing 5 to clear_refs resets VmHWM); the current RSS in MiB."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_mib("VmRSS")


def _status_mib(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def _rank(rank, port, model_path, out_dir):
    start_rank()
    import torch.distributed.checkpoint.state_dict  # noqa: F401  (what the build imports, before the baseline)
    import torch.distributed.fsdp  # noqa: F401
    import transformers.models.qwen3.modeling_qwen3  # noqa: F401
    from transformers import AutoModelForCausalLM

    from rl.trainer.fsdp import FSDPTrainer

    t = FSDPTrainer(model_path, rank=rank, world_size=2, lr=1e-3, grad_clip=0.0, algo={"loss_agg_mode": "token-mean"})
    before = _reset_peak()
    t.init_distributed("127.0.0.1", port)  # joins the group and builds the model
    grown = _status_mib("VmHWM") - before
    state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in t.model.state_dict().items()}
    buffers = {k: v.clone() for k, v in t.model.named_buffers()}
    want = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    same = all(torch.equal(state[k], v) for k, v in want.state_dict().items())
    same_buffers = all(torch.equal(buffers[k], v) for k, v in want.named_buffers())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"grown_mib": grown, "same": same, "same_buffers": same_buffers}, fh)
    leave_rank()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(vocab_size=512, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    return str(path)


@pytest.mark.slow
def test_rank_1_never_holds_the_full_model(model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    full_mib = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_path).parameters()) * 4 / 2**20
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(port, model_path, str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["same"] and r1["same"] and r0["same_buffers"] and r1["same_buffers"]
    assert r0["grown_mib"] > 0.9 * full_mib, (r0, full_mib)  # the reader: the full model (and its shard)
    assert r1["grown_mib"] < 0.7 * full_mib, (r1, full_mib)  # the others: their half, never the whole
