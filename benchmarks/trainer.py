"""Trainer at scale: padded vs packed training tokens/s, and the weight sync against a memory copy.

Packing (`benchmarks/trainer_packing.py`, run first): training tokens/s for padded vs packed
micro-batches on a long-tailed length distribution; prints `packing_speedup=<ratio>`. `--skip-packing`
leaves it out.

Weight sync (this file): the seconds to move a 61.6 MB policy from a trainer actor into a running
engine, against a plain memory copy of the same bytes.
  trainer  - an FSDP2 trainer actor (`rl/trainer/fsdp.py`, one rank, gloo) holding a tiny Qwen3 on the
             real Qwen3 tokenizer, widened to 61.6 MB of weights (its tied embedding travels once, under
             the output layer's name, as in a run: until 2026-12-07 it travelled under both, 100.4 MB);
  engine   - a RolloutWorker actor with a vLLM engine on the same model, started and warmed up;
  sync     - trainer rank 0 packs its full state into buckets in the serving dtype and streams them
             through the transport (`rl/weights/`; by default `collective`: a gloo broadcast straight
             into the vLLM worker process, which loads bucket by bucket, `rollout/engines/vllm_ext.py`)
             while the RolloutWorker's `update_weights` waits, until both are done: the whole path a
             training step pays;
  memcpy   - one copy of the same number of bytes between two preallocated buffers in this process.
The engine's outputs are checked to follow the synced weights before anything is timed. Also printed,
to show where the time goes: the trainer's gather and pack alone, the transport alone (the receiving
process only drains the buckets), the engine's load alone (buckets already in the worker's process), and
the peak memory growth of the sender (the trainer process) and of the receiver (the vLLM worker process)
during a sync, sampled every millisecond, against the bucket size and the state size.

    python benchmarks/trainer.py [--quick] [--skip-packing] [--transport collective|ipc|object_store|disk]
        last line: sync_efficiency=<memcpy seconds / sync seconds>
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# 61.6 MB of fp32 weights with the 151,669-row Qwen3 vocabulary: the tied embedding (38.8 MB, sent once since
# 2026-12-07, twice before), seven layers with a wide MLP add 22.7 MB
MODEL = dict(tokenizer="qwen3", hidden_size=64, num_layers=7, intermediate_size=4096)
PROMPT = [151644, 872, 198, 3838, 374, 279, 6722, 315, 9625, 30, 151645, 198, 151644, 77091, 198]
TRANSPORTS = ["collective", "ipc", "object_store", "disk"]


def memcpy_seconds(nbytes: int, repeats: int) -> float:
    src = np.random.default_rng(0).integers(0, 255, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch every page once: the copy below is a pure copy
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    assert np.array_equal(dst[:: 1 << 16], src[:: 1 << 16])
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeakRSS:
    """The most this process's resident memory grew above its level at start, sampled every `every_s`
    in a thread (torch copies and gloo waits release the GIL, so the samples keep coming)."""

    def __init__(self, every_s: float = 0.001):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.now()
        self.every_s, self.done = every_s, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self.done.wait(self.every_s):
            self.peak = max(self.peak, self.now())

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return max(self.peak, self.now()) - self.start


def rss_start(owner) -> None:
    """Start sampling in the process of `owner` (the trainer actor, or a vLLM worker through its RPC)."""
    owner._bench_rss = PeakRSS()


def rss_stop(owner) -> int:
    return owner._bench_rss.stop()


def drain_in_worker(vllm_worker, stream: bytes) -> int:
    """The transport alone, received where the engine would load it: iterate and drop each bucket."""
    import pickle

    return sum(len(b) for b in pickle.loads(stream))


def load_in_worker(vllm_worker, stream: bytes) -> float:
    """The engine's load alone: take every bucket into the worker's process first (copied out of the
    transport's memory), then time the bucket-by-bucket load."""
    import pickle

    buckets = [np.array(b, copy=True) for b in pickle.loads(stream)]
    t0 = time.perf_counter()
    vllm_worker.windward_begin_update()
    for b in buckets:
        vllm_worker.windward_load_bucket(b)
    vllm_worker.windward_finish_update()
    return time.perf_counter() - t0


def sync_benchmark(quick: bool, transport_kind: str, bucket_mb: int) -> float:
    import pickle

    import ray

    from rl.cluster import connect, wait
    from rl.models import build_tiny_model
    from rl.trainer.fsdp import FSDPTrainer
    from rl.weights import make_transport
    from rollout.worker import RolloutWorker

    class Worker(RolloutWorker):
        """The rollout worker plus probes for the breakdown (never used by a run)."""

        async def in_engine_worker(self, fn, *args):
            """fn(vLLM worker, *args) in the engine's worker process (a function crosses vLLM's RPC only with
            VLLM_ALLOW_INSECURE_SERIALIZATION, set for this actor alone)."""
            return (await self.engine.llm.collective_rpc(fn, args=args))[0]

        async def drain(self, stream) -> int:
            if stream.portable:
                return await self.in_engine_worker(drain_in_worker, pickle.dumps(stream))
            return sum(len(b) for b in stream)

        async def load_only(self, stream, version: int) -> float:
            if stream.portable:
                return await self.in_engine_worker(load_in_worker, pickle.dumps(stream))
            buckets = list(stream)
            t0 = time.perf_counter()
            await self.engine.update_weights(buckets, version)
            return time.perf_counter() - t0

        async def rss(self, fn) -> int | None:
            return await self.in_engine_worker(fn)

    repeats = 3 if quick else 7
    model = build_tiny_model(**MODEL)
    connect(None, num_cpus=4)
    timeout = 600
    trainer = ray.remote(FSDPTrainer).options(num_cpus=1).remote(str(model), rank=0, world_size=1, timeout_s=timeout)
    probes = {"env_vars": {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}}  # the breakdown's functions reach the worker
    engine = ray.remote(Worker).options(num_cpus=1, runtime_env=probes).remote(
        "vllm", str(model), engine_kwargs=dict(max_model_len=256, kv_cache_gib=1, seed=0))
    wait(trainer.init_distributed.remote("127.0.0.1", free_port()), timeout, "the trainer's start")
    bucket_bytes = bucket_mb << 20
    options = {"timeout_s": timeout}
    if transport_kind == "disk":
        options["folder"] = tempfile.mkdtemp(prefix="windward-weights-")
    elif transport_kind in ("collective", "ipc"):
        options |= {"host": "127.0.0.1", "port": free_port()}
    transport = make_transport(transport_kind, num_receivers=1, **options)

    def send(t, tr, version):
        return t.send_weights(tr, version, bucket_bytes)

    def gather(t, tr):
        # packed where the transport packs (ipc: host memory, or each probe would leave its files behind)
        allocate = tr.allocate if tr.kind != "ipc" else None
        t0 = time.perf_counter()
        n = sum(len(b) for b in t.iter_state_buckets(bucket_bytes, tr.dtype, allocate))
        return n, time.perf_counter() - t0

    def sync(version: int, measure_memory: bool = False) -> tuple[float, object, tuple]:
        if measure_memory:
            wait(trainer.__ray_call__.remote(rss_start), timeout, "the sender's memory sampler")
            wait(engine.rss.remote(rss_start), timeout, "the receiver's memory sampler")
        t0 = time.perf_counter()
        sent = trainer.__ray_call__.remote(send, transport, version)
        got = wait(engine.update_weights.remote(transport.stream(version, 0), version), timeout,
                   f"the engine's update to version {version}")
        stats = wait(sent, timeout, f"the trainer's send of version {version}")
        seconds = time.perf_counter() - t0
        assert got == version, (got, version)
        memory = ()
        if measure_memory:
            memory = (wait(trainer.__ray_call__.remote(rss_stop), timeout, "the sender's memory sampler"),
                      wait(engine.rss.remote(rss_stop), timeout, "the receiver's memory sampler"))
        return seconds, stats, memory

    def probe() -> float:
        task = [{"uid": "probe", "group": 0, "prompt_ids": PROMPT}]
        b = wait(engine.generate.remote(task, 1, {"max_tokens": 8, "temperature": 0.0}), timeout, "the probe")
        return float(np.sum(b.column("rollout_logprobs")[0].values.to_numpy()))

    def scale_embedding(t, factor):
        import torch

        with torch.no_grad():
            t.model.get_input_embeddings().weight.mul_(factor)

    try:
        print(f"starting the engine (vLLM) on {model.name} ...", flush=True)
        lp0 = probe()
        # the weights flow: a changed trainer state changes the engine's outputs, and changing it back
        # restores them
        wait(trainer.__ray_call__.remote(scale_embedding, 3.0), timeout, "scaling the trainer's weights")
        _, stats, first_mem = sync(1, measure_memory=True)  # the first sync: nothing to reuse yet
        lp1 = probe()
        wait(trainer.__ray_call__.remote(scale_embedding, 1 / 3.0), timeout, "restoring the trainer's weights")
        sync(2)
        lp2 = probe()
        if not (abs(lp1 - lp0) > 1e-3 and abs(lp2 - lp0) < 1e-3 * max(1.0, abs(lp0))):
            raise AssertionError(f"the engine does not follow the synced weights: probe {lp0} -> {lp1} -> {lp2}")
        nbytes, nbuckets = stats.bytes, stats.buckets
        print(f"payload: {nbytes / 1e6:.1f} MB in {nbuckets} bucket(s) of <= {bucket_mb} MiB, transport "
              f"{transport_kind}; probe logprob {lp0:.3f} -> {lp1:.3f} (scaled) -> {lp2:.3f} (restored)", flush=True)

        version = 3
        sync_times, in_flight, sender_mem, receiver_mem = [], [], [], []
        for _ in range(repeats):
            s, st, _ = sync(version)
            sync_times.append(s)
            in_flight.append(st.max_in_flight)
            version += 1
        for _ in range(2):  # memory apart: the samplers cost a little time
            _, _, (m_send, m_recv) = sync(version, measure_memory=True)
            sender_mem.append(m_send)
            receiver_mem.append(m_recv)
            version += 1
        gather_times = [wait(trainer.__ray_call__.remote(gather, transport), timeout, "the gather")[1]
                        for _ in range(repeats)]
        drain_times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sent = trainer.__ray_call__.remote(send, transport, version)
            wait(engine.drain.remote(transport.stream(version, 0)), timeout, "the drain")
            wait(sent, timeout, "the send")
            drain_times.append(time.perf_counter() - t0)
            version += 1
        load_times = []
        for _ in range(repeats):
            sent = trainer.__ray_call__.remote(send, transport, version)
            load_times.append(wait(engine.load_only.remote(transport.stream(version, 0), version), timeout, "load"))
            wait(sent, timeout, "the send")
            version += 1
        wait(engine.shutdown.remote(), 120, "the engine's shutdown")
    finally:
        transport.close()
        ray.shutdown()

    copy = memcpy_seconds(nbytes, 21)
    med = statistics.median
    mb = 1e6
    print(f"trainer gather + pack alone:             {med(gather_times) * 1e3:8.1f} ms")
    print(f"transport alone (receiver drains):       {med(drain_times) * 1e3:8.1f} ms")
    print(f"engine load alone (buckets in worker):   {med(load_times) * 1e3:8.1f} ms")
    print(f"sync, trainer -> running engine:         {med(sync_times) * 1e3:8.1f} ms  "
          f"(median of {len(sync_times)}, {min(sync_times) * 1e3:.0f}-{max(sync_times) * 1e3:.0f} ms; "
          f"{nbytes / mb / med(sync_times):.0f} MB/s; at most {max(in_flight)} bucket(s) in flight)")
    print(f"memcpy of the same {nbytes / mb:.1f} MB:           {copy * 1e3:8.1f} ms  ({nbytes / mb / copy:.0f} MB/s)")
    print(f"peak memory growth (largest bucket {stats.max_bucket_bytes / mb:.1f} MB, state {nbytes / mb:.1f} MB) "
          f"during the first sync: sender {first_mem[0] / mb:.1f} MB, receiver (vLLM worker) {first_mem[1] / mb:.1f} "
          f"MB; during a later one (freed memory kept for reuse): {max(sender_mem) / mb:.1f} MB, "
          f"{max(receiver_mem) / mb:.1f} MB", flush=True)
    return copy / med(sync_times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (and a smaller packing run)")
    p.add_argument("--skip-packing", action="store_true", help="only the weight sync")
    p.add_argument("--transport", default="collective", choices=TRANSPORTS)
    p.add_argument("--bucket-mb", type=int, default=64, help="bucket size of the weight stream, MiB")
    args = p.parse_args()
    if not args.skip_packing:
        from benchmarks.trainer_packing import packing_benchmark

        speedup = packing_benchmark(quick=args.quick)
        print(f"packing_speedup={speedup:.2f}", flush=True)
    efficiency = sync_benchmark(args.quick, args.transport, args.bucket_mb)
    print(f"sync_efficiency={efficiency:.3f}")


if __name__ == "__main__":
    main()
