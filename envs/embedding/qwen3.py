"""The Qwen3-Embedding embedder (SEEDS 11.2): any local HF folder of the Qwen3 decoder kind (Qwen3-Embedding
0.6B/4B/8B where a hub was reachable to fetch it; a tiny random-init Qwen3 here).

    query     f"Instruct: {task}\\nQuery:{q}"        documents: the text alone, no instruction
    tokens    truncated to max_length - 1, then the end token (<|endoftext|>) appended; left padding
    pooling   last token: h[:, -1] when every row's last mask column is 1 (left padding), else h[b, len_b - 1]
    vector    L2-normalised; Matryoshka: the first `dim` coordinates, re-normalised

Position ids are counted over the real tokens (mask cumsum - 1), so a left- and a right-padded batch give
the same vectors (SEEDS 14 item 38).

Owns: `Qwen3Embedder`, `format_query`, `last_token_pool`. Never: import anything of the project outside
`envs/`; download a model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from envs.embedding.base import ROLES, TextEncoder, VectorCache, l2_normalize, local_folder, mrl_truncate

DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"


def format_query(task: str, query: str) -> str:
    """SEEDS 11.2: `Instruct: {task_description}\\nQuery:{query}`."""
    return f"Instruct: {task}\nQuery:{query}"


def last_token_pool(hidden, mask):
    """hidden [B, L, H], mask [B, L] (1 = token) -> [B, H]: the last real token of each row (SEEDS 11.2)."""
    import torch

    if bool(mask[:, -1].all()):  # left padding: every row ends at the last column
        return hidden[:, -1]
    lengths = mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths]


def weights_key(folder: Path, extra: str = "") -> str:
    """What identifies a model folder's weights for the vector cache: path, sizes and times of its files."""
    parts = [str(folder.resolve()), extra]
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class Qwen3Embedder(TextEncoder):
    """Qwen3-Embedding inference (module docstring). `dim`: MRL dimension (None: the hidden size);
    `padding_side`: "left" (the model's) or "right" (same vectors; for the check); `cache_dir`: a vector
    cache on disk (off by default: a model being trained changes under it)."""

    def __init__(self, path: str, *, task: str = DEFAULT_TASK, dim: int | None = None, max_length: int = 8192,
                 batch_size: int = 16, padding_side: str = "left", end_token: str = "<|endoftext|>",
                 dtype: str = "float32", device: str = "cpu", cache_dir: str | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = local_folder(path, "embedder 'qwen3-embedding'")
        if padding_side not in ("left", "right"):
            raise ValueError(f"embedder 'qwen3-embedding': padding_side={padding_side!r}; expected left or right")
        if max_length < 2 or batch_size < 1:
            raise ValueError("embedder 'qwen3-embedding': need max_length >= 2 and batch_size >= 1")
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"embedder 'qwen3-embedding': dtype={dtype!r}; expected float32 or bfloat16")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder), dtype=getattr(torch, dtype)).to(device)
        self.model.eval()
        hidden = self.model.config.hidden_size
        if dim is not None and not 1 <= dim <= hidden:
            raise ValueError(f"embedder 'qwen3-embedding': dim={dim} must be in [1, {hidden}] (the hidden size)")
        end_id = self.tokenizer.convert_tokens_to_ids(end_token)
        if end_id is None or end_id == self.tokenizer.unk_token_id:
            raise ValueError(f"embedder 'qwen3-embedding': end_token {end_token!r} is not a token of {path}")
        pad_id = self.tokenizer.pad_token_id
        self.end_id, self.pad_id = end_id, end_id if pad_id is None else pad_id
        self.task, self._dim, self.max_length, self.batch_size = task, dim, max_length, batch_size
        self.padding_side, self.device, self.folder = padding_side, device, folder
        self.model_key = weights_key(folder, f"qwen3:{task}:{dim}:{max_length}")
        self.cache = VectorCache(Path(cache_dir) / "vectors.sqlite", self.model_key) if cache_dir else None

    @property
    def dim(self) -> int:
        return self._dim or self.model.config.hidden_size

    def batch(self, texts: Sequence[str]):
        """Token ids (truncated, end token appended), padded on `padding_side`: (ids, mask, position_ids)."""
        import torch

        rows = [ids[: self.max_length - 1] + [self.end_id]
                for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            span = slice(width - len(r), width) if self.padding_side == "left" else slice(0, len(r))
            ids[b, span] = torch.tensor(r)
            mask[b, span] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def encode(self, texts: Sequence[str], role: str):
        if role not in ROLES:
            raise ValueError(f"embedder: role {role!r}; expected one of {ROLES}")
        texts = [format_query(self.task, t) for t in texts] if role == "query" else list(texts)
        ids, mask, positions = self.batch(texts)
        hidden = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        return mrl_truncate(l2_normalize(last_token_pool(hidden, mask).float()), self._dim)
