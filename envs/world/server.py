"""A local web server for the synthetic world's pages (the sandboxed web of the embedded default).

Owns: `WorldServer`, an `http.server.ThreadingHTTPServer` on 127.0.0.1 and a free port, in a background
thread, started and stopped by its caller (or used as a context manager). It answers
  GET /             the index page (every entity's page, by type)
  GET /wiki/<id>    the entity's page (`pages.render_page`), 404 for an unknown id
and HEAD for both; any other method gets 405, any other path 404, a request line over `MAX_URL_BYTES` 414.
Bodies are never read. Every response carries Content-Length; connections are HTTP/1.1 keep-alive with an
idle timeout of `IDLE_TIMEOUT_S`.

Fault injection, for tests of tools (timeouts, retries, error observations): `Fault(delay_s, status, times)`
per path, given to the constructor or set while running with `set_fault(path, fault)`. A fault on "/wiki/X"
first sleeps `delay_s` (at most `MAX_DELAY_S`), then answers `status` instead of the page when a status is
given, or the page padded to `size` bytes (an oversized page, at most `MAX_FAULT_BYTES`); with `times=n` it
applies to the next n requests of that path only and then clears itself (a tool that retries should then
succeed). `request_count(path)` says how many requests a path received, `fault_counts()` how many requests
each kind of fault changed (delayed, status, oversized).

Never: listen on anything but the host given (127.0.0.1 by default), fetch from the network, write files,
or import anything of the project outside `envs/world/`.
"""

from __future__ import annotations

import html
import sys
import threading
import time
from dataclasses import dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from envs.world.graph import World
from envs.world.pages import WIKI_PREFIX, render_index, render_page

MAX_URL_BYTES = 2048
MAX_DRAIN_BYTES = 1 << 20  # a refused request's body is read (and dropped) up to this size
MAX_DELAY_S = 60.0
MAX_FAULT_BYTES = 64 << 20  # the largest oversized page a fault serves
IDLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Fault:
    """What to do to the requests of one path: wait `delay_s`, then answer `status` (if given) instead, or the
    page padded to `size` bytes (if given)."""

    delay_s: float = 0.0
    status: int | None = None
    times: int | None = None  # apply to the next `times` requests only; None: until cleared
    size: int | None = None  # the page padded (an HTML comment at its end) to this many bytes

    def __post_init__(self):
        if not 0.0 <= self.delay_s <= MAX_DELAY_S:
            raise ValueError(f"Fault.delay_s={self.delay_s}: must lie in [0, {MAX_DELAY_S}] seconds")
        if self.status is not None and not 100 <= self.status <= 599:
            raise ValueError(f"Fault.status={self.status}: not an HTTP status code")
        if self.size is not None and not 0 <= self.size <= MAX_FAULT_BYTES:
            raise ValueError(f"Fault.size={self.size}: must lie in [0, {MAX_FAULT_BYTES}] bytes")
        if self.times is not None and self.times < 1:
            raise ValueError(f"Fault.times={self.times}: must be >= 1, or None for every request")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for idle keep-alive connections
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away (e.g. its timeout fired during an injected delay)
        super().handle_error(request, client_address)


class WorldServer:
    """Serves a world's pages on http://127.0.0.1:<free port>; `start()` returns the base URL."""

    def __init__(self, world: World, host: str = "127.0.0.1", port: int = 0,
                 faults: dict[str, Fault] | None = None):
        self.world = world
        self.host = host
        self.port = port
        self._faults: dict[str, Fault] = dict(faults or {})
        self._counts: dict[str, int] = {}
        self._fault_counts = {"delayed": 0, "status": 0, "oversized": 0}
        self._cache: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifetime ---------------------------------------------------------------------------------------

    def start(self) -> str:
        if self._httpd is not None:
            raise RuntimeError(f"WorldServer already running at {self.base_url}")
        self._httpd = _HTTPServer((self.host, self.port), _handler_for(self))
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"WorldServer:{self.port}", daemon=True)
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

    def __enter__(self) -> WorldServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("WorldServer is not running: call start() first")
        return f"http://{self.host}:{self.port}"

    # -- fault injection and counters -------------------------------------------------------------------

    def set_fault(self, path: str, fault: Fault | None) -> None:
        """Inject `fault` on requests for `path` ("/wiki/<id>" or "/"); None clears it."""
        with self._lock:
            if fault is None:
                self._faults.pop(path, None)
            else:
                self._faults[path] = fault

    def request_count(self, path: str | None = None) -> int:
        """Requests received for `path`, or for all paths."""
        with self._lock:
            return sum(self._counts.values()) if path is None else self._counts.get(path, 0)

    def fault_counts(self) -> dict[str, int]:
        """Requests a fault changed, by kind: delayed (a fault's delay, the per-page latency a WorldHost sets
        included), status (answered an injected status), oversized (answered a padded page)."""
        with self._lock:
            return dict(self._fault_counts)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            self._counts[path] = self._counts.get(path, 0) + 1
            fault = self._faults.get(path)
            if fault is not None and fault.times is not None:
                if fault.times == 1:
                    del self._faults[path]
                else:
                    self._faults[path] = replace(fault, times=fault.times - 1)
            if fault is not None:
                self._fault_counts["delayed"] += fault.delay_s > 0
                self._fault_counts["status"] += fault.status is not None
            return fault

    # -- content ----------------------------------------------------------------------------------------

    def _page(self, path: str) -> bytes | None:
        body = self._cache.get(path)
        if body is not None:
            return body
        if path == "/":
            body = render_index(self.world).encode()
        elif path.startswith(WIKI_PREFIX) and path[len(WIKI_PREFIX):] in self.world.entities:
            body = render_page(self.world, path[len(WIKI_PREFIX):]).encode()
        else:
            return None
        self._cache[path] = body
        return body


def _handler_for(server: WorldServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "WindwardWorld/1"
        timeout = IDLE_TIMEOUT_S

        def log_message(self, format, *args):  # quiet: tests and tools make thousands of requests
            pass

        def _send(self, status: int, body: bytes, content_type: str = "text/html; charset=utf-8",
                  head: bool = False, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _answer(self, head: bool) -> None:
            if len(self.path) > MAX_URL_BYTES:
                self.close_connection = True
                self._send(HTTPStatus.REQUEST_URI_TOO_LONG,
                           f"URL longer than {MAX_URL_BYTES} bytes\n".encode(), "text/plain; charset=utf-8", head)
                return
            path = unquote(urlsplit(self.path).path)
            fault = server._take_fault(path)
            if fault is not None:
                if fault.delay_s:
                    time.sleep(fault.delay_s)
                if fault.status is not None:
                    self._send(fault.status, f"injected status {fault.status} for {path}\n".encode(),
                               "text/plain; charset=utf-8", head)
                    return
            body = server._page(path)
            if body is not None and fault is not None and fault.size is not None and fault.size >= len(body) + 7:
                body += b"<!--" + b" " * (fault.size - len(body) - 7) + b"-->"  # the page stays HTML
                with server._lock:
                    server._fault_counts["oversized"] += 1
            if body is None:
                entity = path[len(WIKI_PREFIX):] if path.startswith(WIKI_PREFIX) else None
                reason = (f"No page for entity id {entity!r}." if entity is not None
                          else f"No page at {path!r}: pages live at /wiki/<id>.")
                self._send(HTTPStatus.NOT_FOUND,
                           f"<!DOCTYPE html>\n<html><body><p>{html.escape(reason)} See <a href=\"/\">all pages</a>."
                           f"</p></body></html>\n".encode(), head=head)
                return
            self._send(HTTPStatus.OK, body, head=head)

        def do_GET(self):
            self._answer(head=False)

        def do_HEAD(self):
            self._answer(head=True)

        def _not_allowed(self):
            # Drain a small body before answering: closing a socket with unread data makes the kernel
            # send a reset, and the client may then lose the 405 ("server disconnected").
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if 0 <= length <= MAX_DRAIN_BYTES:
                self.rfile.read(length)
            else:
                self.close_connection = True
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", "text/plain; charset=utf-8",
                       extra={"Allow": "GET, HEAD"})

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    return Handler
