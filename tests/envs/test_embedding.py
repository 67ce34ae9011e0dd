"""Embedders, reranker and embedding server of envs/embedding (SEEDS 11.2-11.3; acceptance items 38-39)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from envs.embedding import MiniLMEmbedder, Qwen3Embedder, VectorCache, format_query, last_token_pool, mean_pool


@pytest.fixture(scope="module")
def qwen3_tiny_tok():
    """The tiny random Qwen3 on the real Qwen3 tokenizer ("yes" and "no" are single tokens there)."""
    from rl.models import build_tiny_model

    return str(build_tiny_model(tokenizer="qwen3"))


def test_left_and_right_padding_give_the_same_vectors(tiny_model):
    texts = ["short", "a somewhat longer document about a river and a city", "mid length text here"]
    left = Qwen3Embedder(tiny_model, padding_side="left")
    right = Qwen3Embedder(tiny_model, padding_side="right")
    right.model = left.model
    ids, mask, _ = left.batch(texts)
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()  # really left-padded
    for role in ("query", "document"):
        a, b = left._embed(texts, role), right._embed(texts, role)
        np.testing.assert_allclose(a, b, atol=1e-5)
        alone = np.concatenate([left._embed([t], role) for t in texts])  # unpadded, one at a time
        np.testing.assert_allclose(a, alone, atol=1e-5)


def test_query_instruction_documents_plain_and_mrl_unit_norm(tiny_model):
    e = Qwen3Embedder(tiny_model, task="Find the page", dim=16)
    assert format_query("Find the page", "who?") == "Instruct: Find the page\nQuery:who?"
    q = e.embed_queries(["who wrote it?"])
    np.testing.assert_allclose(q, e.embed_documents([format_query("Find the page", "who wrote it?")]), atol=1e-6)
    assert not np.allclose(q, e.embed_documents(["who wrote it?"]), atol=1e-3)  # documents get no instruction
    full = Qwen3Embedder(tiny_model)
    full.model = e.model
    v = full.embed_documents(["one", "two words"])
    assert q.shape == (1, 16) and v.shape == (2, e.model.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(e.embed_documents(["one", "two words"]), axis=1), 1.0, atol=1e-5)
    trunc = v[:, :16] / np.linalg.norm(v[:, :16], axis=1, keepdims=True)  # MRL: first d dims, re-normalised
    np.testing.assert_allclose(e.embed_documents(["one", "two words"]), trunc, atol=1e-5)
    with pytest.raises(ValueError, match="dim=999"):
        Qwen3Embedder(tiny_model, dim=999)
    with pytest.raises(ValueError, match="not a local model folder"):
        Qwen3Embedder("/nonexistent/model")


def test_last_token_pool_and_mean_pool():
    h = torch.arange(2 * 3 * 1, dtype=torch.float32).view(2, 3, 1)
    right = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert last_token_pool(h, right)[:, 0].tolist() == [1.0, 3.0]
    left = torch.tensor([[0, 1, 1], [0, 0, 1]])
    assert last_token_pool(h, left)[:, 0].tolist() == [2.0, 5.0]
    assert mean_pool(h, right)[:, 0].tolist() == [0.5, 3.0]


def test_reranker_score_is_sigmoid_of_the_logit_gap(qwen3_tiny_tok):
    from envs.embedding.reranker import PREFIX, SUFFIX, Qwen3Reranker, format_pair

    r = Qwen3Reranker(qwen3_tiny_tok, max_length=160)
    docs = ["Paris is the capital of France.", "Bananas are yellow.", "x" * 600]
    z_yes, z_no = r.logits("capital of France?", docs)
    scores = np.array(r.score("capital of France?", docs))
    assert ((scores > 0) & (scores < 1)).all()
    np.testing.assert_allclose(scores, torch.sigmoid(z_yes - z_no).numpy(), atol=1e-6)
    r.yes_id, r.no_id = r.no_id, r.yes_id  # swapping the token ids gives 1 - score (item 39)
    np.testing.assert_allclose(np.array(r.score("capital of France?", docs)), 1 - scores, atol=1e-6)
    # the exact template, and its last position is the end of SUFFIX
    body = format_pair("I", "q", "d")
    assert body == "<Instruct>: I\n<Query>: q\n<Document>: d"
    assert PREFIX.startswith("<|im_start|>system\nJudge whether") and SUFFIX.endswith("</think>\n\n")
    # a single scored pair equals the manual forward of the whole prompt (no padding)
    ids = r.tokenizer.encode(PREFIX + format_pair(r.instruction, "capital of France?", docs[0]) + SUFFIX,
                             add_special_tokens=False)
    with torch.inference_mode():
        last = r.model(input_ids=torch.tensor([ids])).logits[0, -1]
    assert scores[0] == pytest.approx(float(torch.sigmoid(last[r.no_id] - last[r.yes_id])), abs=1e-5)


def test_minilm_is_semantic_normalised_and_cached(tmp_path):
    e = MiniLMEmbedder(cache_dir=str(tmp_path))
    texts = ["A cat sits on the mat.", "A kitten is lying on a rug.", "The stock market fell sharply today."]
    v = e.embed_documents(texts)
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert len(e.cache) == 3
    e.model = None  # from here on only the cache can answer
    np.testing.assert_array_equal(e.embed_documents(texts[::-1]), v[::-1])


def test_vector_cache_keys(tmp_path):
    a, b = VectorCache(tmp_path / "c.sqlite", "model-a"), VectorCache(tmp_path / "c.sqlite", "model-b")
    a.put({a.key("query", "x"): np.ones(3, dtype=np.float32)})
    assert a.key("query", "x") != a.key("document", "x") != b.key("query", "x")
    assert list(a.get([a.key("query", "x")]).values())[0].tolist() == [1, 1, 1]
    assert b.get([b.key("query", "x")]) == {}


def test_make_embedder_and_rerank_settings(tiny_model, qwen3_tiny_tok):
    from envs.search_backends import check_backend, make_embedder

    e = make_embedder({"kind": "qwen3-embedding", "path": tiny_model, "dim": 8})
    assert isinstance(e, Qwen3Embedder) and e.embed_queries(["q"]).shape == (1, 8)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['pooling'\]"):
        make_embedder({"kind": "minilm", "pooling": "cls"})
    check_backend("world", {"rerank": {"top_n": 5, "model": qwen3_tiny_tok}})
    with pytest.raises(ValueError, match="search.rerank"):
        check_backend("world", {"rerank": {"top_n": 5}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['temperature'\]"):
        check_backend("world", {"rerank": {"model": qwen3_tiny_tok, "temperature": 1}})


def test_rerank_backend_reorders_the_first_stage(qwen3_tiny_tok):
    from envs.search_backends import make_backend
    from envs.world import SearchIndex, generate_world

    index = SearchIndex.from_world(generate_world(seed=0, size="tiny"))
    backend = make_backend("world", {"index": index}, rerank={"top_n": 6, "model": qwen3_tiny_tok, "max_length": 256})
    hits = backend.search("population of a city", k=3)
    assert len(hits) == 3 and all(0 < h.score < 1 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    first = {h.url for h in index.search("population of a city", 6)}
    assert {h.url for h in hits} <= first


def test_embedding_server_coalesces_concurrent_requests():
    from envs.embedding.server import EmbeddingServer

    from envs.search_backends import make_embedder

    server = EmbeddingServer({"hash": {"kind": "hashing", "dim": 64}}, build=make_embedder, max_batch=100,
                             max_wait_ms=20)

    async def many():
        return await asyncio.gather(*(server.aembed("hash", [f"text {i}", f"more {i}"], "document") for i in range(5)))

    out = asyncio.run(many())
    direct = server.embedders["hash"].embed_documents([t for i in range(5) for t in (f"text {i}", f"more {i}")])
    np.testing.assert_allclose(np.concatenate(out), direct)
    assert server.stats["batches"] == 1 and server.stats["requests"] == 5 and server.stats["texts"] == 10
    with pytest.raises(KeyError, match="no embedder 'other'"):
        server.embed("other", ["x"], "query")
    with pytest.raises(ValueError, match="role"):
        server.embed("hash", ["x"], "passage")
