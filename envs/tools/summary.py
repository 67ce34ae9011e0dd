"""The goal-conditioned page summary of `visit` (SEEDS 3.6; checklist item 15).

Owns: the extractor prompt, the reading of the summary model's JSON answer (`parse_extraction`), the
shortening schedule, `PageSummarizer` (page text + goal -> `PageSummary`) and the rendering of a summary as
WebSailor's tool response (`render_summary`).

How one page is summarised (WebSailor `tool_visit.py`, SEEDS 3.6):
1. The page text, at most `max_chars` characters (WEBCONTENT_MAXLENGTH = 150,000), goes into the extractor
   prompt with the goal, as one user message.
2. The reply must hold one JSON object with the fields "rational", "evidence" and "summary". It is read
   leniently: a <think> block is dropped, a ```json fence is opened, leading and trailing prose is cut (first
   "{" to last "}"). "evidence" and "summary" must be there; lists are joined by lines.
3. On an unreadable reply, or an endpoint that refuses the request as too long (HTTP 400, 413 or 422: vLLM
   answers 400 for a prompt longer than the model's context), the content is cut to `shrink` (70%) of its
   length and asked again, up to `shrink_tries` (3) times, then one last time at `final_chars` (25,000)
   characters:
       lengths = [n, 0.7 n, 0.49 n, 0.343 n, min(0.343 n, 25,000)]         (n = min(len(text), max_chars))
   (the last try is made even when 25,000 is not shorter: the model samples, and may answer this time).
   A transient failure (timeout, 5xx, 429) is first retried by the client itself (`envs/llm.py`, the one
   OpenAI-compatible client, which also caps a reply at `max_reply_bytes`); if the endpoint still fails, or
   refuses for another reason (401, 404: a bad key or model name; a reply over the cap), the summary stops
   there: shortening would not help.
4. When every try fails, the tool response says so in the same two sections (`render_fallback`) and the
   page counts as an error in the observation's metadata.

The extractor prompt is ours: it asks for the same three fields with the same roles as WebSailor's
`EXTRACTOR_PROMPT` (locate the goal's sections; quote the evidence with full context; summarise in one
paragraph), in our words. The tool-response lines ("The useful information in {url} for user goal {goal} as
follows: ", "Evidence in page: ", "Summary: ") are WebSailor's, so a model trained here reads the same frames.

Never: raise into the tool (every failure is a `PageSummary` with ok=False and the reason), send more than
`max_chars` characters of a page, or import anything of the project outside `envs/`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

from envs.llm import ChatClient, HTTPCallError, api_key_from_env

WEBCONTENT_MAXLENGTH = 150_000  # characters of a page given to the summary model (WebSailor)
SHRINK = 0.7
SHRINK_TRIES = 3
FINAL_CHARS = 25_000

EXTRACTOR_PROMPT = """Read the webpage content below and extract what serves the user's goal.

## Webpage Content
{webpage_content}

## User Goal
{goal}

## Instructions
1. rational: locate the specific sections, sentences and figures of the page that bear on the goal, and say \
briefly why they matter.
2. evidence: copy out the most relevant information, keeping the page's original wording and enough of its \
context; leave out nothing important; several paragraphs are fine.
3. summary: write one concise paragraph with a logical flow that says what the page tells about the goal, \
most important first, and how well it answers it.

Answer with a single JSON object with exactly the keys "rational", "evidence" and "summary", and nothing else.
"""

HEADER = "The useful information in {url} for user goal {goal} as follows: \n\n"

_TOO_LONG = (400, 413, 422)  # statuses of a request the endpoint refused as too long or malformed
_FENCE = re.compile(r"```(?:json|JSON)?(.*?)```", re.S)  # no \s* before the group: it backtracks quadratically


def build_messages(goal: str, content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": EXTRACTOR_PROMPT.format(webpage_content=content, goal=goal)}]


def _field(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(_field(v) for v in value)
    if isinstance(value, str):
        return value.strip()
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else str(value)


def strip_think(text: str) -> str:
    """`text` without its closed <think>...</think> blocks, in linear time (a regex's lazy match is quadratic on
    a reply of many unclosed <think> tags: 140 kB of them held the event loop 14 s)."""
    out, at = [], 0
    while (start := text.find("<think>", at)) != -1 and (end := text.find("</think>", start + 7)) != -1:
        out.append(text[at:start])
        at = end + len("</think>")
    return "".join(out) + text[at:]


def parse_extraction(reply: str) -> dict[str, str] | None:
    """{"rational", "evidence", "summary"} from a summary model's reply, or None when it holds no readable
    JSON object with (at least) "evidence" and "summary"."""
    text = strip_think(reply or "")
    if "</think>" in text:  # a template that opens <think> in the prompt: only the closing tag is generated
        text = text.rsplit("</think>", 1)[1]
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        left, right = candidate.find("{"), candidate.rfind("}")
        if left == -1 or right <= left:
            continue
        try:
            data = json.loads(candidate[left:right + 1])
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than Python's stack
            continue
        if isinstance(data, dict) and "evidence" in data and "summary" in data:
            return {"rational": _field(data.get("rational", "")), "evidence": _field(data["evidence"]),
                    "summary": _field(data["summary"])}
    return None


def shrink_schedule(n: int, shrink: float = SHRINK, tries: int = SHRINK_TRIES,
                    final_chars: int = FINAL_CHARS) -> list[int]:
    """The content lengths tried in order (module docstring, step 3)."""
    lengths = [n]
    for _ in range(tries):
        lengths.append(int(lengths[-1] * shrink + 1e-6))  # 700 * 0.7 is 489.99999... in floating point
    lengths.append(min(lengths[-1], final_chars))
    return lengths


@dataclass
class PageSummary:
    """What the summary model made of one page; ok False: `error` says why, evidence and summary are ''."""

    ok: bool
    evidence: str = ""
    summary: str = ""
    rational: str = ""
    attempts: int = 0
    chars: int = 0  # characters of the page in the prompt that succeeded (or in the last one tried)
    error: str | None = None


class Summarizer(Protocol):
    async def summarize(self, goal: str, text: str) -> PageSummary: ...


class Chat(Protocol):
    async def complete(self, messages: list[dict[str, Any]]) -> str: ...


class PageSummarizer:
    """Page text + goal -> `PageSummary`, through any chat client (`envs.llm.ChatClient`)."""

    def __init__(self, client: Chat, *, max_chars: int = WEBCONTENT_MAXLENGTH, shrink: float = SHRINK,
                 shrink_tries: int = SHRINK_TRIES, final_chars: int = FINAL_CHARS):
        if not 0 < shrink < 1 or shrink_tries < 0 or max_chars < 1 or final_chars < 1:
            raise ValueError(f"PageSummarizer: need 0 < shrink < 1 (got {shrink}), shrink_tries >= 0 (got "
                             f"{shrink_tries}), max_chars >= 1 (got {max_chars}), final_chars >= 1 (got {final_chars})")
        self.client, self.max_chars = client, max_chars
        self.shrink, self.shrink_tries, self.final_chars = shrink, shrink_tries, final_chars

    async def summarize(self, goal: str, text: str) -> PageSummary:
        content = text[: self.max_chars]
        error, attempts = "no attempt made", 0
        for length in shrink_schedule(len(content), self.shrink, self.shrink_tries, self.final_chars):
            attempts += 1
            content = content[:length]
            try:
                reply = await self.client.complete(build_messages(goal, content))
            except HTTPCallError as exc:
                error = str(exc)
                if exc.status in _TOO_LONG:  # e.g. vLLM's 400 for a prompt over the context: shorten
                    continue
                break  # down, overloaded, bad key or model name: shortening will not help
            parsed = parse_extraction(reply)
            if parsed is not None:
                return PageSummary(True, parsed["evidence"], parsed["summary"], parsed["rational"], attempts, length)
            error = f"no JSON object with 'evidence' and 'summary' in the reply: {reply[:200]!r}"
        return PageSummary(False, attempts=attempts, chars=len(content), error=error)


def render_summary(url: str, goal: str, s: PageSummary) -> str:
    """WebSailor's tool response for one page."""
    if not s.ok:
        return render_fallback(url, goal, s)
    return (HEADER.format(url=url, goal=goal) + "Evidence in page: \n" + s.evidence + "\n\n"
            + "Summary: \n" + s.summary + "\n\n")


def render_fallback(url: str, goal: str, s: PageSummary) -> str:
    return (HEADER.format(url=url, goal=goal)
            + "Evidence in page: \nThe page was fetched, but no summary of it could be made for this goal "
            f"({s.attempts} tries failed). Try another page, or visit this one again with a narrower goal.\n\n"
            + "Summary: \nNo information is available from this page.\n\n")


CLIENT_KEYS = {"base_url", "model", "timeout_s", "max_retries", "backoff_s", "backoff_max_s", "temperature",
               "max_tokens", "extra_body", "max_reply_bytes", "rate_limit", "burst", "cache_size"}
SUMMARY_KEYS = {"max_chars", "shrink", "shrink_tries", "final_chars"}


def _parts(config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The client's and the summarizer's settings of a `summary` mapping; ValueError for an unknown or missing key."""
    if not isinstance(config, dict):
        raise ValueError(f"visit summary: expected a mapping with base_url and model, or null; got {config!r}")
    unknown = sorted(set(config) - CLIENT_KEYS - SUMMARY_KEYS - {"api_key_env"})
    if unknown:
        raise ValueError(f"visit summary: unknown key(s) {unknown}; allowed: "
                         f"{sorted(CLIENT_KEYS | SUMMARY_KEYS | {'api_key_env'})}")
    missing = [k for k in ("base_url", "model") if not config.get(k)]
    if missing:
        raise ValueError(f"visit summary: missing {missing} (e.g. base_url: http://127.0.0.1:8000/v1, the "
                         f"served model name as model)")
    return ({k: v for k, v in config.items() if k in CLIENT_KEYS},
            {k: v for k, v in config.items() if k in SUMMARY_KEYS})


def check_summary(config: Any) -> None:
    """What `make_summarizer(config)` would refuse (a key, a type, a value), found when the config is loaded and
    without building anything that lasts; the API key's variable is not read (it may be set only where the run
    runs). ValueError naming the key."""
    if config is None:
        return
    from envs.registry import check_arguments  # the registry imports the tools, this module among them

    client, summary = _parts(config)
    key_env = config.get("api_key_env")
    if key_env is not None and not isinstance(key_env, str):
        raise ValueError(f"visit summary: bad value for 'api_key_env': the name of an environment variable, or null "
                         f"(given {key_env!r})")
    check_arguments(ChatClient.__init__, client, "visit summary", skip=("self",))
    check_arguments(PageSummarizer.__init__, summary, "visit summary", skip=("self", "client"))
    ChatClient(**client, service="visit summary")  # its value checks; it opens nothing
    PageSummarizer(None, **summary)


def make_summarizer(config: dict[str, Any] | None) -> PageSummarizer | None:
    """The visit tool's `summary` setting -> a summarizer (None: no summary, the tool returns page text).

    Keys: base_url and model (required); api_key_env (the name of an environment variable holding the key;
    null for a local vLLM server); timeout_s (per request, 60); max_retries (3); backoff_s, backoff_max_s;
    temperature (0.7); max_tokens; extra_body; max_reply_bytes (4 MiB); rate_limit (requests/s, none), burst;
    cache_size (replies kept, 0); max_chars (150,000); shrink (0.7); shrink_tries (3); final_chars (25,000)."""
    if config is None:
        return None
    client_kwargs, summary_kwargs = _parts(config)
    client = ChatClient(**client_kwargs, api_key=api_key_from_env(config.get("api_key_env"), "visit summary"),
                        service="visit summary")
    return PageSummarizer(client, **summary_kwargs)
