"""FSDP2 backend (the default): one rank of the TrainerGroup with the policy sharded by `fully_shard`.

Owns: the FSDP2 wrapping (one unit per decoder layer plus the root; bf16 parameters with fp32
gradient reduction when dtype is bfloat16), AdamW, gradient clipping over the sharded gradients,
the full state gathered one tensor at a time for the engines, loading without a full copy per
rank (rank 0 reads the weights, the others start on the meta device and receive their shards), and
sharded checkpoints (torch.distributed.checkpoint: each rank writes and reads only its shards) plus
every rank's RNG.

Never: anything the backends share (`rl/trainer/base.py`: micro-batching, losses, SFT, buckets).
FSDP1 is not used: on CPU its `sync_module_states` raises, `torch.nn.utils.clip_grad_norm_` sees
only the local shard and its full state-dict gather with CPU offload segfaults (ASSETS.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from rl.checkpoint import (CheckpointLoadError, agree_on_write, load_sharded, load_state, plain_rng_state,
                           rng_state_from_plain, save_sharded, save_state)
from rl.trainer.base import TrainerBackend, decoder_layers


SHARDED_DIR = "trainer"  # the model's and optimizer's shards in a checkpoint folder


def fsdp_wrap(model, layers, device: torch.device, world_size: int, dtype: str = "float32"):
    """FSDP2 as every trainer here wraps: one unit per layer of `layers`, then the root; bf16 parameters with
    fp32 gradient reduction when dtype is bfloat16. Parameters not on `device` move there unit by unit."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if dtype == "bfloat16" else MixedPrecisionPolicy()
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def clip_and_step(optimizer, params, grad_clip: float) -> float:
    """Clip the gradients of `params` to `grad_clip` (0: no clipping), step, zero them; the global grad
    norm before clipping (DTensor-aware: over the full gradients, not the local shards)."""
    params = [p for p in params if p.grad is not None]
    if grad_clip > 0:
        gn = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        gn = torch.nn.utils.get_total_norm([p.grad for p in params])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)


class FSDPTrainer(TrainerBackend):
    name = "fsdp2"

    def _build(self) -> None:
        def shard(model):
            return fsdp_wrap(model, decoder_layers(model), self.device, self.world_size, self.dtype)

        self.model = self.policy = self._load_sharded(shard, trainable=True)
        self.ref_model = self.ref = self._load_sharded(shard, trainable=False).eval() if self._wants_ref else None
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], **self.opt_args)
        self.scheduler = self._make_scheduler(self.optimizer)

    def _load_sharded(self, shard, trainable: bool):
        """Rank 0 reads the weights into host memory; every other rank builds the model on the meta
        device. `fully_shard` moves one unit at a time to the device and keeps this rank's shard; rank 0
        then sends every rank its shards (and the buffers, which FSDP does not shard, such as rotary
        frequencies). No device ever holds the full model, and no host but rank 0's."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        model = self._load_model(trainable=trainable, where="host" if self.rank == 0 else "meta")
        if self.world_size == 1:
            return shard(model)
        full = model.state_dict() if self.rank == 0 else {}  # plain tensors, kept alive past sharding
        shard(model)
        if self.rank != 0:
            model.to_empty(device=self.device)
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
        return model

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _optimizer_step(self) -> float:
        return clip_and_step(self.optimizer, self.model.parameters(), self.grad_clip)

    def reset_reference(self) -> int:
        """As the base class, after resharding the reference's root unit: FSDP2 keeps the root's own parameters
        (embeddings, final norm, output layer) unsharded after a forward, expecting a backward, and the reference
        never runs one. Written while unsharded, they would go back to the loaded values at the next reshard."""
        from torch.distributed.fsdp import FSDPModule

        if isinstance(self.ref_model, FSDPModule):
            self.ref_model.reshard()
        return super().reset_reference()

    def named_full_state(self, bucket_bytes: int = 64 << 20, every_rank: bool = False,
                         skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, torch.Tensor]]:
        """One all-gather per state-dict entry not in `skip` (every rank, same order); rank 0 (every rank
        with `every_rank`: each has it anyway) yields the gathered tensor where it is (the trainer's device;
        with one rank, the parameter itself)."""
        for name, t in self.model.state_dict().items():
            if name in skip:
                continue
            full = t.full_tensor() if hasattr(t, "full_tensor") else t
            if self.rank == 0 or every_rank:
                yield name, full.detach()

    def save_checkpoint(self, folder: str) -> None:
        """Sharded (collective): every rank writes its own shards of the model and optimizer into
        `<folder>/trainer/` (torch.distributed.checkpoint) and its RNG; rank 0 the LR schedule and
        step. Nothing is gathered: the full model is written only on request (`rl/export.py`)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        error = None
        try:  # a full disk is a CheckpointWriteError naming the folder and its free space
            save_state(plain_rng_state(self._rng_state()), f"{folder}/trainer-rng-rank{self.rank}.pt")
            if self.rank == 0:
                save_state({"scheduler": self.scheduler.state_dict(), "step": self.step}, f"{folder}/trainer-state.pt")
        except OSError as err:
            error = err
        agree_on_write(error, folder, self._all_reduce)  # no rank enters the sharded save alone
        msd, osd = get_state_dict(self.model, self.optimizer)
        save_sharded({"model": msd, "optimizer": osd}, f"{folder}/{SHARDED_DIR}")
        dist.barrier()

    def load_checkpoint(self, folder: str) -> int:
        """Restore what `save_checkpoint` wrote, each rank reading only the bytes of its own shards
        (resharded if the world size changed); a checkpoint from before sharding (`trainer.pt`,
        the full state on rank 0) still loads. Returns the step."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

        if (Path(folder) / "trainer.pt").is_file():
            state = load_state(f"{folder}/trainer.pt")
            msd, osd, extra = state["model"], state["optimizer"], state
            options = StateDictOptions(full_state_dict=True)
        else:
            msd, osd = get_state_dict(self.model, self.optimizer)
            shards = {"model": msd, "optimizer": osd}
            load_sharded(shards, f"{folder}/{SHARDED_DIR}")
            msd, osd, extra = shards["model"], shards["optimizer"], load_state(f"{folder}/trainer-state.pt")
            options = None
        set_state_dict(self.model, self.optimizer, model_state_dict=msd, optim_state_dict=osd, options=options)
        self.scheduler.load_state_dict(extra["scheduler"])
        self.step = extra["step"]
        rng = Path(folder) / f"trainer-rng-rank{self.rank}.pt"
        if rng.is_file():
            self._set_rng_state(rng_state_from_plain(load_state(rng)))
        elif any(Path(folder).glob("trainer-rng-rank*.pt")):  # written by fewer ranks: resharded onto more
            warnings.warn(f"{rng.name} is not in {folder}: the checkpoint was written by fewer ranks; "
                          f"rank {self.rank} keeps its own seeded random state", stacklevel=2)
        else:
            raise CheckpointLoadError(f"{folder} holds no trainer-rng-rank<k>.pt: written in part")
        dist.barrier()
        return self.step
