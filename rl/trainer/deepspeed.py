"""DeepSpeed backend: one rank of the TrainerGroup with the policy under ZeRO stage 1, 2 or 3.

Owns: the policy loaded without a full copy per rank under ZeRO-3 (`_load_partitioned`: built under
`zero.Init`, rank 0 the only reader), the DeepSpeed engine built by `deepspeed.initialize` from a config dict (gloo on CPU with
DS_ACCELERATOR=cpu, NCCL on GPU; bf16 when dtype is bfloat16), a torch AdamW handed to it
(`zero_allow_untested_optimizer`: DeepSpeed's own CPU Adam JIT-compiles for about 2 minutes), the
reference model (a ZeRO-3 engine without optimizer under stage 3, a plain replica otherwise), the
full state gathered in bounded chunks (`zero.GatheredParameters` under stage 3), and DeepSpeed's
own sharded checkpoints plus the LR schedule, step and every rank's RNG.

Never: anything the backends share (`rl/trainer/base.py`). Gradient accumulation is the trainer's:
`managed_gradient_accumulation: false` makes `engine.step()` the boundary after however many
micro-batches a step has (token budgets make that number vary), and `engine.backward` does not
rescale the loss (the trainer normalises by global counts).

CPU notes (ASSETS.md): DeepSpeed's first distributed init JIT-compiles a shared-memory all-reduce
op (60-100 s) that only its inference tensor-parallel path uses; it is switched off here on CPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from rl.checkpoint import agree_on_write, disk_full, load_state, plain_rng_state, rng_state_from_plain, save_state
from rl.trainer.base import TrainerBackend

CHECKPOINT_TAG = "deepspeed"


def import_deepspeed(device_type: str):
    """Import DeepSpeed for this device: the accelerator is chosen before the import, the CPU
    shared-memory comm op is never built, and its INFO logging is quiet."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device_type == "cuda" else "cpu")
    import deepspeed
    import deepspeed.ops
    from deepspeed.utils import logger

    if device_type != "cuda":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    logger.setLevel(logging.WARNING)
    return deepspeed


class DeepSpeedTrainer(TrainerBackend):
    name = "deepspeed"

    def __init__(self, model_path: str, *, zero_stage: int = 2, **kwargs):
        if zero_stage not in (1, 2, 3):
            raise ValueError(f"zero_stage must be 1, 2 or 3, got {zero_stage}")
        self.zero_stage = zero_stage
        super().__init__(model_path, **kwargs)

    def ds_config(self, train: bool = True) -> dict:
        """The DeepSpeed config dict (train: with gradient settings; else the reference model's)."""
        cfg = {
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": self.zero_stage if train else (3 if self.zero_stage == 3 else 0)},
            "bf16": {"enabled": self.dtype == "bfloat16"},
            "steps_per_print": 1 << 62,
            "wall_clock_breakdown": False,
        }
        if train:
            cfg |= {"managed_gradient_accumulation": False, "zero_allow_untested_optimizer": True,
                    "gradient_clipping": float(self.grad_clip)}
        return cfg

    def _build(self) -> None:
        ds = import_deepspeed(self.device.type)
        partitioned = self.zero_stage == 3 and self.dtype != "float64"
        model = self._load_partitioned(ds, trainable=True) if partitioned else self._load_model()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **self.opt_args)
        self.engine, _, _, _ = ds.initialize(model=model, optimizer=optimizer, config=self.ds_config(),
                                             dist_init_required=False)
        self.model, self.policy = self.engine.module, self.engine
        # the LR schedule drives the torch optimizer ZeRO wraps (its param_groups hold the lr)
        self.optimizer = optimizer
        self.scheduler = self._make_scheduler(optimizer)
        self.ref_model = self.ref = None
        if self._wants_ref:
            if self.zero_stage == 3:
                ref = self._load_partitioned(ds, trainable=False) if partitioned else self._load_model(trainable=False)
                self.ref_engine, *_ = ds.initialize(model=ref, config=self.ds_config(train=False),
                                                    dist_init_required=False)
                self.ref, self.ref_model = self.ref_engine, self.ref_engine.module
            else:
                ref = self._load_model(trainable=False)
                self.ref = self.ref_model = ref.to(torch.bfloat16) if self.dtype == "bfloat16" else ref
            self.ref.eval()

    def _load_partitioned(self, ds, trainable: bool):
        """ZeRO-3 without a full copy per rank: every rank builds the modules from the config under
        `zero.Init`, which partitions each module's parameters as soon as it is built; rank 0 alone reads
        the weights (into host memory, as FSDP2's rank 0 does) and writes them into each parameter
        gathered in turn (`GatheredParameters(modifier_rank=0)`: on leaving it, rank 0's values are
        broadcast and every rank keeps its partition). Buffers, which ZeRO does not partition (rotary
        frequencies), come from rank 0 too. Stages 1 and 2 keep the full parameters on every rank by
        design, so they load as before; so does fp64 (exactness tests), which `zero.Init` cannot build."""
        full = self._load_model(trainable=trainable, where="host") if self.rank == 0 else None
        # the parameters' dtype comes from the config (bf16 or fp32): an explicit `dtype` is ignored on an
        # accelerator without fp16 (DeepSpeed 0.19 `_set_dtype`), and fp64 is not allowed
        with ds.zero.Init(config_dict_or_path=self.ds_config(train=trainable)):
            model = self._load_model(trainable=trainable, where="config")
        source = dict(full.named_parameters()) if full is not None else {}
        names = [name for name, _ in model.named_parameters()]
        missing = [[n for n in names if n not in source] if self.rank == 0 else None]
        dist.broadcast_object_list(missing, src=0)  # every rank stops, or none: the loop below is collective
        if missing[0]:
            raise KeyError(f"{self.model_path}: the model built from its config has parameters the one read "
                           f"from its weights lacks: {missing[0][:5]}")
        for name, param in model.named_parameters():
            with ds.zero.GatheredParameters([param], modifier_rank=0):
                if self.rank == 0:
                    param.data.copy_(source[name].data)
        buffers = dict(full.named_buffers()) if full is not None else {}
        for name, buf in model.named_buffers():
            if self.rank == 0:
                buf.copy_(buffers[name])
            dist.broadcast(buf, src=0)
        del full, source, buffers
        return model

    def _backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def _optimizer_step(self) -> float:
        self.engine.step()  # reduce (ZeRO), clip to gradient_clipping, step, zero the gradients
        gn = self.engine.get_global_grad_norm()
        return float(gn) if gn is not None else 0.0

    def named_full_state(self, bucket_bytes: int = 64 << 20, every_rank: bool = False,
                         skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, torch.Tensor]]:
        """Stage 1/2: every rank holds the full parameters; rank 0 (every rank with `every_rank`) yields
        them as they are. Stage 3: chunks of about `bucket_bytes` gathered with `zero.GatheredParameters`
        on every rank, copied on rank 0 (every rank with `every_rank`) on the device. `skip`: names left out."""
        entries = [(n, t) for n, t in self.model.state_dict(keep_vars=True).items()  # tied weights under both names
                   if n not in skip]
        mine = self.rank == 0 or every_rank
        if self.zero_stage < 3:
            if mine:
                for name, t in entries:
                    yield name, t.detach()
            return
        import deepspeed

        chunk: list[tuple[str, torch.Tensor]] = []
        size = 0
        for i, (name, t) in enumerate(entries):
            chunk.append((name, t))
            size += getattr(t, "ds_numel", t.numel()) * t.element_size()
            if size < bucket_bytes and i + 1 < len(entries):
                continue
            params = list({id(p): p for _, p in chunk if hasattr(p, "ds_id")}.values())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                # copies on the device: the gathered parameters are gone when the context ends
                copies = [(n, p.detach().clone()) for n, p in chunk] if mine else []
            yield from copies
            chunk, size = [], 0

    def _write_reference(self, param: torch.Tensor, full: torch.Tensor) -> None:
        """ZeRO-3: the parameter gathered whole, written, and partitioned again (every rank holds `full`,
        rank 0's copy is what stays)."""
        if not hasattr(param, "ds_id"):
            return super()._write_reference(param, full)
        import deepspeed

        with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
            if self.rank == 0:
                param.data.copy_(full)

    def save_checkpoint(self, folder: str) -> None:
        """DeepSpeed's checkpoint (module, every rank's optimizer partition) under tag `deepspeed`,
        with the LR schedule and step as client state; every rank's RNG (collective). A full disk is
        a CheckpointWriteError naming the folder and its free space."""
        error = None
        try:
            save_state(plain_rng_state(self._rng_state()), f"{folder}/trainer-rng-rank{self.rank}.pt")
        except OSError as err:
            error = err
        agree_on_write(error, folder, self._all_reduce)  # no rank enters DeepSpeed's collectives alone
        self._checkpoint_files_through_rl()
        try:
            self.engine.save_checkpoint(folder, tag=CHECKPOINT_TAG, save_latest=False,
                                        client_state={"step": self.step, "scheduler": self.scheduler.state_dict()})
        except OSError as err:
            raise disk_full(Path(folder) / CHECKPOINT_TAG, err) from err
        dist.barrier()

    def load_checkpoint(self, folder: str) -> int:
        """Restore what `save_checkpoint` wrote (same world size and ZeRO stage), every file with
        weights_only=True. Returns the step."""
        self._checkpoint_files_through_rl()
        path, client = self.engine.load_checkpoint(folder, tag=CHECKPOINT_TAG, load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint (tag {CHECKPOINT_TAG!r}) in {folder}")
        self.scheduler.load_state_dict(client["scheduler"])
        self.step = client["step"]
        self._set_rng_state(rng_state_from_plain(load_state(f"{folder}/trainer-rng-rank{self.rank}.pt")))
        dist.barrier()
        return self.step

    def _checkpoint_files_through_rl(self) -> None:
        """DeepSpeed's own checkpoint engine loads with weights_only=False and writes with torch's
        path writer (a full disk: "unexpected pos"); its files go through rl/checkpoint.py instead.
        Its ZeRO optimizer state pickles a loss scaler, the stage enum and fragment addresses: allowed
        by name, nothing else."""
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allow = (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)
        files = self.engine.checkpoint_engine

        def save(state_dict, path):
            save_state(state_dict, path)

        def load(path, map_location=None):
            return load_state(path, map_location=map_location, allow=allow)

        files.save, files.load = save, load
