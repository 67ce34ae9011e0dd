"""`visit(url: list[str], goal)`: fetch pages, turn HTML into readable text, truncate, summarise (SEEDS 3.6).

Owns: the tool and its factory `make_visit_tool`, the fetch guard (`FetchGuard`: scheme, allow/deny lists,
every address that is not globally routable refused unless the config allows it, redirects re-checked),
the decoding of a body under one size cap, HTML -> text within a CPU budget (`page_text`), and truncation. The
goal-conditioned LLM summary (JSON rational / evidence / summary, shortened and retried when unreadable) lives
in `envs/tools/summary.py`; without one the tool returns the page text under WebSailor's header.

Every fetch:
  - the URL is parsed once, by httpx (the parser that sends the request), and checked by the guard: an IPv4
    host written as an integer, in octal / hex or in fewer than four parts is read as the address it denotes;
    the name is resolved once and every address must be globally routable (`address_refusal`: `ipaddress`'s
    is_global plus the IANA special-purpose ranges, e.g. 100.64.0.0/10 with Alibaba's metadata service, and
    the IPv4 address inside IPv4-mapped, 6to4 and NAT64 forms; IPv4-compatible and Teredo are refused), unless
    the host is on the allow list (the world server on 127.0.0.1) or `allow_private`;
  - the request goes to an address that was checked (pinned: the URL's host replaced by the IP, the original
    Host header kept, and for https the name as SNI, against which the certificate is verified), so a name
    that answers differently the second time (DNS rebinding) cannot steer it; proxies from the environment are
    not used (a proxy would resolve the name itself);
  - redirects are followed by hand, each target checked again (at most `max_redirects` hops);
  - a declared Content-Length over `max_bytes` is refused before the body is read; the body's content codings
    (gzip, deflate, stacked up to 4) are undone as it streams, at most 64 kB at a time, every layer's output
    and the wire bytes counted against `max_bytes` (a decompression bomb is refused, never held in memory);
    a binary content type is refused; the network part ends after `timeout_s`;
  - HTML -> text runs in a worker thread, never on the event loop, on at most `max_html_chars` characters and
    for at most `html_budget_s` seconds of CPU; a page cut there says so in its observation.
Each URL's failure, whatever it is (a malformed URL included), is that URL's error block: the other URLs of
the call still come back.

Never: raise into the agent loop; fetch what the guard refuses; connect to an address the guard did not check;
follow a redirect unchecked; hold more than `max_bytes` of a body.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
import zlib
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Iterator

import httpx

from envs.base import Observation, error_observation
from envs.tools.summary import HEADER, WEBCONTENT_MAXLENGTH, Summarizer, check_summary, make_summarizer, render_summary

log = logging.getLogger("windward.envs.visit")

_TEXT_TYPES = ("text/", "application/xhtml", "application/xml", "application/json", "application/ld+json",
               "application/rss", "application/atom")
MAX_HTML_CHARS = 2_000_000  # HTML parsed per page (the text kept is `max_chars`, 150,000 by default)
HTML_BUDGET_S = 2.0  # CPU seconds of HTML -> text per page
MAX_CODINGS = 4  # stacked content codings undone
_CHUNK = 65_536  # the most a decoder yields at once
_HTML_STEP = 32_768  # HTML characters parsed between two looks at the clock
_HTML_TAIL_MAX = 4096  # characters left unparsed at the end that `close` still parses
_SHOWN_URL = 1_000  # characters of a URL repeated in a message


_SSL_CONTEXT = None


def shared_ssl_context():
    """One TLS context per process: building one costs ~50 ms of CPU on the event loop, which would hold
    up every other tool call of the server if each fetch built its own (measured: benchmarks/env_throughput.py)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        import ssl

        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT


# -- which addresses may be fetched ----------------------------------------------------------------------

_NOT_GLOBAL = [ipaddress.ip_network(n) for n in (
    # IANA special-purpose ranges that are not globally reachable (some of which `is_global` of Python 3.11
    # misses: 192.0.0.0/24, 192.88.99.0/24, the multicast blocks), plus deprecated forms
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4",
    "::/96",  # unspecified, loopback and IPv4-compatible (deprecated) addresses
    "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10",
    "fec0::/10", "ff00::/8")]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `ip` may not be fetched, None for a globally routable address. An IPv6 address that carries an IPv4
    one (IPv4-mapped ::ffff:a.b.c.d, 6to4 2002:AABB:CCDD::, NAT64 64:ff9b::a.b.c.d) is judged by that too."""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return address_refusal(ip.ipv4_mapped)
        inner = ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if inner is not None and address_refusal(inner):
            return f"it carries {inner}, which {address_refusal(inner)}"
    if ip.is_global and not any(ip in net for net in _NOT_GLOBAL):
        return None
    kind = next((name for name, yes in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                                        ("multicast", ip.is_multicast), ("unspecified", ip.is_unspecified),
                                        ("private", ip.is_private)) if yes), "special-purpose")
    return f"is not globally routable ({kind})"


def canonical_host(host: str) -> str:
    """The host as the guard compares and resolves it: lowercase, no trailing dot, and an IPv4 address written
    as an integer, in octal or hex, or in fewer than four parts as the dotted quad it denotes (inet_aton's
    reading, which is what a resolver would connect to: 2852039166 and 0xa9.0xfe.0xa9.0xfe are 169.254.169.254)."""
    host = host.lower().rstrip(".")
    if re.fullmatch(r"[0-9a-fx.]+", host) and host[0].isdigit():
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            pass
    return host


@dataclass(frozen=True)
class Target:
    """A URL the guard let through: where to connect (`addresses`, all checked) and what to call it there."""

    url: httpx.URL
    host: str  # canonical: what the allow/deny lists matched, and the TLS name
    port: int
    addresses: tuple[str, ...]


class FetchGuard:
    """Which URLs may be fetched, and at which addresses.

    A host in `deny_hosts` is refused, as are its subdomains ("example.org" denies "a.example.org"); an entry
    may carry a port ("127.0.0.1:8000"). A host in `allow_hosts` (exactly, or host:port) passes even on a
    loopback or private address (the local world server). Any other URL must be http(s) whose every address
    is globally routable (`address_refusal`), unless `allow_private`; with `allow_public` False only the
    allowed hosts can be fetched at all (an offline recipe on the synthetic world)."""

    def __init__(self, allow_hosts: tuple[str, ...] = (), deny_hosts: tuple[str, ...] = (),
                 allow_private: bool = False, allow_public: bool = True):
        self.allow_hosts = {_canonical_entry(h) for h in allow_hosts}
        self.deny_hosts = {_canonical_entry(h) for h in deny_hosts}
        self.allow_private, self.allow_public = allow_private, allow_public

    def _denied(self, host: str, netloc: str) -> bool:
        return any(host == d or netloc == d or host.endswith("." + d) for d in self.deny_hosts)

    def check(self, url: str) -> str | None:
        """None if allowed, else the reason. Resolves the name (blocking) only where its addresses matter."""
        admitted = self._admit(url)
        if isinstance(admitted, str) or admitted[3]:
            return admitted if isinstance(admitted, str) else None
        target = self._resolve(*admitted)
        return target if isinstance(target, str) else None

    def resolve(self, url: str) -> Target | str:
        """The checked `Target` of `url`, or why it is refused. The name is resolved here, once (blocking: run it
        in a thread); the fetch connects only to the addresses returned."""
        admitted = self._admit(url)
        return admitted if isinstance(admitted, str) else self._resolve(*admitted)

    def _admit(self, url: str) -> tuple[httpx.URL, str, int, bool] | str:
        """(parsed URL, canonical host, port, trusted: its addresses are not checked) or why it is refused."""
        try:
            parsed = httpx.URL(url)
            raw_host = parsed.raw_host.decode("ascii")
            scheme = parsed.scheme
        except (httpx.InvalidURL, ValueError, UnicodeError, TypeError) as err:
            return f"malformed URL ({err})"
        if scheme not in ("http", "https"):
            return f"scheme {scheme or '(none)'!r} is not allowed (http and https only)"
        host = canonical_host(raw_host)
        if not host:
            return "no host in the URL"
        port = parsed.port or (443 if scheme == "https" else 80)
        netloc = f"{host}:{port}"
        if self._denied(host, netloc):
            return f"host {host!r} is on the deny list"
        allowed = host in self.allow_hosts or netloc in self.allow_hosts
        if not allowed and not self.allow_public:
            return f"host {netloc!r} is not on the allow list (only {sorted(self.allow_hosts)} may be visited)"
        return parsed, host, port, allowed or self.allow_private

    def _resolve(self, parsed: httpx.URL, host: str, port: int, trusted: bool) -> Target | str:
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
            addresses = list(dict.fromkeys(info[4][0] for info in infos))
            ips = [ipaddress.ip_address(a) for a in addresses]
        except (OSError, UnicodeError, ValueError) as err:
            return f"cannot resolve {host!r} ({err})"
        if not ips:
            return f"cannot resolve {host!r} (no address)"
        if not trusted:
            for ip in ips:
                why = address_refusal(ip)
                if why:
                    return f"address {ip} of {host!r} {why}"
        return Target(parsed, host, port, tuple(addresses))


def _canonical_entry(entry: str) -> str:
    """An allow/deny entry ("host", "host:port", "[v6]:port") in the form `FetchGuard.resolve` compares."""
    entry = entry.strip().lower()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return f"{host}:{rest[1:]}" if rest.startswith(":") else host
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return f"{canonical_host(host)}:{port}"
    return canonical_host(entry)


# -- the body: content codings undone under one cap ------------------------------------------------------

class TooLarge(Exception):
    pass


def content_codings(header: str) -> list[str] | str:
    """The codings of a Content-Encoding header in the order to undo them (the last applied first), or why
    they cannot be undone."""
    names = [c.strip().lower() for c in header.split(",") if c.strip()]
    names = ["gzip" if c == "x-gzip" else c for c in names if c != "identity"]
    unknown = [c for c in names if c not in ("gzip", "deflate")]
    if unknown:
        return f"content encoding {unknown[0]!r} is not supported (gzip and deflate only)"
    if len(names) > MAX_CODINGS:
        return f"more than {MAX_CODINGS} content encodings ({header!r})"
    return names[::-1]


class _Inflater:
    """One content coding undone in steps of at most `_CHUNK` bytes of output ("deflate" also as raw deflate
    without the zlib header, which some servers send)."""

    def __init__(self, coding: str):
        self.coding, self.started, self.raw = coding, False, False
        self.z = zlib.decompressobj(16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while True:
            try:
                out = self.z.decompress(data, _CHUNK)
            except zlib.error:
                if self.coding != "deflate" or self.started or self.raw:
                    raise
                self.raw, self.z = True, zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            self.started = self.started or bool(out)
            if out:
                yield out
            data = self.z.unconsumed_tail
            if not data and len(out) < _CHUNK:
                return


class BodyDecoder:
    """A body's content codings undone as it streams; every layer's output counted against `max_bytes`
    (`TooLarge` past it), so a stacked bomb (gzip of gzip of zeros) never holds more than a few chunks."""

    def __init__(self, codings: list[str], max_bytes: int):
        self.layers = [_Inflater(c) for c in codings]
        self.produced = [0] * len(self.layers)
        self.max_bytes = max_bytes

    def feed(self, data: bytes, layer: int = 0) -> Iterator[bytes]:
        if layer == len(self.layers):
            if data:
                yield data
            return
        for piece in self.layers[layer].feed(data):
            self.produced[layer] += len(piece)
            if self.produced[layer] > self.max_bytes:
                raise TooLarge
            yield from self.feed(piece, layer + 1)

    def flush(self) -> Iterator[bytes]:
        for layer in range(len(self.layers)):
            yield from self.feed(b"", layer)


# -- HTML -> text ----------------------------------------------------------------------------------------

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


def page_text(html: str, max_html_chars: int = MAX_HTML_CHARS,
              budget_s: float = HTML_BUDGET_S) -> tuple[str, str | None]:
    """(readable text, None), or (the text so far, what was cut): at most `max_html_chars` characters of HTML
    are parsed, for at most `budget_s` seconds of this thread's CPU (the parser is fed in steps, the clock
    read between them). CPU-bound: run it in a worker thread, not on an event loop."""
    total, note = len(html), None
    if total > max_html_chars:
        html, note = html[:max_html_chars], f"the page's HTML was cut at {max_html_chars:,} of {total:,} characters"
    parser, start = _Text(), time.thread_time()
    for at in range(0, len(html), _HTML_STEP):
        if time.thread_time() - start > budget_s:
            note = f"HTML-to-text stopped after {budget_s:g} s of CPU at character {at:,} of {total:,}"
            break
        parser.feed(html[at: at + _HTML_STEP])
    else:
        tail = len(parser.rawdata)  # what the parser could not take yet: an unclosed tag, comment or declaration
        if tail > _HTML_TAIL_MAX:  # closing parses it in time quadratic in its length (CPython before 3.11.13)
            note = f"an unclosed tag of {tail:,} characters at the end of the page's HTML was left out"
        else:
            parser.close()
    text = re.sub(r"[ \t\r\f\v]+", " ", "".join(parser.out))
    return re.sub(r"\n\s*\n+", "\n\n", text).strip(), note


def html_to_text(html: str) -> str:
    """All of a page's text, without limits (`page_text` for untrusted pages)."""
    return page_text(html, len(html) + 1, float("inf"))[0]


def _shown(url: str) -> str:
    return url if len(url) <= _SHOWN_URL else url[:_SHOWN_URL] + f"... ({len(url):,} characters)"


# -- the tool ----------------------------------------------------------------------------------------------

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
                 summarizer: Summarizer | None = None, max_html_chars: int = MAX_HTML_CHARS,
                 html_budget_s: float = HTML_BUDGET_S):
        if timeout_s <= 0 or max_bytes < 1 or max_redirects < 0 or max_chars < 1 or max_urls < 1 \
                or max_html_chars < 1 or not html_budget_s > 0:
            raise ValueError(f"visit: need timeout_s > 0 (got {timeout_s}), max_bytes >= 1 (got {max_bytes}), "
                             f"max_redirects >= 0 (got {max_redirects}), max_chars >= 1 (got {max_chars}), "
                             f"max_urls >= 1 (got {max_urls}), max_html_chars >= 1 (got {max_html_chars}), "
                             f"html_budget_s > 0 (got {html_budget_s})")
        self.guard, self.timeout_s, self.max_bytes = guard, timeout_s, max_bytes
        self.max_redirects, self.max_chars, self.max_urls = max_redirects, max_chars, max_urls
        self.max_html_chars, self.html_budget_s = max_html_chars, html_budget_s
        self.summarizer = summarizer

    async def fetch(self, url: str) -> tuple[str | None, str | None, str | None]:
        """(text, None, what was cut or None) or (None, reason, None). The network part, redirects included,
        ends after `timeout_s`; HTML -> text then runs in a thread within its own budget."""
        try:
            async with asyncio.timeout(self.timeout_s):
                body, reason, is_html = await self._fetch(url)
        except TimeoutError:
            return None, f"{_shown(url)} did not answer within {self.timeout_s:g} s", None
        if body is None or not is_html:
            return body, reason, None
        text, note = await asyncio.to_thread(page_text, body, self.max_html_chars, self.html_budget_s)
        return text, None, note

    async def _fetch(self, url: str) -> tuple[str | None, str | None, bool]:
        """Redirects are followed by hand, each target checked and pinned by the guard."""
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, verify=shared_ssl_context(),
                                     trust_env=False) as client:
            for _ in range(self.max_redirects + 1):
                target = await asyncio.to_thread(self.guard.resolve, url)
                if isinstance(target, str):
                    return None, f"refused {_shown(url)}: {target}", False
                try:
                    resp = await self._send(client, target)
                except httpx.HTTPError as err:
                    return None, f"fetching {_shown(url)} failed: {type(err).__name__}: {err}", False
                try:
                    if resp.is_redirect:
                        try:
                            url = str(target.url.join(resp.headers["location"]))
                        except (httpx.InvalidURL, ValueError, UnicodeError) as err:
                            return None, f"{_shown(url)} redirects to a malformed URL ({err})", False
                        continue
                    return await self._read(url, resp)
                except httpx.HTTPError as err:
                    return None, f"fetching {_shown(url)} failed: {type(err).__name__}: {err}", False
                finally:
                    await resp.aclose()
            return None, f"{_shown(url)}: more than {self.max_redirects} redirects", False

    async def _send(self, client: httpx.AsyncClient, target: Target) -> httpx.Response:
        """GET `target` at one of its checked addresses (the next one if a connection is refused), under its
        own name: the Host header, and for https the SNI name the certificate is verified against."""
        headers = {"Host": target.url.netloc.decode("ascii"), "Accept-Encoding": "gzip, deflate"}
        extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
        for i, address in enumerate(target.addresses):
            request = client.build_request("GET", target.url.copy_with(host=address), headers=headers,
                                           extensions=extensions)
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError:
                if i == len(target.addresses) - 1:
                    raise
        raise AssertionError("a target has at least one address")

    async def _read(self, url: str, resp: httpx.Response) -> tuple[str | None, str | None, bool]:
        shown = _shown(url)
        if resp.status_code >= 400:
            return None, f"{shown} answered HTTP {resp.status_code}", False
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and not (ctype.startswith(_TEXT_TYPES) or ctype.endswith("+xml")):
            return None, f"{shown} is {ctype!r}, not a text or HTML page", False
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return None, f"{shown} is larger than {self.max_bytes} bytes (Content-Length {declared})", False
        codings = content_codings(resp.headers.get("content-encoding", ""))
        if isinstance(codings, str):
            return None, f"{shown}: {codings}", False
        decoder, body, wire = BodyDecoder(codings, self.max_bytes), bytearray(), 0
        try:
            async for chunk in resp.aiter_raw():
                wire += len(chunk)
                for piece in decoder.feed(chunk):
                    body += piece
                if wire > self.max_bytes or len(body) > self.max_bytes:
                    raise TooLarge
            for piece in decoder.flush():
                body += piece
        except TooLarge:
            return None, f"{shown} is larger than {self.max_bytes} bytes", False
        except zlib.error as err:
            return None, f"{shown}: its {', '.join(codings[::-1])} content could not be decoded ({err})", False
        if len(body) > self.max_bytes:
            return None, f"{shown} is larger than {self.max_bytes} bytes", False
        text = body.decode(resp.encoding or "utf-8", errors="replace")
        is_html = "html" in ctype or (not ctype and "<html" in text[:1000].lower())
        return text, None, is_html

    async def _visit(self, url: str, goal: str) -> tuple[str, dict[str, Any]]:
        """One page's tool response and its metadata (error: True when the page gave nothing). Whatever goes
        wrong is this page's error block, never the call's exception."""
        header = HEADER.format(url=_shown(url), goal=goal)
        try:
            text, reason, cut = await self.fetch(url)
            if text is None:
                return header + f"Error: {reason}", {"url": url, "error": True}
            text = text[: self.max_chars]
            note = f"\n[The page was cut: {cut}.]" if cut else ""
            meta: dict[str, Any] = {"url": url, "error": False, "chars": len(text)}
            if cut:
                meta["cut"] = cut
            if self.summarizer is None:
                return header + text + note, meta
            summary = await self.summarizer.summarize(goal, text)
            meta.update(error=not summary.ok, summary_attempts=summary.attempts, summary_chars=summary.chars)
            if summary.error:
                meta["summary_error"] = summary.error
            return render_summary(url, goal, summary) + note, meta
        except Exception as err:  # noqa: BLE001 - a page's failure is that page's observation
            log.warning("visit %s failed: %s: %s", _shown(url), type(err).__name__, err)
            return header + f"Error: fetching {_shown(url)} failed: {type(err).__name__}: {err}", \
                {"url": url, "error": True}

    async def call(self, arguments: dict) -> Observation:
        urls, goal = arguments.get("url"), arguments.get("goal", "")
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u.strip() for u in urls):
            return error_observation(f"Error: visit needs 'url': a non-empty list of URL strings, got {urls!r}"[:2000],
                                     tool=self.name)
        if not isinstance(goal, str):
            return error_observation(f"Error: visit needs 'goal': a string, got {goal!r}"[:2000], tool=self.name)
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
                    max_urls: int = 5, max_html_chars: int = MAX_HTML_CHARS,
                    html_budget_s: float = HTML_BUDGET_S) -> VisitTool:
    """The `visit` tool of a spec (`envs/registry.py`). The hosts in `context["allow_hosts"]` (the world
    server's host:port) are allowed besides `allow_hosts`; `summary` configures the LLM summary
    (`envs.tools.summary.make_summarizer`), None returns the page text."""
    for key, value in (("allow_hosts", allow_hosts), ("deny_hosts", deny_hosts)):
        if isinstance(value, str) or not all(isinstance(h, str) for h in value):
            raise ValueError(f"visit: {key} must be a list of host or host:port strings, got {value!r}")
    guard = FetchGuard(allow_hosts=tuple(allow_hosts) + tuple(context.get("allow_hosts", ())),
                       deny_hosts=tuple(deny_hosts), allow_private=allow_private, allow_public=allow_public)
    return VisitTool(guard, timeout_s=timeout_s, max_bytes=max_bytes, max_redirects=max_redirects,
                     max_chars=max_chars, max_urls=max_urls, summarizer=make_summarizer(summary),
                     max_html_chars=max_html_chars, html_budget_s=html_budget_s)


def check_visit_arguments(arguments: dict) -> None:
    """At load (`envs/registry.validate_tools`): the `summary` mapping's keys, types and values, as
    `make_summarizer` would check them, without reading its API key's variable."""
    check_summary(arguments.get("summary"))


make_visit_tool.check = check_visit_arguments
