"""The page-image corpus and its retriever: text query -> ranked page ids by embedding (SEEDS 4.2, 14 item 16).

VRAG-RL retrieves page images with ColQwen2, a learned visual late-interaction embedder. That needs a model
and a GPU; the offline default here needs neither, and is not a substitute for one. `HashingEmbedder` is a
*lexical* embedder: a text becomes the set of its lower-cased words (English stopwords dropped) and of the
character 3- and 4-grams of those words (weight `ngram_weight`); each feature is hashed (CRC-32, the same in
every process) with a sign into a dense vector of `dim` floats, weighted by inverse document frequency
(fitted on the corpus) and L2-normalised. The cosine of two such vectors is a hashed TF-IDF cosine: it finds
passages that share rare words (names) with the query, and the n-grams forgive inflections ("date" /
"dates"). It knows no synonyms and never looks at pixels: a page is represented by the text it shows, which
the synthetic pages know exactly.

A page is several vectors, one per passage (`Page.passages`: a paragraph, a table row, a bar, each with its
page's context), and its score is the best of its passages' cosines: late interaction at the granularity of
passages, a coarse cousin of ColPali's patch-level max-sim. A whole page as one vector (`passages=False`)
loses short facts on long pages (a table row among twelve). Measured on the questions of `visual_qa` (worlds
of seed 0, "tiny" and "small"): the gold page is in the top 3 for nearly all of them; it is first for the
relation questions, but a question about a table or a chart value often ranks the entity's own document
first (it shares the name and, say, "born"), so a second search or a rewritten query ("<name> birth date
table") is needed. That is the retriever's weakness VRAG-RL's reward is meant to teach around.

Any embedder with `embed(texts) -> (n, dim) float32 array of unit rows` plugs in (optionally `fit(texts)`
for corpus statistics; or `embed_pages(pages)`, one vector per page from the page itself, e.g. a
single-vector image embedder, in which case queries still go through `embed`). A retrieval embedder of
`envs.search_backends` (`embed_documents` / `embed_queries`: MiniLM, Qwen3-Embedding, the node's embedding
server) embeds the passages as documents and the query as a query. Retrieval is exact cosine
top-k: numpy by default, faiss (`IndexFlatIP`) when asked or from `FAISS_FROM` vectors if faiss is
installed. Ties keep corpus order.

Owns: `Embedder` (protocol), `HashingEmbedder`, `PageCorpus` (pages by id, embeddings, `search`, drawn
page images in a small cache).

Never: import anything of the project outside `envs/`; reach the network.
"""

from __future__ import annotations

import math
import re
import threading
import zlib
from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from envs.visual.pages import Page, page_image, render_pages
from envs.world.graph import World

FAISS_FROM = 20_000
_WORD = re.compile(r"[0-9a-z]+")
_STOPWORDS = frozenset("""
a an and are as at be by did do does for from had has have how in is it its many much of on or that the
their this to was were what when where which who whom whose why with
""".split())


@runtime_checkable
class Embedder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class HashingEmbedder:
    """Hashed IDF-weighted set of words and character n-grams, L2-normalised (see the module docstring).

    `binary=False` counts repeats (1 + log tf) instead: a passage that repeats a name then beats the one
    that states the asked fact. `fit(texts)` sets the IDF from a corpus; unfitted, every feature weighs 1.
    Deterministic: same texts, same vectors, in any process (no Python `hash`).
    """

    def __init__(self, dim: int = 1024, ngrams: tuple[int, ...] = (3, 4), ngram_weight: float = 0.3,
                 binary: bool = True):
        if dim < 16:
            raise ValueError(f"HashingEmbedder: dim={dim} is too small (use at least 16, e.g. 1024)")
        self.dim, self.ngrams, self.ngram_weight, self.binary = dim, ngrams, ngram_weight, binary
        self.idf = np.ones(dim, dtype=np.float32)

    def features(self, text: str) -> Counter:
        """How often each feature occurs: words "w:<word>" and character n-grams "c:<gram>" of the words
        (digits have no n-grams)."""
        out: Counter = Counter()
        for w in _WORD.findall(text.lower()):
            if w in _STOPWORDS:
                continue
            out["w:" + w] += 1
            if w.isdigit():
                continue
            padded = f"<{w}>"
            for n in self.ngrams:
                for i in range(len(padded) - n + 1):
                    out["c:" + padded[i:i + n]] += 1
        return out

    def _hashed(self, text: str) -> dict[int, float]:
        """index -> signed weight: (1 or `ngram_weight`) x (1, or 1 + log tf when not binary)."""
        vec: dict[int, float] = {}
        for feature, tf in self.features(text).items():
            h = zlib.crc32(feature.encode())
            idx, sign = h % self.dim, 1.0 if h >> 31 else -1.0
            weight = 1.0 if feature[0] == "w" else self.ngram_weight
            vec[idx] = vec.get(idx, 0.0) + sign * weight * (1.0 if self.binary else 1.0 + math.log(tf))
        return vec

    def fit(self, texts: Sequence[str]) -> HashingEmbedder:
        df = np.zeros(self.dim, dtype=np.float64)
        for t in texts:
            for idx in self._hashed(t):
                df[idx] += 1
        self.idf = (np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0).astype(np.float32)
        return self

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, t in enumerate(texts):
            for idx, v in self._hashed(t).items():
                out[row, idx] = v
        out *= self.idf
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


class PageCorpus:
    """Pages by id, their embeddings, and cosine top-k retrieval by text query.

        corpus = PageCorpus.from_world(generate_world(0, "tiny"))
        corpus.search("population of Zatrea", k=5)  -> ["chart_population_city_1", ...]
        corpus.image("chart_population_city_1")     -> the raw page (PIL, RGB)
    """

    def __init__(self, pages: Sequence[Page], embedder: Embedder | None = None, backend: str = "auto",
                 passages: bool = True, image_cache: int = 64):
        if not pages:
            raise ValueError("PageCorpus: no pages")
        self.pages: dict[str, Page] = {}
        for p in pages:
            if p.id in self.pages:
                raise ValueError(f"PageCorpus: duplicate page id {p.id!r}")
            self.pages[p.id] = p
        self.ids = list(self.pages)
        if backend not in ("auto", "numpy", "faiss"):
            raise ValueError(f"PageCorpus: backend {backend!r}; use 'auto', 'numpy' or 'faiss'")
        self.embedder = embedder if embedder is not None else HashingEmbedder()
        self._retrieval = hasattr(self.embedder, "embed_queries")  # envs.search_backends' Embedder protocol
        if hasattr(self.embedder, "embed_pages"):  # one vector per page, from the page itself
            units, owner = None, list(range(len(pages)))
            vectors = self.embedder.embed_pages(list(pages))
        else:  # one vector per passage (or per page text where a page has no passages)
            units, owner = [], []
            for i, p in enumerate(pages):
                for text in (p.passages if passages and p.passages else (p.text,)):
                    units.append(text)
                    owner.append(i)
            if hasattr(self.embedder, "fit"):
                self.embedder.fit(units)
            vectors = self.embedder.embed_documents(units) if self._retrieval else self.embedder.embed(units)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.owner = np.asarray(owner, dtype=np.int64)  # row of `vectors` -> index of its page in `ids`
        self._starts = np.searchsorted(self.owner, np.arange(len(self.ids)))  # a page's rows are contiguous
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(owner):
            raise ValueError(f"PageCorpus: the embedder returned an array of shape {self.vectors.shape} for "
                             f"{len(owner)} texts or pages")
        self._faiss = None
        if backend == "faiss" or (backend == "auto" and len(owner) >= FAISS_FROM):
            try:
                import faiss
            except ImportError:
                if backend == "faiss":
                    raise ImportError("PageCorpus(backend='faiss'): faiss is not installed "
                                      "(pip install faiss-cpu), or use backend='numpy'") from None
            else:
                self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
                self._faiss.add(self.vectors)
        self.backend = "faiss" if self._faiss is not None else "numpy"
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._image_cache = image_cache
        self._lock = threading.Lock()

    @classmethod
    def from_world(cls, world: World, seed: int | None = None, **kwargs) -> PageCorpus:
        """The rendered pages of a synthetic world (`render_pages`)."""
        return cls(render_pages(world, seed), **kwargs)

    def __len__(self) -> int:
        return len(self.ids)

    def page(self, page_id: str) -> Page:
        try:
            return self.pages[page_id]
        except KeyError:
            raise KeyError(f"unknown page id {page_id!r} ({len(self.ids)} pages in the corpus)") from None

    def search(self, query: str, k: int = 10) -> list[str]:
        """Page ids of the k pages most similar to the query, best first (ties: corpus order)."""
        return [pid for pid, _ in self.search_scored(query, k)]

    def search_scored(self, query: str, k: int = 10) -> list[tuple[str, float]]:
        k = max(0, min(k, len(self.ids)))
        if k == 0:
            return []
        embed = self.embedder.embed_queries if self._retrieval else self.embedder.embed
        q = np.asarray(embed([query]), dtype=np.float32)
        if not np.any(q):
            return []  # nothing in the query the embedder knows (stopwords only, punctuation)
        if self._faiss is None:
            nz = np.flatnonzero(q[0])  # a query has few features: a small product, no threaded BLAS
            page_scores = np.maximum.reduceat(self.vectors[:, nz] @ q[0, nz], self._starts)
        else:  # the best passages first, as many as it takes to see k distinct pages
            page_scores = np.full(len(self.ids), -np.inf, dtype=np.float32)
            depth = min(len(self.owner), 16 * k)
            while True:
                scores, rows = self._faiss.search(q, depth)
                hit = rows[0] >= 0
                np.maximum.at(page_scores, self.owner[rows[0][hit]], scores[0][hit])
                if np.isfinite(page_scores).sum() >= k or depth >= len(self.owner):
                    break
                depth = min(len(self.owner), depth * 4)
        order = np.argsort(-page_scores, kind="stable")[:k]
        return [(self.ids[i], float(page_scores[i])) for i in order if np.isfinite(page_scores[i])]

    def image(self, page_id: str) -> Image.Image:
        """The drawn raw page (cached; do not modify it)."""
        with self._lock:
            img = self._images.get(page_id)
            if img is not None:
                self._images.move_to_end(page_id)
                return img
        img = page_image(self.page(page_id))
        with self._lock:
            self._images[page_id] = img
            while len(self._images) > self._image_cache:
                self._images.popitem(last=False)
        return img
