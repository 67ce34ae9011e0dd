"""Shared, expensive fixtures: one tiny model, one vLLM engine and one vLLM OpenAI-compatible server per test
session."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def shared_ray(request):
    """One Ray head for a session that runs slow tests (tests/ray_head.py): every launch of the session, in this
    process (`rl.cluster.connect`) or in a subprocess, joins it through RAY_ADDRESS instead of starting and ending
    a private cluster of its own (5 s a launch alone, 10-15 s within the suite here). Not started where no slow test runs, where RAY_ADDRESS is
    already set, or with WINDWARD_TEST_RAY=private (each launch then starts its own, as a user's run does).

    32 logical CPUs: scheduling tokens for the largest test's actor groups, not cores (a private cluster gets
    as many as its run asks for, `connect`). Token authentication is off on this throwaway head, so that drivers
    need no token file."""
    if (os.environ.get("RAY_ADDRESS") or os.environ.get("WINDWARD_TEST_RAY") == "private"
            or not any(item.get_closest_marker("slow") for item in request.session.items)):
        yield None
        return
    from rl.cluster import worker_pythonpath
    from tests.ray_head import LocalHead

    head = LocalHead(num_cpus=32, dashboard=False, node_ip=None,
                     env={"PYTHONPATH": worker_pythonpath(), "RAY_AUTH_MODE": "disabled"})
    try:
        head.wait_ready()
        os.environ["RAY_ADDRESS"] = head.gcs_address
        yield head
    finally:
        os.environ.pop("RAY_ADDRESS", None)
        head.stop()


@pytest.fixture(scope="session")
def tiny_model():
    from rl.models import build_tiny_model

    return str(build_tiny_model())


class LoopThread:
    """An event loop in a background thread: async engines live on it across tests."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        """Join the executor threads the loop started (run_in_executor), stop it and close it: nothing of it is
        left running into interpreter shutdown."""
        try:
            self.run(self.loop.shutdown_default_executor(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            if not self.thread.is_alive():
                self.loop.close()


@pytest.fixture(scope="session")
def loop_thread():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def vllm_engine(tiny_model, loop_thread):
    """One in-process vLLM engine (CPU build here) on the tiny model, shared by the session."""
    from rollout.engines.vllm_engine import VLLMEngine

    async def make():
        return VLLMEngine(tiny_model, max_model_len=1024, kv_cache_gib=1)

    engine = loop_thread.run(make(), timeout=600)
    yield engine
    loop_thread.run(engine.shutdown(), timeout=60)


@pytest.fixture(scope="session")
def vllm_server(tiny_model):
    """vLLM's OpenAI-compatible server on the tiny model (1,024 tokens of context; `tests/vllm_server.py`): its URL.
    Started at its first use (about 25 s here) and kept to the end of the session."""
    from tests.vllm_server import VLLMServer

    with VLLMServer(tiny_model, max_model_len=1024) as server:
        yield server.url


def pytest_unconfigure(config):
    """What this test process leaves running into interpreter shutdown (a native crash at exit, rc 139 after every
    test passed, was seen once in three slow-suite runs): printed, so that the next such crash names its suspects."""
    import multiprocessing
    import sys

    threads = [t for t in threading.enumerate() if t is not threading.main_thread()]
    native = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else -1
    state = []
    if "ray" in sys.modules:
        import ray

        state.append(f"ray connected: {ray.is_initialized()}")
    if "torch.distributed" in sys.modules:
        import torch.distributed as dist

        state.append(f"torch.distributed initialized: {dist.is_available() and dist.is_initialized()}")
    children = multiprocessing.active_children()
    sys.stderr.write(f"\n[exit] {native} native threads; Python threads: "
                     f"{[(t.name, t.daemon, _target(t)) for t in threads]}; child processes: {[c.pid for c in children]}; "
                     f"{'; '.join(state)}\n")


def _target(thread: threading.Thread) -> str:
    fn = getattr(thread, "_target", None)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(thread).__name__)}" if fn else type(thread).__name__
