"""The simulated trainer backend (`trainer.backend: sim`): one rank of the TrainerGroup that spends a modelled
GPU time instead of training, for scale tests of the controller (benchmarks/scale.py) with the sim engines
(`rollout/engines/sim_engine.py`).

Owns: `TrainerModel` (`trainer.sim`: the cluster's training throughput and weight-sync bandwidth),
`train_step_seconds` and `sync_seconds` (pure functions), and `SimTrainer`, which has the methods the
controller and `RLGroups` call on a trainer rank (`init_distributed`, `train_step`, `sft_step`, `send_weights`,
`save_checkpoint` / `load_checkpoint`, `set_lr`, `offload` / `onload`, `shutdown`) and sleeps the modelled
time scaled by `time_scale` (the engines' `rollout.sim.time_scale`).

The model (dense transformer, `params` parameters, `gpus` GPUs of `peak_flops` at `mfu`):

    train seconds = (6 + 2 * old_logprob_pass + 2 * reference_pass) * params * tokens / (gpus * peak_flops * mfu)
    sync seconds  = 2 * params (bf16 bytes) / sync_bytes_per_s   (gather, broadcast and the engines' reload)

The forward is 2 FLOPs per parameter and token and the backward 4 (Kaplan et al. 2020); an off-policy batch
(not `on_policy`) pays a second forward for pi_old, `kl_coef > 0` one for the reference. Defaults: an 8B model
on 8 H100s (989 TFLOP/s bf16 dense) at 40 % MFU (FSDP's published range is 35-45 %); 10 GB/s for the sync
(a 16 GB state in 1.6 s). Each rank models `gpus / world_size` GPUs training on its shard. The weight buckets
are real: one small bucket (the version) goes through the transport, so the engines take the real path.

Never: touch a model or a gradient, or be chosen without `trainer.backend: sim` (it is a simulation
backend, not a stand-in for tests).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from rl.trainer.collate import row_lengths


@dataclass(frozen=True)
class TrainerModel:
    """`trainer.sim`: the modelled training cluster."""

    params: float = 8e9
    gpus: float = 8.0
    peak_flops: float = 989e12
    mfu: float = 0.4
    sync_bytes_per_s: float = 10e9

    def __post_init__(self):
        for name in self.__dataclass_fields__:
            if not getattr(self, name) > 0:
                raise ValueError(f"trainer.sim.{name} must be > 0, got {getattr(self, name)!r}")
        if self.mfu > 1:
            raise ValueError(f"trainer.sim.mfu is a fraction of the peak, at most 1; got {self.mfu}")


def trainer_model(options: dict | None) -> TrainerModel:
    """`TrainerModel` from the `trainer.sim` mapping; an unknown key is a ValueError naming it and the allowed ones."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(TrainerModel.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown trainer.sim key(s) {unknown}; allowed: {list(TrainerModel.__dataclass_fields__)}")
    return TrainerModel(**options)


def train_step_seconds(m: TrainerModel, tokens: int, gpus: float, old_pass: bool, ref_pass: bool) -> float:
    flops_per_token = (6 + 2 * old_pass + 2 * ref_pass) * m.params
    return flops_per_token * tokens / (gpus * m.peak_flops * m.mfu)


def sync_seconds(m: TrainerModel) -> float:
    return 2 * m.params / m.sync_bytes_per_s


class SimTrainer:
    """One simulated trainer rank (module docstring). Takes the real backends' keyword arguments; of them it
    reads `rank`, `world_size`, `lr`, `mini_batches` and `algo` (kl_coef, tis_cap): the others change how a
    real step is computed, not its modelled time."""

    name = "sim"

    def __init__(self, model_path: str, *, rank: int, world_size: int, sim: dict | None = None,
                 time_scale: float = 1.0, lr: float = 1e-6, mini_batches: int = 1, algo: dict | None = None,
                 **_real_backend_settings):
        if time_scale <= 0:
            raise ValueError(f"SimTrainer: time_scale must be > 0, got {time_scale}")
        self.model = trainer_model(sim)
        self.rank, self.world_size, self.time_scale = rank, world_size, time_scale
        self.lr, self.mini_batches, self.algo = lr, mini_batches, dict(algo or {})
        self.step = 0
        self.stats = {"train_steps": 0, "tokens": 0, "modelled_s": 0.0, "syncs": 0}

    def init_distributed(self, master_addr: str, master_port: int) -> None:
        """Nothing to join: the ranks share no tensors."""

    def _spend(self, seconds: float) -> float:
        time.sleep(seconds * self.time_scale)
        self.stats["modelled_s"] += seconds
        return seconds * self.time_scale

    def train_step(self, batch: pa.RecordBatch, on_policy: bool = False) -> dict:
        tokens = int(row_lengths(batch).sum()) if batch.num_rows else 0
        old_pass = not (on_policy and self.mini_batches == 1 and self.algo.get("tis_cap") is None)
        ref_pass = bool(self.algo.get("kl_coef"))
        modelled = train_step_seconds(self.model, tokens, self.model.gpus / self.world_size, old_pass, ref_pass)
        slept = self._spend(modelled)
        self.step += 1
        self.stats["train_steps"] += 1
        self.stats["tokens"] += tokens
        return {"train/loss": 0.0, "train/lr": self.lr, "train/tokens": float(tokens * self.world_size),
                "train/old_logprob_pass": float(old_pass), "time/update": slept, "sim/train_modelled_s": modelled}

    def sft_step(self, batch: pa.RecordBatch) -> dict:
        tokens = int(row_lengths(batch).sum()) if batch.num_rows else 0
        self._spend(train_step_seconds(self.model, tokens, self.model.gpus / self.world_size, False, False))
        self.step += 1
        return {"sft/loss": 0.0, "sft/tokens": float(tokens * self.world_size), "sft/lr": self.lr}

    def send_weights(self, transport, version: int, bucket_bytes: int = 64 << 20):
        """The modelled sync time, then one real bucket through the transport (rank 0; the others return None)."""
        if self.rank != 0:
            return None
        from rollout.engines.base import pack_bucket

        self._spend(sync_seconds(self.model))
        self.stats["syncs"] += 1
        return transport.send(version, [pack_bucket([("sim.policy_version", torch.tensor([version]))])])

    def set_lr(self, lr: float) -> None:
        self.lr = lr

    def reset_reference(self) -> int:
        """No weights to copy: the modelled step pays the reference pass whenever kl_coef > 0."""
        return 0

    def offload(self) -> None:
        pass

    def onload(self) -> None:
        pass

    def save_checkpoint(self, folder: str) -> None:
        """The step counter: all the state a simulated trainer has."""
        if self.rank == 0:
            (Path(folder) / "sim_trainer.json").write_text(json.dumps({"step": self.step, "lr": self.lr}))

    def load_checkpoint(self, folder: str) -> int:
        path = Path(folder) / "sim_trainer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a checkpoint of the sim trainer (trainer.backend=sim)")
        state = json.loads(path.read_text())
        self.step, self.lr = state["step"], state["lr"]
        return self.step

    def shutdown(self) -> None:
        pass
