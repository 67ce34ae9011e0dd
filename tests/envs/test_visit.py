"""visit with the goal-conditioned summary (a local OpenAI-compatible stub as the summary model), and fetches
the guard refuses or cuts: each ends in an error observation, within its limits, without touching the target.

(tests/envs/test_tools.py already covers: a local page read, 169.254.169.254, file:// and ftp:// refused,
loopback refused unless allowed, a 404, a redirect to the loopback world server, truncation to 150,000.)"""

from __future__ import annotations

import asyncio
import json
import re
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

import pytest

from envs.llm import ChatClient
from envs.tools.summary import (EXTRACTOR_PROMPT, PageSummarizer, make_summarizer, parse_extraction,
                                shrink_schedule)
from envs.tools.visit import FetchGuard, VisitTool, make_visit_tool
from envs.world import Fault, WorldServer, generate_world, page_url
from tests.reward.openai_stub import OpenAIStub, Reply
from tests.local_http import LocalServer

GOOD = {"rational": "the page states it", "evidence": "EVIDENCE-TEXT", "summary": "SUMMARY-TEXT"}


def run(coro):
    return asyncio.run(coro)


def page_in(prompt: str) -> str:
    """The webpage content a request carried (between the prompt's two headings)."""
    return prompt.split("## Webpage Content\n", 1)[1].split("\n\n## User Goal\n", 1)[0]


@pytest.fixture(scope="module")
def world():
    return generate_world(0, "tiny")


@pytest.fixture(scope="module")
def server(world):
    with WorldServer(world) as s:
        yield s


class Site(LocalServer):
    """A local web server of odd pages: redirects, big bodies, binary types. Counts requests per path."""

    def __init__(self, max_bytes_hint: int = 1000):
        self.hits: dict[str, int] = {}
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                path = urlsplit(self.path).path
                site.hits[path] = site.hits.get(path, 0) + 1
                m = re.fullmatch(r"/loop/(\d+)", path)
                if m:
                    return self._redirect(f"/loop/{int(m.group(1)) + 1}")
                if path == "/to-metadata":
                    return self._redirect("http://169.254.169.254/latest/meta-data/")
                if path == "/to-file":
                    return self._redirect("file:///etc/passwd")
                if path == "/to-page":
                    return self._redirect("/page")
                if path == "/page":
                    return self._body(b"<html><body><h1>Hello</h1><p>A page.</p></body></html>", "text/html")
                if path == "/big-declared":
                    return self._body(b"x" * (max_bytes_hint * 5), "text/plain")
                if path == "/big-streamed":  # no Content-Length: the body runs until the connection closes
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.end_headers()
                    try:
                        for _ in range(100):
                            self.wfile.write(b"y" * max_bytes_hint)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if path == "/pdf":
                    return self._body(b"%PDF-1.7 binary", "application/pdf")
                if path == "/text":
                    return self._body(site.text.encode(), "text/plain; charset=utf-8")
                self.send_error(404)

            def _redirect(self, location):
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _body(self, body, ctype):
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.text = ""
        super().__init__(Handler)


@pytest.fixture
def site():
    with Site() as s:
        yield s


def summary_config(stub, **extra):
    return {"base_url": stub.base_url, "model": "summary-model", "timeout_s": 5, "max_retries": 1,
            "backoff_s": 0.01, **extra}


# ------------------------------------------------------------------------------------------- the summary

def test_parse_extraction_reads_fences_prose_and_think_blocks():
    body = json.dumps(GOOD)
    want = {"rational": "the page states it", "evidence": "EVIDENCE-TEXT", "summary": "SUMMARY-TEXT"}
    assert parse_extraction(body) == want
    assert parse_extraction(f"Here you go:\n```json\n{body}\n```\nHope it helps {{}}") == want
    assert parse_extraction(f"<think>the {{goal}} is {{x}}</think>\nSure. {body} done") == want
    assert parse_extraction(f"reasoning with {{braces}}</think>{body}") == want
    assert parse_extraction('{"evidence": ["a", "b"], "summary": {"k": 1}}') == {
        "rational": "", "evidence": "a\nb", "summary": '{"k": 1}'}
    for garbage in ("", "I cannot help", "{", '{"evidence": "only"}', "[1, 2]", "{'single': 'quotes'}"):
        assert parse_extraction(garbage) is None, garbage


def test_shrink_schedule_is_websailors():
    assert shrink_schedule(150_000) == [150_000, 105_000, 73_500, 51_450, 25_000]
    assert shrink_schedule(1_000) == [1_000, 700, 490, 343, 343]


def test_visit_returns_the_websailor_summary_of_a_world_page(world, server):
    eid, e = next(iter(world.entities.items()))

    def script(body, seen):
        page = page_in(body["messages"][-1]["content"])
        line = next(s for s in page.split("\n") if e.name in s)
        return Reply("Sure, here is the JSON:\n```json\n" + json.dumps(
            {"rational": "r", "evidence": line, "summary": f"{e.name} is described."}) + "\n```")

    with OpenAIStub(script) as stub:
        tool = make_visit_tool({"allow_hosts": (urlsplit(server.base_url).netloc,)}, summary=summary_config(stub))
        url = server.base_url + page_url(eid)
        obs = run(tool.call({"url": [url], "goal": f"facts about {e.name}"}))
        assert not obs.error, obs.text
        assert obs.text.startswith(f"The useful information in {url} for user goal facts about {e.name} as "
                                   f"follows: \n\nEvidence in page: \n{e.name}")
        assert obs.text.endswith(f"\n\nSummary: \n{e.name} is described.")
        (request,) = stub.requests
        assert request.body["model"] == "summary-model" and len(request.body["messages"]) == 1
        assert f"## User Goal\nfacts about {e.name}" in request.prompt and "<a href" not in request.prompt
        assert obs.metadata["pages"][0]["summary_attempts"] == 1


def test_an_unreadable_reply_is_retried_with_70_percent_of_the_page(site):
    site.text = "~" * 10_000

    def script(body, seen):  # garbage while the page is long, JSON once it was shortened
        return Reply("Sorry, the page is too long" if len(page_in(body["messages"][-1]["content"])) > 8_000
                     else json.dumps(GOOD))

    with OpenAIStub(script) as stub:
        tool = make_visit_tool({}, allow_hosts=(site.host,), summary=summary_config(stub))
        obs = run(tool.call({"url": [site.url + "/text"], "goal": "g"}))
        assert not obs.error and obs.text.endswith("Evidence in page: \nEVIDENCE-TEXT\n\nSummary: \nSUMMARY-TEXT")
        assert [len(page_in(r.prompt)) for r in stub.requests] == [10_000, 7_000]
        assert obs.metadata["pages"][0]["summary_attempts"] == 2


def test_a_too_long_request_refused_by_the_endpoint_is_shortened(site):
    site.text = "~" * 10_000

    def script(body, seen):  # vLLM's answer to a prompt over the context: HTTP 400
        if len(page_in(body["messages"][-1]["content"])) > 5_000:
            return Reply(status=400, raw=b'{"error": {"message": "maximum context length is 2048 tokens"}}')
        return Reply(json.dumps(GOOD))

    with OpenAIStub(script) as stub:
        obs = run(make_visit_tool({}, allow_hosts=(site.host,), summary=summary_config(stub))
                  .call({"url": [site.url + "/text"], "goal": "g"}))
        assert not obs.error and "SUMMARY-TEXT" in obs.text
        assert [len(page_in(r.prompt)) for r in stub.requests] == [10_000, 7_000, 4_900]


def test_garbage_every_time_ends_in_the_fallback_after_the_25k_try(site):
    site.text = "~" * 200_000
    with OpenAIStub(lambda body, seen: Reply("no json here")) as stub:
        obs = run(make_visit_tool({}, allow_hosts=(site.host,), summary=summary_config(stub))
                  .call({"url": [site.url + "/text"], "goal": "find x"}))
        assert [len(page_in(r.prompt)) for r in stub.requests] == [150_000, 105_000, 73_500, 51_450, 25_000]
        assert obs.error and obs.text.startswith(f"The useful information in {site.url}/text for user goal find x "
                                                 "as follows: \n\nEvidence in page: \nThe page was fetched, but no "
                                                 "summary of it could be made")
        assert obs.text.endswith("Summary: \nNo information is available from this page.")
        meta = obs.metadata["pages"][0]
        assert meta["summary_attempts"] == 5 and "no json here" in meta["summary_error"]


def test_a_dead_summary_endpoint_is_not_asked_five_times(site):
    site.text = "some text"
    with OpenAIStub(lambda body, seen: Reply(status=503, raw=b"overloaded")) as stub:
        obs = run(make_visit_tool({}, allow_hosts=(site.host,), summary=summary_config(stub))
                  .call({"url": [site.url + "/text"], "goal": "g"}))
        assert obs.error and len(stub.requests) == 2  # one try, retried once by the client, no shortening
        assert "HTTP 503" in obs.metadata["pages"][0]["summary_error"]


def test_a_429_is_retried_by_the_client_and_the_key_is_sent(site, monkeypatch):
    site.text = "some text"
    monkeypatch.setenv("TEST_SUMMARY_KEY", "sk-test")
    def script(body, seen):
        return Reply(status=429, headers={"Retry-After": "0"}) if seen == 0 else Reply(json.dumps(GOOD))

    with OpenAIStub(script) as stub:
        obs = run(make_visit_tool({}, allow_hosts=(site.host,),
                                  summary=summary_config(stub, api_key_env="TEST_SUMMARY_KEY", temperature=0.0,
                                                         extra_body={"top_p": 0.5}))
                  .call({"url": [site.url + "/text"], "goal": "g"}))
        assert not obs.error and len(stub.requests) == 2
        assert stub.requests[1].headers["Authorization"] == "Bearer sk-test"
        assert stub.requests[1].body["temperature"] == 0.0 and stub.requests[1].body["top_p"] == 0.5


def test_summary_settings_are_checked(monkeypatch):
    monkeypatch.delenv("TEST_SUMMARY_KEY", raising=False)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['modle'\]"):
        make_summarizer({"base_url": "http://127.0.0.1:1/v1", "modle": "m"})
    with pytest.raises(ValueError, match=r"missing \['model'\]"):
        make_summarizer({"base_url": "http://127.0.0.1:1/v1"})
    with pytest.raises(ValueError, match="'TEST_SUMMARY_KEY'.*is not set"):
        make_summarizer({"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": "TEST_SUMMARY_KEY"})
    with pytest.raises(ValueError, match="base_url must be an http"):
        ChatClient("127.0.0.1:8000", "m")
    assert make_summarizer(None) is None
    s = make_summarizer({"base_url": "http://127.0.0.1:1/v1", "model": "m", "max_chars": 1000, "shrink": 0.5})
    assert isinstance(s, PageSummarizer) and s.max_chars == 1000 and s.shrink == 0.5
    assert "{webpage_content}" in EXTRACTOR_PROMPT and "{goal}" in EXTRACTOR_PROMPT


# ------------------------------------------------------------------------------------------- refusals

def test_loopback_not_allowed_is_refused_without_a_request(server, world):
    eid = next(iter(world.entities))
    before = server.request_count()
    obs = run(make_visit_tool({}).call({"url": [server.base_url + page_url(eid)], "goal": "g"}))
    assert obs.error and "refused" in obs.text and "loopback" in obs.text
    assert server.request_count() == before
    # allowed through the context (the world server's host:port), but not another port of the same host
    tool = make_visit_tool({"allow_hosts": (urlsplit(server.base_url).netloc,)})
    assert not run(tool.call({"url": [server.base_url + page_url(eid)], "goal": "g"})).error
    other = run(tool.call({"url": ["http://127.0.0.1:9/x"], "goal": "g"}))
    assert other.error and "loopback" in other.text


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/",
                                 "http://2852039166/", "http://0.0.0.0:80/", "http://localhost/",
                                 "http://[::1]/", "http://10.0.0.1/", "file:///etc/passwd", "gopher://x/",
                                 "http:///nohost", "http://[bad/"])
def test_private_and_odd_urls_are_refused(url):
    t0 = time.monotonic()
    obs = run(make_visit_tool({}, timeout_s=3).call({"url": [url], "goal": "g"}))
    assert obs.error and "refused" in obs.text, obs.text
    assert time.monotonic() - t0 < 2


def test_redirects_to_private_addresses_or_other_schemes_are_refused(site):
    tool = make_visit_tool({}, allow_hosts=(site.host,))
    for path, why in (("/to-metadata", "169.254.169.254"), ("/to-file", "scheme 'file'")):
        obs = run(tool.call({"url": [site.url + path], "goal": "g"}))
        assert obs.error and "refused" in obs.text and why in obs.text, obs.text
    ok = run(tool.call({"url": [site.url + "/to-page"], "goal": "g"}))
    assert not ok.error and "Hello" in ok.text


def test_too_many_redirects(site):
    obs = run(make_visit_tool({}, allow_hosts=(site.host,), max_redirects=3).call(
        {"url": [site.url + "/loop/0"], "goal": "g"}))
    assert obs.error and "more than 3 redirects" in obs.text
    assert sorted(site.hits) == ["/loop/0", "/loop/1", "/loop/2", "/loop/3"]


def test_too_large_bodies_and_binary_types(site):
    tool = make_visit_tool({}, allow_hosts=(site.host,), max_bytes=1000)
    declared = run(tool.call({"url": [site.url + "/big-declared"], "goal": "g"}))
    assert declared.error and "larger than 1000 bytes (Content-Length 5000)" in declared.text
    streamed = run(tool.call({"url": [site.url + "/big-streamed"], "goal": "g"}))
    assert streamed.error and "larger than 1000 bytes" in streamed.text
    pdf = run(tool.call({"url": [site.url + "/pdf"], "goal": "g"}))
    assert pdf.error and "'application/pdf', not a text or HTML page" in pdf.text


def test_a_slow_page_is_cut_at_the_timeout(world):
    eid = next(iter(world.entities))
    with WorldServer(world, faults={page_url(eid): Fault(delay_s=3)}) as slow:
        tool = make_visit_tool({"allow_hosts": (urlsplit(slow.base_url).netloc,)}, timeout_s=0.3)
        t0 = time.monotonic()
        obs = run(tool.call({"url": [slow.base_url + page_url(eid), slow.base_url + "/"], "goal": "g"}))
        assert time.monotonic() - t0 < 2
        slow_block, index_block = obs.text.split("\n=======\n")
        assert "did not answer within 0.3 s" in slow_block and not obs.error  # the other page still came back
        assert obs.metadata["errors"] == 1 and "Error" not in index_block


def test_deny_list_and_allow_list_only():
    guard = FetchGuard(allow_hosts=("world.test:8000",), deny_hosts=("example.org", "127.0.0.1:5"),
                       allow_public=False)
    assert "deny list" in guard.check("https://sub.example.org/x")
    assert "deny list" in guard.check("http://127.0.0.1:5/")
    assert guard.check("http://world.test:8000/wiki/A") is None
    assert "not on the allow list" in guard.check("https://python.org/")
    assert "deny list" in FetchGuard(allow_hosts=("example.org",), deny_hosts=("example.org",)).check(
        "http://example.org/")


def test_bad_arguments_are_error_observations():
    tool = VisitTool(FetchGuard())
    for args in ({"url": []}, {"url": [3]}, {"url": [""]}, {"goal": "g"}, {"url": ["http://x/"], "goal": 5}):
        obs = run(tool.call(args))
        assert obs.error and obs.text.startswith("Error: visit needs"), args


# ------------------------------------------------------------------------- a real vLLM OpenAI-compatible server

@pytest.mark.slow
def test_the_summary_client_speaks_to_a_vllm_server(vllm_server, site):
    from envs.llm import HTTPCallError

    client = ChatClient(vllm_server, "tiny", max_tokens=8, temperature=0.0)
    reply = run(client.complete([{"role": "user", "content": "hello"}]))
    assert isinstance(reply, str) and reply
    with pytest.raises(HTTPCallError) as err:  # over the context: vLLM's 400, which the summary answers by shortening
        run(client.complete([{"role": "user", "content": "hello " * 3000}]))
    assert err.value.status == 400 and not err.value.retryable
    # a random tiny model writes no JSON. 4,000 characters of page: the tries at 4,000, 2,800 and 1,960 are over
    # the 1,024-token context (400, shortened), those at 1,372 are read and unreadable; then the fallback
    site.text = "page text " * 400
    tool = make_visit_tool({}, allow_hosts=(site.host,), summary={"base_url": vllm_server, "model": "tiny",
                                                                   "max_tokens": 8, "timeout_s": 60})
    obs = run(tool.call({"url": [site.url + "/text"], "goal": "g"}))
    meta = obs.metadata["pages"][0]
    assert obs.error and meta["summary_attempts"] == 5 and "no JSON object" in meta["summary_error"]
    assert "No information is available from this page." in obs.text


def test_a_hostile_summary_reply_is_parsed_in_linear_time_and_never_raises():
    """Replies that made the parser quadratic (140 kB of unclosed <think> tags: 14 s on the event loop; a fence
    followed by 40,000 spaces: 10 s) or raise (JSON nested past Python's stack)."""
    import time

    from envs.tools.summary import parse_extraction, strip_think

    assert strip_think("a<think>x</think>b<think>y</think>c<think>open") == "abc<think>open"
    t0 = time.perf_counter()
    for reply in ("<think>" * 20_000, "```" + " " * 40_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        assert parse_extraction(reply) is None
    assert time.perf_counter() - t0 < 1.0
    good = '<think>hm</think>```json\n{"evidence": "e", "summary": "s"}```'
    assert parse_extraction(good) == {"rational": "", "evidence": "e", "summary": "s"}
