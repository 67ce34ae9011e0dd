"""EnvGroup through real Ray actors: tools on the shared world, a picklable client used from another actor,
faults (a server killed mid-step is restarted, its in-flight calls become error observations, later calls
succeed), and timeouts (a hanging tool is cut; no call outlives the client's timeout)."""

from __future__ import annotations

import asyncio
import pickle
import tempfile
import time
from pathlib import Path

import pytest
import ray

from envs.tools.python import TMP_PREFIX
from envs.world import page_url
from rl.cluster import connect
from rl.env_group import EnvGroup, RemoteEnvClient

pytestmark = pytest.mark.slow

WORLD = {"seed": 0, "size": "tiny", "latency_s": 0.05}


@pytest.fixture(scope="module")
def group():
    started = not ray.is_initialized()
    connect(num_cpus=4)
    g = EnvGroup({"search": {}, "visit": {}, "python": {"timeout_s": 20}}, num_servers=2, world=WORLD,
                 limits={"visit": {"timeout_s": 1.5}}, num_cpus=0.1)
    yield g
    g.shutdown()
    if started:
        ray.shutdown()


def run(coro):
    return asyncio.run(coro)


def test_tools_through_the_group_agree_on_urls(group):
    from envs.world import generate_world

    env = group.client()
    e = next(iter(generate_world(WORLD["seed"], WORLD["size"]).entities.values()))
    gold = group.base_url + page_url(e.id)

    async def go():
        hits = await asyncio.gather(*(env.call("search", {"query": [e.name]}, key=f"ep{i}") for i in range(4)))
        page = await env.call("visit", {"url": [gold], "goal": "facts"})
        code = await env.call("python", {"code": "print(sum(range(10)))"})
        return hits, page, code

    hits, page, code = run(go())
    assert all(h.metadata["urls"][0][0] == gold for h in hits)  # every server: the same world, the same URLs
    assert not page.error and e.name in page.text
    assert code.text == "45\n"
    assert [s["function"]["name"] for s in env.tool_schemas()] == ["search", "visit", "python"]
    m = run(env.metrics())
    assert m["servers_answered"] == 2 and m["tools"]["search"]["calls"] >= 4
    assert group.metrics()["python"]["calls"] >= 1


@ray.remote(num_cpus=0)
class Episode:
    """Stands in for a RolloutWorker: it only duck-types the client it is given."""

    def __init__(self, env):
        self.env = env

    async def step(self, name, arguments):
        obs = await self.env.call(name, arguments)
        return obs.text, obs.error


def test_the_client_is_picklable_and_works_in_another_actor(group):
    env = group.client()
    copy = pickle.loads(pickle.dumps(env))
    assert isinstance(copy, RemoteEnvClient) and copy.stats["calls"] == 0
    worker = Episode.remote(env)
    text, error = ray.get(worker.step.remote("python", {"code": "print('from an actor')"}), timeout=120)
    assert not error and text == "from an actor\n"
    ray.kill(worker)


def _wait_alive(server, timeout_s=120.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return ray.get(server.ping.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            time.sleep(0.5)
    raise TimeoutError("the EnvServer actor did not come back")


def _sandboxes_of(server_pid: int) -> list[int]:
    """Processes whose command line names a sandbox folder of that server."""
    mark = f"{TMP_PREFIX}{server_pid}-".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_a_server_killed_mid_step_is_restarted_and_no_call_hangs(group):
    env = group.client(timeout_s=60)
    victim = group.servers[0]
    pid_before = ray.get(victim.ping.remote(), timeout=30)
    slow = {"code": "import time; time.sleep(4); print('done')"}
    forever = {"code": "import time; time.sleep(3600)"}

    async def go():
        calls = [asyncio.ensure_future(env.call("python", forever if k == "d" else slow, key=k))
                 for k in ("a", "b", "c", "d", "e", "f")]
        await asyncio.sleep(1.5)  # all are running in their sandboxes
        ray.kill(victim, no_restart=False)
        return await asyncio.gather(*calls)

    t0 = time.monotonic()
    results = run(go())
    assert time.monotonic() - t0 < 30
    died = [o for o in results if o.error]
    ok = [o for o in results if not o.error]
    assert died and ok, [o.text for o in results]
    # a call in flight on the killed server ends as `server_died`, or, when its sandbox was killed with the
    # server (PDEATHSIG) a moment before the server's own exit, as that sandbox's error; never a hang
    lost = [o for o in died if o.metadata.get("error_type") == "server_died"]
    assert lost and all(o.metadata.get("server") == 0 for o in lost), [(o.text[:300], o.metadata) for o in died]
    assert all(o in lost or "killed by signal SIGKILL" in o.text for o in died), [(o.text[:300], o.metadata) for o in died]
    died = lost
    assert all("env server" in o.text and "'python'" in o.text for o in died)
    assert all(o.text == "done\n" for o in ok)
    assert _wait_alive(victim) != pid_before  # a new process
    # the sandboxes of the killed server died with it (and its folders are swept by the new one)
    deadline = time.monotonic() + 10
    while _sandboxes_of(pid_before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _sandboxes_of(pid_before)
    assert not list(Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}{pid_before}-*"))

    async def later():
        fresh = group.client()  # a new client has no cooldown on the restarted server
        return await asyncio.gather(*(fresh.call("python", {"code": f"print({i})"}, key=str(i)) for i in range(8)))

    again = run(later())
    assert [o.text for o in again] == [f"{i}\n" for i in range(8)]
    assert {o.metadata["latency_s"] > 0 for o in again} == {True}


def test_a_hanging_tool_is_cut_and_the_client_never_waits_past_its_timeout(group):
    from envs.world import generate_world

    path = page_url(list(generate_world(WORLD["seed"], WORLD["size"]).entities)[7])
    group.set_fault(path, delay_s=30)
    env = group.client(timeout_s=3)
    try:
        t0 = time.monotonic()
        page = run(env.call("visit", {"url": [group.base_url + path], "goal": "g"}))
        assert time.monotonic() - t0 < 3.5
        assert page.error  # cut by the server at the visit timeout (1.5 s)
        t0 = time.monotonic()
        code = run(env.call("python", {"code": "import time; time.sleep(60)"}))
        assert time.monotonic() - t0 < 4.5
        assert code.error and code.metadata["error_type"] == "timeout" and "3s" in code.text
    finally:
        group.set_fault(path, clear=True)
    # the cancelled call does not stay in flight on its server
    deadline = time.monotonic() + 10
    while group.metrics()["python"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group.metrics()["python"]["in_flight"] == 0
