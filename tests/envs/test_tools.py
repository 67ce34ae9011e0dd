"""search and visit on the local world: rendering, the gold page for a direct query, guarded fetches."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from envs.tools import FetchGuard, SearchTool, VisitTool, html_to_text
from envs.tools.summary import PageSummary
from envs.world import SearchIndex, WorldServer, generate_world, page_url


@pytest.fixture(scope="module")
def world():
    return generate_world(0, "tiny")


@pytest.fixture(scope="module")
def server(world):
    with WorldServer(world) as s:
        yield s


def run(coro):
    return asyncio.run(coro)


def test_search_renders_websailor_blocks_and_finds_the_gold_page(world, server):
    tool = SearchTool(SearchIndex.from_world(world, base_url=server.base_url))
    e = next(iter(world.entities.values()))
    obs = run(tool.call({"query": [e.name, "completely unrelated words"]}))
    blocks = obs.text.split("\n=======\n")
    assert len(blocks) == 2 and not obs.error
    assert blocks[0].startswith(f"A Google search for '{e.name}' found")
    assert blocks[0].split("\n")[3].startswith(f"1. [{e.name}]({server.base_url}{page_url(e.id)})")
    bad = run(tool.call({"query": []}))
    assert bad.error and "non-empty list" in bad.text


def test_visit_reads_a_local_page_and_refuses_the_rest(world, server):
    host = urlsplit(server.base_url).netloc
    tool = VisitTool(FetchGuard(allow_hosts=(host,)), timeout_s=5)
    e = next(iter(world.entities.values()))
    obs = run(tool.call({"url": [server.base_url + page_url(e.id)], "goal": "facts"}))
    assert not obs.error and e.name in obs.text and "<a href" not in obs.text
    for url in ("http://169.254.169.254/latest/meta-data", "file:///etc/passwd", "ftp://example.org/x"):
        o = run(tool.call({"url": [url], "goal": "g"}))
        assert o.error and "refused" in o.text, url
    # loopback is refused unless the host is allowed
    strict = VisitTool(FetchGuard(), timeout_s=5)
    o = run(strict.call({"url": [server.base_url + page_url(e.id)], "goal": "g"}))
    assert o.error and "loopback" in o.text
    missing = run(tool.call({"url": [server.base_url + "/wiki/No_Such_Entity"], "goal": "g"}))
    assert missing.error and "404" in missing.text


def test_a_redirect_to_a_private_address_is_refused(server):
    target = server.base_url + "/"

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        redirect_host = f"127.0.0.1:{httpd.server_address[1]}"
        tool = VisitTool(FetchGuard(allow_hosts=(redirect_host,)), timeout_s=5)
        o = run(tool.call({"url": [f"http://{redirect_host}/go"], "goal": "g"}))
        assert o.error and "refused" in o.text and "loopback" in o.text
    finally:
        httpd.shutdown()


def test_long_pages_are_truncated_before_the_summary(server):
    seen = []

    class Summarizer:
        async def summarize(self, goal, text):
            seen.append(len(text))
            return PageSummary(True, evidence="evidence", summary="summary")

    page = "<html><body>" + "<p>" + "x" * 200_000 + "</p></body></html>"

    class Big(BaseHTTPRequestHandler):
        def do_GET(self):
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Big)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        host = f"127.0.0.1:{httpd.server_address[1]}"
        tool = VisitTool(FetchGuard(allow_hosts=(host,)), summarizer=Summarizer(), timeout_s=5)
        o = run(tool.call({"url": [f"http://{host}/"], "goal": "g"}))
        assert seen == [150_000] and o.text.endswith("Evidence in page: \nevidence\n\nSummary: \nsummary")
    finally:
        httpd.shutdown()


def test_html_to_text_drops_markup_and_scripts():
    assert html_to_text("<html><head><title>T</title><script>x=1</script></head>"
                        "<body><h1>A</h1><p>b &amp; c</p></body></html>") == "A\n\nb & c"
