"""The trainer backends with 2 ranks (gloo, CPU) against one plain single-process step.

FSDP2 (fixed micro-batches of 2 rows), DeepSpeed ZeRO-2 (token-budget micro-batches, padded) and
ZeRO-3 (token budget, packed), each on 2 ranks holding whole groups (`balance_groups`, as the
controller splits): the loss, the grad norm, the updated parameters (gathered through
`state_buckets`, i.e. the weight-sync path) match the reference within 1e-5; save, step, load, step
again repeats the second step bitwise (model, optimizer, LR schedule, RNG restored); the FSDP2 checkpoint
loads into one rank, resharded, and that rank's next step is the 2-rank second step.

The ranks run in two spawned processes that build the three backends one after the other on one
process group, so imports and the rendezvous are paid once (DeepSpeed's shm comm op is never built).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from transformers import AutoModelForCausalLM

from rl import algos
from rl.checkpoint import CheckpointLoadError
from tests.rl.dist_ranks import leave_rank, start_rank
from rl.trainer.collate import padded_microbatch, row_lengths
from rl.trainer.logprobs import reference_token_logprobs as token_logprobs
from rollout.engines import Generation
from rl.weights import IPCTransport, PerRankTransport
from rollout.engines.base import decode_bucket
from rollout.trajectory import build_batch, record_from_generation, with_columns

LR = 1e-3
ALGO = {"loss_agg_mode": "seq-mean-token-mean", "clip_low": 0.2, "clip_high": 0.28, "kl_coef": 0.05}
RUNS = {  # name -> (backend, constructor arguments)
    "fsdp2": ("fsdp2", {"micro_batch_size": 2}),
    "zero2": ("deepspeed", {"zero_stage": 2, "token_budget": 24}),
    "zero3": ("deepspeed", {"zero_stage": 3, "token_budget": 32, "packing": True}),
}


def make_batch():
    rng = np.random.default_rng(1)
    recs = []
    sizes = [(3, 5), (6, 2), (4, 9), (2, 1), (5, 4), (7, 3), (2, 8), (4, 4)]
    for i, (p, r) in enumerate(sizes):
        gen = Generation(rng.integers(20, 400, r).tolist(), [-3.0] * r, "length")
        recs.append(record_from_generation(f"u{i}", i // 2, i % 2, rng.integers(20, 400, p).tolist(), gen))
    adv = np.array([1.0, -1.0, 0.5, -0.5, 0.8, -0.8, 1.2, -1.2], np.float32)
    return with_columns(build_batch(recs), {"advantage": adv})


def trainer_class(backend):
    if backend == "fsdp2":
        from rl.trainer.fsdp import FSDPTrainer
        return FSDPTrainer
    from rl.trainer.deepspeed import DeepSpeedTrainer
    return DeepSpeedTrainer


TIED = "model.embed_tokens.weight"  # the tiny model's word embedding, tied to lm_head.weight


def sent(name: str) -> str:
    """The name a state-dict entry travels under to the engines: a tied embedding as the output layer's."""
    return "lm_head.weight" if name == TIED else name


def full_state(trainer):
    out = {}
    for blob in trainer.state_buckets(bucket_bytes=32 << 10):  # small buckets: several ZeRO-3 gathers
        out.update(decode_bucket(blob))
    return out


def per_rank_state(t, transport, version) -> dict:
    """The state rank `t.rank` sends through its own part of a per-rank transport (colocated GPUs: CUDA IPC
    into the engine on its GPU; here shared memory), received by a thread of this process."""
    got = {}
    receiver = threading.Thread(target=lambda: [got.update(decode_bucket(b))
                                                for b in transport.receive(version, t.rank)])
    receiver.start()
    t.send_weights(transport, version, bucket_bytes=32 << 10)
    receiver.join(timeout=120)
    return {k: v.clone() for k, v in got.items()}


def _rank(rank, port, model_path, shards, out_dir, per_rank):
    start_rank()
    for version, (name, (backend, kwargs)) in enumerate(RUNS.items(), 1):
        t = trainer_class(backend)(model_path, rank=rank, world_size=2, lr=LR, grad_clip=0.0, algo=ALGO, **kwargs)
        t.init_distributed("127.0.0.1", port)  # joins the group on the first run, reuses it after
        first = t.train_step(shards[rank])
        after_first = full_state(t)
        ckpt = os.path.join(out_dir, f"ckpt-{name}")
        os.makedirs(ckpt, exist_ok=True)
        t.save_checkpoint(ckpt)
        second = t.train_step(shards[rank])
        after_second = full_state(t)
        t.load_checkpoint(ckpt)
        again = t.train_step(shards[rank])
        after_again = full_state(t)
        torch.save(per_rank_state(t, per_rank, version), os.path.join(out_dir, f"{name}-per-rank{rank}.pt"))
        reset = reference_reset(t, shards[rank])
        if rank == 0:
            torch.save({"first": first, "after_first": after_first, "second": second, "after_second": after_second,
                        "again": again, "after_again": after_again}, os.path.join(out_dir, f"{name}.pt"))
        torch.save(reset, os.path.join(out_dir, f"{name}-reset-rank{rank}.pt"))
        del t
    # LoRA under ZeRO-3: adapters train, the engines get merged weights under the base names
    t = trainer_class("deepspeed")(model_path, rank=rank, world_size=2, lr=LR, algo=ALGO, zero_stage=3,
                                   lora={"rank": 4, "alpha": 8})
    t.init_distributed("127.0.0.1", port)
    t.train_step(shards[rank])
    merged = full_state(t)
    if rank == 0:
        torch.save({"after_first": merged}, os.path.join(out_dir, "zero3-lora.pt"))
    torch.save(reference_reset(t, shards[rank]), os.path.join(out_dir, f"zero3-lora-reset-rank{rank}.pt"))
    leave_rank()


def reference_reset(t, shard) -> dict:
    """This rank's logprobs on its shard under the reference before and after `reset_reference`, and under the
    policy (collective)."""
    before = t.logprobs(shard, reference=True)  # FSDP2: the root unit's parameters stay unsharded after it
    written = t.reset_reference()
    if hasattr(t.ref_model, "reshard"):  # FSDP2: what the shards hold, not a leftover unsharded copy
        t.ref_model.reshard()
    return {"before": before, "after": t.logprobs(shard, reference=True), "policy": t.logprobs(shard),
            "written": written}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_runs(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("backends")
    batch = make_batch()
    per_rank = algos.balance_groups(row_lengths(batch), batch.column("group").to_numpy(), 2)
    shards = [batch.take(rows) for rows in per_rank]
    per_rank = PerRankTransport([IPCTransport("127.0.0.1", free_port(), num_receivers=1, timeout_s=120)
                                 for _ in range(2)])
    try:
        mp.start_processes(_rank, args=(free_port(), tiny_model, shards, str(out), per_rank), nprocs=2,
                           start_method="spawn")
    finally:
        per_rank.close()
    runs = {name: torch.load(out / f"{name}.pt", weights_only=False) for name in [*RUNS, "zero3-lora"]}
    for name in RUNS:
        runs[name]["per_rank"] = [torch.load(out / f"{name}-per-rank{r}.pt") for r in range(2)]
    for name in [*RUNS, "zero3-lora"]:
        runs[name]["reset"] = [torch.load(out / f"{name}-reset-rank{r}.pt", weights_only=False) for r in range(2)]
    return {**runs, "dir": out}


@pytest.fixture(scope="module")
def reference(tiny_model):
    """One plain forward/backward over the whole batch and one AdamW step (no FSDP, no DeepSpeed)."""
    batch = make_batch()
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    mb = padded_microbatch(batch, np.arange(batch.num_rows))
    lp, _ = token_logprobs(model, mb["input_ids"], mb["attention_mask"])
    per_tok, _ = algos.ppo_clip(lp, lp.detach(), mb["advantage"], mb["loss_mask"], 0.2, 0.28)
    loss = algos.aggregate(per_tok, mb["loss_mask"], ALGO["loss_agg_mode"])  # KL to the initial policy: 0
    loss.backward()
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    opt.step()
    return {"loss": loss.item(), "grad_norm": grad_norm, "tokens": mb["num_tokens"],
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_two_ranks_match_single_process_step(two_rank_runs, reference, name):
    run = two_rank_runs[name]
    m = run["first"]
    assert m["train/loss"] == pytest.approx(reference["loss"], abs=1e-5)
    assert m["train/grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5)
    assert m["train/tokens"] == reference["tokens"]
    assert m["train/kl_ref"] == pytest.approx(0.0, abs=1e-6)
    state = run["after_first"]
    assert set(state) == set(reference["state"]) - {TIED}  # the tied embedding travels once, as lm_head.weight
    for key, want in reference["state"].items():
        torch.testing.assert_close(state[sent(key)], want, atol=1e-5, rtol=0,
                                   msg=lambda s, key=key: f"{name} {key}: {s}")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_every_rank_sends_the_whole_state_through_its_own_part(two_rank_runs, name):
    """Colocated GPUs (rl/weights/per_rank.py): each rank packs and sends the full state to the engine on its
    own device. Both ranks' streams hold exactly what rank 0's gather holds."""
    run = two_rank_runs[name]
    for rank, got in enumerate(run["per_rank"]):
        assert set(got) == set(run["after_again"]), (name, rank)
        for key, want in run["after_again"].items():
            assert torch.equal(got[key], want), f"{name} rank {rank} {key}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_load_checkpoint_repeats_the_next_step_bitwise(two_rank_runs, name):
    run = two_rank_runs[name]
    assert run["again"] == {**run["second"], "time/logprobs": run["again"]["time/logprobs"],
                            "time/update": run["again"]["time/update"]}
    assert run["second"]["train/kl_ref"] > 0  # the second step moved away from the reference
    for key, t in run["after_second"].items():
        assert torch.equal(t, run["after_again"][key]), f"{name} {key}"


@pytest.mark.slow
@pytest.mark.parametrize("name", [*RUNS, "zero3-lora"])
def test_reset_reference_gives_every_rank_the_policy(two_rank_runs, name):
    """After training, the reference still holds the loaded weights; `reset_reference` (an RL stage's start)
    writes the policy's into every rank's part of it (FSDP2 shards, ZeRO-2 replicas, ZeRO-3 partitions,
    LoRA merged): both ranks' reference logprobs then equal the policy's."""
    for rank, r in enumerate(two_rank_runs[name]["reset"]):
        assert r["written"] > 0
        gap = lambda a, b: max(float(np.abs(x - y).max()) for x, y in zip(a, b))  # noqa: E731
        assert gap(r["before"], r["policy"]) > 1e-4, (name, rank)
        assert gap(r["after"], r["policy"]) < 1e-5, (name, rank)


@pytest.mark.slow
def test_fsdp2_checkpoint_reshards_onto_one_rank(two_rank_runs, tiny_model):
    """The 2-rank FSDP2 checkpoint (saved after the first step) loads into one rank, resharded, and that rank's
    next step over the whole batch is the 2-rank second step."""
    from rl.trainer.fsdp import FSDPTrainer

    run = two_rank_runs["fsdp2"]
    t = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=LR, grad_clip=0.0, algo=ALGO, micro_batch_size=2)
    t.init_distributed("127.0.0.1", free_port())
    try:
        assert t.load_checkpoint(str(two_rank_runs["dir"] / "ckpt-fsdp2")) == 1
        loaded = full_state(t)
        for key, want in run["after_first"].items():
            assert torch.equal(loaded[key], want), key
        second = t.train_step(make_batch())
        after = full_state(t)
        # a rank the checkpoint has no random state for keeps its own, and says so; none at all is refused
        other = two_rank_runs["dir"] / "ckpt-fsdp2-rng"
        shutil.copytree(two_rank_runs["dir"] / "ckpt-fsdp2", other)
        (other / "trainer-rng-rank0.pt").unlink()
        with pytest.warns(UserWarning, match="trainer-rng-rank0.pt is not in .*written by fewer ranks"):
            t.load_checkpoint(str(other))
        (other / "trainer-rng-rank1.pt").unlink()
        with pytest.raises(CheckpointLoadError, match="no trainer-rng-rank"):
            t.load_checkpoint(str(other))
    finally:
        t.shutdown()
    for key in ("train/loss", "train/grad_norm", "train/kl_ref"):
        assert second[key] == pytest.approx(run["second"][key], rel=1e-5, abs=1e-6), key
    for key, want in run["after_second"].items():
        torch.testing.assert_close(after[key], want, atol=1e-5, rtol=0, msg=lambda s, key=key: f"{key}: {s}")


@pytest.mark.slow
def test_lora_under_zero3_streams_merged_weights(two_rank_runs, reference, tiny_model):
    merged = two_rank_runs["zero3-lora"]["after_first"]
    init = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert set(merged) == set(reference["state"]) - {TIED}
    moved = [k for k, v in init.state_dict().items() if not torch.equal(merged[sent(k)], v)]
    assert moved and all(k.endswith("proj.weight") for k in moved)  # only LoRA-targeted linears change


# --- one rank, in process: options every backend shares -------------------------------------


def _one_rank(tiny_model, algo: dict | None = None, **kwargs):
    from rl.trainer.fsdp import FSDPTrainer

    t = FSDPTrainer(tiny_model, rank=0, world_size=1, lr=1e-2, grad_clip=0.0,
                    algo=algo or {"loss_agg_mode": "token-mean"}, **kwargs)
    t.init_distributed("127.0.0.1", free_port())
    return t


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_gradient_checkpointing_gives_the_same_step(tiny_model, one_thread):
    out = {}
    for ckpt in (False, True):
        t = _one_rank(tiny_model, micro_batch_size=3, grad_checkpointing=ckpt)
        try:
            assert t.model.is_gradient_checkpointing == ckpt
            out[ckpt] = (t.train_step(make_batch()), full_state(t))
        finally:
            t.shutdown()
    for key in ("train/loss", "train/grad_norm", "train/entropy"):
        assert out[True][0][key] == pytest.approx(out[False][0][key], rel=1e-6, abs=1e-7)
    for name, p in out[False][1].items():
        torch.testing.assert_close(out[True][1][name], p, atol=1e-6, rtol=0)


def test_lora_trains_adapters_and_streams_merged_weights(tiny_model, one_thread):
    from peft import LoraConfig, get_peft_model

    lora = {"rank": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    t = _one_rank(tiny_model, micro_batch_size=4, lora=lora)
    try:
        trainable = {n for n, p in t.model.named_parameters() if p.requires_grad}
        assert trainable and all(".lora_" in n for n in trainable)
        t.train_step(make_batch())
        peft_state = {k: v.full_tensor() for k, v in t.model.state_dict().items()}
        merged = full_state(t)
    finally:
        t.shutdown()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    want_names = set(base.state_dict())
    # what peft itself would serve: load the trained adapters into a fresh wrapper and merge
    ref = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=lora["target_modules"], bias="none"))
    ref.load_state_dict(peft_state)
    want = ref.merge_and_unload().state_dict()
    # the tied word embedding travels once, under the output layer's name (TrainerBackend.tied_aliases)
    assert set(merged) == want_names - {"model.embed_tokens.weight"}
    init = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    for name, w in want.items():
        got = merged["lm_head.weight" if name == "model.embed_tokens.weight" else name]
        torch.testing.assert_close(got, w, atol=1e-6, rtol=0, msg=lambda s, name=name: f"{name}: {s}")
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], init["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(merged["model.layers.0.self_attn.k_proj.weight"], init["model.layers.0.self_attn.k_proj.weight"])


@pytest.mark.parametrize("lora", [None, {"rank": 4, "alpha": 8}])
def test_reset_reference_makes_the_trained_policy_the_reference(tiny_model, one_thread, lora):
    """SFT steps move the policy away from the loaded weights, which the reference keeps: the KL of the next RL
    step would pull it back towards them. After `reset_reference` the reference is the trained policy (LoRA
    merged), its logprobs are the policy's and the next step's KL starts at 0."""
    t = _one_rank(tiny_model, micro_batch_size=4, lora=lora, algo={"loss_agg_mode": "token-mean", "kl_coef": 0.1})
    try:
        batch = make_batch()
        for _ in range(2):
            t.sft_step(batch)
        gap = lambda a, b: max(float(np.abs(x - y).max()) for x, y in zip(a, b))  # noqa: E731
        assert gap(t.logprobs(batch, reference=True), t.logprobs(batch)) > 1e-3
        assert t.train_step(batch)["train/kl_ref"] > 1e-4  # the KL to the weights loaded
        assert t.reset_reference() == len(dict(t.ref_model.named_parameters())) > 0
        assert gap(t.logprobs(batch, reference=True), t.logprobs(batch)) < 1e-5
        policy = dict(t.served_state(every_rank=True))
        for name, p in t.ref_model.named_parameters():
            torch.testing.assert_close(getattr(p, "full_tensor", lambda p=p: p)(), policy[name], atol=1e-6, rtol=0)
        assert t.train_step(batch)["train/kl_ref"] == pytest.approx(0.0, abs=1e-6)
    finally:
        t.shutdown()


def test_reset_reference_without_a_reference_is_nothing(tiny_model, one_thread):
    t = _one_rank(tiny_model, micro_batch_size=4)  # kl_coef 0: no reference model is loaded
    try:
        assert t.ref is None and t.reset_reference() == 0
    finally:
        t.shutdown()


def test_packing_needs_a_token_budget(tiny_model):
    from rl.trainer.fsdp import FSDPTrainer

    with pytest.raises(ValueError, match="token_budget"):
        FSDPTrainer(tiny_model, rank=0, world_size=1, packing=True)
