"""What every transformer text embedder here shares: L2 normalisation, Matryoshka truncation, batching into
numpy, and the on-disk vector cache.

Owns: `l2_normalize`, `mrl_truncate` (SEEDS 11.2: "truncate to the first d dims then re-normalise"),
`VectorCache` (sqlite file of float32 vectors keyed by sha256(model key, role, text)), and `TextEncoder`, the
base class of the embedders: a subclass implements `encode(texts, role) -> torch.Tensor [n, dim]` (unit rows,
differentiable: training calls the same function, `rl/embed_train.py`), the base turns it into the `Embedder`
protocol of `envs.search_backends` (`embed_queries` / `embed_documents` -> unit-norm float32 numpy).

Never: import anything of the project outside `envs/`; download a model (folders are local); keep gradients
in inference (`embed_*` run under `torch.inference_mode`).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROLES = ("query", "document")


def l2_normalize(x, eps: float = 1e-12):
    """Rows to unit norm (torch or numpy); an all-zero row stays zero."""
    if isinstance(x, np.ndarray):
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        return (x / np.maximum(norms, eps)).astype(np.float32)
    import torch

    return torch.nn.functional.normalize(x, p=2, dim=-1, eps=eps)


def mrl_truncate(x, dim: int | None):
    """Matryoshka (MRL) vectors: the first `dim` coordinates, re-normalised (SEEDS 11.2). None: unchanged."""
    if dim is None:
        return x
    if dim < 1 or dim > x.shape[-1]:
        raise ValueError(f"embedder: dim={dim} must be in [1, {x.shape[-1]}] (the model's hidden size)")
    return l2_normalize(x[..., :dim])


def local_folder(path: str | Path, what: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{what}: path {str(path)!r} is not a local model folder (no config.json); nothing is "
                         "downloaded here")
    return folder


class VectorCache:
    """float32 vectors on disk, keyed by sha256(model key, role, text); safe across threads and processes
    (sqlite). A vector of another width under the same key is an error (the model key must change with it)."""

    def __init__(self, path: str | Path, model_key: str):
        self.path, self.model_key = Path(path), model_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB)")
        self._db.commit()

    def key(self, role: str, text: str) -> str:
        return hashlib.sha256(f"{self.model_key}\x00{role}\x00{text}".encode()).hexdigest()

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i:i + 500])
                rows = self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(chunk))})",
                                        chunk).fetchall()
                out.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        return out

    def put(self, items: dict[str, np.ndarray]) -> None:
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)",
                                 [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in items.items()])
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]


class TextEncoder:
    """Base of the embedders: batching, inference mode, optional cache. Subclasses set `self.model`,
    `self.tokenizer`, `self.model_key` (what identifies the weights) and implement `encode`."""

    model = None
    model_key = ""
    batch_size = 32
    cache: VectorCache | None = None

    def encode(self, texts: Sequence[str], role: str):  # -> torch.Tensor [n, dim], unit rows
        raise NotImplementedError

    def _embed(self, texts: Sequence[str], role: str) -> np.ndarray:
        import torch

        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"embedder: text {i} is {type(t).__name__}, not str")
        keys = [self.cache.key(role, t) for t in texts] if self.cache is not None else []
        found = self.cache.get(keys) if self.cache is not None else {}
        todo = [i for i in range(len(texts)) if not keys or keys[i] not in found]
        fresh: dict[int, np.ndarray] = {}
        if todo:
            was_training = self.model.training
            self.model.eval()
            with torch.inference_mode():
                for start in range(0, len(todo), self.batch_size):
                    rows = todo[start:start + self.batch_size]
                    vecs = self.encode([texts[i] for i in rows], role).float().cpu().numpy()
                    fresh.update(zip(rows, vecs))
            self.model.train(was_training)
            if self.cache is not None:
                self.cache.put({keys[i]: v for i, v in fresh.items()})
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = np.stack([fresh[i] if i in fresh else found[keys[i]] for i in range(len(texts))])
        return np.ascontiguousarray(out, dtype=np.float32)

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, "query")

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(texts, "document")
