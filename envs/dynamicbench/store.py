"""DynamicBench's dual-path retrieval (SEEDS 10): web search (any backend of envs/search_backends.py) and a local
report store searched by cosine similarity over block embeddings.

Owns: cutting documents into blocks (`split_blocks`: paragraphs, then word windows of at most `block_words`),
`ReportStore` (block embeddings E_c from an embedder of `envs.search_backends.make_embedder`: "hashing" offline,
the embedder server or a local model by configuration) and `dual_search` (both paths, local blocks first).
The local path, SEEDS 10:
    sim(E_c, E_q) = E_c . E_q / (|E_c| |E_q|);   B* = argmax_i sim(E_{c_i}, E_q)
`ReportStore.search(query, k)` returns the k best blocks by that similarity, B* first (ties: the earlier block).

Never: import anything of the project outside `envs/`; fetch a model; assume the embedder normalises its vectors
(the norms are divided here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from envs.search_backends import Hit, make_embedder


@dataclass(frozen=True)
class Block:
    doc_id: str
    title: str
    index: int  # the block's place in its document
    text: str


def split_blocks(doc_id: str, title: str, text: str, block_words: int = 120) -> list[Block]:
    """Paragraphs of `text`, each cut into windows of at most `block_words` words."""
    if block_words < 1:
        raise ValueError(f"split_blocks: block_words={block_words} must be >= 1")
    out: list[Block] = []
    for para in re.split(r"\n\s*\n", text):
        words = para.split()
        for i in range(0, len(words), block_words):
            out.append(Block(doc_id, title, len(out), " ".join(words[i:i + block_words])))
    return out


def cosine(blocks: np.ndarray, query: np.ndarray) -> np.ndarray:
    """sim(E_c, E_q) = E_c . E_q / (|E_c| |E_q|) for every row E_c of `blocks` (0 where a norm is 0)."""
    norms = np.linalg.norm(blocks, axis=1) * np.linalg.norm(query)
    dots = blocks @ query
    return np.divide(dots, norms, out=np.zeros_like(dots, dtype=np.float64), where=norms > 0)


class ReportStore:
    """The local path: blocks of a report corpus and their embeddings."""

    def __init__(self, blocks: Sequence[Block], embedder: Any = "hashing", batch_size: int = 256):
        if not blocks:
            raise ValueError("ReportStore: no blocks (an empty report corpus)")
        self.blocks = list(blocks)
        self.embedder = make_embedder(embedder)
        texts = [f"{b.title}\n{b.text}" for b in self.blocks]
        self.vectors = np.concatenate([np.asarray(self.embedder.embed_documents(texts[i:i + batch_size]),
                                                  dtype=np.float64)
                                       for i in range(0, len(texts), batch_size)])

    @classmethod
    def from_documents(cls, docs: Sequence[tuple[str, str, str]], embedder: Any = "hashing",
                       block_words: int = 120) -> ReportStore:
        """docs: (id, title, text) of each report."""
        return cls([b for d in docs for b in split_blocks(*d, block_words=block_words)], embedder)

    def scores(self, query: str) -> np.ndarray:
        q = np.asarray(self.embedder.embed_queries([query]), dtype=np.float64)[0]
        return cosine(self.vectors, q)

    def search(self, query: str, k: int = 3) -> list[tuple[Block, float]]:
        if k < 1:
            raise ValueError(f"ReportStore.search k={k}: must be >= 1")
        s = self.scores(query)
        order = np.argsort(-s, kind="stable")[:k]
        return [(self.blocks[i], float(s[i])) for i in order]


def dual_search(query: str, store: ReportStore | None, web: Any = None, k_local: int = 3,
                k_web: int = 3) -> list[Hit]:
    """Both paths for one query: the local store's best blocks, then the web backend's hits (either may be None)."""
    hits = []
    if store is not None:
        hits += [Hit(f"local:{b.doc_id}#{b.index}", b.title, b.text, s, f"{b.doc_id}#{b.index}", b.text,
                     source="local") for b, s in store.search(query, k_local)]
    if web is not None:
        hits += list(web.search(query, k_web))
    return hits


class DualBackend:
    """Both paths as one search backend for the `search` tool (`envs.tools.search.SearchTool`), when the writer is
    an agent: a query's hits are the local store's best `k_local` blocks, then the web backend's `k_web` hits."""

    name = "dynamicbench-dual"

    def __init__(self, store: ReportStore | None, web: Any = None, k_local: int = 3, k_web: int = 3):
        self.store, self.web, self.k_local, self.k_web = store, web, k_local, k_web

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return dual_search(query, self.store, self.web, self.k_local, self.k_web)[:k]
