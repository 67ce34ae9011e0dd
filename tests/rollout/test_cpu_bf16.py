"""bfloat16 on a CPU without bf16 math (AVX512-BF16 or AMX) is emulated in software: a LoRA SFT step of
SmolLM2-135M took 167 s in bf16 against 5.5 s in float32 on this project's AVX2-only machine. The trainer, the vLLM
engine and `--dry-run` say so, naming the key; the dtype stays as asked (float32 needs more memory)."""

from __future__ import annotations

import platform
import socket

import pytest
import torch

from launch.common import ROOT
from rollout.engines.base import cpu_bf16_warning


@pytest.fixture()
def cpu_bf16(monkeypatch):
    """Set whether this (x86) CPU has bf16 math."""
    def set_has(has: bool):
        monkeypatch.setattr(platform, "machine", lambda: "x86_64")
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: has)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return set_has


def test_the_warning_names_the_key_only_where_bf16_is_emulated(cpu_bf16, monkeypatch):
    cpu_bf16(False)
    assert "rollout.dtype=bfloat16" in cpu_bf16_warning("rollout.dtype")
    cpu_bf16(True)
    assert cpu_bf16_warning("rollout.dtype") is None
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # not x86: not checked
    assert cpu_bf16_warning("rollout.dtype") is None


def test_a_bf16_trainer_on_such_a_cpu_warns_and_keeps_bf16(tiny_model, cpu_bf16):
    from rl.trainer.fsdp import FSDPTrainer

    cpu_bf16(False)
    t = FSDPTrainer(tiny_model, rank=0, world_size=1, dtype="bfloat16")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.warns(UserWarning, match="model.dtype=bfloat16 on a CPU without native bfloat16"):
        t.init_distributed("127.0.0.1", port)
    try:
        assert t.dtype == "bfloat16"
    finally:
        t.shutdown()


def test_dry_run_notes_it(cpu_bf16):
    from rl.config import load_config
    from rl.memory_plan import plan_config

    cfg = load_config(ROOT / "launch/configs/websailor.yaml", ["model.dtype=bfloat16"], check_inputs=False)
    cpu_bf16(False)
    assert any(n.startswith("model.dtype=bfloat16 on a CPU without") for n in plan_config(cfg).notes)
    cpu_bf16(True)
    assert not any("bfloat16" in n for n in plan_config(cfg).notes)
