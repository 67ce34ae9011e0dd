"""The trainer backend interface, and the work every backend shares: one rank of the TrainerGroup.

Owns: the process group (gloo on CPU, NCCL on GPU), loading the policy (SDPA attention, or
flash-attention 2 on a GPU that has it; gradient checkpointing on request), micro-batch planning
and layout (padded or packed, `rl/trainer/packing.py`, `rl/trainer/collate.py`), per-token
logprobs under the loss mask, the policy-gradient step with a loss from `rl/algos` (old and
reference logprobs, DUPO copies reusing their source's, TIS, KL, entropy), the SFT step, the LR
schedule (`set_lr`), RNG state in checkpoints, LoRA adapters (peft, optional) and the weight
buckets for the engines (LoRA merged into the base weights, under the base model's names).

A backend (`rl/trainer/fsdp.py`, `rl/trainer/deepspeed.py`) owns only what differs: wrapping the
model (`_build`), `_backward`, `_optimizer_step` (clip, step, zero; returns the grad norm),
`named_full_state` (the full state gathered in bounded pieces, rank 0 yields it) and
`save_checkpoint` / `load_checkpoint`.

Never: decide what to train on (the controller does), talk to engines, or import Ray: a backend
is a plain class; `rl/cluster.py` makes it an actor. Every rank must make the same sequence of
forward/backward calls (sharded parameters are gathered collectively), so the number of
micro-batches is agreed across ranks and a rank that runs out of rows runs a zero-weight dummy.

Loss normalisation across micro-batches and ranks: each micro-batch's loss is aggregated with the
GLOBAL token / sequence counts of its mini-batch (all-reduced), then multiplied by the world size,
because both FSDP and DeepSpeed average gradients over ranks. The sum over micro-batches and ranks
is then exactly the aggregate over the whole mini-batch (SEEDS 2.1 token-level loss).
"""

from __future__ import annotations

import os
import random
import time
import warnings
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from rl import algos
from rl.trainer.collate import packed_microbatch, padded_microbatch, row_lengths
from rl.trainer.logprobs import DEFAULT_CHUNK_BYTES, grid_logprobs, install_logprob_head, reference_token_logprobs
from rl.trainer.packing import plan_micro_batches
from rl.weights import iter_buckets
from rollout.engines.base import cpu_bf16_warning


def microbatch_logprobs(model, mb: dict, temperature: float = 1.0, with_entropy: bool = False,
                        entropy_grad: bool = False, positions: str = "loss", chunk_bytes: int = DEFAULT_CHUNK_BYTES):
    """Grid logprobs [B, L-1] (and entropy) of a padded or a packed micro-batch (`collate.py`).

    `positions`: "loss" computes them where the loss mask is 1 (the policy's own tokens: all a loss, an
    old or a reference logprob needs), "response" at every response token (observations too); 0 elsewhere.
    Through the chunked kernel (`rl/trainer/logprobs.py`) when the model's output layer took it
    (`install_logprob_head`); else the full log-softmax over the whole grid."""
    images = {k: mb[k] for k in ("pixel_values", "image_grid_thw") if k in mb}
    packed = "position_ids" in mb
    if not getattr(model, "_windward_selective", False):
        lp, ent = reference_token_logprobs(model, mb["input_ids"], None if packed else mb["attention_mask"],
                                           temperature, with_entropy, entropy_grad,
                                           position_ids=mb.get("position_ids"), **images)
        if packed:
            idx, valid = mb["grid_index"], mb["grid_valid"]
            lp = torch.where(valid, lp[0][idx], lp.new_zeros(()))
            ent = torch.where(valid, ent[0][idx], ent.new_zeros(())) if ent is not None else None
        elif "grid_shape" in mb:  # a vision micro-batch with the dummy image row (see TrainerBackend._mb)
            b, n = mb["grid_shape"]
            lp, ent = lp[:b, :n], (ent[:b, :n] if ent is not None else None)
        return lp, ent
    want = _wanted(mb, positions)
    if packed:
        return grid_logprobs(model, mb["input_ids"], want & mb["grid_valid"], position_ids=mb["position_ids"],
                             flat_index=mb["grid_index"], temperature=temperature, with_entropy=with_entropy,
                             entropy_grad=entropy_grad, chunk_bytes=chunk_bytes)
    ids = mb["input_ids"]
    if "grid_shape" in mb:  # the extra dummy-image row and width: nothing wanted there
        b, n = mb["grid_shape"]
        full = torch.zeros(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool, device=want.device)
        full[:b, :n] = want
        lp, ent = grid_logprobs(model, ids, full, attention_mask=mb["attention_mask"], temperature=temperature,
                                with_entropy=with_entropy, entropy_grad=entropy_grad, chunk_bytes=chunk_bytes,
                                **images)
        return lp[:b, :n], (ent[:b, :n] if ent is not None else None)
    return grid_logprobs(model, ids, want, attention_mask=mb["attention_mask"], temperature=temperature,
                         with_entropy=with_entropy, entropy_grad=entropy_grad, chunk_bytes=chunk_bytes, **images)


def _wanted(mb: dict, positions: str) -> torch.Tensor:
    """[B, L-1] bool: the grid positions whose logprob is asked for."""
    if positions == "loss":
        return mb["loss_mask"] > 0
    if positions == "response":
        t = torch.arange(mb["loss_mask"].shape[1], device=mb["loss_mask"].device)[None, :]
        start, length = mb["response_start"][:, None], mb["response_len"][:, None]
        return (t >= start) & (t < start + length)
    raise ValueError(f"positions must be 'loss' or 'response', got {positions!r}")


def attention_implementation(requested: str, device: torch.device, dtype: str) -> str:
    """The attention kernel: "auto" is flash_attention_2 (varlen for packed rows) on a GPU with bf16 compute
    where flash-attn really imports, SDPA elsewhere; an explicit choice is kept. Package metadata is not
    enough: a wheel built for another torch or CUDA is "installed" and fails on import (an undefined symbol
    in its extension), so the import itself decides, and a failed one is said once in a warning."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and dtype == "bfloat16":
        from transformers.utils import is_flash_attn_2_available

        if is_flash_attn_2_available():
            try:
                from flash_attn import flash_attn_varlen_func  # noqa: F401
            except Exception as err:  # ImportError, OSError or RuntimeError from a broken CUDA extension
                warnings.warn(f"flash-attn is installed but does not import ({type(err).__name__}: {err}); "
                              "training with sdpa attention")
            else:
                return "flash_attention_2"
    return "sdpa"


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder blocks of an HF causal LM, also under a PEFT wrapper (the sharding units)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = base.model
    return inner.language_model.layers if hasattr(inner, "language_model") else inner.layers


def merge_lora(named: Iterator[tuple[str, torch.Tensor]], scaling: float) -> Iterator[tuple[str, torch.Tensor]]:
    """PEFT LoRA state -> the base model's state with the adapters folded in, streaming:
    W' = W + scaling * B @ A (scaling = alpha / r; LoRA, Hu et al. 2021, Eq. 3). Names lose PEFT's
    `base_model.model.` prefix and `.base_layer`; lora_A / lora_B entries are consumed. A layer's
    pieces arrive together (state-dict order), so one layer is held at a time."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in named:
        name = name.removeprefix("base_model.model.")
        if ".base_layer." in name:
            prefix, leaf = name.split(".base_layer.")
            if leaf != "weight":
                yield f"{prefix}.{leaf}", t
                continue
            part = "W"
        elif ".lora_A." in name or ".lora_B." in name:
            part = "A" if ".lora_A." in name else "B"
            prefix = name.split(f".lora_{part}.")[0]
        else:
            yield name, t
            continue
        parts = pending.setdefault(prefix, {})
        parts[part] = t
        if len(parts) == 3:
            del pending[prefix]
            w = parts["W"]
            yield f"{prefix}.weight", (w.float() + scaling * (parts["B"].float() @ parts["A"].float())).to(w.dtype)
    if pending:
        raise ValueError(f"LoRA merge: incomplete adapter entries for {sorted(pending)[:3]}")


def join_process_group(rank: int, world_size: int, master_addr: str, master_port: int,
                       timeout_s: float) -> torch.device:
    """Join the trainer group's torch.distributed group (NCCL on GPU, gloo on CPU; once per process) and
    return this rank's device. On GPU the rank's device is set first (else every NCCL communicator lands on
    cuda:0)."""
    gpu = torch.cuda.is_available()
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"))
    if gpu:
        local, count = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if not 0 <= local < count:
            raise RuntimeError(f"trainer rank {rank}: LOCAL_RANK={local} but this process sees {count} "
                               f"GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo", rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
    return torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")


class TrainerBackend:
    """One rank of the TrainerGroup. Subclasses: FSDPTrainer (default), DeepSpeedTrainer."""

    name = "base"

    def __init__(self, model_path: str, *, rank: int, world_size: int, lr: float = 1e-6,
                 weight_decay: float = 0.0, betas=(0.9, 0.999), grad_clip: float = 1.0,
                 warmup_steps: int = 0, micro_batch_size: int = 8, mini_batches: int = 1,
                 dtype: str = "float32", seed: int = 0, temperature: float = 1.0,
                 algo: dict | None = None, timeout_s: float = 1800.0, registries: dict | None = None,
                 token_budget: int = 0, packing: bool = False, grad_checkpointing: bool = False,
                 attn_implementation: str = "auto", lora: dict | None = None,
                 logprob_chunk_mb: int = DEFAULT_CHUNK_BYTES >> 20, entropy_every: int = 1, threads: int = 0):
        if packing and not token_budget:
            raise ValueError("packing needs a token_budget > 0 (the most tokens in one packed row)")
        if lora and lora.get("rank", 0) < 1:
            raise ValueError(f"lora needs a rank >= 1, got {lora}")
        self.model_path = str(model_path)
        self.rank, self.world_size = rank, world_size
        self.opt_args = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas))
        self.grad_clip, self.warmup_steps = grad_clip, warmup_steps
        self.micro_batch_size, self.mini_batches = micro_batch_size, mini_batches
        self.token_budget, self.packing = int(token_budget), bool(packing)
        self.grad_checkpointing, self.attn_implementation = grad_checkpointing, attn_implementation
        self.lora = dict(lora) if lora else None
        self.logprob_chunk_bytes = int(logprob_chunk_mb) << 20
        self.entropy_every = int(entropy_every)
        self.threads = int(threads)
        self.dtype, self.seed, self.temperature = dtype, seed, temperature
        self.algo = dict(algo or {})
        self.timeout_s = timeout_s
        self.step = 0
        self.model = self.ref_model = None
        from rollout.vision import VisionSpec

        self.vision = VisionSpec.from_model(self.model_path)
        if self.vision is not None and self.packing:
            warnings.warn("trainer.packing is off for a vision-language model: M-RoPE positions span a whole row")
            self.packing = False
        if registries:  # user-registered algorithm pieces, shipped from the driver (cloudpickle)
            algos.restore_registries(registries)

    # --- setup ---------------------------------------------------------------------------

    def init_distributed(self, master_addr: str, master_port: int) -> None:
        """Join the process group, load and wrap the policy (and the reference when kl_coef > 0)."""
        self.device = join_process_group(self.rank, self.world_size, master_addr, master_port, self.timeout_s)
        gpu = self.device.type == "cuda"
        if self.threads:  # colocated on CPU: this rank trains on its share of every core (rl/placement.py)
            torch.set_num_threads(self.threads)
        if self.dtype == "bfloat16" and gpu and not torch.cuda.is_bf16_supported():
            warnings.warn("this GPU has no bf16: training in float32")
            self.dtype = "float32"
        if self.dtype == "bfloat16" and not gpu and self.rank == 0 and (slow := cpu_bf16_warning("model.dtype")):
            warnings.warn(slow)  # kept as asked: float32 needs twice the activation memory (--dry-run plans bf16)
        self.attn = attention_implementation(self.attn_implementation, self.device, self.dtype)
        torch.manual_seed(self.seed)
        self._build()
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.pad_id = text_config.pad_token_id or getattr(self.model.config, "pad_token_id", None) or 0

    def _load_model(self, trainable: bool = True, where: str = "device"):
        """The HF causal LM in fp32 (backends cast for mixed precision; fp64 when dtype is "float64", for
        exactness tests) on `where`: "device" (this rank's), "host" (CPU memory: FSDP2 moves it to the
        device one unit at a time as it shards), "meta" (the modules built from the config without
        reading a weight: a rank that receives its shards from rank 0) or "config" (built from the config
        where the caller's context puts it, without reading a weight: DeepSpeed's `zero.Init`)."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        auto = AutoModelForImageTextToText if self.vision is not None else AutoModelForCausalLM
        dtype = torch.float64 if self.dtype == "float64" else torch.float32
        if where in ("meta", "config"):
            from transformers.initialization import no_init_weights

            # no weight initialisation: the weights come from rank 0 (and under zero.Init each parameter is
            # partitioned as soon as its module is built, so an initialiser would index an empty tensor)
            with torch.device("meta") if where == "meta" else no_init_weights():
                model = auto.from_config(AutoConfig.from_pretrained(self.model_path), attn_implementation=self.attn,
                                         dtype=dtype)
            if where == "config":
                model.tie_weights()  # init_weights, skipped above, is where transformers ties the embeddings
        else:
            model = auto.from_pretrained(self.model_path, attn_implementation=self.attn, dtype=dtype)
        if trainable and self.grad_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not trainable:
            model.requires_grad_(False)
        elif self.lora:
            from peft import LoraConfig, get_peft_model

            lo = self.lora
            model = get_peft_model(model, LoraConfig(
                r=lo["rank"], lora_alpha=lo.get("alpha", 2 * lo["rank"]), lora_dropout=lo.get("dropout", 0.0),
                target_modules=lo.get("target_modules", "all-linear"), bias="none"))
        model._windward_selective = install_logprob_head(model)  # else the full log-softmax (logprobs.py)
        return model.to(self.device) if where == "device" else model

    def _make_scheduler(self, optimizer: torch.optim.Optimizer):
        warm = self.warmup_steps
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)

    @property
    def _wants_ref(self) -> bool:
        return self.algo.get("kl_coef", 0.0) > 0  # never loaded when beta = 0

    # --- what a backend provides ---------------------------------------------------------

    def _build(self) -> None:
        """Set self.model (the HF module, for config and state), self.policy (what forward calls go
        to), self.ref (reference forward or None), self.optimizer (a torch optimizer: the LR
        schedule drives it) and self.scheduler."""
        raise NotImplementedError

    def _backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def _optimizer_step(self) -> float:
        """Clip (grad_clip > 0), step, zero the gradients; return the global grad norm before clipping."""
        raise NotImplementedError

    def named_full_state(self, bucket_bytes: int = 64 << 20, every_rank: bool = False,
                         skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, full tensor) for every entry of the model's state dict, tied weights under both
        names, on the trainer's device and possibly the live parameter itself: read each at once (the
        bucket packer copies it where its bucket lives: host, shared or GPU memory, with no round trip
        through the host for a GPU bucket) and never keep or modify it. Collective: every rank runs it
        to the end; only rank 0 yields (every rank with `every_rank`). Gathers about `bucket_bytes` at a time.
        skip: names left out, never gathered (the same on every rank: `tied_aliases`)."""
        raise NotImplementedError

    def tied_aliases(self) -> frozenset[str]:
        """State-dict names that only repeat a weight the output layer holds under its own name: a tied word
        embedding. The engines load such a weight once, through the output layer (vLLM builds the logits'
        kernel from it and the lookup reads the same storage, `rollout/engines/vllm_ext.py`; the HF engine's
        two names are one parameter), so a sync sends it once: at a tied vocabulary of 151,936 x 1,024 in
        bf16 that is 311 MB per sync not gathered, packed or moved. Empty when nothing is tied."""
        if getattr(self, "_tied_aliases", None) is None:
            owners: dict[int, list[str]] = {}
            for name, t in self.model.state_dict(keep_vars=True).items():
                owners.setdefault(id(t), []).append(name)
            aliases = set()
            for names in owners.values():
                layers = {n: self.model.get_submodule(n.rpartition(".")[0]) for n in names}
                outputs = [n for n, m in layers.items() if not isinstance(m, torch.nn.Embedding)]
                if len(names) > 1 and len(outputs) == 1:
                    aliases |= {n for n, m in layers.items() if isinstance(m, torch.nn.Embedding)}
            self._tied_aliases = frozenset(aliases)
        return self._tied_aliases

    def save_checkpoint(self, folder: str) -> None:
        raise NotImplementedError

    def load_checkpoint(self, folder: str) -> int:
        raise NotImplementedError

    # --- helpers -------------------------------------------------------------------------

    def _all_reduce(self, values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=op)
        return t.tolist()

    def _all_gather_keys(self, sums: dict) -> set[str]:
        keys: list = [None] * self.world_size
        dist.all_gather_object(keys, sorted(sums))
        return {k for ks in keys for k in ks}

    def _plan(self, lengths: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
        """This rank's `rows` in micro-batches (token budget or fixed size); every rank gets the same
        count (empty micro-batches fill in)."""
        parts = [rows[p] for p in plan_micro_batches(lengths[rows], micro_batch_size=self.micro_batch_size,
                                                     token_budget=self.token_budget, packing=self.packing)]
        n = int(self._all_reduce([len(parts)], dist.ReduceOp.MAX)[0])
        return parts + [rows[:0]] * (n - len(parts))

    def _dummy(self) -> dict:
        ids = torch.full((1, 2), self.pad_id, dtype=torch.long)
        mb = {"input_ids": ids, "loss_mask": torch.zeros(1, 1), "rollout_logprobs": torch.zeros(1, 1),
              "advantage": torch.zeros(1), "num_tokens": 0.0, "response_start": torch.zeros(1, dtype=torch.long),
              "response_len": torch.zeros(1, dtype=torch.long)}
        if self.packing:
            return mb | {"position_ids": torch.arange(2)[None], "grid_index": torch.zeros(1, 1, dtype=torch.long),
                         "grid_valid": torch.ones(1, 1, dtype=torch.bool)}
        return mb | {"attention_mask": torch.ones_like(ids)}

    def _mb(self, batch, rows):
        if not len(rows):
            mb = self._dummy()
        else:
            mb = (packed_microbatch if self.packing else padded_microbatch)(batch, rows, self.pad_id)
        if self.vision is not None:
            mb = self._with_images(mb, batch, rows)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in mb.items()}

    def _with_images(self, mb: dict, batch, rows) -> dict:
        """A vision model's micro-batch: the rows' images (in row order, as their pads appear) as
        pixel_values / image_grid_thw. A micro-batch with no image gets one extra input row holding a
        one-token blank image (VRAG-RL's dummy image; sliced off the outputs), so every rank runs the
        vision tower on every forward and the sharded backward reduces the same parameters everywhere."""
        images = []
        if len(rows) and "images" in batch.schema.names:
            column = batch.column("images")
            for r in rows:
                images.extend(column[int(r)].as_py() or [])
        ids, attn = mb["input_ids"], mb["attention_mask"]
        if images:
            self.vision.check(ids[attn.bool()].tolist(), images)
            return mb | self.vision.image_inputs(images)
        b, length = ids.shape
        v = self.vision
        blank = [v.vision_start_id, v.image_pad_id, v.vision_end_id]
        width = max(length, len(blank))
        new_ids = torch.full((b + 1, width), self.pad_id, dtype=ids.dtype)
        new_attn = torch.zeros((b + 1, width), dtype=attn.dtype)
        new_ids[:b, :length], new_attn[:b, :length] = ids, attn
        new_ids[b, :3], new_attn[b, :3] = torch.tensor(blank), 1
        side = v.merge_size  # a grid of merge x merge patches is one token
        patch = v.processor.patch_size ** 2 * v.processor.temporal_patch_size * 3
        return mb | {"input_ids": new_ids, "attention_mask": new_attn, "grid_shape": (b, length - 1),
                     "pixel_values": torch.zeros(side * side, patch),
                     "image_grid_thw": torch.tensor([[1, side, side]])}

    # --- the work ------------------------------------------------------------------------

    def train_step(self, batch: pa.RecordBatch, on_policy: bool = False) -> dict:
        """Old (and reference) logprobs, then `mini_batches` optimizer steps over this rank's rows.

        `on_policy`: every row was generated by the weights this trainer holds now (the controller checks
        the rows' policy_version). With one optimizer step per batch and no TIS, pi_old is then the current
        policy, so the old logprobs are the detached logprobs of the update's own forward (verl and OpenRLHF
        skip this pass alike) instead of a second pass over the batch; off-policy and async batches keep it.
        Reference logprobs only when kl_coef > 0.

        Optional columns: `dup_of` (shard-local index of the row a DUPO copy was taken from, -1
        otherwise: a copy reuses its source's old/ref logprobs instead of recomputing them) and
        `finish` (for overlong filtering). Returns metrics reduced over ranks (same on every rank).
        """
        a = self.algo
        t0 = time.perf_counter()
        rows_all = np.arange(batch.num_rows)
        lengths = row_lengths(batch)
        dup_of = batch.column("dup_of").to_numpy(zero_copy_only=False) if "dup_of" in batch.schema.names \
            else np.full(batch.num_rows, -1)
        truncated = None
        if a.get("overlong_filter") and "finish" in batch.schema.names:
            truncated = np.asarray(batch.column("finish").to_pylist()) == "max_tokens"
        recompute = a.get("recompute_old_logprobs", True)
        one_pass = recompute and on_policy and self.mini_batches == 1 and a.get("tis_cap") is None
        old = self._logprobs_of(batch, lengths, dup_of, self.policy) if recompute and not one_pass else {}
        ref = self._logprobs_of(batch, lengths, dup_of, self.ref) if self.ref is not None else {}
        t1 = time.perf_counter()
        entropy_grad = bool(a.get("entropy_coef"))
        with_entropy = entropy_grad or bool(self.entropy_every and self.step % self.entropy_every == 0)

        self.policy.train()
        sums: dict[str, float] = {}
        tokens_seen, grad_norms = 0.0, []
        for mini in np.array_split(rows_all, self.mini_batches):
            micro = self._plan(lengths, mini)
            mbs = [self._mb(batch, rows) for rows in micro]
            if truncated is not None:
                for rows, mb in zip(micro, mbs):
                    if len(rows):
                        mb["loss_mask"] = algos.overlong_filter_mask(
                            mb["loss_mask"], torch.from_numpy(truncated[rows]).to(self.device))
                        mb["num_tokens"] = float(mb["loss_mask"].sum())
            local = [sum(mb["num_tokens"] for mb in mbs),
                     float(sum(int((mb["loss_mask"].sum(-1) > 0).sum()) for mb, r in zip(mbs, micro) if len(r)))]
            g_tokens, g_seqs = (max(v, 1.0) for v in self._all_reduce(local))
            for rows, mb in zip(micro, mbs):
                lp, ent = microbatch_logprobs(self.policy, mb, self.temperature, with_entropy=with_entropy,
                                              entropy_grad=entropy_grad, chunk_bytes=self.logprob_chunk_bytes)
                old_lp = lp.detach() if one_pass else _stack(old, rows, lp) if old else mb["rollout_logprobs"]
                ref_lp = _stack(ref, rows, lp) if ref else None
                loss, m = self._loss(mb, lp, ent, old_lp, ref_lp, g_tokens, g_seqs)
                self._backward(loss * self.world_size)  # the backends average gradients over ranks
                n = mb["num_tokens"]
                if n:
                    sums["loss"] = sums.get("loss", 0.0) + loss.item()
                    for k, v in m.items():
                        sums[k] = sums.get(k, 0.0) + v * n
                    tokens_seen += n
            grad_norms.append(self._optimizer_step())
        lr = self.scheduler.get_last_lr()[0]  # the one this step used
        self.scheduler.step()
        self.step += 1
        t2 = time.perf_counter()

        # every rank must reduce the same keys in the same order
        keys = sorted(self._all_gather_keys(sums))
        red = self._all_reduce([sums.get(k, 0.0) for k in keys] + [tokens_seen])
        total = max(red[-1], 1.0)
        metrics = {f"train/{k}": v / total for k, v in zip(keys, red[:-1]) if k != "loss"}
        metrics["train/loss"] = red[keys.index("loss")] / self.mini_batches if "loss" in keys else 0.0
        metrics["train/grad_norm"] = float(np.mean(grad_norms))
        metrics["train/lr"] = lr
        metrics["train/tokens"] = red[-1]
        metrics["time/logprobs"] = t1 - t0
        metrics["time/update"] = t2 - t1
        metrics["train/old_logprob_pass"] = float(bool(old))
        metrics["train/threads"] = torch.get_num_threads()
        return metrics

    def sft_step(self, batch: pa.RecordBatch) -> dict:
        """One optimizer step of next-token NLL on this rank's rows (SFT / RFT cold start).

        Only tokens with loss_mask == 1 count (the policy's own tokens; observations and template
        tokens are context only, SEEDS 3.4): L = - sum_i sum_t m_{i,t} log pi(o_{i,t} | o_{i,<t}) / N,
        N = masked tokens over all micro-batches and ranks (token mean). Needs prompt_ids,
        response_ids, loss_mask; no advantage or logprobs. Metrics are the same on every rank.
        """
        t0 = time.perf_counter()
        lengths = row_lengths(batch)
        micro = self._plan(lengths, np.arange(batch.num_rows))
        mbs = [self._mb(batch, rows) for rows in micro]
        g_tokens = max(self._all_reduce([sum(mb["num_tokens"] for mb in mbs)])[0], 1.0)
        self.policy.train()
        nll = 0.0
        for mb in mbs:
            lp, _ = microbatch_logprobs(self.policy, mb, chunk_bytes=self.logprob_chunk_bytes)
            loss = -algos.masked_sum(lp, mb["loss_mask"]) / g_tokens
            self._backward(loss * self.world_size)
            nll += loss.item()
        grad_norm = self._optimizer_step()
        lr = self.scheduler.get_last_lr()[0]  # the one this step used
        self.scheduler.step()
        self.step += 1
        loss_sum, tokens = self._all_reduce([nll, sum(mb["num_tokens"] for mb in mbs)])
        return {"sft/loss": loss_sum, "sft/tokens": tokens, "sft/grad_norm": grad_norm,
                "sft/lr": lr, "time/update": time.perf_counter() - t0}

    def logprobs(self, batch: pa.RecordBatch, reference: bool = False) -> list[np.ndarray]:
        """Per row, log pi(response token | everything before it) under the policy (or the
        reference), aligned with `response_ids` (collective: every rank calls with its shard)."""
        model = self.ref if reference else self.policy
        if model is None:
            raise ValueError("no reference model is loaded (algo.kl_coef = 0)")
        lengths = row_lengths(batch)
        per_row = self._logprobs_of(batch, lengths, np.full(batch.num_rows, -1), model, positions="response")
        p_len = batch.column("prompt_ids").value_lengths().to_numpy(zero_copy_only=False)
        r_len = batch.column("response_ids").value_lengths().to_numpy(zero_copy_only=False)
        return [per_row[i][p_len[i] - 1:p_len[i] - 1 + r_len[i]].cpu().numpy() for i in range(batch.num_rows)]

    def reset_reference(self) -> int:
        """The reference model takes the policy's current weights (LoRA merged in). An RL stage's
        reference is the policy it starts from, as in verl and OpenRLHF (the actor's initial checkpoint):
        after an SFT stage, in this run or restored from its checkpoint, the KL term holds RL near the SFT
        policy, not near the weights the run loaded. Collective: every rank calls it; each gathers one
        tensor (ZeRO-3: one chunk) at a time and keeps only its own part. Returns the number of reference
        tensors written (0: no reference is loaded, `algo.kl_coef` = 0)."""
        if self.ref is None:
            return 0
        params = dict(self.ref_model.named_parameters())
        targets = params | dict(self.ref_model.named_buffers())
        written = set()
        with torch.no_grad():
            for name, full in self.served_state(every_rank=True):
                if name in targets and name not in written:  # a tied weight comes under both names
                    self._write_reference(targets[name], full)
                    written.add(name)
        missing = sorted(set(params) - written)
        if missing:
            raise KeyError(f"the policy's state lacks reference parameters {missing[:5]} (of {len(missing)})")
        return len(written)

    def _write_reference(self, param: torch.Tensor, full: torch.Tensor) -> None:
        """Write the full tensor `full` into this rank's part of reference parameter `param` (FSDP2: its
        shard; a replica: all of it). DeepSpeed ZeRO-3 overrides it."""
        if hasattr(param, "device_mesh"):  # a DTensor: cut this rank's shard out of the full tensor locally
            from torch.distributed.tensor import distribute_tensor

            full = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(full.to_local())
        else:
            param.copy_(full)

    def _loss(self, mb, lp, ent, old_lp, ref_lp, g_tokens, g_seqs):
        """Policy loss (+ beta * KL, - entropy bonus) aggregated with the global counts. The
        pieces come from the registries and get only the parameters they declare
        (`algos.piece_kwargs`), so a user-registered loss runs here unchanged. A loss with its own
        aggregation (gspo) uses it; algo.loss_agg_mode aggregates the KL and entropy terms."""
        a, mask = self.algo, mb["loss_mask"]
        name = a.get("policy_loss", "ppo_clip")
        per_tok, metrics = algos.policy_loss(name, lp, old_lp, mb["advantage"], mask,
                                             **algos.piece_kwargs("policy_loss", name, a))
        metrics = dict(metrics)
        if a.get("tis_cap") is not None:  # rollout-vs-trainer mismatch: weight by min(pi_old / pi_rollout, C)
            w, tis_m = algos.tis_weights(old_lp, mb["rollout_logprobs"], mask, cap=a["tis_cap"])
            per_tok = per_tok * w
            metrics |= tis_m
        agg = dict(mode=a.get("loss_agg_mode", "token-mean"), num_tokens=g_tokens, num_seqs=g_seqs,
                   norm_len=a.get("norm_len"))
        loss = algos.aggregate(per_tok, mask, **(agg | {"mode": algos.policy_loss_aggregation(name, agg["mode"])}))
        if ref_lp is not None:  # SEEDS 1.1: beta * D_KL[pi_theta || pi_ref] in the loss
            kind = a.get("kl_estimator", "low_var_kl")
            kl = algos.kl_penalty(lp, ref_lp, kind, **algos.piece_kwargs("kl_estimator", kind, a))
            loss = loss + a["kl_coef"] * algos.aggregate(kl, mask, **agg)
            metrics["kl_ref"] = float(algos.masked_mean(kl.detach(), mask))
        if ent is not None:
            metrics["entropy"] = float(algos.masked_mean(ent.detach(), mask))
        if a.get("entropy_coef", 0.0):  # entropy bonus (ent carries its graph in this case)
            loss = loss - a["entropy_coef"] * algos.aggregate(ent, mask, **agg)
        metrics["logprob_diff"] = float(algos.masked_mean((lp.detach() - mb["rollout_logprobs"]).abs(), mask))
        return loss, metrics

    def _logprobs_of(self, batch, lengths, dup_of, model, positions: str = "loss") -> dict[int, torch.Tensor]:
        """Grid logprobs per row under `model` (no grad) at `positions` (see `microbatch_logprobs`);
        DUPO copies reuse their source's."""
        model.eval()
        rows_all = np.arange(batch.num_rows)
        out: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for rows in self._plan(lengths, rows_all[dup_of < 0]):
                mb = self._mb(batch, rows)
                lp, _ = microbatch_logprobs(model, mb, self.temperature, positions=positions,
                                            chunk_bytes=self.logprob_chunk_bytes)
                for i, r in enumerate(rows):
                    out[int(r)] = lp[i]
        for r in rows_all[dup_of >= 0]:
            out[int(r)] = out[int(dup_of[r])]
        return out

    def set_lr(self, lr: float) -> None:
        """New peak learning rate (the schedule's base), e.g. between an SFT stage and RL; the
        schedule's position (warm-up) is kept."""
        self.opt_args["lr"] = lr
        self.scheduler.base_lrs = [lr] * len(self.scheduler.base_lrs)
        for group, fn in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["initial_lr"] = lr
            group["lr"] = lr * fn(self.scheduler.last_epoch)
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    # --- colocated on GPU: the trainer's state leaves the device while the engines generate ----

    def offload(self) -> None:
        """Parameters, gradients and optimizer state to host memory (`trainer.offload`)."""
        self._move_state(torch.device("cpu"))

    def onload(self) -> None:
        self._move_state(self.device)

    def _move_state(self, device: torch.device) -> None:
        self.model.to(device)
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if torch.is_tensor(v) and k != "step":
                    state[k] = v.to(device, non_blocking=True)
        if device.type == "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    # --- weights for the engines ----------------------------------------------------------

    def iter_state_buckets(self, bucket_bytes: int = 64 << 20, dtype: torch.dtype | None = None,
                           allocate=None, every_rank: bool = False) -> Iterator[torch.Tensor]:
        """The full state as buckets (1-D uint8 tensors, `rl/weights/base.py` `iter_buckets`) of about
        `bucket_bytes`, packed while gathering (at most one bucket's tensors, its packed copy and one
        gather chunk held at a time). dtype: the serving dtype floating tensors are cast to while packed;
        allocate: where a bucket is packed (a transport's `allocate`). Collective: every rank iterates to
        the end; rank 0 yields (every rank with `every_rank`), the others yield nothing."""
        named = self.served_state(bucket_bytes, every_rank=every_rank, skip=self.tied_aliases())
        if self.rank == 0 or every_rank:
            yield from iter_buckets(named, bucket_bytes, dtype, allocate)
        else:
            for _ in named:
                pass

    def served_state(self, bucket_bytes: int = 64 << 20, every_rank: bool = False,
                     skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, torch.Tensor]]:
        """`named_full_state` as the engines serve it: with LoRA, the adapters merged into the weights under
        the base model's names. Collective, as `named_full_state`."""
        named = self.named_full_state(bucket_bytes, every_rank=every_rank, skip=skip)
        if self.lora and (self.rank == 0 or every_rank):
            lo = self.lora
            named = merge_lora(named, lo.get("alpha", 2 * lo["rank"]) / lo["rank"])
        return named

    def send_weights(self, transport, version: int, bucket_bytes: int = 64 << 20):
        """Stream the full state as `version` through a weight transport (rl/weights/): every rank takes
        part in the gather, rank 0 packs each bucket in the transport's serving dtype where the transport
        wants it (host, shared or GPU memory) and sends it at once (bounded memory). A transport with one
        sender per rank (`rl/weights/per_rank.py`: CUDA IPC into the engine on each rank's own GPU) has
        every rank with a part pack and send the whole state to its engines. Returns the send statistics
        of this rank's send, None where it sent nothing."""
        from rollout.engines.base import keep_freed_memory

        keep_freed_memory()  # on CPU the gather's copies then reuse warm memory, not fresh pages, every sync
        per_rank = getattr(transport, "per_rank", False)
        mine = transport.sender(self.rank) if per_rank else transport if self.rank == 0 else None
        if mine is not None:
            return mine.send(version, self.iter_state_buckets(bucket_bytes, mine.dtype, mine.allocate,
                                                              every_rank=per_rank))
        for _ in self.iter_state_buckets(bucket_bytes):  # the gather only: nothing to pack on this rank
            pass
        return None

    def state_buckets(self, bucket_bytes: int = 64 << 20) -> list[torch.Tensor]:
        """Gather the full state (collective); rank 0 returns it as buckets (`unpack_bucket` reads one).
        A tied embedding travels once, under the output layer's name (`tied_aliases`): a vLLM engine loads
        the shared weight through its output layer (`lm_head.weight`; without it the output layer stays
        stale, measured with vLLM 0.32 CPU)."""
        return list(self.iter_state_buckets(bucket_bytes))

    # --- RNG and teardown ----------------------------------------------------------------

    def _rng_state(self) -> dict:
        state = {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                 "python_rng": random.getstate()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return state

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch_rng"])
        if "numpy_rng" in state:
            np.random.set_state(state["numpy_rng"])
        if "python_rng" in state:
            random.setstate(state["python_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _stack(per_row: dict[int, torch.Tensor], rows, like: torch.Tensor) -> torch.Tensor:
    """[B, L-1] from per-row grid tensors (re-padded to this micro-batch's width); a dummy
    micro-batch (no rows) gets `like` detached."""
    if not len(rows):
        return like.detach()
    return torch.stack([_fit(per_row[int(r)], like.shape[1]) for r in rows])


def _fit(t: torch.Tensor, n: int) -> torch.Tensor:
    """Pad or cut a [L-1] grid row to length n (rows are re-padded per micro-batch)."""
    if t.shape[0] >= n:
        return t[:n]
    return torch.nn.functional.pad(t, (0, n - t.shape[0]))
