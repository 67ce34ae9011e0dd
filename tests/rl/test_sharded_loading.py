"""Loading without a full copy per rank, measured: FSDP2 (rl/trainer/fsdp.py `_load_sharded`) and DeepSpeed
ZeRO-3 (rl/trainer/deepspeed.py `_load_partitioned`).

Two gloo ranks build the trainer on a ~200 MB fp32 model. Rank 0 reads the weights; rank 1 builds the model
without reading a weight (FSDP2: on the meta device, then receives its shards; ZeRO-3: under `zero.Init`, each
module partitioned as it is built, then every parameter gathered in turn with rank 0's values), so its peak
memory grows by about its half of the model, where reading the model on every rank (as both trainers did)
costs the full model plus the shard. Rank 0, which reads the model, shows the measurement sees a full copy
when there is one. Both ranks then hold the same weights as the model file (the 2-rank backend tests check a
train step against a single process).
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


def _rank(rank, port, model_path, out_dir, backend):
    start_rank()
    import torch.distributed.checkpoint.state_dict  # noqa: F401  (what the build imports, before the baseline)
    import torch.distributed.fsdp  # noqa: F401
    import transformers.models.qwen3.modeling_qwen3  # noqa: F401
    from transformers import AutoModelForCausalLM

    from rl.trainer.deepspeed import DeepSpeedTrainer, import_deepspeed
    from rl.trainer.fsdp import FSDPTrainer

    args = dict(rank=rank, world_size=2, lr=1e-3, grad_clip=0.0, algo={"loss_agg_mode": "token-mean"})
    grown = held = None
    if backend == "zero3":
        import_deepspeed("cpu")
        os.environ["LOCAL_RANK"] = str(rank)  # zero.Init reads it (a Ray actor's rank has it set)
        t = DeepSpeedTrainer(model_path, zero_stage=3, **args)
        load = t._load_partitioned

        def measured_load(ds, trainable):  # the load alone: deepspeed.initialize then adds ZeRO's own buffers
            nonlocal grown, held
            model = load(ds, trainable)
            grown = _status_mib("VmHWM") - before
            # what this rank's parameters hold: a ZeRO-3 parameter keeps its partition in ds_tensor
            held = sum(getattr(p, "ds_tensor", p).numel() * p.element_size() for p in model.parameters()) / 2**20
            return model

        t._load_partitioned = measured_load
    else:
        t = FSDPTrainer(model_path, **args)
    before = _reset_peak()
    t.init_distributed("127.0.0.1", port)  # joins the group and builds the model
    grown = _status_mib("VmHWM") - before if grown is None else grown
    if backend == "zero3":
        state = dict(t.named_full_state(every_rank=True))
    else:
        state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in t.model.state_dict().items()}
    buffers = {k: v.clone() for k, v in t.model.named_buffers()}
    want = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    differ = [k for k, v in want.state_dict().items() if k not in state or not torch.equal(state[k], v)]
    differ_buffers = [k for k, v in want.named_buffers() if not torch.equal(buffers[k], v)]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"grown_mib": grown, "held_mib": held, "same": not differ, "same_buffers": not differ_buffers,
                   "differ": differ[:5] + differ_buffers[:5]}, fh)
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
@pytest.mark.parametrize("backend", ["fsdp2", "zero3"])
def test_rank_1_never_holds_the_full_model(model_path, tmp_path, backend, monkeypatch):
    from transformers import AutoModelForCausalLM

    # glibc's malloc raises its mmap threshold to the largest block freed, so the full-size tensors zero.Init
    # builds and partitions module by module would stay in the heap, counted in the peak though reusable; a
    # fixed threshold returns each to the system when freed, and the peak is what was live at once
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(128 << 10))

    full_mib = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_path).parameters()) * 4 / 2**20
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(port, model_path, str(tmp_path), backend), nprocs=2, start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    print(f"{backend}: model {full_mib:.0f} MiB; rank 0 {r0}; rank 1 {r1}")
    assert r0["same"] and r1["same"] and r0["same_buffers"] and r1["same_buffers"], (r0, r1)
    assert r0["grown_mib"] > 0.9 * full_mib, (r0, full_mib)  # the reader: the full model (and its shard)
    assert r1["grown_mib"] < 0.7 * full_mib, (r1, full_mib)  # the others: their half, never the whole
    if backend == "zero3":
        # ZeRO-3 reads the weights through mmap, so a full load that nothing touched would not show in the peak
        # above; the parameters rank 1 holds after the load are its partition, about half the model
        assert 0.4 * full_mib < r1["held_mib"] < 0.6 * full_mib, (r1, full_mib)
