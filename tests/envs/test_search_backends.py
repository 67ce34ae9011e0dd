"""Search backends: each finds the gold page for a direct query (world, bm25, dense, the retrieval server and
its client, Serper against a local stub); HTTP failures end in error observations that name the backend."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import types
from http.server import BaseHTTPRequestHandler

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from envs.retrieval_server import RetrievalServer
from envs.search_backends import (BM25Backend, DenseBackend, HashingEmbedder, Hit, RetrievalBackend, load_corpus,
                                  make_backend, make_embedder)
from envs.tools.search import make_search_tool, render_results
from envs.world import SearchIndex, generate_world, page_text, page_url
from tests.local_http import LocalServer


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def world():
    return generate_world(0, "tiny")


@pytest.fixture(scope="module")
def rows(world):
    return [{"id": eid, "title": e.name, "url": "http://world.test" + page_url(eid), "text": page_text(world, eid)}
            for eid, e in world.entities.items()]


@pytest.fixture(scope="module")
def corpus(rows, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "world.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def passages(corpus):
    return load_corpus(corpus)


def golds(world, n=12):
    """(entity id, a direct query: its name) for a spread of entities."""
    items = list(world.entities.items())
    return [(eid, e.name) for eid, e in items[:: max(1, len(items) // n)]]


def test_world_backend_from_the_tool_context(world):
    index = SearchIndex.from_world(world, base_url="http://127.0.0.1:1")
    tool = make_search_tool({"index": index}, backend="world", top_k=3)
    eid, name = golds(world)[1]
    obs = run(tool.call({"query": [name]}))
    assert not obs.error and obs.metadata["urls"][0][0] == "http://127.0.0.1:1" + page_url(eid)
    with pytest.raises(ValueError, match=r"context\['index'\]"):
        make_search_tool({}, backend="world")


def test_corpus_formats_load_the_same_passages(rows, passages, tmp_path):
    parquet = tmp_path / "world.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    assert load_corpus(parquet) == passages
    # Search-R1's rows: {"id", "contents": '"Title"\ntext'}, no url: the url is url_prefix + id
    r1 = tmp_path / "wiki.jsonl"
    r1.write_text("".join(json.dumps({"id": r["id"], "contents": f'"{r["title"]}"\n{r["text"]}'}) + "\n" for r in rows))
    loaded = load_corpus(r1, url_prefix="wiki:")
    assert [(p.id, p.title, p.text, p.url) for p in loaded] == [(p.id, p.title, p.text, "wiki:" + p.id)
                                                                for p in passages]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "ok"}\n{"id": 2, "body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*'text'"):
        load_corpus(bad)


def test_bm25_backend_finds_the_gold_page(world, corpus, rows):
    tool = make_search_tool({}, backend="bm25", corpus=corpus, top_k=5)
    url = {r["id"]: r["url"] for r in rows}
    for eid, name in golds(world):
        obs = run(tool.call({"query": [name]}))
        assert obs.metadata["urls"][0][0] == url[eid], name
        assert obs.text.split("\n")[3] == f"1. [{name}]({url[eid]})"


@pytest.mark.parametrize("index", ["numpy", "faiss"])
def test_dense_backend_finds_the_gold_page(world, passages, index):
    if index == "faiss":
        pytest.importorskip("faiss")
    backend = DenseBackend(passages, HashingEmbedder(), index=index)
    assert backend.kind == index
    for eid, name in golds(world):
        hits = backend.search(name, 3)
        assert hits[0].id == eid and hits[0].score >= hits[1].score, name


def test_the_dense_default_is_a_real_embedding_model(corpus, world):
    """`backend: dense` without an embedder is all-MiniLM-L6-v2 from its registry package (not the hashing
    stand-in), and a page's name finds the page."""
    from envs.embedding import MiniLMEmbedder

    backend = make_backend("dense", corpus=corpus)
    assert isinstance(backend.embedder, MiniLMEmbedder)
    for eid, name in golds(world):
        assert backend.search(name, 1)[0].id == eid, name


def test_dense_numpy_and_faiss_agree_and_a_prebuilt_faiss_index_loads(passages, tmp_path):
    faiss = pytest.importorskip("faiss")
    embedder = HashingEmbedder(dim=256)
    a, b = DenseBackend(passages, embedder, index="numpy"), DenseBackend(passages, embedder, index="faiss")
    for q in ("writer born 2000", "river", passages[7].title):
        ha, hb = a.search(q, 5), b.search(q, 5)
        assert np.allclose([h.score for h in ha], [h.score for h in hb], atol=1e-5)
        assert [h.id for h in ha][:3] == [h.id for h in hb][:3]
    path = tmp_path / "flat.index"
    faiss.write_index(b._index, str(path))
    c = DenseBackend(passages, embedder, index_path=str(path))
    assert [h.id for h in c.search(passages[7].title, 3)] == [h.id for h in b.search(passages[7].title, 3)]
    with pytest.raises(ValueError, match="has 60 vectors but the corpus has 59"):
        DenseBackend(passages[:-1], embedder, index_path=str(path))


def test_sentence_transformers_embedder_uses_a_local_folder_and_the_prefixes(monkeypatch, tmp_path):
    seen = {}

    class FakeModel:
        def __init__(self, path, device=None):
            seen["path"] = path

        def encode(self, texts, **kw):
            seen.setdefault("texts", []).extend(texts)
            assert kw["normalize_embeddings"] is True
            return np.eye(len(texts), 4, dtype=np.float64)

    monkeypatch.setitem(sys.modules, "sentence_transformers", types.SimpleNamespace(SentenceTransformer=FakeModel))
    emb = make_embedder({"kind": "sentence-transformers", "path": str(tmp_path), "query_prefix": "query: ",
                         "document_prefix": "passage: "})
    q = emb.embed_queries(["a"])
    emb.embed_documents(["b", "c"])
    assert seen == {"path": str(tmp_path), "texts": ["query: a", "passage: b", "passage: c"]}
    assert q.dtype == np.float32 and q.flags.c_contiguous
    with pytest.raises(ValueError, match="not a local model folder"):
        make_embedder({"kind": "sentence-transformers", "path": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="unknown key"):
        make_embedder({"kind": "hashing", "size": 3})


def test_retrieval_server_speaks_search_r1_and_the_client_round_trips(world, passages):
    with RetrievalServer(BM25Backend(passages)) as server:
        eid, name = golds(world)[2]
        raw = httpx.post(server.base_url + "/retrieve", json={"queries": [name, "river"], "topk": 2,
                                                              "return_scores": True}).json()
        assert len(raw["result"]) == 2 and len(raw["result"][0]) == 2
        first = raw["result"][0][0]
        assert first["document"]["id"] == eid and isinstance(first["score"], float)
        assert first["document"]["contents"].startswith(f'"{name}"\n')
        plain = httpx.post(server.base_url + "/retrieve", json={"queries": [name]}).json()["result"][0]
        assert len(plain) == 3 and plain[0]["id"] == eid  # default topk 3, documents without scores
        assert httpx.get(server.base_url + "/health").json() == {"status": "ok", "backend": "bm25", "documents": 60}
        bad = httpx.post(server.base_url + "/retrieve", json={"queries": "not a list"})
        assert bad.status_code == 400 and "'queries' must be a list" in bad.json()["error"]
        # the client: the same hits, as a SearchTool backend
        tool = make_search_tool({}, backend="retrieval", url=server.base_url, top_k=3)
        obs = run(tool.call({"query": [name, "completely unrelated words zzzz"]}))
        assert not obs.error and obs.metadata["urls"][0][0] == passages[[p.id for p in passages].index(eid)].url
        assert obs.text.split("\n=======\n")[1].startswith("No results found")
        hits = RetrievalBackend(server.base_url + "/retrieve").search(name, 2)  # the sync path
        assert hits[0].title == name and hits[0].text.startswith(name)


def test_retrieval_server_command_line(corpus, world):
    proc = subprocess.Popen([sys.executable, "-m", "envs.retrieval_server", "--corpus", corpus, "--port", "0",
                             "--backend", "dense"], stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        lines = [proc.stderr.readline()]  # the dense default, MiniLM, may say it loads its weights first
        while "documents (" not in lines[-1] and lines[-1] and len(lines) < 20:
            lines.append(proc.stderr.readline())
        line = lines[-1]
        assert "60 documents (dense)" in line, lines
        url = line.rsplit(" at ", 1)[1].strip()
        eid, name = golds(world)[3]
        result = httpx.post(url, json={"queries": [name], "topk": 1, "return_scores": True}, timeout=10).json()
        assert result["result"][0][0]["document"]["id"] == eid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ------------------------------------------------------------------------------- HTTP backends and failures

class Stub(LocalServer):
    """A local HTTP server answering POSTs from a script: script(path, body, headers, n) -> (status, json)."""

    def __init__(self, script):
        self.script, self.requests = script, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
                stub.requests.append((self.path, body, dict(self.headers)))
                status, payload = stub.script(self.path, body, self.headers, len(stub.requests))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        super().__init__(Handler)


ORGANIC = [{"title": "Paris - Wikipedia", "link": "https://en.wikipedia.org/wiki/Paris", "position": 1,
            "snippet": "Paris is the capital of France.", "date": "3 days ago"},
           {"title": "Paris travel", "link": "https://travel.example/paris", "source": "Travel Example",
            "snippet": "Visit Paris."}]


def test_serper_backend_renders_websailor_results_and_retries_a_429(monkeypatch):
    monkeypatch.setenv("TEST_SERPER_KEY", "secret-key")

    def script(path, body, headers, n):
        if headers.get("X-API-KEY") != "secret-key":
            return 403, {"message": "bad key"}
        if n == 1:
            return 429, {"message": "slow down"}
        return 200, {"searchParameters": {"q": body["q"]}, "organic": ORGANIC[: body["num"]]}

    with Stub(script) as stub:
        tool = make_search_tool({}, backend="serper", url=stub.url + "/search", api_key_env="TEST_SERPER_KEY",
                                top_k=2, backoff_s=0.01, params={"gl": "fr"})
        obs = run(tool.call({"query": ["capital of France"]}))
        assert not obs.error, obs.text
        assert obs.text == (
            "A Google search for 'capital of France' found 2 results:\n\n## Web Results\n"
            "1. [Paris - Wikipedia](https://en.wikipedia.org/wiki/Paris)\nDate published: 3 days ago\n\n"
            "Paris is the capital of France.\n\n"
            "2. [Paris travel](https://travel.example/paris)\nSource: Travel Example\n\nVisit Paris.")
        assert len(stub.requests) == 2 and stub.requests[1][1] == {"q": "capital of France", "num": 2, "gl": "fr"}
        assert "secret-key" not in repr(tool.backend)
    monkeypatch.setenv("TEST_SERPER_KEY", "wrong")
    with Stub(script) as stub:
        tool = make_search_tool({}, backend="serper", url=stub.url + "/search", api_key_env="TEST_SERPER_KEY")
        obs = run(tool.call({"query": ["q"]}))
        assert obs.error and "search backend 'serper'" in obs.text and "HTTP 403" in obs.text
        assert len(stub.requests) == 1  # a 403 is not retried
    monkeypatch.delenv("TEST_SERPER_KEY")
    with pytest.raises(ValueError, match="'TEST_SERPER_KEY'.*is not set"):
        make_search_tool({}, backend="serper", api_key_env="TEST_SERPER_KEY")


def test_http_backend_failures_are_error_observations_naming_backend_and_status():
    with Stub(lambda *a: (503, {"error": "overloaded"})) as stub:
        tool = make_search_tool({}, backend="retrieval", url=stub.url, max_retries=2, backoff_s=0.01)
        obs = run(tool.call({"query": ["a", "b"]}))
        assert obs.error and obs.metadata["errors"] == 2
        assert "search backend 'retrieval'" in obs.text and "HTTP 503" in obs.text and "3 attempts" in obs.text
        assert len(stub.requests) == 6 and stub.requests[0][0] == "/retrieve"
    with Stub(lambda *a: (200, {"unexpected": True})) as stub:
        obs = run(make_search_tool({}, backend="retrieval", url=stub.url).call({"query": ["a"]}))
        assert obs.error and "expected {'result'" in obs.text
    # nothing listens: connection refused, retried, then an error observation (no exception, no hang)
    port = stub.httpd.server_address[1]
    t0 = time.monotonic()
    obs = run(make_search_tool({}, backend="retrieval", url=f"http://127.0.0.1:{port}", max_retries=1,
                               backoff_s=0.01, timeout_s=2).call({"query": ["a"]}))
    assert obs.error and "ConnectError" in obs.text and time.monotonic() - t0 < 5


def test_a_timeout_is_cut_and_reported():
    def slow(*a):
        time.sleep(1.0)
        return 200, {"result": [[]]}

    with Stub(slow) as stub:
        t0 = time.monotonic()
        obs = run(make_search_tool({}, backend="retrieval", url=stub.url, timeout_s=0.2, max_retries=0)
                  .call({"query": ["a"]}))
        assert obs.error and "no answer within 0.2 s" in obs.text and time.monotonic() - t0 < 0.9


def test_one_failing_query_is_an_error_block_among_the_results():
    class Flaky:
        name = "flaky"

        def search(self, query, k):
            if query == "bad":
                raise RuntimeError("index unavailable")
            return [Hit("http://x/1", "One", "first")]

    obs = run(make_search_tool({}, backend=Flaky()).call({"query": ["good", "bad"]}))
    good, bad = obs.text.split("\n=======\n")
    assert not obs.error and obs.metadata["errors"] == 1
    assert good == render_results("good", [Hit("http://x/1", "One", "first")])
    assert bad == "Error: search backend 'flaky' failed for 'bad': RuntimeError: index unavailable"


def test_backend_settings_are_checked():
    with pytest.raises(ValueError, match="unknown backend 'google'"):
        make_backend("google")
    with pytest.raises(ValueError, match=r"search backend 'bm25': unknown key\(s\) \['k'\]"):
        make_backend("bm25", corpus="x.jsonl", k=3)
    with pytest.raises(ValueError, match=r"missing key\(s\) \['corpus'\]"):
        make_backend("dense")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['topk'\]"):
        make_backend("retrieval", url="http://127.0.0.1:1", topk=3)
