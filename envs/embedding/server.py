"""The embedding server: one per node, holding the node's embedders and rerankers once, shared by the dense
search backend, the rerank stage, the memory and the VRAG retriever (instead of one model copy per EnvServer).

Owns: `EmbeddingServer` (a plain class; `rl/cluster.py` makes it an actor) and its clients `RemoteEmbedder`
(the `Embedder` protocol of `envs.search_backends`) and `RemoteReranker` (`score(query, docs)`), which reach an
actor handle with a timeout on every call; `NodeEmbedder` and `NodeReranker` find the server of their own node by
its actor name (the config specs `{kind: server, model: <name>}` and `rerank: {server: <name>}`).

Batching: `aembed` (the actor's entry point) coalesces concurrent requests for the same model and role into
batches of up to `max_batch` texts, waiting at most `max_wait_ms` for a batch to fill; each caller gets its
own rows back. `embed` is the same without coalescing (in-process use).

Never: import anything of the project outside `envs/`; download a model; wait on a call without a timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from envs.embedding.base import ROLES

__all__ = ["EmbeddingServer", "NodeEmbedder", "NodeReranker", "RemoteEmbedder", "RemoteReranker", "node_server"]


class EmbeddingServer:
    """`models`: name -> embedder spec, built by `build` (`envs.search_backends.make_embedder`, passed in by
    rl/cluster.py: this module does not import the search backends, which import it); `rerankers`: name ->
    {"path", ...} (`Qwen3Reranker` settings). Built once, at construction."""

    def __init__(self, models: dict | None = None, rerankers: dict | None = None, *, build=None,
                 max_batch: int = 64, max_wait_ms: float = 5.0):
        from envs.embedding.reranker import Qwen3Reranker

        if not models and not rerankers:
            raise ValueError("EmbeddingServer: give at least one model (embedders) or reranker")
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("EmbeddingServer: need max_batch >= 1 and max_wait_ms >= 0")
        if models and build is None:
            raise ValueError("EmbeddingServer: models need build=<spec -> embedder> (envs.search_backends.make_embedder)")
        self.embedders = {name: build(spec) for name, spec in (models or {}).items()}
        self.rerankers = {}
        for name, spec in (rerankers or {}).items():
            if not isinstance(spec, dict) or "path" not in spec:
                raise ValueError(f"EmbeddingServer: reranker {name!r} needs {{'path': <a local model folder>, ...}}")
            self.rerankers[name] = Qwen3Reranker(**spec)
        self.max_batch, self.max_wait_s = max_batch, max_wait_ms / 1000.0
        self._pending: dict[tuple[str, str], list] = {}
        self._flushers: dict[tuple[str, str], asyncio.Task] = {}
        self.stats = {"requests": 0, "texts": 0, "batches": 0, "seconds": 0.0}

    def _embedder(self, model: str):
        if model not in self.embedders:
            raise KeyError(f"EmbeddingServer: no embedder {model!r}; it serves {sorted(self.embedders)}")
        return self.embedders[model]

    def embed(self, model: str, texts: Sequence[str], role: str) -> np.ndarray:
        if role not in ROLES:
            raise ValueError(f"EmbeddingServer: role {role!r}; expected one of {ROLES}")
        embedder = self._embedder(model)
        t0 = time.perf_counter()
        out = embedder.embed_queries(texts) if role == "query" else embedder.embed_documents(texts)
        self.stats["requests"] += 1
        self.stats["texts"] += len(texts)
        self.stats["batches"] += 1
        self.stats["seconds"] += time.perf_counter() - t0
        return out

    async def aembed(self, model: str, texts: Sequence[str], role: str) -> np.ndarray:
        """Coalesced with other callers' concurrent requests (module docstring)."""
        if role not in ROLES:
            raise ValueError(f"EmbeddingServer: role {role!r}; expected one of {ROLES}")
        self._embedder(model)
        future = asyncio.get_running_loop().create_future()
        key = (model, role)
        self._pending.setdefault(key, []).append((list(texts), future))
        if sum(len(t) for t, _ in self._pending[key]) >= self.max_batch:
            self._flush(key)
        elif key not in self._flushers:
            self._flushers[key] = asyncio.ensure_future(self._flush_later(key))
        return await future

    async def _flush_later(self, key) -> None:
        await asyncio.sleep(self.max_wait_s)
        self._flushers.pop(key, None)
        self._flush(key)

    def _flush(self, key) -> None:
        waiting = self._pending.pop(key, [])
        task = self._flushers.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if not waiting:
            return
        texts = [t for batch, _ in waiting for t in batch]
        try:
            vectors = self.embed(key[0], texts, key[1])
            self.stats["requests"] += len(waiting) - 1
        except Exception as err:  # every caller of this batch gets the error
            for _, future in waiting:
                if not future.done():
                    future.set_exception(err)
            return
        start = 0
        for batch, future in waiting:
            if not future.done():
                future.set_result(vectors[start:start + len(batch)])
            start += len(batch)

    def rerank(self, model: str, query: str, docs: Sequence[str]) -> list[float]:
        if model not in self.rerankers:
            raise KeyError(f"EmbeddingServer: no reranker {model!r}; it serves {sorted(self.rerankers)}")
        return self.rerankers[model].score(query, list(docs))

    def info(self) -> dict:
        return {"embedders": {n: int(e.dim) for n, e in self.embedders.items() if hasattr(e, "dim")},
                "rerankers": sorted(self.rerankers), **self.stats}


def _get(ref, timeout_s: float, what: str):
    import ray

    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"{what}: the embedding server did not answer within {timeout_s} s") from None


class RemoteEmbedder:
    """The `Embedder` protocol over an `EmbeddingServer` actor handle: model `model`, a timeout per call."""

    def __init__(self, handle, model: str, timeout_s: float = 120.0):
        if timeout_s <= 0:
            raise ValueError(f"RemoteEmbedder: timeout_s={timeout_s} must be > 0")
        self.handle, self.model, self.timeout_s = handle, model, timeout_s

    def _call(self, texts: Sequence[str], role: str) -> np.ndarray:
        ref = self.handle.aembed.remote(self.model, list(texts), role)
        return np.asarray(_get(ref, self.timeout_s, f"embed {len(texts)} {role} texts with {self.model!r}"),
                          dtype=np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._call(texts, "query")

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._call(texts, "document")


class RemoteReranker:
    """`score(query, docs) -> [p(yes)]` over an `EmbeddingServer` actor handle, a timeout per call."""

    def __init__(self, handle, model: str, timeout_s: float = 120.0):
        if timeout_s <= 0:
            raise ValueError(f"RemoteReranker: timeout_s={timeout_s} must be > 0")
        self.handle, self.model, self.timeout_s = handle, model, timeout_s

    def score(self, query: str, docs: Sequence[str]) -> list[float]:
        ref = self.handle.rerank.remote(self.model, query, list(docs))
        return list(_get(ref, self.timeout_s, f"rerank {len(docs)} documents with {self.model!r}"))


def server_name(node_id: str) -> str:
    """The Ray actor name of a node's embedding server (`rl.cluster.embedding_servers` starts them)."""
    return f"windward-embedding-{node_id}"


def node_server(what: str):
    """The embedding server actor of the node this process runs on (found by its actor name); outside Ray, or with
    no server on this node, a ValueError that says how to start one. `what` names the caller in the message."""
    import ray

    if not ray.is_initialized():
        raise ValueError(f"{what}: not inside Ray; the embedding server is an actor (rl.cluster.embedding_servers, "
                         "started from the config's `embedding` section) reached from actors on its node")
    node = ray.get_runtime_context().get_node_id()
    try:
        return ray.get_actor(server_name(node))
    except ValueError:
        raise ValueError(f"{what}: no embedding server on node {node} (the config's `embedding` section starts "
                         "one per node before the EnvGroup; rl.cluster.embedding_servers)") from None


class NodeEmbedder(RemoteEmbedder):
    """`make_embedder({"kind": "server", "model": <name>})`: the embedding server of the node this process runs
    on, model `model`. Outside Ray, or with no server on this node, a clear error."""

    def __init__(self, model: str, timeout_s: float = 120.0):
        if timeout_s <= 0:
            raise ValueError(f"embedder 'server': timeout_s={timeout_s} must be > 0")
        super().__init__(node_server(f"embedder 'server' ({model!r})"), model, timeout_s)


class NodeReranker(RemoteReranker):
    """`search.rerank: {top_n, server: <name>}`: reranker `name` of the node's embedding server."""

    def __init__(self, model: str, timeout_s: float = 120.0):
        super().__init__(node_server(f"search.rerank server {model!r}"), model, timeout_s)
