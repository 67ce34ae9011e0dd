"""`algo.preset=grpo|dapo|dupo` alone switches the algorithm; each runs end to end through the real
actor groups, with its sampler's metrics; a loss registered in the driver reaches the remote trainer."""

from __future__ import annotations

import json
import sys

import ray
from ray import cloudpickle  # Ray ships its own copy; registrations go to it
import pytest

from launch.common import ROOT
from rl import algos
from rl.config import load_config
from rl.controller import train

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test modules are not importable on workers


@algos.POLICY_LOSSES.register("test_marked_ppo", override=True)
def marked_ppo(logprobs, old_logprobs, advantages, loss_mask, **kw):
    loss, metrics = algos.ppo_clip(logprobs, old_logprobs, advantages, loss_mask, **kw)
    return loss, dict(metrics, driver_registered_loss=1.0)


# the HF engine: three runs start no vLLM engine (the presets, not the engine, are under test here)
COMMON = ["run.steps=2", "run.progress=false", "data.batch_size=8", "trainer.num_ranks=2", "rollout.backend=hf"]


@pytest.mark.slow
def test_each_preset_runs_end_to_end(tmp_path):
    seen = {}
    try:
        for preset in ("grpo", "dapo", "dupo"):
            extra = ["algo.policy_loss=test_marked_ppo", "algo.prefilter=true", "algo.prefilter_correct=0.0625",
                     "data.num_tasks=24"] if preset == "dupo" else []
            cfg = load_config(ROOT / "launch/configs/spine.yaml", COMMON + [f"algo.preset={preset}"] + extra)
            seen[preset] = train(cfg, tmp_path / preset)["history"]
    finally:
        ray.shutdown()
    grpo, dapo, dupo = seen["grpo"], seen["dapo"], seen["dupo"]
    for hist in seen.values():
        assert len(hist) == 2
        for h in hist:
            assert 0 <= h["sampler/zero_variance_group_frac"] <= 1
            if not h["skipped"]:
                for key in ("train/clip_frac_low", "train/clip_frac_high", "train/approx_kl", "train/entropy"):
                    assert key in h, key
    # GRPO: KL to the reference in the loss (beta 0.04), one generation round, no duplication
    assert all("train/kl_ref" in h and h["sampler/gen_rounds"] == 1 for h in grpo)
    assert all(h["sampler/duplication_ratio"] == 0 for h in grpo)
    # DAPO: regenerates until B valid groups or the bound, and says which; no reference model
    assert all(1 <= h["sampler/gen_rounds"] <= 4 and "sampler/dapo_bound_hit" in h for h in dapo)
    assert all(h["sampler/gen_rounds"] == 4 or h["sampler/valid_groups"] == 8 for h in dapo)
    assert not any("train/kl_ref" in h for h in dapo + dupo)
    # DUPO: duplicates instead of regenerating; the loss registered here ran on the trainer ranks
    assert all(h["sampler/gen_rounds"] == 1 for h in dupo)
    trained = [h for h in dupo if not h["skipped"]]
    assert trained, "no DUPO step trained: nothing below checks the duplication"
    assert all(h["train/driver_registered_loss"] == 1.0 for h in trained)
    assert all(h["sampler/duplication_ratio"] == pytest.approx(h["sampler/zero_variance_group_frac"])
               for h in trained)
    # DUPO pre-filter: every task rolled out 8 times; the dropped ones are exactly those solved 8/8
    manifest = json.loads((tmp_path / "dupo" / "dupo_prefilter.json").read_text())
    assert manifest["num_tasks"] == 24 and set(manifest["pass_counts"]) == {f"target-{i}" for i in range(24)}
    assert all(0 <= c <= 8 for c in manifest["pass_counts"].values())
    assert sorted(manifest["dropped"]) == sorted(u for u, c in manifest["pass_counts"].items() if c == 8)
