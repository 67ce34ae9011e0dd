"""EnvGroup: N EnvServer actors and one world host; the remote env client the agent loops use.

Owns: `EnvGroup` (starts the actors, hands out clients, merges metrics, counts server restarts, injects
world faults and counts them) and
`RemoteEnvClient` (picklable; implements `envs.base.EnvClient`). The RolloutWorker actors receive a
client and only duck-type it.

    group = EnvGroup({"search": {}, "visit": {}, "python": {}}, num_servers=4,
                     world={"seed": 0, "size": "tiny", "latency_s": 0.1})
    env = group.client()                       # pass to RolloutWorker(env=env)
    obs = await env.call("search", {"query": ["..."]})

Actors: one `WorldHost` (the synthetic world's HTTP server, one per group so that a URL means the same
page on every server; it does not restart, since a restarted server would listen on another port), and
N `EnvServer`s as async actors (`max_concurrency` calls at once each) placed on the world host's node (the
world listens on 127.0.0.1), restarted without limit when they die (`max_restarts=-1`) but never re-running
a call (`max_task_retries=0`: a tool call is not idempotent in general, and the episode has moved on).

The client sends a call to the server given by the hash of `key` when the caller passes one (sticky
episodes), else to the server with the fewest calls in flight from this client (a server that just failed is
avoided for `cooldown_s`). Every call is cut at `timeout_s` (by default the servers' own worst case plus a
margin) and cancelled on the server; an actor death, a restart in progress or a timeout becomes an error
observation (`metadata["error_type"]`: server_died, timeout, server_error). It never raises, so no episode
hangs on a server.

Never: retry a call on another server (the server retries what is transient); block the event loop.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
import zlib
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from envs.base import Observation, error_observation
from envs.server import EnvServer, WorldHost, latency_summary
from envs.world import Fault
from rl.cluster import wait


class _WorldHostActor(WorldHost):
    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def set_faults(self, path: str, delay_s: float, status: int | None, times: int | None, clear: bool,
                   size: int | None) -> None:
        """`set_fault` on `path`, or on every page of the world for "*"; `size` pads the page (oversized)."""
        for p in self.paths if path == "*" else [path]:
            if clear:
                self.set_fault(p, clear=True)
            else:
                self.server.set_fault(p, Fault(delay_s=delay_s, status=status, times=times, size=size))

    def fault_counts(self) -> dict[str, int]:
        return self.server.fault_counts()


def merge_metrics(per_server: list[dict]) -> dict:
    """Per-tool sums over servers; latency percentiles over the servers' pooled recent samples."""
    tools: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[float]] = {}
    for metrics in per_server:
        for tool, m in metrics.items():
            agg = tools.setdefault(tool, {})
            for key, value in m.items():
                if key == "latency_samples":
                    samples.setdefault(tool, []).extend(value)
                elif not key.startswith("latency_"):
                    agg[key] = agg.get(key, 0) + value
    for tool, agg in tools.items():
        agg.update(latency_summary(samples.get(tool, [])))
    return tools


class RemoteEnvClient:
    """`tool_schemas()` and `async call(name, arguments, key=None) -> Observation` over EnvServer actors."""

    def __init__(self, servers: list, schemas: list[dict], timeout_s: float, cooldown_s: float = 5.0):
        if not servers:
            raise ValueError("RemoteEnvClient needs at least one EnvServer actor")
        self.servers, self.schemas = list(servers), schemas
        self.timeout_s, self.cooldown_s = timeout_s, cooldown_s
        self._reset()

    def _reset(self) -> None:
        n = len(self.servers)
        self._in_flight = [0] * n
        self._avoid_until = [0.0] * n
        self.stats = {"calls": 0, "timeouts": 0, "server_died": 0, "server_errors": 0}

    def __getstate__(self) -> dict:
        return {"servers": self.servers, "schemas": self.schemas, "timeout_s": self.timeout_s,
                "cooldown_s": self.cooldown_s}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def tool_schemas(self) -> list[dict]:
        return copy.deepcopy(self.schemas)

    def _pick(self, key: str | None) -> int:
        n, now = len(self.servers), time.monotonic()
        up = [i for i in range(n) if self._avoid_until[i] <= now] or list(range(n))
        if key is not None:
            i = zlib.crc32(str(key).encode()) % n
            if i in up:
                return i
        least = min(self._in_flight[i] for i in up)
        return random.choice([i for i in up if self._in_flight[i] == least])

    async def call(self, name: str, arguments: dict, key: str | None = None) -> Observation:
        i = self._pick(key)
        self.stats["calls"] += 1
        self._in_flight[i] += 1
        ref = None
        try:
            ref = self.servers[i].call.remote(name, arguments)
            return await asyncio.wait_for(asyncio.wrap_future(ref.future()), self.timeout_s)
        except asyncio.TimeoutError:
            self.stats["timeouts"] += 1
            _cancel(ref)
            return error_observation(f"Error: tool {name!r} did not answer within {self.timeout_s:g}s "
                                     f"(env server {i})", tool=name, error_type="timeout", server=i)
        except ray.exceptions.RayActorError as err:
            self.stats["server_died"] += 1
            self._avoid_until[i] = time.monotonic() + self.cooldown_s
            what = "is restarting" if isinstance(err, ray.exceptions.ActorUnavailableError) else "died"
            return error_observation(f"Error: tool {name!r}: the env server {what} during the call; "
                                     "try again", tool=name, error_type="server_died", server=i, transient=True)
        except asyncio.CancelledError:
            _cancel(ref)
            raise
        except Exception as err:  # e.g. the object store, a serialisation error: still an observation
            self.stats["server_errors"] += 1
            return error_observation(f"Error: tool {name!r}: env server {i} failed: {type(err).__name__}: "
                                     f"{str(err)[:500]}", tool=name, error_type="server_error", server=i)
        finally:
            self._in_flight[i] -= 1

    async def metrics(self, timeout_s: float = 10.0) -> dict:
        """Merged per-tool metrics of the servers that answer within `timeout_s`, and this client's."""
        refs = [s.metrics.remote(samples=True) for s in self.servers]
        results = await asyncio.gather(*(asyncio.wait_for(asyncio.wrap_future(r.future()), timeout_s) for r in refs),
                                       return_exceptions=True)
        answered = [r for r in results if isinstance(r, dict)]
        return {"tools": merge_metrics(answered), "servers": len(self.servers), "servers_answered": len(answered),
                "client": dict(self.stats)}


def _cancel(ref) -> None:
    if ref is not None:
        try:
            ray.cancel(ref)
        except Exception:  # the actor is gone, or the call already finished
            pass


class EnvGroup:
    """N EnvServer actors (and a WorldHost when `world` is given); `client()` reaches them."""

    def __init__(self, tools: dict, num_servers: int = 2, world: dict | None = None, limits: dict | None = None,
                 num_cpus: float = 0.5, max_concurrency: int = 1000, cache_size: int = 4096, threads: int = 128,
                 ready_timeout_s: float = 300.0, client_timeout_s: float | None = None):
        if num_servers < 1:
            raise ValueError(f"EnvGroup: num_servers={num_servers}; need at least one EnvServer")
        self.world_host = None
        base_url, strategy = None, "DEFAULT"
        if world is not None:
            self.world_host = ray.remote(_WorldHostActor).options(num_cpus=0, max_restarts=0).remote(**world)
            base_url, node = wait([self.world_host.base_url.remote(), self.world_host.node_id.remote()],
                                  ready_timeout_s, "the world host (generating the world, starting its server)")
            strategy = NodeAffinitySchedulingStrategy(node, soft=False)
        self.base_url = base_url
        actor = ray.remote(EnvServer).options(num_cpus=num_cpus, max_restarts=-1, max_task_retries=0,
                                              max_concurrency=max_concurrency, scheduling_strategy=strategy)
        self.servers = [actor.remote(tools=tools, world=world, base_url=base_url, limits=limits,
                                     cache_size=cache_size, threads=threads) for _ in range(num_servers)]
        self._pids = wait([s.ping.remote() for s in self.servers], ready_timeout_s,
                          f"{num_servers} EnvServer actor(s) to build their tools {sorted(tools)}",
                          [f"EnvServer {i}" for i in range(num_servers)])
        self.restarts = 0  # server restarts seen (a new process behind a server since the last look)
        self.schemas, worst, self.server_info = wait(
            [self.servers[0].tool_schemas.remote(), self.servers[0].max_call_s.remote(), self.servers[0].info.remote()],
            ready_timeout_s, "the tool schemas of EnvServer 0")
        self.client_timeout_s = client_timeout_s if client_timeout_s is not None else worst + 30.0

    def client(self, timeout_s: float | None = None, cooldown_s: float = 5.0) -> RemoteEnvClient:
        return RemoteEnvClient(self.servers, self.schemas, timeout_s or self.client_timeout_s, cooldown_s)

    def metrics(self, timeout_s: float = 30.0) -> dict:
        """Per-tool metrics summed over the servers (a restarted server's count from zero), and counters:
        `env/server_restarts` (servers found running in a new process, since the start) and `world/<kind>`
        (requests a world fault changed: delayed, status, oversized)."""
        refs = [s.metrics.remote(samples=True) for s in self.servers] + [s.ping.remote() for s in self.servers]
        if self.world_host is not None:
            refs.append(self.world_host.fault_counts.remote())
        names = [f"EnvServer {i} metrics" for i in range(len(self.servers))] + \
            [f"EnvServer {i} ping" for i in range(len(self.servers))] + ["the world host's fault counts"]
        got = wait(refs, timeout_s, "the metrics of the EnvServer actors", names[:len(refs)])
        n = len(self.servers)
        per_server, pids = got[:n], got[n:2 * n]
        self.restarts += sum(a != b for a, b in zip(pids, self._pids))
        self._pids = pids
        out = merge_metrics(per_server) | {"env/server_restarts": self.restarts}
        return out | ({f"world/{k}": v for k, v in got[2 * n].items()} if self.world_host is not None else {})

    def set_fault(self, path: str, delay_s: float = 0.0, status: int | None = None, times: int | None = None,
                  clear: bool = False, size: int | None = None) -> None:
        """A world fault on `path` ("/wiki/<id>", or "*": every page), e.g. a page that hangs, answers a status
        or is padded to `size` bytes (`envs.world.server.Fault`); `clear` restores the page."""
        if self.world_host is None:
            raise ValueError("EnvGroup.set_fault: this group has no world")
        wait(self.world_host.set_faults.remote(path, delay_s, status, times, clear, size), 30, f"set_fault({path!r})")

    def shutdown(self) -> None:
        for s in self.servers:
            ray.kill(s, no_restart=True)
        if self.world_host is not None:
            ray.kill(self.world_host, no_restart=True)
        self.servers, self.world_host = [], None
