"""`visit(url: list[str], goal)`: fetch pages, turn HTML into readable text, truncate, summarise (SEEDS 3.6).

Owns: the tool and its factory `make_visit_tool`, the fetch guard (scheme, allow/deny lists, private /
loopback / link-local / metadata addresses refused unless allowed by config, redirects re-checked, size,
redirect, content-type and time limits), HTML -> text, and truncation. The goal-conditioned LLM summary (JSON
rational / evidence / summary, shortened and retried when unreadable) lives in `envs/tools/summary.py`;
without one the tool returns the page text under WebSailor's header.

Every fetch: the URL is checked by the guard; the request is sent without following redirects; a redirect's
target is checked again before it is requested (at most `max_redirects` hops); a declared Content-Length over
`max_bytes` is refused before the body is read, and a streamed body is cut at `max_bytes`; a binary content
type is refused; the whole fetch, redirects included, ends after `timeout_s`.

Known limit: the guard resolves a host name and httpx resolves it again to connect, so a DNS server that
answers differently the second time (DNS rebinding) could still steer a request to a private address; run the
EnvServer actors where private services are firewalled off when real URLs are allowed.

Never: raise into the agent loop; fetch what the guard refuses; follow a redirect unchecked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from envs.base import Observation, error_observation
from envs.tools.summary import HEADER, WEBCONTENT_MAXLENGTH, Summarizer, make_summarizer, render_summary

_TEXT_TYPES = ("text/", "application/xhtml", "application/xml", "application/json", "application/ld+json",
               "application/rss", "application/atom")


_SSL_CONTEXT = None


def shared_ssl_context():
    """One TLS context per process: building one costs ~50 ms of CPU on the event loop, which would hold
    up every other tool call of the server if each fetch built its own (measured: benchmarks/env_throughput.py)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        import ssl

        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


class FetchGuard:
    """Which URLs may be fetched.

    A host in `deny_hosts` is refused, as are its subdomains ("example.org" denies "a.example.org"); an entry
    may carry a port ("127.0.0.1:8000"). A host in `allow_hosts` (exactly, or host:port) passes even on a
    loopback or private address (the local world server). Any other URL must be http(s) to a public
    address (every address the name resolves to), unless `allow_private`; with `allow_public` False only the
    allowed hosts can be fetched at all (an offline recipe on the synthetic world)."""

    def __init__(self, allow_hosts: tuple[str, ...] = (), deny_hosts: tuple[str, ...] = (),
                 allow_private: bool = False, allow_public: bool = True):
        self.allow_hosts = {h.lower() for h in allow_hosts}
        self.deny_hosts = {h.lower() for h in deny_hosts}
        self.allow_private, self.allow_public = allow_private, allow_public

    def _denied(self, host: str, netloc: str) -> bool:
        return any(host == d or netloc == d or host.endswith("." + d) for d in self.deny_hosts)

    def check(self, url: str) -> str | None:
        """None if allowed, else the reason."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as err:
            return f"malformed URL ({err})"
        if parts.scheme not in ("http", "https"):
            return f"scheme {parts.scheme or '(none)'!r} is not allowed (http and https only)"
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            return "no host in the URL"
        netloc = f"{host}:{port}" if port else host
        if self._denied(host, netloc):
            return f"host {host!r} is on the deny list"
        if host in self.allow_hosts or netloc in self.allow_hosts:
            return None
        if not self.allow_public:
            return f"host {netloc!r} is not on the allow list (only {sorted(self.allow_hosts)} may be visited)"
        if self.allow_private:
            return None
        try:
            infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80),
                                       proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as err:
            return f"cannot resolve {host!r} ({err})"
        for info in infos:
            ip = ipaddress.ip_address(info[4][0].split("%")[0])
            if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:127.0.0.1 is 127.0.0.1
                ip = ip.ipv4_mapped
            if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast \
                    or ip.is_unspecified:
                return f"address {ip} of {host!r} is private, loopback, link-local or reserved"
        return None


class _Text(HTMLParser):
    SKIP = {"script", "style", "noscript", "head", "svg"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "section", "article",
             "ul", "ol", "title"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK or tag in ("td", "th"):
            self.out.append("\n" if tag in self.BLOCK else " ")

    def handle_data(self, data):
        if not self.skip:
            self.out.append(data)


def html_to_text(html: str) -> str:
    p = _Text()
    p.feed(html)
    text = "".join(p.out)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


class VisitTool:
    name = "visit"
    schema = {
        "name": "visit",
        "description": "Visit webpage(s) and return what they say about the goal.",
        "parameters": {
            "type": "object",
            "properties": {
                "url": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                        "description": "The URL(s) of the webpage(s) to visit."},
                "goal": {"type": "string", "description": "What to look for on the page(s)."},
            },
            "required": ["url", "goal"],
        },
    }

    def __init__(self, guard: FetchGuard, *, timeout_s: float = 20.0, max_bytes: int = 5_000_000,
                 max_redirects: int = 5, max_chars: int = WEBCONTENT_MAXLENGTH, max_urls: int = 5,
                 summarizer: Summarizer | None = None):
        if timeout_s <= 0 or max_bytes < 1 or max_redirects < 0 or max_chars < 1 or max_urls < 1:
            raise ValueError(f"visit: need timeout_s > 0 (got {timeout_s}), max_bytes >= 1 (got {max_bytes}), "
                             f"max_redirects >= 0 (got {max_redirects}), max_chars >= 1 (got {max_chars}), "
                             f"max_urls >= 1 (got {max_urls})")
        self.guard, self.timeout_s, self.max_bytes = guard, timeout_s, max_bytes
        self.max_redirects, self.max_chars, self.max_urls = max_redirects, max_chars, max_urls
        self.summarizer = summarizer

    async def fetch(self, url: str) -> tuple[str | None, str | None]:
        """(text, None) or (None, reason). The whole fetch, redirects included, ends after `timeout_s`."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            return None, f"{url} did not answer within {self.timeout_s:g} s"

    async def _fetch(self, url: str) -> tuple[str | None, str | None]:
        """Redirects are followed by hand, each target re-checked by the guard."""
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, verify=shared_ssl_context()) as client:
            for _ in range(self.max_redirects + 1):
                reason = await asyncio.to_thread(self.guard.check, url)
                if reason:
                    return None, f"refused {url}: {reason}"
                try:
                    async with client.stream("GET", url) as resp:
                        if resp.is_redirect:
                            url = urljoin(url, resp.headers["location"])
                            continue
                        return await self._read(url, resp)
                except httpx.HTTPError as err:
                    return None, f"fetching {url} failed: {type(err).__name__}: {err}"
            return None, f"{url}: more than {self.max_redirects} redirects"

    async def _read(self, url: str, resp: httpx.Response) -> tuple[str | None, str | None]:
        if resp.status_code >= 400:
            return None, f"{url} answered HTTP {resp.status_code}"
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and not (ctype.startswith(_TEXT_TYPES) or ctype.endswith("+xml")):
            return None, f"{url} is {ctype!r}, not a text or HTML page"
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return None, f"{url} is larger than {self.max_bytes} bytes (Content-Length {declared})"
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                return None, f"{url} is larger than {self.max_bytes} bytes"
        text = body.decode(resp.encoding or "utf-8", errors="replace")
        is_html = "html" in ctype or (not ctype and "<html" in text[:1000].lower())
        return (html_to_text(text) if is_html else text), None

    async def _visit(self, url: str, goal: str) -> tuple[str, dict[str, Any]]:
        """One page's tool response and its metadata (error: True when the page gave nothing)."""
        text, reason = await self.fetch(url)
        if text is None:
            return HEADER.format(url=url, goal=goal) + f"Error: {reason}", {"url": url, "error": True}
        text = text[: self.max_chars]
        if self.summarizer is None:
            return HEADER.format(url=url, goal=goal) + text, {"url": url, "error": False, "chars": len(text)}
        summary = await self.summarizer.summarize(goal, text)
        meta = {"url": url, "error": not summary.ok, "chars": len(text), "summary_attempts": summary.attempts,
                "summary_chars": summary.chars}
        if summary.error:
            meta["summary_error"] = summary.error
        return render_summary(url, goal, summary), meta

    async def call(self, arguments: dict) -> Observation:
        urls, goal = arguments.get("url"), arguments.get("goal", "")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u.strip() for u in urls):
            return error_observation(f"Error: visit needs 'url': a non-empty list of URL strings, got {urls!r}",
                                     tool=self.name)
        if not isinstance(goal, str):
            return error_observation(f"Error: visit needs 'goal': a string, got {goal!r}", tool=self.name)
        urls = [u.strip() for u in urls[: self.max_urls]]
        pages = await asyncio.gather(*(self._visit(u, goal) for u in urls))
        errors = sum(meta["error"] for _, meta in pages)
        return Observation("\n=======\n".join(text for text, _ in pages).strip(),
                           metadata={"tool": self.name, "urls": urls, "errors": errors,
                                     "pages": [meta for _, meta in pages]},
                           error=errors == len(pages))


def make_visit_tool(context: dict, allow_hosts: tuple[str, ...] | list[str] = (),
                    deny_hosts: tuple[str, ...] | list[str] = (), allow_private: bool = False,
                    allow_public: bool = True, summary: dict | None = None, timeout_s: float = 20.0,
                    max_bytes: int = 5_000_000, max_redirects: int = 5, max_chars: int = WEBCONTENT_MAXLENGTH,
                    max_urls: int = 5) -> VisitTool:
    """The `visit` tool of a spec (`envs/registry.py`). The hosts in `context["allow_hosts"]` (the world
    server's host:port) are allowed besides `allow_hosts`; `summary` configures the LLM summary
    (`envs.tools.summary.make_summarizer`), None returns the page text."""
    for key, value in (("allow_hosts", allow_hosts), ("deny_hosts", deny_hosts)):
        if isinstance(value, str) or not all(isinstance(h, str) for h in value):
            raise ValueError(f"visit: {key} must be a list of host or host:port strings, got {value!r}")
    guard = FetchGuard(allow_hosts=tuple(allow_hosts) + tuple(context.get("allow_hosts", ())),
                       deny_hosts=tuple(deny_hosts), allow_private=allow_private, allow_public=allow_public)
    return VisitTool(guard, timeout_s=timeout_s, max_bytes=max_bytes, max_redirects=max_redirects,
                     max_chars=max_chars, max_urls=max_urls, summarizer=make_summarizer(summary))
