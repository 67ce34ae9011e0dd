"""EnvServer: the tools of one environment process, with limits, a cache, retries and metrics.

Owns: `EnvServer` (hosts the tools of a spec, `envs.registry.build_tools`, and answers `async call(name,
arguments) -> Observation`), `ToolLimits` (the per-tool policy; `check_limits`, its dry run), `TokenBucket`,
and `WorldHost` (one synthetic world's web server with a configurable latency per page). Both are plain classes:
`rl/env_group.py` makes N EnvServers and one WorldHost into Ray actors; a test or a notebook uses them
in process. The world's HTTP server is one per EnvGroup, so a URL means the same page on every server;
each EnvServer rebuilds the world from its seed for the search index (deterministic) and is given the
host's `base_url`. Without a `base_url` an EnvServer starts a WorldHost of its own.

Per call: the tool's concurrency semaphore (waiting at most `queue_timeout_s`), its token-bucket rate
limit, then up to `1 + retries` attempts, each cut at `timeout_s`. A transient failure (an observation
with `metadata["transient"]`, or an httpx transport error / ConnectionError raised by the tool) is retried
after an exponential backoff with jitter; a timeout is not (a tool that hangs once usually hangs again).
Cacheable tools (search, visit by default; never python) keep successful observations in an LRU keyed by
the tool and the canonical JSON of its arguments; identical calls in flight at once share one execution.
Everything that goes wrong is an error observation that names the tool (`metadata["error_type"]`:
unknown_tool, bad_arguments, busy, timeout, exception, bad_result). Arguments are checked against the
tool's schema before anything runs (`envs.base.check_arguments`: wrong types, missing keys, lone
surrogates, NaN, huge strings or numbers, deep nesting); what fails is the tool's error observation,
naming the argument, never cached. Sync tools (a blocking `call`) run in a thread pool of
`threads` workers (SEEDS 9.1: tool calls run in a thread pool of up to 128 workers).

Metrics per tool: calls, errors, bad_arguments, timeouts, retries, cache hits, in flight, latency mean / p50 / p95 / max
(over the last `LATENCY_WINDOW` calls).

Never: raise into a caller; cache an error or a python result; import anything of the project outside
`envs/` (DESIGN section 1); know about Ray.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import inspect
import json
import logging
import os
import sys
import time
import zlib
from dataclasses import asdict, dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

import msgspec

from envs.base import Observation, Tool, check_arguments, error_observation
from envs.llm import backoff_delay
from envs.registry import build_tools
from envs.world import Fault, SearchIndex, WorldServer, generate_world
from envs.world.pages import WIKI_PREFIX

log = logging.getLogger("windward.envs.server")

LATENCY_WINDOW = 10_000
CACHEABLE_KINDS = frozenset({"search", "visit", "web_search"})  # web_search: WebWatcher's search


@dataclass(frozen=True)
class ToolLimits:
    """What the server enforces around one tool."""

    timeout_s: float = 60.0  # per attempt
    concurrency: int = 64  # calls running at once
    queue_timeout_s: float | None = None  # waiting for a slot (and a rate token); None: timeout_s
    rate_per_s: float | None = None  # token bucket refill; None: unlimited
    burst: int | None = None  # bucket size; None: max(1, rate_per_s)
    cache: bool = False
    retries: int = 2  # extra attempts after a transient failure
    backoff_s: float = 0.25
    backoff_max_s: float = 4.0

    def __post_init__(self):
        if not self.timeout_s > 0 or self.concurrency < 1 or self.retries < 0 or self.backoff_s < 0:
            raise ValueError(f"tool limits: need timeout_s > 0, concurrency >= 1, retries >= 0, backoff_s >= 0; "
                             f"got {self}")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError(f"tool limits: rate_per_s={self.rate_per_s} must be > 0 (or None: unlimited)")

    @classmethod
    def of(cls, base: ToolLimits, overrides: dict | ToolLimits | None, tool: str) -> ToolLimits:
        if overrides is None:
            return base
        if isinstance(overrides, ToolLimits):
            return overrides
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"limits of tool {tool!r}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return replace(base, **overrides)


def check_limits(kinds: dict[str, str], limits: dict | None) -> None:
    """What EnvServer refuses in `limits` ({tool name: {ToolLimits field: value}}) for tools of these kinds
    ({name: kind}), found without building a tool: an unknown tool or field, a value of the wrong type or range."""
    limits = dict(limits or {})
    unknown = sorted(set(limits) - set(kinds))
    if unknown:
        raise ValueError(f"EnvServer limits: no tool named {unknown}; tools: {sorted(kinds)}")
    for name, overrides in limits.items():
        if overrides is not None and not isinstance(overrides, (dict, ToolLimits)):
            raise ValueError(f"limits of tool {name!r}: expected a mapping of ToolLimits fields, got {overrides!r}")
        merged = ToolLimits.of(default_limits(kinds[name]), overrides, name)  # unknown fields
        try:
            msgspec.convert(asdict(merged), ToolLimits)  # types, then ToolLimits' own range checks
        except msgspec.ValidationError as err:
            raise ValueError(f"limits of tool {name!r}: {err}") from None


def default_limits(kind: str, tool: Tool | None = None) -> ToolLimits:
    """Per kind: search and visit are cached; python is never cached nor retried, runs at most one sandbox
    per core, and its server timeout leaves room for the sandbox's own."""
    if kind in ("python", "code_interpreter"):  # code_interpreter: WebWatcher's name for the python sandbox
        inner = getattr(getattr(tool, "limits", None), "timeout_s", 10.0)
        return ToolLimits(timeout_s=inner + 10.0, concurrency=max(1, os.cpu_count() or 1), retries=0)
    return ToolLimits(cache=kind in CACHEABLE_KINDS)


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up; `acquire()` waits for one."""

    def __init__(self, rate_per_s: float, burst: int | None = None):
        self.rate = rate_per_s
        self.capacity = float(burst if burst is not None else max(1.0, rate_per_s))
        self.tokens, self.stamp = self.capacity, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    async def acquire(self) -> float:
        """Seconds waited."""
        t0 = time.monotonic()
        while True:
            self._refill()
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return time.monotonic() - t0
            await asyncio.sleep((1.0 - self.tokens) / self.rate)


def cache_key(name: str, arguments: dict) -> str:
    """The tool and the canonical JSON of its arguments (sorted keys, no spaces)."""
    return name + "\0" + json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                                    default=repr)


def _is_transient_error(err: BaseException) -> bool:
    if isinstance(err, ConnectionError):
        return True
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is a dependency
        return False
    return isinstance(err, httpx.TransportError)


class _Stats:
    def __init__(self):
        self.calls = self.errors = self.timeouts = self.retries = self.cache_hits = self.busy = 0
        self.bad_arguments = 0
        self.in_flight = 0
        self.latency: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    def as_dict(self, samples: bool = False) -> dict:
        out = {"calls": self.calls, "errors": self.errors, "bad_arguments": self.bad_arguments,
               "timeouts": self.timeouts, "retries": self.retries,
               "cache_hits": self.cache_hits, "busy": self.busy, "in_flight": self.in_flight}
        out.update(latency_summary(list(self.latency)))
        if samples:
            out["latency_samples"] = list(self.latency)
        return out


def latency_summary(samples: list[float]) -> dict:
    if not samples:
        return {"latency_mean_s": 0.0, "latency_p50_s": 0.0, "latency_p95_s": 0.0, "latency_max_s": 0.0}
    s = sorted(samples)

    def pct(q: float) -> float:
        return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]

    return {"latency_mean_s": sum(s) / len(s), "latency_p50_s": pct(0.5), "latency_p95_s": pct(0.95),
            "latency_max_s": s[-1]}


def world_port(seed: int, size: str | int) -> int:
    """The world's own port, the same for a (seed, size) in every run on every machine. Its URLs, which search
    results, the expert's SFT data and every trajectory carry, then stay the same from run to run: a policy
    trained in one run meets the URLs it learnt in the next and in launch/evaluate.py (with a port drawn per run,
    a policy that had memorised its run's port visited a server that was gone). 20000-31999: below Linux's
    ephemeral range, where the OS draws free ports."""
    return 20000 + zlib.crc32(f"{seed}:{size}".encode()) % 12000


class WorldHost:
    """One synthetic world served over HTTP with `latency_s` added to every page (the slow real web), on the
    world's own port (`world_port`) where it is free, else on any free port with a warning (its URLs then
    differ from other runs'; `port_note` says so)."""

    def __init__(self, seed: int = 0, size: str | int = "tiny", latency_s: float = 0.1, host: str = "127.0.0.1"):
        self.seed, self.size, self.latency_s = seed, size, latency_s
        self.world = generate_world(seed, size)
        self._latency = Fault(delay_s=latency_s) if latency_s > 0 else None
        self.paths = ["/"] + [WIKI_PREFIX + eid for eid in self.world.entities]
        faults = {p: self._latency for p in self.paths} if self._latency else {}
        own = world_port(seed, size)
        self.server = WorldServer(self.world, host=host, port=own, faults=faults)
        self.port_note = None
        try:
            self._base_url = self.server.start()
        except OSError as err:  # another run of the same world on this machine holds it
            self.server.port = 0
            self._base_url = self.server.start()
            self.port_note = (f"the world's own port {own} is taken ({err.strerror}); serving on {self.server.port}, "
                              "so its URLs differ from other runs' of this world")
            print(f"warning: {self.port_note}", file=sys.stderr)

    def base_url(self) -> str:
        return self._base_url

    def set_fault(self, path: str, delay_s: float = 0.0, status: int | None = None, times: int | None = None,
                  clear: bool = False) -> None:
        """Inject a fault on `path` ("/wiki/<id>"); `clear=True` restores the page's plain latency."""
        if clear:
            self.server.set_fault(path, self._latency if path in self.paths else None)
        else:
            self.server.set_fault(path, Fault(delay_s=delay_s, status=status, times=times))

    def request_count(self, path: str | None = None) -> int:
        return self.server.request_count(path)

    def stop(self) -> None:
        self.server.stop()


class EnvServer:
    """The tools of a spec behind `async call(name, arguments) -> Observation` (module docstring).

    tools: a spec {name: {"kind": ..., **factory arguments}} (`envs/registry.py`) or a list of Tool objects.
    world: {"seed", "size", "latency_s"} of the synthetic world; with `base_url` (a WorldHost's) the pages
      are the host's, else this server starts a WorldHost of its own.
    limits: {tool name: {ToolLimits field: value}} over the defaults of its kind (`default_limits`).
    """

    def __init__(self, tools: dict | list, world: dict | None = None, base_url: str | None = None,
                 limits: dict | None = None, cache_size: int = 4096, threads: int = 128,
                 tmp_dir: str | None = None):
        self.world_host: WorldHost | None = None
        context: dict[str, Any] = {"tmp_dir": tmp_dir}
        if world is not None:
            world = dict(world)
            unknown = sorted(set(world) - {"seed", "size", "latency_s"})
            if unknown:
                raise ValueError(f"EnvServer world: unknown key(s) {unknown}; allowed: seed, size, latency_s")
            if base_url is None:
                self.world_host = WorldHost(**world)
                base_url, w = self.world_host.base_url(), self.world_host.world
            else:
                w = generate_world(world.get("seed", 0), world.get("size", "tiny"))
            context.update(world=w, base_url=base_url, index=SearchIndex.from_world(w, base_url),
                           allow_hosts=[urlsplit(base_url).netloc])
        self.base_url = base_url
        if isinstance(tools, dict):
            kinds = {name: (spec or {}).get("kind", name) for name, spec in tools.items()}
            built = build_tools(tools, context)
        else:
            built = list(tools)
            kinds = {t.name: t.name for t in built}
        self.tools: dict[str, Tool] = {t.name: t for t in built}
        if len(self.tools) != len(built):
            raise ValueError(f"EnvServer: duplicate tool names in {[t.name for t in built]}")
        limits = dict(limits or {})
        check_limits(kinds, limits)
        self.limits = {n: ToolLimits.of(default_limits(kinds[n], t), limits.get(n), n) for n, t in self.tools.items()}
        self._sem = {n: asyncio.Semaphore(lim.concurrency) for n, lim in self.limits.items()}
        self._bucket = {n: TokenBucket(lim.rate_per_s, lim.burst) for n, lim in self.limits.items()
                        if lim.rate_per_s is not None}
        self._stats = {n: _Stats() for n in self.tools}
        self._cache: collections.OrderedDict[str, Observation] = collections.OrderedDict()
        self.cache_size = cache_size
        self._pending: dict[str, asyncio.Future] = {}
        self._threads = threads
        self._loop_with_pool: asyncio.AbstractEventLoop | None = None
        self._async = {n: inspect.iscoroutinefunction(t.call) for n, t in self.tools.items()}

    # -- the protocol -----------------------------------------------------------------------------------

    def tool_schemas(self) -> list[dict]:
        return [{"type": "function", "function": t.schema} for t in self.tools.values()]

    async def call(self, name: str, arguments: dict, key: str | None = None) -> Observation:
        t0 = time.perf_counter()
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            return error_observation(f"Error: unknown tool {name!r:.80}; available tools: {sorted(self.tools)}",
                                     tool=str(name)[:80], error_type="unknown_tool")
        stats, limits = self._stats[name], self.limits[name]
        stats.calls += 1
        stats.in_flight += 1
        try:
            why = check_arguments(name, tool.schema, arguments)
            if why is not None:
                stats.bad_arguments += 1
                obs = error_observation(why, tool=name, error_type="bad_arguments")
            else:
                obs = await self._cached_call(name, tool, arguments, limits, stats)
        except Exception as err:  # a bug of the server itself must still not reach the agent loop
            log.exception("EnvServer: tool %r", name)
            obs = error_observation(f"Error: tool {name!r} failed: {type(err).__name__}: {err}", tool=name,
                                    error_type="exception")
        finally:
            stats.in_flight -= 1
        latency = time.perf_counter() - t0
        stats.latency.append(latency)
        if obs.error:
            stats.errors += 1
        obs.metadata.setdefault("tool", name)
        obs.metadata["latency_s"] = latency
        return obs

    async def _cached_call(self, name, tool, arguments, limits: ToolLimits, stats: _Stats) -> Observation:
        if not limits.cache:
            return await self._limited_call(name, tool, arguments, limits, stats)
        key = cache_key(name, arguments)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            stats.cache_hits += 1
            return _copy(hit, cached=True)
        pending = self._pending.get(key)
        if pending is not None:  # the same call is running: share its answer
            stats.cache_hits += 1
            return _copy(await asyncio.shield(pending), cached=True)
        fut = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            obs = await self._limited_call(name, tool, arguments, limits, stats)
        except BaseException as err:
            fut.set_result(error_observation(f"Error: tool {name!r} failed: {type(err).__name__}", tool=name,
                                             error_type="exception"))
            raise
        finally:
            self._pending.pop(key, None)
        if not fut.done():
            fut.set_result(obs)
        if not obs.error:
            self._cache[key] = _copy(obs)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return obs

    async def _limited_call(self, name, tool, arguments, limits: ToolLimits, stats: _Stats) -> Observation:
        wait_s = limits.queue_timeout_s if limits.queue_timeout_s is not None else limits.timeout_s
        sem = self._sem[name]
        try:
            await asyncio.wait_for(sem.acquire(), wait_s)
        except asyncio.TimeoutError:
            stats.busy += 1
            return error_observation(f"Error: tool {name!r} is busy: no free slot within {wait_s:g}s "
                                     f"({limits.concurrency} calls at once); try again later", tool=name,
                                     error_type="busy", transient=True)
        try:
            bucket = self._bucket.get(name)
            if bucket is not None:
                await bucket.acquire()
            attempt = 0
            while True:
                obs, transient = await self._attempt(name, tool, arguments, limits, stats)
                if not transient or attempt >= limits.retries:
                    if attempt:
                        obs.metadata["attempts"] = attempt + 1
                    return obs
                attempt += 1
                stats.retries += 1
                await asyncio.sleep(backoff_delay(attempt, limits.backoff_s, limits.backoff_max_s))
        finally:
            sem.release()

    async def _attempt(self, name, tool, arguments, limits: ToolLimits, stats: _Stats) -> tuple[Observation, bool]:
        """One try: (observation, whether it failed transiently)."""
        self._ensure_pool()
        try:
            if self._async[name]:
                result = await asyncio.wait_for(tool.call(arguments), limits.timeout_s)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(tool.call, arguments), limits.timeout_s)
        except asyncio.TimeoutError:
            stats.timeouts += 1
            return error_observation(f"Error: tool {name!r} did not answer within {limits.timeout_s:g}s", tool=name,
                                     error_type="timeout"), False
        except Exception as err:
            return error_observation(f"Error: tool {name!r} failed: {type(err).__name__}: {err}", tool=name,
                                     error_type="exception"), _is_transient_error(err)
        if not isinstance(result, Observation):
            return error_observation(f"Error: tool {name!r} returned {type(result).__name__}, not an Observation",
                                     tool=name, error_type="bad_result"), False
        return result, bool(result.error and result.metadata.get("transient"))

    def _ensure_pool(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop_with_pool is not loop:  # blocking tools and backends get a pool of their own size
            loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(self._threads, "envserver"))
            self._loop_with_pool = loop

    # -- introspection ----------------------------------------------------------------------------------

    def metrics(self, samples: bool = False) -> dict:
        """{tool: {calls, errors, timeouts, retries, cache_hits, busy, in_flight, latency_*}}; with `samples`
        the recent latencies too (for merging several servers' percentiles)."""
        return {name: s.as_dict(samples) for name, s in self._stats.items()}

    def info(self) -> dict:
        return {"tools": sorted(self.tools), "base_url": self.base_url, "pid": os.getpid(),
                "limits": {n: asdict(lim) for n, lim in self.limits.items()},
                "sandbox": {n: getattr(t, "mode", None) for n, t in self.tools.items() if hasattr(t, "mode")}}

    def max_call_s(self) -> float:
        """An upper bound of one call's time (queue + attempts + backoffs), for a client's timeout."""
        worst = 0.0
        for lim in self.limits.values():
            queue = lim.queue_timeout_s if lim.queue_timeout_s is not None else lim.timeout_s
            worst = max(worst, queue + (lim.retries + 1) * lim.timeout_s + lim.retries * lim.backoff_max_s)
        return worst

    def ping(self) -> int:
        return os.getpid()

    def close(self) -> None:
        if self.world_host is not None:
            self.world_host.stop()
            self.world_host = None


def _copy(obs: Observation, cached: bool = False) -> Observation:
    out = copy.deepcopy(obs)
    if cached:
        out.metadata["cached"] = True
    return out
