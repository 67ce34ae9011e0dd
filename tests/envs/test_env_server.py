"""EnvServer in process: tools of a spec on the local world, timeouts, concurrency and rate limits, the cache,
retries of transient errors, structured error observations, metrics."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from envs.base import Observation, error_observation
from envs.server import EnvServer, TokenBucket, ToolLimits, cache_key
from envs.world import page_url


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def server():
    s = EnvServer({"search": {}, "visit": {}, "python": {"timeout_s": 5}},
                  world={"seed": 0, "size": "tiny", "latency_s": 0.05}, limits={"visit": {"timeout_s": 1.0}})
    yield s
    s.close()


class Probe:
    """A test tool: sleeps, counts calls and concurrency, fails as told."""

    def __init__(self, name="probe", sleep_s=0.0, fail=(), blocking=False):
        self.name, self.sleep_s, self.fail, self.blocking = name, sleep_s, list(fail), blocking
        self.schema = {"name": name, "description": "test", "parameters": {"type": "object"}}
        self.calls = self.running = self.peak = 0
        if blocking:
            self.call = self._call_sync

    async def call(self, arguments):
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(arguments.get("sleep_s", self.sleep_s))
            return self._result(arguments)
        finally:
            self.running -= 1

    def _call_sync(self, arguments):
        self.calls += 1
        time.sleep(arguments.get("sleep_s", self.sleep_s))
        return self._result(arguments)

    def _result(self, arguments):
        what = self.fail.pop(0) if self.fail else None
        if what == "transient":
            return error_observation("Error: upstream 503", tool=self.name, transient=True)
        if what == "permanent":
            return error_observation("Error: bad query", tool=self.name)
        if what == "connect":
            raise httpx.ConnectError("connection refused")
        if what == "bug":
            raise KeyError("oops")
        if what == "junk":
            return "not an observation"
        return Observation(f"ok {sorted(arguments.items())}")


def test_tools_of_a_spec_on_the_local_world(server):
    names = [s["function"]["name"] for s in server.tool_schemas()]
    assert names == ["search", "visit", "python"]
    world = server.world_host.world
    e = next(iter(world.entities.values()))
    obs = run(server.call("search", {"query": [e.name]}))
    gold = server.base_url + page_url(e.id)
    assert not obs.error and obs.metadata["urls"][0][0] == gold
    page = run(server.call("visit", {"url": [gold], "goal": "when was it founded"}))
    assert not page.error and e.name in page.text
    code = run(server.call("python", {"code": "print(6 * 7)"}))
    assert not code.error and code.text == "42\n" and code.metadata["sandbox"] in ("namespaces", "rlimits")
    assert all(o.metadata["latency_s"] > 0 for o in (obs, page, code))


def test_search_and_visit_are_cached_python_never(server):
    e = list(server.world_host.world.entities.values())[3]
    before = server.metrics()
    first = run(server.call("search", {"query": [e.name, "a second query"]}))
    again = run(server.call("search", {"query": [e.name, "a second query"]}))
    assert not first.metadata.get("cached") and again.metadata["cached"] and again.text == first.text
    run(server.call("python", {"code": "print(1)"}))
    run(server.call("python", {"code": "print(1)"}))
    after = server.metrics()
    assert after["search"]["cache_hits"] - before["search"]["cache_hits"] == 1
    assert after["python"]["cache_hits"] == 0 and after["python"]["calls"] - before["python"]["calls"] == 2
    # an error is not cached: the next call tries again
    missing = {"url": [server.base_url + "/wiki/No_Such_Page"], "goal": "g"}
    assert run(server.call("visit", missing)).error
    assert not run(server.call("visit", missing)).metadata.get("cached")


def test_the_cache_key_is_canonical():
    assert cache_key("t", {"a": 1, "b": [1, 2]}) == cache_key("t", {"b": [1, 2], "a": 1})
    assert cache_key("t", {"a": 1}) != cache_key("u", {"a": 1})
    probe = Probe(sleep_s=0.05)
    s = EnvServer([probe], limits={"probe": {"cache": True}})

    async def go():
        first = await s.call("probe", {"x": 1, "y": 2})
        second = await s.call("probe", {"y": 2, "x": 1})
        return first, second

    first, second = run(go())
    assert probe.calls == 1 and second.metadata["cached"] and second.text == first.text


def test_identical_calls_in_flight_run_once():
    probe = Probe(sleep_s=0.2)
    s = EnvServer([probe], limits={"probe": {"cache": True}})

    async def go():
        return await asyncio.gather(*(s.call("probe", {"q": "same"}) for _ in range(5)))

    results = run(go())
    assert probe.calls == 1 and len({o.text for o in results}) == 1
    assert s.metrics()["probe"]["cache_hits"] == 4


def test_a_hanging_tool_is_cut_at_its_timeout():
    s = EnvServer([Probe(sleep_s=30)], limits={"probe": {"timeout_s": 0.3}})
    t0 = time.monotonic()
    obs = run(s.call("probe", {}))
    assert time.monotonic() - t0 < 1.5
    assert obs.error and obs.metadata["error_type"] == "timeout" and "'probe'" in obs.text and "0.3s" in obs.text
    m = s.metrics()["probe"]
    assert m["timeouts"] == 1 and m["errors"] == 1 and m["retries"] == 0 and m["in_flight"] == 0


def test_a_hanging_page_is_cut_at_the_visit_timeout(server):
    e = list(server.world_host.world.entities.values())[5]
    path = page_url(e.id)
    server.world_host.set_fault(path, delay_s=20)
    try:
        t0 = time.monotonic()
        obs = run(server.call("visit", {"url": [server.base_url + path], "goal": "g"}))
        assert time.monotonic() - t0 < 3.0
        assert obs.error
    finally:
        server.world_host.set_fault(path, clear=True)
    assert not run(server.call("visit", {"url": [server.base_url + path], "goal": "g2"})).error


def test_transient_errors_are_retried_with_backoff_permanent_ones_not():
    probe = Probe(fail=["transient", "connect"])
    s = EnvServer([probe], limits={"probe": {"retries": 2, "backoff_s": 0.01, "backoff_max_s": 0.02}})
    obs = run(s.call("probe", {}))
    assert not obs.error and obs.metadata["attempts"] == 3 and probe.calls == 3
    assert s.metrics()["probe"]["retries"] == 2
    probe.fail = ["transient"] * 5
    obs = run(s.call("probe", {}))
    assert obs.error and "503" in obs.text and obs.metadata["attempts"] == 3
    probe.fail, probe.calls = ["permanent"], 0
    obs = run(s.call("probe", {}))
    assert obs.error and probe.calls == 1


def test_failures_are_error_observations_naming_the_tool():
    s = EnvServer([Probe(fail=["bug", "junk"])])
    bug = run(s.call("probe", {}))
    assert bug.error and bug.metadata["error_type"] == "exception" and "'probe'" in bug.text and "KeyError" in bug.text
    junk = run(s.call("probe", {}))
    assert junk.error and junk.metadata["error_type"] == "bad_result"
    unknown = run(s.call("nope", {}))
    assert unknown.error and unknown.metadata["error_type"] == "unknown_tool" and "probe" in unknown.text
    assert s.metrics()["probe"]["errors"] == 2


def test_concurrency_limit_and_busy():
    probe = Probe(sleep_s=0.2)
    s = EnvServer([probe], limits={"probe": {"concurrency": 2}})

    async def go(n):
        return await asyncio.gather(*(s.call("probe", {"i": i}) for i in range(n)))

    t0 = time.monotonic()
    results = run(go(6))
    assert probe.peak == 2 and not any(o.error for o in results)
    assert time.monotonic() - t0 >= 0.55  # three waves of two
    busy = EnvServer([Probe(sleep_s=0.5)], limits={"probe": {"concurrency": 1, "queue_timeout_s": 0.1}})

    async def two():
        return await asyncio.gather(busy.call("probe", {"i": 1}), busy.call("probe", {"i": 2}))

    a, b = run(two())
    assert not a.error and b.error and b.metadata["error_type"] == "busy" and b.metadata["transient"]


def test_rate_limit_spaces_calls():
    s = EnvServer([Probe()], limits={"probe": {"rate_per_s": 20, "burst": 1}})

    async def go():
        return await asyncio.gather(*(s.call("probe", {"i": i}) for i in range(6)))

    t0 = time.monotonic()
    run(go())
    assert time.monotonic() - t0 >= 5 / 20 - 0.02

    async def bucket():
        b = TokenBucket(100, burst=5)
        return [await b.acquire() for _ in range(5)]

    assert max(run(bucket())) < 0.01  # a burst passes at once


def test_blocking_tools_run_in_threads_concurrently():
    s = EnvServer([Probe(sleep_s=0.3, blocking=True)], threads=32)

    async def go():
        return await asyncio.gather(*(s.call("probe", {"i": i}) for i in range(16)))

    t0 = time.monotonic()
    results = run(go())
    assert not any(o.error for o in results) and time.monotonic() - t0 < 1.5


def test_metrics_have_latency_percentiles(server):
    m = server.metrics()
    for tool in ("search", "visit", "python"):
        assert {"calls", "errors", "timeouts", "retries", "cache_hits", "latency_mean_s", "latency_p50_s",
                "latency_p95_s"} <= set(m[tool])
    assert m["visit"]["latency_p95_s"] >= m["visit"]["latency_p50_s"] > 0
    assert "latency_samples" in server.metrics(samples=True)["search"]


def test_bad_configuration_names_the_tool_and_key():
    with pytest.raises(ValueError, match="nope"):
        EnvServer([Probe()], limits={"nope": {}})
    with pytest.raises(ValueError, match="'probe'.*timeout"):
        EnvServer([Probe()], limits={"probe": {"timeuot": 1}})
    with pytest.raises(ValueError, match="rate_per_s"):
        ToolLimits(rate_per_s=0)
    with pytest.raises(ValueError, match="world"):
        EnvServer({"search": {}}, world={"seed": 0, "colour": "red"})


def test_the_world_is_served_on_its_own_port_run_after_run():
    """A world's URLs (in its search results, the expert's SFT data and every trajectory) are the same from run to
    run: the same port, unless another run of it holds that port, then any free one and a note that says so."""
    from envs.server import WorldHost, world_port

    own = world_port(7, "tiny")  # a world no other test serves
    assert 20000 <= own < 32000 and own != world_port(8, "tiny") and own == world_port(7, "tiny")
    first = WorldHost(7, "tiny", latency_s=0)
    if first.port_note is not None:  # another process on this machine holds the port: nothing to test here
        first.stop()
        pytest.skip(first.port_note)
    try:
        second = WorldHost(7, "tiny", latency_s=0)  # the same world while the first still serves it
        try:
            assert first.base_url() == f"http://127.0.0.1:{own}" and first.port_note is None
            assert second.base_url() != first.base_url() and str(own) in second.port_note
            assert httpx.get(second.base_url() + page_url(next(iter(second.world.entities)))).status_code == 200
        finally:
            second.stop()
    finally:
        first.stop()
    again = WorldHost(7, "tiny", latency_s=0)  # the next run: the same URLs as the first
    try:
        assert again.base_url() == f"http://127.0.0.1:{own}"
    finally:
        again.stop()
