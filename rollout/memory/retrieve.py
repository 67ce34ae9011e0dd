"""Retrieve: which memories a new task sees (SEEDS 12.2 "Retrieve", Memp's code defaults).

    random    k memories drawn at random (seeded by the task, so every sample of a task sees the same ones)
    query     cos(e(task), e(memory's task)) >= threshold (0.5), best k
    facts     cos(e(facts of the task), e(facts of the memory)) >= threshold (0.4), best k
    ave_fact  AveFact: score = mean over the keys both have of cos(e(fact_key), e(fact_key')), best k
              (threshold optional, none by default)

e(.) is `envs.search_backends.make_embedder(spec)` (unit vectors: inner product = cosine), so a real embedder
is a configuration change. Pure functions of vectors; the store caches the vectors.

Never: import Ray or anything of `rl/`.
"""

from __future__ import annotations

import numpy as np

RETRIEVERS = ("random", "query", "facts", "ave_fact")
DEFAULT_THRESHOLD = {"random": None, "query": 0.5, "facts": 0.4, "ave_fact": None}


def top_k(scores: np.ndarray, k: int, threshold: float | None) -> list[int]:
    """Indices of the k best scores (ties: the older memory first) at or above `threshold`."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep = [int(i) for i in order if threshold is None or scores[i] >= threshold]
    return keep[:k]


def cosine(query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """cos(q, m_i) for unit vectors: the inner products."""
    return matrix @ query if len(matrix) else np.zeros(0)


def ave_fact(query: dict[str, np.ndarray], memories: list[dict[str, np.ndarray]]) -> np.ndarray:
    """AveFact: per memory, the mean cosine over the fact keys both it and the task have (0 with none shared)."""
    out = np.zeros(len(memories))
    for i, mem in enumerate(memories):
        shared = [k for k in query if k in mem]
        if shared:
            out[i] = float(np.mean([float(query[k] @ mem[k]) for k in shared]))
    return out


def retrieve(method: str, k: int, threshold: float | None, *, num: int, seed: int | None = None,
             query: np.ndarray | None = None, matrix: np.ndarray | None = None,
             query_facts: dict[str, np.ndarray] | None = None,
             memory_facts: list[dict[str, np.ndarray]] | None = None) -> list[tuple[int, float]]:
    """(memory index, score) of what `method` retrieves among `num` memories, best first."""
    if method not in RETRIEVERS:
        raise ValueError(f"memory.retrieve: unknown method {method!r}; known: {', '.join(RETRIEVERS)}")
    if num == 0:
        return []
    if method == "random":
        picked = np.random.default_rng(seed).choice(num, size=min(k, num), replace=False)
        return [(int(i), 0.0) for i in picked]
    threshold = DEFAULT_THRESHOLD[method] if threshold is None else threshold
    scores = ave_fact(query_facts or {}, memory_facts or []) if method == "ave_fact" else cosine(query, matrix)
    return [(i, float(scores[i])) for i in top_k(scores, k, threshold)]
