"""The SFT learning-rate schedule (sft.lr_schedule): constant, or a cosine down to min_lr_ratio x lr."""

from __future__ import annotations

import math

import pytest

from launch.stages import sft_lr
from rl.config import ConfigError, load_config


def test_cosine_runs_from_the_peak_to_the_floor():
    lrs = [sft_lr(s, 101, 1e-3, "cosine", 0.1) for s in range(1, 102)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert lrs[50] == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))  # halfway: halfway between
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly down
    assert sft_lr(7, 101, 1e-3, "cosine", 0.0) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 6 / 100)))


def test_constant_and_edge_cases():
    assert {sft_lr(s, 10, 2e-3) for s in range(1, 11)} == {2e-3}
    assert sft_lr(1, 1, 2e-3, "cosine") == 2e-3  # one step: the peak
    assert sft_lr(50, 10, 1e-3, "cosine", 0.2) == pytest.approx(2e-4)  # past the end: the floor
    with pytest.raises(ValueError, match="sft.lr_schedule"):
        sft_lr(1, 10, 1e-3, "linear")


def test_config_names_a_bad_schedule():
    with pytest.raises(ConfigError, match="sft.lr_schedule"):
        load_config(None, ["sft.lr_schedule=linear"])
    with pytest.raises(ConfigError, match="sft.min_lr_ratio"):
        load_config(None, ["sft.min_lr_ratio=1.5"])
    assert load_config(None, ["data.task=world_qa", "sft.lr_schedule=cosine"]).sft.lr_schedule == "cosine"
