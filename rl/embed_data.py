"""Embedder training and evaluation data on the synthetic world: (question, gold page) pairs, BM25 hard
negatives, and the retrieval metrics recall@k and NDCG@10.

Pairs: SailorFog questions (`envs.world.sailorfog_qa`); the gold page of a question is the page of its answer
entity (the page that holds the answer). Held-out questions are never trained on (different questions; with
`disjoint_pages` their gold pages are never a training question's gold page either). Documents are the world's
pages as the dense backend embeds them ("title\\ntext").

    recall@k = |gold in top k| / |gold|          NDCG@10 = DCG@10 / IDCG@10,  DCG = sum_i rel_i / log2(i + 1)

Owns: `world_pairs`, `mine_negatives`, `recall_at_k`, `ndcg_at_k`, `rank_scores`. Never: train anything.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Corpus:
    ids: list[str]  # entity ids, one per page
    texts: list[str]  # "title\ntext"
    index: object  # envs.world.SearchIndex over the same pages, same order


@dataclass
class Pair:
    question: str
    gold: int  # row of the gold page in the corpus
    negatives: list[int]  # rows of hard negatives (BM25), gold excluded


def world_corpus(world) -> Corpus:
    from envs.world import SearchIndex, url_entity_id

    index = SearchIndex.from_world(world)
    ids = [url_entity_id(d.url) or d.url for d in index.documents]
    return Corpus(ids, [f"{d.title}\n{d.text}" for d in index.documents], index)


def world_pairs(world, corpus: Corpus, n_train: int, n_heldout: int, seed: int,
                disjoint_pages: bool = False) -> tuple[list[Pair], list[Pair]]:
    """(train, heldout) question/gold-page pairs, disjoint questions (module docstring)."""
    from envs.world import sailorfog_qa

    items = sailorfog_qa(world, n=(n_train + n_heldout) * (3 if disjoint_pages else 1), seed=seed)
    row = {eid: i for i, eid in enumerate(corpus.ids)}
    pairs = [Pair(it["question"], row[it["answer_entity"]], []) for it in items]
    if disjoint_pages:  # a page is held out when its hash falls in the held-out share
        share = n_heldout / (n_train + n_heldout)
        held = [p for p in pairs if _unit_hash(corpus.ids[p.gold], seed) < share][:n_heldout]
        train = [p for p in pairs if _unit_hash(corpus.ids[p.gold], seed) >= share][:n_train]
    else:
        train, held = pairs[:n_train], pairs[n_train:n_train + n_heldout]
    if len(train) < n_train or len(held) < n_heldout:
        raise ValueError(f"the world yielded {len(train)} training and {len(held)} held-out questions, fewer than "
                         f"data.train_questions={n_train} / data.heldout_questions={n_heldout}; use a larger "
                         "data.world_size or fewer questions")
    return train, held


def _unit_hash(text: str, seed: int) -> float:
    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "little") / 2.0 ** 64


def mine_negatives(corpus: Corpus, pairs: list[Pair], k: int, depth: int = 30) -> None:
    """Each pair's hard negatives: the k best BM25 pages of its question other than the gold page (in place)."""
    from envs.world import url_entity_id

    row = {eid: i for i, eid in enumerate(corpus.ids)}
    for p in pairs:
        hits = [row[url_entity_id(h.url) or h.url] for h in corpus.index.search(p.question, depth)]
        p.negatives = [r for r in hits if r != p.gold][:k]


def rank_scores(scores: np.ndarray, k: int) -> np.ndarray:
    """[Q, D] scores -> [Q, k] rows of the best k documents (stable: ties keep corpus order)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall_at_k(ranked: list[list[int]], gold: list[set[int]], k: int) -> float:
    return float(np.mean([len(set(r[:k]) & g) / len(g) for r, g in zip(ranked, gold)]))


def ndcg_at_k(ranked: list[list[int]], gold: list[set[int]], k: int = 10) -> float:
    out = []
    for r, g in zip(ranked, gold):
        dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(r[:k]) if d in g)
        idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(g), k)))
        out.append(dcg / idcg)
    return float(np.mean(out))


def bm25_ranked(corpus: Corpus, questions: list[str], k: int) -> list[list[int]]:
    from envs.world import url_entity_id

    row = {eid: i for i, eid in enumerate(corpus.ids)}
    return [[row[url_entity_id(h.url) or h.url] for h in corpus.index.search(q, k)] for q in questions]


def evaluate_ranked(ranked: list[list[int]], gold: list[set[int]], ks: list[int]) -> dict:
    out = {f"recall@{k}": recall_at_k(ranked, gold, k) for k in ks}
    out["ndcg@10"] = ndcg_at_k(ranked, gold, 10)
    return out


def evaluate_embedder(embedder, corpus: Corpus, pairs: list[Pair], ks: list[int]) -> dict:
    """recall@k and NDCG@10 of exact inner-product search with `embedder` over the corpus."""
    docs = embedder.embed_documents(corpus.texts)
    queries = embedder.embed_queries([p.question for p in pairs])
    ranked = rank_scores(queries @ docs.T, max(max(ks), 10)).tolist()
    return evaluate_ranked(ranked, [{p.gold} for p in pairs], ks)
