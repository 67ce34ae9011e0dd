"""A scriptable OpenAI-compatible chat-completions server for tests (standard library only).

`OpenAIStub(script)` serves `POST /v1/chat/completions` on 127.0.0.1 (a free port) from a background thread,
one handler thread per connection, so one slow reply never delays another. `script(body, seen)` decides each
reply: `body` is the request JSON, `seen` how many earlier requests carried the same last message (0 on the
first), which scripts "HTTP 500, then success" without shared state. Every request is recorded (body, headers,
start and end times) and the highest number of requests in flight at once is kept, as are the body bytes written
(`sent_bytes`). A reply can also be a fault: a body of any size streamed in 64 KiB pieces (never built whole),
with or without a Content-Length, a stall after the headers, or a body cut short.

    with OpenAIStub(lambda body, seen: Reply("Correct")) as stub:
        client = JudgeClient(stub.base_url, "judge")
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    """What the stub answers: `content` as the assistant message (None: a null content), or `raw` bytes as the
    whole body; `status`, extra `headers`, and `delay_s` before answering (cut short when the stub stops)."""

    content: str | None = "Correct"
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    size: int | None = None  # a chat completion whose content is padding, `size` bytes in all
    chunked: bool = False  # Transfer-Encoding: chunked, no Content-Length
    body_delay_s: float = 0.0  # a stall between the headers and the body
    cut_short: bool = False  # announce the whole length, send half, hang up


@dataclass
class Recorded:
    body: dict
    headers: dict[str, str]
    prompt: str  # the content of the last message
    start: float  # time.monotonic() when the request arrived
    end: float | None = None  # ... and when its reply was sent (None: never sent)


Script = Callable[[dict, int], Reply]

_PAD = b"x" * 65536


def _padded_completion(size: int) -> Iterator[bytes]:
    """A chat completion of exactly `size` bytes (content: x...x), in pieces of at most 64 KiB."""
    head = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "'
    tail = b'"}}]}'
    yield head
    left = size - len(head) - len(tail)
    while left > 0:
        yield _PAD[:left]
        left -= len(_PAD)
    yield tail


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: a burst of connections beyond it has its SYNs dropped and
    # retried by the kernel a second later, which would look like a slow judge.
    request_queue_size = 256

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hung up (timeout, cancelled batch) is not an error


class OpenAIStub:
    def __init__(self, script: Script):
        self.script = script
        self.requests: list[Recorded] = []
        self.max_in_flight = 0
        self.sent_bytes = 0
        self._in_flight = 0
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def count(self, text: str) -> int:
        """How many requests had `text` in their last message."""
        with self._lock:
            return sum(text in r.prompt for r in self.requests)

    def __enter__(self) -> OpenAIStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real server
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/v1/chat/completions":
                    self._send(404, b'{"error": "not found"}', {})
                    return
                prompt = body["messages"][-1]["content"]
                record = Recorded(body, dict(self.headers), prompt, time.monotonic())
                with stub._lock:
                    seen = stub._seen[prompt]
                    stub._seen[prompt] += 1
                    stub.requests.append(record)
                    stub._in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub._in_flight)
                try:
                    reply = stub.script(body, seen)
                    if reply.delay_s:
                        stub._stop.wait(reply.delay_s)
                    if reply.raw is not None:
                        pieces, total = [reply.raw], len(reply.raw)
                    elif reply.size is not None:
                        pieces, total = _padded_completion(reply.size), reply.size
                    else:
                        payload = json.dumps({
                            "id": "stub", "object": "chat.completion", "model": body.get("model"),
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": reply.content}}],
                        }).encode()
                        pieces, total = [payload], len(payload)
                    self._stream(reply, pieces, total)
                    record.end = time.monotonic()
                finally:
                    with stub._lock:
                        stub._in_flight -= 1

            def _stream(self, reply: Reply, pieces, total: int) -> None:
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    if reply.chunked:
                        self.send_header("Transfer-Encoding", "chunked")
                    else:
                        self.send_header("Content-Length", str(total))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if reply.body_delay_s:
                        stub._stop.wait(reply.body_delay_s)
                    budget = total // 2 if reply.cut_short else total
                    for piece in pieces:
                        piece = piece[:budget]
                        budget -= len(piece)
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if reply.chunked else piece)
                        with stub._lock:
                            stub.sent_bytes += len(piece)
                        if budget <= 0 or stub._stop.is_set():
                            break
                    if reply.chunked and not reply.cut_short:
                        self.wfile.write(b"0\r\n\r\n")
                    if reply.cut_short:
                        self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler
