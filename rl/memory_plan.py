"""The per-device memory plan of a configuration: what `--dry-run` prints, and the check that refuses a run
that cannot fit, naming the key to change.

Owns:
- the architecture of `model.path` without loading it (`resolve_arch`): a folder's config.json, the tiny
  builders' sizes (rl/models.py), or, for a hub name that is not on disk, a built-in table of the Qwen2.5 and
  Qwen3 dense sizes (`HUB_ARCHS`, from their published config.json files);
- pure functions for the bytes: `param_count`, `trainer_memory` (one rank: sharded fp32 parameters, gradients
  and AdamW moments, the unsharded working copies, activations with or without gradient checkpointing, the
  logprob head via `rl.trainer.logprobs.logprob_memory_bytes`), `engine_memory` (one vLLM engine: weights in
  the serving dtype, KV cache from `gpu_memory_utilization` or `kv_cache_gib`);
- the plan of a `Config` (`plan_config`): which roles share a device (`ray.placement`, ARCHITECTURE.md
  section 3), the bytes of each phase on it, the peak, and what to change when it does not fit.

The formulas follow the code as it runs (the numbers are per device, in bytes):
- FSDP2 (rl/trainer/fsdp.py): fp32 parameters sharded over the ranks, fp32 gradients and AdamW's two fp32
  moments likewise (16 bytes per parameter / ranks during a step, 12 between steps: gradients are set to
  None); bf16 compute casts each FSDP unit while it runs: the root unit (embeddings, final norm, output
  layer) stays unsharded for the whole forward and backward, the decoder layers two at a time (the one
  running and the one prefetched), and a layer's unsharded gradient waits for its reduce-scatter.
- Activations (HF Qwen2/Qwen3/Llama decoder layers, per token, b bytes the compute dtype): the two RMSNorms
  keep an fp32 copy of their input and the normalised value (4+b each per hidden unit), the linear layers
  their inputs, attention q, k, v (k, v repeated to every head under SDPA: transformers' `repeat_kv`) and
  its output twice (SDPA's and o_proj's input), the SwiGLU MLP four intermediate-sized tensors. With
  gradient checkpointing only each layer's input is kept, and one layer is recomputed at a time. SDPA and
  eager attention keep an L x L mask per row (a packed micro-batch is one row); eager adds each head's scores.
- The backward peaks at its start (the logprob head's chunk and selected hidden states, the output layer's
  weight gradient accumulated in fp32), in a layer (with checkpointing its recomputed activations; its first
  MLP gradient) or at its end when no activation is left (the root unit's gradients and reduce-scatter);
  the plan takes the largest. A huge model on few ranks peaks at the optimizer step instead (AdamW's
  sqrt(v) temporary, foreach on GPU).
- Loading (rl/trainer/fsdp.py `_load_sharded`): rank 0 reads the full fp32 model into host memory, the other
  ranks build it on the meta device; `fully_shard` moves one unit at a time to the device and keeps its shard,
  and rank 0 broadcasts each rank its shards. So a GPU holds the shards plus one unit whole; on CPU, rank 0's
  memory also holds the full model. DeepSpeed ZeRO-3 (rl/trainer/deepspeed.py `_load_partitioned`) the same
  way: rank 0 reads the weights into host memory, every rank builds the modules under `zero.Init` (each
  partitioned as soon as it is built: one module whole at a time) and takes its partition of rank 0's values.
  ZeRO-1 and -2 keep every parameter on every rank, so each rank reads the full model.
- vLLM on GPU takes `gpu_memory_utilization` of the device (weights, activation reserve, KV cache); asleep
  (colocated, sleep level 1) it keeps only its CUDA context and graphs. The vLLM CPU build: weights in fp32
  plus `kv_cache_gib`.
- A GPU process also holds its CUDA context and NCCL buffers (`GPU_RUNTIME`); a CPU process its interpreter
  and libraries (`CPU_PROCESS`). These and the engine's reserve are estimates, not measurements. A one-host plan also
  counts the driver and Ray's other processes, caps the host at Ray's OOM threshold (95 %) and keeps a 10 % margin.

tests/rl/test_memory_plan.py pins the trainer formula against the measured peak memory of FSDP2 steps of small
models on CPU (fp32 and bf16 compute, with and without checkpointing, a 65k vocabulary): the plan is 1-10 %
above the measurement. On GPU the same formulas hold with the GPU's kernels (flash-attention keeps k, v
unrepeated and no mask); the GPU constants above are not measured here. The simulated backends
(`sim`) hold no model.

Never: load weights, allocate, start anything or download (a hub name not on disk is looked up in
`HUB_ARCHS` only); decide anything about a run but whether its plan fits.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rl.trainer.logprobs import DEFAULT_CHUNK_BYTES, logprob_memory_bytes

GiB = 1 << 30
#: the device of a GPU run, unless --device-gib says otherwise (an 80 GB A100 / H100)
DEFAULT_DEVICE_GIB = 80.0
#: CUDA context, NCCL buffers and allocator slack of one GPU process (an estimate)
GPU_RUNTIME = 1 * GiB
#: interpreter, torch, transformers (and vLLM's) code and buffers of one CPU process (an estimate)
CPU_PROCESS = 1 * GiB
#: vLLM's CPU build beyond weights and KV cache: the rollout actor, EngineCore and the worker process (measured
#: 2.5 GiB with SmolLM2-135M on 2026-12-06: 0.58 + 0.45 + 1.5 GiB)
CPU_ENGINE_PROCESS = 5 * GiB // 2
#: a one-host run's other processes: the driver, Ray's daemons, env servers, reward workers, the mailbox and the
#: world host (measured 1.6 GiB of actors in the same run, plus the daemons)
HOST_RUNTIME = 2 * GiB
#: the share of host memory past which Ray's memory monitor kills workers (RAY_memory_usage_threshold)
RAY_OOM_SHARE = float(os.environ.get("RAY_memory_usage_threshold", "0.95"))
#: a one-host plan keeps this share of the host free: its rows are estimates, and a worker past Ray's threshold
#: is killed, not slowed (SmolLM2 with 2 rows of 2,000 tokens a rank planned 96 % of the threshold and was killed)
HOST_MARGIN = 0.10
#: what vLLM keeps outside weights and KV cache: the profile run's activations, CUDA graphs (an estimate)
ENGINE_RESERVE = 2 * GiB
#: a sleeping vLLM engine (level 1: weights in host memory, KV cache freed): context and CUDA graphs
ENGINE_ASLEEP = 1 * GiB
#: GPUs per node assumed for ray.placement=auto (colocated on one node, split across several)
GPUS_PER_NODE = 8
#: sequences vLLM samples at once in its profile run (their fp32 logits are part of its reserve)
ENGINE_MAX_SEQS = 256


@dataclass(frozen=True)
class Arch:
    """The sizes of a decoder-only transformer (HF config names in comments), and where they came from."""

    hidden: int            # hidden_size
    layers: int            # num_hidden_layers
    heads: int             # num_attention_heads
    kv_heads: int          # num_key_value_heads
    head_dim: int          # head_dim (hidden / heads when absent)
    intermediate: int      # intermediate_size (SwiGLU)
    vocab: int             # vocab_size
    tied: bool = False     # tie_word_embeddings
    qkv_bias: bool = False  # q, k, v projections with bias (Qwen2 family)
    o_bias: bool = False   # o_proj with bias (attention_bias of Llama / Qwen3)
    qk_norm: bool = False  # RMSNorm on q and k per head (Qwen3)
    vision: int = 0        # parameters of a vision tower (Qwen2.5-VL)
    softcap: bool = False  # logits changed after the output layer: the full log-softmax path
    source: str = ""


# --- architectures ---------------------------------------------------------------------------

_QWEN25 = dict(vocab=152064, qkv_bias=True)
_QWEN3 = dict(vocab=151936, head_dim=128, qk_norm=True)
#: dense Qwen2.5 / Qwen3 sizes (their hub config.json): used for a hub name that is not on disk (no download)
HUB_ARCHS: dict[str, dict] = {
    "qwen2.5-0.5b": dict(_QWEN25, hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864, vocab=151936,
                         tied=True),
    "qwen2.5-1.5b": dict(_QWEN25, hidden=1536, layers=28, heads=12, kv_heads=2, intermediate=8960, vocab=151936,
                         tied=True),
    "qwen2.5-3b": dict(_QWEN25, hidden=2048, layers=36, heads=16, kv_heads=2, intermediate=11008, vocab=151936,
                       tied=True),
    "qwen2.5-7b": dict(_QWEN25, hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944),
    "qwen2.5-14b": dict(_QWEN25, hidden=5120, layers=48, heads=40, kv_heads=8, intermediate=13824),
    "qwen2.5-32b": dict(_QWEN25, hidden=5120, layers=64, heads=40, kv_heads=8, intermediate=27648),
    "qwen2.5-72b": dict(_QWEN25, hidden=8192, layers=80, heads=64, kv_heads=8, intermediate=29568),
    "qwen3-0.6b": dict(_QWEN3, hidden=1024, layers=28, heads=16, kv_heads=8, intermediate=3072, tied=True),
    "qwen3-1.7b": dict(_QWEN3, hidden=2048, layers=28, heads=16, kv_heads=8, intermediate=6144, tied=True),
    "qwen3-4b": dict(_QWEN3, hidden=2560, layers=36, heads=32, kv_heads=8, intermediate=9728, tied=True),
    "qwen3-8b": dict(_QWEN3, hidden=4096, layers=36, heads=32, kv_heads=8, intermediate=12288),
    "qwen3-14b": dict(_QWEN3, hidden=5120, layers=40, heads=40, kv_heads=8, intermediate=17408),
    "qwen3-32b": dict(_QWEN3, hidden=5120, layers=64, heads=64, kv_heads=8, intermediate=25600),
}
#: rows of the real Qwen3 tokenizer (the tiny models' tokenizer=qwen3)
QWEN3_TOKENIZER_ROWS = 151669
_HUB_NAME = re.compile(r"qwen/(qwen2\.5|qwen3)-([0-9.]+b)(?:-(?:instruct|base))?", re.IGNORECASE)


def hub_arch(name: str) -> Arch | None:
    """The built-in sizes of a Qwen2.5 / Qwen3 hub name (Instruct and Base alike), or None."""
    m = _HUB_NAME.fullmatch(name)
    sizes = HUB_ARCHS.get(f"{m.group(1)}-{m.group(2)}".lower()) if m else None
    if sizes is None:
        return None
    sizes = dict(sizes)
    sizes.setdefault("head_dim", sizes["hidden"] // sizes["heads"])
    return Arch(**sizes, source="the built-in table of Qwen2.5/Qwen3 sizes (not on disk; nothing downloaded)")


def arch_from_hf_config(config: dict, source: str = "config.json") -> Arch:
    """An HF config dict (a folder's config.json) -> Arch. Dense decoders of the Qwen2 / Qwen2.5(-VL) /
    Qwen3 / Llama / Mistral kind; ValueError for a mixture of experts or missing sizes."""
    text = config.get("text_config") or config
    kind = str(text.get("model_type") or config.get("model_type") or "")
    if any(text.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise ValueError(f"{source}: a mixture-of-experts model ({kind}); the memory plan covers dense decoders")
    try:
        hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
        sizes = dict(hidden=hidden, layers=int(text["num_hidden_layers"]), heads=heads,
                     kv_heads=int(text.get("num_key_value_heads") or heads),
                     head_dim=int(text.get("head_dim") or hidden // heads),
                     intermediate=int(text["intermediate_size"]), vocab=int(text["vocab_size"]))
    except KeyError as err:
        raise ValueError(f"{source}: no {err.args[0]!r}; the memory plan needs the decoder's sizes") from None
    qwen2 = kind.startswith("qwen2")
    bias = bool(text.get("attention_bias", False))
    vision = config.get("vision_config")
    return Arch(**sizes, tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
                qkv_bias=qwen2 or bias, o_bias=bias and not qwen2, qk_norm=kind.startswith("qwen3"),
                vision=vision_param_count(vision, source) if vision else 0,
                softcap=any(text.get(k) not in (None, 1, 1.0) for k in
                            ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")),
                source=source)


def vision_param_count(v: dict, source: str = "config.json") -> int:
    """Parameters of a Qwen2.5-VL vision tower: patch embedding, `depth` blocks (two RMSNorms, qkv and proj
    with bias, a SwiGLU MLP with bias) and the patch merger (RMSNorm, 4d -> 4d -> out)."""
    try:
        d, inter, depth = int(v["hidden_size"]), int(v["intermediate_size"]), int(v["depth"])
        patch = int(v.get("patch_size", 14)) ** 2 * int(v.get("temporal_patch_size", 2)) * int(v.get("in_channels", 3))
        out, merge = int(v["out_hidden_size"]), int(v.get("spatial_merge_size", 2)) ** 2
    except KeyError as err:
        raise ValueError(f"{source}: vision_config has no {err.args[0]!r} (the plan knows Qwen2.5-VL's "
                         "tower)") from None
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * (d * inter + inter) + (inter * d + d)
    wide = merge * d
    return patch * d + depth * block + d + (wide * wide + wide) + (wide * out + out)


def _builder_sizes(build, tiny: dict) -> dict:
    """A tiny builder's keyword defaults (rl/models.py) with model.tiny on top."""
    params = inspect.signature(build).parameters
    return {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY} | dict(tiny)


def resolve_arch(model_path: str, tiny: dict | None = None) -> Arch:
    """`model.path` -> Arch: 'tiny' / 'tiny_vl' from the builder's sizes (model.tiny), a folder from its
    config.json, a hub name that is not on disk from `HUB_ARCHS`. ValueError naming model.path otherwise."""
    from rl.models import VISION_TOKENS, build_tiny_model, build_tiny_vl_model

    tiny = tiny or {}
    if model_path == "tiny":
        s = _builder_sizes(build_tiny_model, tiny)
        vocab = QWEN3_TOKENIZER_ROWS if s["tokenizer"] == "qwen3" else s["vocab_size"]  # a trained BPE: at most
        return Arch(hidden=s["hidden_size"], layers=s["num_layers"], heads=s["num_heads"], kv_heads=s["num_kv_heads"],
                    head_dim=s["head_dim"], intermediate=s["intermediate_size"], vocab=vocab, tied=True,
                    qk_norm=True, source="the tiny Qwen3's sizes (model.tiny; rl/models.py)")
    if model_path == "tiny_vl":
        s = _builder_sizes(build_tiny_vl_model, tiny)
        vocab = (QWEN3_TOKENIZER_ROWS if s["tokenizer"] == "qwen3" else s["vocab_size"]) + len(VISION_TOKENS)
        d = s["vision_hidden_size"]
        return Arch(hidden=s["hidden_size"], layers=s["num_layers"], heads=s["num_heads"], kv_heads=s["num_kv_heads"],
                    head_dim=s["hidden_size"] // s["num_heads"], intermediate=s["intermediate_size"], vocab=vocab,
                    tied=True, qkv_bias=True,
                    vision=vision_param_count(dict(hidden_size=d, intermediate_size=2 * d, depth=s["vision_depth"],
                                                   out_hidden_size=s["hidden_size"])),
                    source="the tiny Qwen2.5-VL's sizes (model.tiny; rl/models.py)")
    from rl.pretrained import LOCAL_MODELS

    folder = LOCAL_MODELS[model_path]() if model_path in LOCAL_MODELS else Path(model_path).expanduser()
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"model.path={model_path!r}: config.json cannot be read: {err}") from None
        return arch_from_hf_config(config, source=f"{folder / 'config.json'}")
    arch = hub_arch(model_path)
    if arch is None:
        known = ", ".join(f"Qwen/{k.replace('qwen', 'Qwen')}" for k in HUB_ARCHS)
        raise ValueError(f"model.path={model_path!r}: no config.json here and not a hub name the plan knows "
                         f"without downloading ({known}, with -Instruct or -Base); give a model folder")
    return arch


# --- pure arithmetic -------------------------------------------------------------------------

def layer_param_count(a: Arch) -> int:
    """Parameters of one decoder layer."""
    q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    attn = a.hidden * (q + 2 * kv) + q * a.hidden + (q + 2 * kv if a.qkv_bias else 0) + (a.hidden if a.o_bias else 0)
    return attn + (2 * a.head_dim if a.qk_norm else 0) + 3 * a.hidden * a.intermediate + 2 * a.hidden


def root_param_count(a: Arch) -> int:
    """Parameters outside the decoder layers (FSDP2's root unit): embeddings, final norm, an untied output
    layer, a vision tower."""
    return a.vocab * a.hidden * (1 if a.tied else 2) + a.hidden + a.vision


def param_count(a: Arch) -> int:
    return a.layers * layer_param_count(a) + root_param_count(a)


def kv_bytes_per_token(a: Arch, dtype_bytes: int) -> int:
    """KV cache of one token: keys and values of every layer."""
    return 2 * a.layers * a.kv_heads * a.head_dim * dtype_bytes


def layer_activation_bytes(a: Arch, tokens: int, b: int, *, attn: str = "sdpa", row_len: int = 0) -> int:
    """What one decoder layer keeps from its forward for its backward (module docstring), for `tokens`
    positions in rows of `row_len` (eager attention's scores); b = bytes of the compute dtype."""
    q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    kv_kept = q if attn != "flash_attention_2" else kv  # SDPA / eager: k, v repeated to every head
    per_token = (2 * (4 + b) * a.hidden                      # input_layernorm, post_attention_layernorm
                 + 2 * b * a.hidden                          # the inputs of q/k/v and gate/up projections
                 + ((4 + b) * (q + kv) if a.qk_norm else 0)  # q_norm, k_norm
                 + b * (q + 2 * kv_kept)                     # attention's q, k, v
                 + 2 * b * q + 4 * a.heads                   # attention output (kernel's and o_proj's), logsumexp
                 + 4 * b * a.intermediate)                   # SwiGLU: gate, up, silu(gate), their product
    scores = (a.heads * row_len * (4 + b)) if attn == "eager" else 0  # softmax in fp32, its cast
    return tokens * (per_token + scores)


#: the FSDP2 load phase on CPU: the full model, held once per node (rank 0's), not once per rank
READ_BY_RANK_0 = "full fp32 model (rank 0 reads it, then sends each rank its shards)"


def trainer_memory(a: Arch, *, ranks: int, tokens: int, row_len: int, compute_bytes: int,
                   grad_checkpointing: bool, backend: str = "fsdp2", zero_stage: int = 2, lora_rank: int = 0,
                   reference: bool = False, attn: str = "sdpa", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                   gpu: bool = True) -> dict[str, dict[str, int]]:
    """Bytes of one trainer rank: {"resident": {...}, "step": {...}, "load": {...}} (component -> bytes).

    resident: what stays between steps (parameters, optimizer state, the reference model); step: what a
    training micro-batch adds at its peak (the start of the backward, a layer or its end, whichever holds most;
    or the optimizer step); load: while the model is read (FSDP2: rank 0 reads it in host memory, the others
    start on the meta device and receive their shards; ZeRO-3 likewise, under zero.Init; ZeRO-1/2: every rank
    reads it whole). `tokens`: positions in
    one micro-batch (token budget, or rows x row_len); `row_len`: the length attention sees (a packed
    micro-batch is one row of `tokens`)."""
    b, p, n = compute_bytes, param_count(a), max(1, ranks)
    layer, root = layer_param_count(a), root_param_count(a)
    mixed = b != 4
    q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    linears = [(a.hidden, q), (a.hidden, kv), (a.hidden, kv), (q, a.hidden),  # q, k, v, o
               (a.hidden, a.intermediate), (a.hidden, a.intermediate), (a.intermediate, a.hidden)]  # gate, up, down
    trainable = a.layers * lora_rank * sum(i + o for i, o in linears) if lora_rank else p  # LoRA: r x (in + out)
    if backend == "deepspeed":  # ZeRO: stage 3 shards the parameters, 2 and 3 the gradients, all the optimizer
        params = p * b // (n if zero_stage == 3 else 1) + (4 * trainable // n if mixed else 0)
        grads = 4 * trainable // n if zero_stage >= 2 else b * trainable
        ref = p * b // (n if zero_stage == 3 else 1) if reference else 0
        gathered = 3 * layer * b if zero_stage == 3 else 0
    else:  # FSDP2: fp32 shards; bf16 working copies of the root and two layers; a layer's unsharded gradient
        params, grads = 4 * p // n, 4 * trainable // n
        ref = 4 * p // n if reference else 0
        gathered = root * b + 2 * layer * b + layer * (b + (4 if mixed else 0))
    resident = {"parameters": params, "optimizer (AdamW moments)": 8 * trainable // n}
    if ref:
        resident["reference model"] = ref
    per_layer = layer_activation_bytes(a, tokens, b, attn=attn, row_len=row_len)
    kept = tokens * (4 + b) * a.hidden  # the final norm
    kept += tokens * row_len * b if attn != "flash_attention_2" else 0  # SDPA / eager: the [rows, L, L] mask
    if grad_checkpointing:
        act, act_name = a.layers * tokens * b * a.hidden + kept, "activations kept (layer inputs)"
    else:
        act, act_name = a.layers * per_layer + kept, "activations kept (every layer)"
    # the backward peaks at one of three moments: its start (the logprob head: its chunk temporaries and
    # selected hidden states, the output layer's weight gradient in fp32 and cast), inside a layer (with
    # checkpointing its recomputed activations; the first gradient of its MLP intermediates, the
    # hidden-state gradients) or at its end, when no activation is left (the root unit's unsharded gradient,
    # the embedding's own gradient added to it, the reduce-scatter's fp32 input and output)
    head = a.vocab * a.hidden
    at_head = logprob_memory_bytes(vocab=a.vocab, tokens=tokens, hidden=a.hidden, chunked=not a.softcap,
                                   chunk_bytes=min(chunk_bytes, 12 * tokens * a.vocab), param_bytes=b) \
        + 4 * head + (b * head if mixed else 0)
    in_layer = (per_layer if grad_checkpointing else 0) + tokens * b * (a.intermediate + 2 * a.hidden)
    at_end = root * (2 * b + 4) + 4 * root // n if backend != "deepspeed" else 0
    step = {"gradients": grads, "unsharded working copies": gathered}
    if at_end > act + max(at_head, in_layer):
        step["end of backward: root unit's gradients, reduce-scatter"] = at_end
    else:
        step[act_name] = act
        if at_head >= in_layer:
            step["backward peak: logprob head, output-layer gradient"] = at_head
        else:
            what = "a recomputed layer, its gradients" if grad_checkpointing else "a layer's gradients"
            step[f"backward peak: {what}"] = in_layer
    opt_temp = 4 * (trainable // n if gpu else head // n)  # AdamW's sqrt(v) temporary (foreach on GPU)
    if opt_temp > sum(step.values()) - grads:  # the optimizer step, not the backward, peaks
        step = {"gradients": grads, "optimizer step temporary": opt_temp}
    runtime = {"CUDA context, NCCL" if gpu else "process": GPU_RUNTIME if gpu else CPU_PROCESS}
    if backend == "deepspeed" and zero_stage < 3:  # ZeRO-1/2 keep every parameter on every rank: each reads it
        load = {"full fp32 model before sharding": 4 * p} | ({"parameters": params} if ref else {})
    elif backend == "deepspeed" and gpu:  # rank 0 reads into host memory; zero.Init partitions module by module
        load = {"parameters (partitions)": params + ref, "one module whole as zero.Init builds it": b * max(root, layer)}
    elif gpu:  # rank 0 reads into host memory; fully_shard moves one unit at a time and keeps the shard
        load = {"parameters (shards)": params + ref, "one unit whole on its way to be sharded": 4 * max(root, layer)}
    else:  # CPU: rank 0 reads the full model into the memory its shards live in, and broadcasts it
        load = {READ_BY_RANK_0: 4 * p, "parameters (shards)": params + ref}
    return {"resident": resident | runtime, "step": step, "load": load | runtime}


def engine_memory(a: Arch, *, gpu: bool, device_bytes: int, utilization: float, kv_cache_gib: float,
                  tensor_parallel: int = 1, dtype: str = "auto") -> dict[str, int]:
    """Bytes of one vLLM engine on its device (component -> bytes). GPU: `utilization` x device, of which the
    weights (bf16 unless `dtype` says otherwise), the reserve (activations, CUDA graphs, sampled logits) and the
    rest is KV cache. CPU build: weights (fp32 unless `dtype` says otherwise) + `kv_cache_gib`
    (VLLM_CPU_KVCACHE_SPACE, whole GiB, at least 1)."""
    from rollout.engines.vllm_engine import serving_dtype

    p, served = param_count(a), serving_dtype(gpu, dtype)
    b, short = (4, "fp32") if served == "float32" else (2, "bf16" if served == "bfloat16" else "fp16")
    if not gpu:
        return {f"weights ({short})": b * p // tensor_parallel,
                "KV cache (kv_cache_gib)": int(max(1, kv_cache_gib)) * GiB, "processes": CPU_ENGINE_PROCESS}
    total = int(utilization * device_bytes)
    weights = b * p // tensor_parallel
    reserve = ENGINE_RESERVE + 2 * ENGINE_MAX_SEQS * a.vocab * 4
    return {f"weights ({short})": weights, "reserve (activations, CUDA graphs)": reserve,
            "KV cache": max(0, total - weights - reserve)}  # 0: vLLM refuses to start (_problems says why)


# --- the plan of a configuration -------------------------------------------------------------

@dataclass
class DevicePlan:
    """One kind of device of the run: what each phase holds on it."""

    name: str
    phases: dict[str, dict[str, int]]  # phase -> component -> bytes

    def totals(self) -> dict[str, int]:
        return {ph: sum(c.values()) for ph, c in self.phases.items()}

    def peak(self) -> tuple[str, int]:
        return max(self.totals().items(), key=lambda kv: kv[1])


@dataclass
class Plan:
    model: str
    arch: Arch
    params: int
    device_bytes: int
    device_label: str
    placement: str
    devices: list[DevicePlan]
    notes: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (what does not fit, the key to change)

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def keys(self) -> list[str]:
        return list(dict.fromkeys(key for _, key in self.problems))


def _gib(n: int) -> str:
    return f"{n / GiB:.1f}"


def plan_config(cfg, device_gib: float | None = None) -> Plan:
    """The memory plan of a loaded `Config` (rl/config.py): per device kind, per phase; `problems` say what does
    not fit and which setting to change."""
    from rl.placement import resolve_placement

    r, t = cfg.rollout, cfg.trainer
    arch = resolve_arch(cfg.model.path, cfg.model.tiny)
    gpu = r.gpus_per_engine > 0 or t.gpus_per_rank > 0
    notes = []
    if device_gib is None and not gpu:
        device_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
        notes.append("no GPU asked (rollout.gpus_per_engine = trainer.gpus_per_rank = 0): every role shares this "
                     "host's memory (--device-gib to plan for another host)")
    if not gpu:  # the plan is in memory, but a bf16 run on a CPU without bf16 math crawls: say so before it starts
        from rollout.engines.base import cpu_bf16_warning

        for key, dtype in (("model.dtype", cfg.model.dtype), ("rollout.dtype", r.dtype)):
            if dtype == "bfloat16" and (slow := cpu_bf16_warning(key)):
                notes.append(slow)
    device_gib = device_gib or DEFAULT_DEVICE_GIB
    device = int(device_gib * GiB * (1 if gpu else RAY_OOM_SHARE))  # on a host, Ray kills workers past its threshold
    host_label = f"host memory x {RAY_OOM_SHARE:g} (Ray's OOM threshold)"
    placement = "host"
    if gpu:
        gpus = max(r.num_engines * r.gpus_per_engine, t.num_ranks * t.gpus_per_rank)
        placement = resolve_placement(cfg.ray.placement, r.mode, max(1, math.ceil(gpus / GPUS_PER_NODE)))
        if cfg.ray.placement == "auto":
            notes.append(f"ray.placement=auto -> {placement} (assuming {GPUS_PER_NODE} GPUs per node)")
    trainer = _trainer_of(cfg, arch, gpu, notes)
    engine = _engine_of(cfg, arch, gpu, device, placement == "colocated", notes)
    plan = Plan(model=cfg.model.path, arch=arch, params=param_count(arch), device_bytes=device,
                device_label=f"{device_gib:.1f} GiB " + ("GPU" if gpu else host_label), placement=placement,
                devices=_devices(cfg, trainer, engine, placement, device, _ipc_slots(cfg, arch, gpu)), notes=notes)
    plan.problems = _problems(plan, cfg, engine, arch, gpu)
    return plan


def _trainer_of(cfg, arch: Arch, gpu: bool, notes: list[str]) -> dict[str, dict[str, int]]:
    """`trainer_memory` with the config's settings (and what it assumed, in `notes`)."""
    from rl.config import loads_reference  # here: the device check imports this module without msgspec

    r, t = cfg.rollout, cfg.trainer
    if t.backend == "sim":
        return {"resident": {"process (simulated trainer: no model)": CPU_PROCESS}, "step": {}, "load": {}}
    b = 2 if cfg.model.dtype == "bfloat16" else 4  # compute dtype (parameters stay fp32: rl/trainer/fsdp.py)
    attn = t.attn_implementation
    if attn == "auto":  # rl/trainer/base.py attention_implementation
        attn = "flash_attention_2" if gpu and b == 2 else "sdpa"
    # the longest row: the engine's context, and the agent's budget of a multi-turn episode (rollout/agent.py)
    row_len, bound = r.max_model_len, "rollout.max_model_len"
    if cfg.data.task != "target_token" and cfg.agent.max_context_tokens < row_len:
        row_len, bound = cfg.agent.max_context_tokens, "agent.max_context_tokens"
    tokens = max(t.token_budget, row_len) if t.token_budget else t.micro_batch_size * row_len
    notes.append(f"a micro-batch of {tokens} tokens at most ("
                 + (f"trainer.token_budget={t.token_budget}; a longer row goes alone" if t.token_budget else
                    f"trainer.micro_batch_size={t.micro_batch_size} rows x {bound}={row_len}") + ")")
    if t.backend == "deepspeed":
        notes.append("DeepSpeed: parameters, gradients and optimizer state by ZeRO stage; its communication "
                     "buckets are not planned")
    plan = lambda attn: trainer_memory(  # noqa: E731
        arch, ranks=t.num_ranks, tokens=tokens, row_len=tokens if t.packing else row_len, compute_bytes=b,
        grad_checkpointing=t.grad_checkpointing, backend=t.backend, zero_stage=t.zero_stage, lora_rank=t.lora_rank,
        reference=loads_reference(cfg), attn=attn, chunk_bytes=t.logprob_chunk_mb << 20, gpu=gpu)
    chosen = plan(attn)
    if t.attn_implementation == "auto" and attn == "flash_attention_2":
        more = sum(plan("sdpa")["step"].values()) - sum(chosen["step"].values())
        notes.append(f"trainer.attn_implementation=auto planned as flash_attention_2; where flash-attn does not "
                     f"import the rank falls back to sdpa: +{_gib(more)} GiB in the train phase (k, v repeated to "
                     "every head, the L x L mask)")
    return chosen


def _engine_of(cfg, arch: Arch, gpu: bool, device: int, colocated: bool, notes: list[str]) -> dict[str, int]:
    """One engine's bytes with the config's settings: vLLM (`engine_memory`), HF (fp32 weights, a KV cache that
    grows with the requests in flight) or the simulated engine (no model)."""
    from rollout.engines.vllm_engine import default_gpu_memory_utilization

    r = cfg.rollout
    if r.backend == "sim":
        return {"simulated (no model; many share a process)": 0}
    if r.backend == "hf":
        return {"weights (fp32)": 4 * param_count(arch), "KV cache (requests in flight, max_model_len each)":
                r.max_inflight_groups * r.n * r.max_model_len * kv_bytes_per_token(arch, 4),
                "CUDA context" if gpu else "process": GPU_RUNTIME if gpu else CPU_PROCESS}
    util = r.gpu_memory_utilization
    if util is None and gpu:
        util = default_gpu_memory_utilization(gpu, colocated=colocated)
        notes.append(f"rollout.gpu_memory_utilization unset: {util} "
                     f"({'a GPU shared with a trainer rank' if colocated else 'a GPU of its own'})")
    # per device: an engine of tensor_parallel_size GPUs holds 1/TP of the weights on each
    return engine_memory(arch, gpu=gpu, device_bytes=device, utilization=util or 0.0, kv_cache_gib=r.kv_cache_gib,
                         tensor_parallel=r.tensor_parallel_size, dtype=r.dtype)


IPC_SLOTS = 4  # shared-memory slots the ipc transport keeps in steady state (rl/weights/ipc.py; tests see 3-4)


def _ipc_slots(cfg, arch: Arch, gpu: bool) -> int:
    """Host bytes the ipc weight transport keeps between syncs on CPU (`trainer.weight_transport` auto on one
    host): IPC_SLOTS slots, each as large as the largest bucket (a bucket, or the word embedding alone in the
    serving dtype: fp32 on CPU unless rollout.dtype says bfloat16). 0 for any other transport."""
    from rl.placement import weight_transport_for

    r, t = cfg.rollout, cfg.trainer
    if gpu or weight_transport_for(t.weight_transport, gpu=False, placement="colocated", num_nodes=1,
                                   simulated="sim" in (r.backend, t.backend)) != "ipc":
        return 0
    serving = 2 if r.dtype in ("bfloat16", "float16") else 4
    return IPC_SLOTS * max(t.weight_bucket_mb << 20, arch.vocab * arch.hidden * serving)


def _devices(cfg, trainer: dict, engine: dict, placement: str, device_bytes: int, sync_bytes: int = 0
             ) -> list[DevicePlan]:
    """Which roles share a device, and what each phase holds there (ARCHITECTURE.md section 3)."""
    r, t = cfg.rollout, cfg.trainer
    tr = lambda part, k=1: {f"trainer: {n}": v * k for n, v in trainer[part].items()}  # noqa: E731
    en = lambda k=1: {f"engine: {n}": v * k for n, v in engine.items()}  # noqa: E731
    if placement == "colocated":  # one engine and one rank per GPU; the engine sleeps while the rank trains
        resident = tr("resident")
        if t.offload:  # the rank's parameters and optimizer state wait in host memory while the engine runs
            resident = {n: v for n, v in resident.items() if "parameters" not in n and "optimizer" not in n}
        return [DevicePlan("GPU (one engine + one trainer rank)", {
            "load": en() | tr("load"),  # the engines start first and are awake while the ranks load
            "generate": en() | resident,
            "train": {"engine: asleep (context, CUDA graphs)": ENGINE_ASLEEP} | tr("resident") | tr("step")})]
    if placement == "split":
        per = lambda g: max(1, int(1 / g)) if 0 < g < 1 else 1  # noqa: E731  (a fraction of a GPU: several per GPU)
        e, k = per(r.gpus_per_engine), per(t.gpus_per_rank)
        return [DevicePlan(f"engine GPU ({e} engine{'s' if e > 1 else ''})", {"generate": en(e)}),
                DevicePlan(f"trainer GPU ({k} rank{'s' if k > 1 else ''} of {t.num_ranks})", {
                    "load": tr("load", k), "train": tr("resident", k) | tr("step", k)})]
    e, n = r.num_engines, t.num_ranks  # one host: every engine and rank at once (no sleep on CPU)
    load = {k: v if k == f"trainer: {READ_BY_RANK_0}" else v * n  # FSDP2: only rank 0 reads the model
            for k, v in tr("load").items()}
    others = {"driver, Ray, env servers, reward workers": HOST_RUNTIME,
              f"margin for the estimates ({HOST_MARGIN:.0%})": int(HOST_MARGIN * device_bytes)}
    if sync_bytes:  # kept from the first sync on
        others[f"weight sync: ipc shared-memory slots ({IPC_SLOTS} x the largest bucket)"] = sync_bytes
    return [DevicePlan(f"host ({e} engine{'s' if e > 1 else ''}, {n} trainer rank{'s' if n > 1 else ''})", {
        "load": en(e) | load | others, "train": en(e) | tr("resident", n) | tr("step", n) | others})]


def _problems(plan: Plan, cfg, engine: dict, arch: Arch, gpu: bool) -> list[tuple[str, str]]:
    """(what does not fit, the key to change) for the engine's cache and for every phase of every device over
    the device's size; empty when the plan fits."""
    r, t = cfg.rollout, cfg.trainer
    out = []
    kv = engine.get("KV cache")
    if gpu and r.backend == "vllm" and kv is not None:
        need = kv_bytes_per_token(arch, 2) * r.max_model_len
        fixed = sum(v for k, v in engine.items() if k != "KV cache")
        if fixed + need > plan.device_bytes:
            out.append((f"one engine's bf16 weights and reserve ({_gib(fixed)} GiB) and one sequence of KV cache "
                        f"do not fit one device (engines run without tensor parallelism here)", "model.path"))
        elif kv < need:
            out.append((f"the engine's KV cache ({_gib(max(kv, 0))} GiB) holds less than one sequence of "
                        f"rollout.max_model_len={r.max_model_len} tokens ({_gib(need)} GiB)",
                        "rollout.gpu_memory_utilization"))
    for dev in plan.devices:
        for phase, parts in dev.phases.items():
            total = sum(parts.values())
            if total <= plan.device_bytes:
                continue
            what = f"{dev.name}, phase '{phase}': {_gib(total)} GiB > {plan.device_label}"
            if phase == "load":
                full = 4 * plan.params
                if full + GPU_RUNTIME > plan.device_bytes and any("full fp32 model" in k for k in parts):
                    out.append((f"{what}: a rank reads the full fp32 model ({_gib(full)} GiB) before sharding it",
                                "trainer.backend" if t.backend == "deepspeed" else "model.path"))
                else:
                    out.append((f"{what}: the engine holds its share while the trainer loads",
                                "rollout.gpu_memory_utilization"))
            elif phase == "generate" and any(k.startswith("trainer:") for k in parts):
                out.append((f"{what}: the trainer's state stays on the GPU while the engine runs",
                            "trainer.offload" if not t.offload else "rollout.gpu_memory_utilization"))
            elif phase == "generate":
                out.append((what, "rollout.gpu_memory_utilization" if gpu else "rollout.kv_cache_gib"))
            else:
                act = sum(v for k, v in parts.items() if "activations" in k)
                state = sum(v for k, v in parts.items()
                            if any(s in k for s in ("parameters", "gradients", "optimizer")))
                if state > act:
                    out.append((f"{what}: parameters, gradients and optimizer state ({_gib(state)} GiB)",
                                "trainer.num_ranks"))
                elif not t.grad_checkpointing:
                    out.append((f"{what}: every layer's activations ({_gib(act)} GiB)", "trainer.grad_checkpointing"))
                else:
                    out.append((f"{what}: activations ({_gib(act)} GiB)",
                                "trainer.token_budget" if t.token_budget else "trainer.micro_batch_size"))
    return out


def format_plan(plan: Plan) -> str:
    """The plan as a readable table (GiB), one block per device kind."""
    a = plan.arch
    count = f"{plan.params / 1e9:.2f} B" if plan.params >= 1e9 else f"{plan.params / 1e6:.2f} M"
    lines = [f"memory plan of model.path={plan.model}: {count} parameters "
             f"(hidden {a.hidden}, {a.layers} layers, {a.heads} heads / {a.kv_heads} kv, "
             f"intermediate {a.intermediate}, "
             f"vocab {a.vocab}{', vision tower' if a.vision else ''}); sizes from {a.source}",
             f"device: {plan.device_label}; placement: {plan.placement}"]
    lines += [f"  - {n}" for n in plan.notes]
    for dev in plan.devices:
        phases = list(dev.phases)
        rows = list(dict.fromkeys(k for ph in phases for k in dev.phases[ph]))
        width = max(len(k) for k in rows + ["total"]) + 2
        lines += ["", f"{dev.name}".ljust(width) + "".join(f"{ph:>10}" for ph in phases)]
        for k in rows:
            lines.append(f"  {k}".ljust(width) + "".join(
                f"{_gib(dev.phases[ph][k]) if k in dev.phases[ph] else '-':>10}" for ph in phases))
        totals = dev.totals()
        lines.append("  total (GiB)".ljust(width) + "".join(f"{_gib(totals[ph]):>10}" for ph in phases))
        phase, peak = dev.peak()
        share = 100 * peak / plan.device_bytes
        lines.append(f"  peak: {phase}, {_gib(peak)} GiB of {plan.device_label} ({share:.0f}%)")
    kv = next((dev.phases[ph].get("engine: KV cache") for dev in plan.devices for ph in dev.phases
               if "engine: KV cache" in dev.phases[ph]), None)
    if kv and kv > 0:
        per = kv_bytes_per_token(a, 2)
        lines.append(f"\nKV cache per engine: {kv // per} tokens ({per} bytes per token)")
    lines.append("")
    lines += ["fits"] if plan.fits else ["does not fit:"] + [f"  - {what}: change {key}" for what, key in plan.problems]
    return "\n".join(lines)
