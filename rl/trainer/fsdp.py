"""FSDP2 backend (the default): one rank of the TrainerGroup with the policy sharded by `fully_shard`.

Owns: the FSDP2 wrapping (one unit per decoder layer plus the root; bf16 parameters with fp32
gradient reduction when dtype is bfloat16), AdamW, gradient clipping over the sharded gradients,
the full state gathered one tensor at a time for the engines, and checkpoints as full state dicts
on rank 0 (`trainer.pt`) plus every rank's RNG.

Never: anything the backends share (`rl/trainer/base.py`: micro-batching, losses, SFT, buckets).
FSDP1 is not used: on CPU its `sync_module_states` raises, `torch.nn.utils.clip_grad_norm_` sees
only the local shard and its full state-dict gather with CPU offload segfaults (ASSETS.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist

from rl.checkpoint import agree_on_write, load_state, plain_rng_state, rng_state_from_plain, save_state
from rl.trainer.base import TrainerBackend, decoder_layers


class FSDPTrainer(TrainerBackend):
    name = "fsdp2"

    def _build(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if self.dtype == "bfloat16" else MixedPrecisionPolicy()

        def shard(model):
            for layer in decoder_layers(model):
                fully_shard(layer, mesh=mesh, mp_policy=mp)
            fully_shard(model, mesh=mesh, mp_policy=mp)
            return model

        self.model = self.policy = shard(self._load_model())
        self.ref_model = self.ref = shard(self._load_model(trainable=False)).eval() if self._wants_ref else None
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], **self.opt_args)
        self.scheduler = self._make_scheduler(self.optimizer)

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _optimizer_step(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.grad_clip > 0:  # DTensor-aware: the norm is over the full gradients, not the local shard
            gn = torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        else:
            gn = torch.nn.utils.get_total_norm([p.grad for p in params])
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)

    def named_full_state(self, bucket_bytes: int = 64 << 20) -> Iterator[tuple[str, torch.Tensor]]:
        """One all-gather per state-dict entry (every rank, same order); rank 0 keeps a CPU copy."""
        for name, t in self.model.state_dict().items():
            full = t.full_tensor() if hasattr(t, "full_tensor") else t
            if self.rank == 0:
                yield name, full.detach().to("cpu", copy=True)

    def save_checkpoint(self, folder: str) -> None:
        """Model, optimizer, LR schedule, step (rank 0, full state) and every rank's RNG (collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        msd, osd = get_state_dict(self.model, self.optimizer,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        error = None
        try:  # a full disk is a CheckpointWriteError naming the folder and its free space
            save_state(plain_rng_state(self._rng_state()), f"{folder}/trainer-rng-rank{self.rank}.pt")
            if self.rank == 0:
                save_state({"model": msd, "optimizer": osd, "scheduler": self.scheduler.state_dict(),
                            "step": self.step}, f"{folder}/trainer.pt")
        except OSError as err:
            error = err
        agree_on_write(error, folder, self._all_reduce)  # the barrier: every rank raises if one failed

    def load_checkpoint(self, folder: str) -> int:
        """Restore what `save_checkpoint` wrote. Every rank reads the full state and keeps its shard
        (the run folder must be on storage all trainer nodes see). Returns the step."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        state = load_state(f"{folder}/trainer.pt")
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self._set_rng_state(rng_state_from_plain(load_state(f"{folder}/trainer-rng-rank{self.rank}.pt")))
        dist.barrier()
        return self.step
