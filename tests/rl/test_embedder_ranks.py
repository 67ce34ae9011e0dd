"""The embedder's trainer group (rl/embed_train.py EmbedderRank): two FSDP2 ranks over gloo, each embedding half
of the batch with the queries and positives all-gathered (gradients included), against one rank in process on
the whole batch. Two steps: the batch's loss (the ranks' mean), the global grad norm and every updated weight
match within 1e-5, and so do the masked fractions: the batch puts two questions with the same gold page
on different ranks, so the false-negative mask has to see across ranks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.rl.dist_ranks import leave_rank, start_rank

TRAIN = {"steps": 2, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "grad_clip": 1.0, "temperature": 0.05}


def model_spec(folder):
    return {"kind": "qwen3-embedding", "path": folder, "max_length": 64}


def shares():
    """Two steps of a 4-question batch, split 2 + 2; gold page 7 is asked for on both ranks."""
    def row(i, gold, neg):
        return {"q": f"who founded company {i} in city {i % 3}?", "pos": f"page {gold}: founded by person {gold}",
                "gold": gold, "neg": f"page {neg}: a city of {neg} people", "neg_id": neg}

    steps = [[row(0, 7, 11), row(1, 3, 12)], [row(2, 5, 13), row(3, 7, 14)]], \
        [[row(4, 1, 15), row(5, 2, 7)], [row(6, 4, 16), row(7, 6, 17)]]
    out = []
    for per_rank in steps:
        out.append([{"questions": [r["q"] for r in rows], "positives": [r["pos"] for r in rows],
                     "pos_ids": [r["gold"] for r in rows], "negatives": [[r["neg"]] for r in rows],
                     "neg_ids": [[r["neg_id"]] for r in rows], "valid": [[True] for _ in rows]} for rows in per_rank])
    return out


def whole(parts):
    return {key: [x for p in parts for x in p[key]] for key in parts[0]}


def full_state(rank):
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in rank.embedder.model.state_dict().items()}


def _rank(rank, port, folder, out_dir):
    start_rank()
    from rl.embed_train import EmbedderRank

    r = EmbedderRank(model_spec(folder), TRAIN, rank=rank, world_size=2, seed=0)
    r.init_distributed("127.0.0.1", port)
    metrics = [r.train_step(parts[rank]) for parts in shares()]
    state = full_state(r)
    if rank == 0:
        torch.save({"metrics": metrics, "state": state}, os.path.join(out_dir, "rank0.pt"))
    else:
        torch.save({"metrics": metrics}, os.path.join(out_dir, "rank1.pt"))
    leave_rank()


@pytest.mark.slow
def test_two_fsdp2_ranks_match_one_process(tiny_model, tmp_path):
    from rl.embed_train import EmbedderRank

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(port, tiny_model, str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in (0, 1))

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = EmbedderRank(model_spec(tiny_model), TRAIN, seed=0)
        one.init_distributed()
        want = [one.train_step(whole(parts)) for parts in shares()]
    finally:
        torch.set_num_threads(before)
    for step, w in enumerate(want):
        a, b = r0["metrics"][step], r1["metrics"][step]
        for key in ("loss", "s_pos", "masked_hard", "masked_qq", "masked_dd", "masked_qd"):  # the batch's mean
            assert (a[key] + b[key]) / 2 == pytest.approx(w[key], abs=1e-5), (step, key)
        assert a["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-5) and a["grad_norm"] == b["grad_norm"]
    trained = full_state(one)
    for key, t in trained.items():
        torch.testing.assert_close(r0["state"][key], t, atol=1e-5, rtol=0, msg=lambda m, key=key: f"{key}: {m}")
    fresh = EmbedderRank(model_spec(tiny_model), TRAIN, seed=0)
    fresh.init_distributed()
    moved = max((trained[k] - v).abs().max().item() for k, v in full_state(fresh).items())
    assert moved > 1e-3  # two steps at lr 1e-3 moved the weights: the match above is not of untouched models
