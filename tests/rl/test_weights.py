"""Weight streaming (rl/weights/): the bucket wire format, and every transport delivering the buckets of a
version complete and in order, memory bounded (buckets in flight; peak RSS of sender and receivers),
versions checked, and every wait that runs out naming the bucket and the version it waited for."""

from __future__ import annotations

import contextlib
import glob
import multiprocessing as mp
import pickle
import resource
import socket
import sys
import threading
import time

import pytest
import ray
import torch

from rl.weights import (CollectiveTransport, DiskTransport, IPCTransport, ObjectStoreTransport, PerRankTransport,
                        iter_buckets, make_transport)
from rollout.engines.base import decode_bucket, encode_bucket, pack_bucket, unpack_bucket

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test modules are not importable on workers

MB = 1 << 20


def named_state(n: int, numel: int = MB // 4, pulled: list | None = None):
    """n float32 tensors (numel each) whose values say their index; produced lazily."""
    for i in range(n):
        if pulled is not None:
            pulled.append(i)
        yield f"layers.{i}.weight", torch.full((numel,), float(i))


def contents(buckets) -> list[tuple[str, float]]:
    return [(name, float(t[0])) for data in buckets for name, t in decode_bucket(data)]


def expected(n: int) -> list[tuple[str, float]]:
    return [(f"layers.{i}.weight", float(i)) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- buckets ----------------------------------------------------------------------------------


def test_iter_buckets_bounds_size_keeps_order_and_is_lazy():
    sizes = [10, 300, 5, 2000, 40, 40, 40, 1]  # float32 elements
    named = [(f"t{i}", torch.arange(n, dtype=torch.float32)) for i, n in enumerate(sizes)]
    buckets = list(iter_buckets(named, bucket_bytes=1200))
    # buckets keep the order (safetensors sorts the names inside one bucket)
    got = [sorted((name, t.numel()) for name, t in decode_bucket(data)) for data in buckets]
    assert got == [[("t0", 10)], [("t1", 300)], [("t2", 5)], [("t3", 2000)],
                   [("t4", 40), ("t5", 40), ("t6", 40), ("t7", 1)]]
    for data in buckets:
        parts = decode_bucket(data)
        assert len(parts) == 1 or sum(t.numel() * 4 for _, t in parts) <= 1200
    with pytest.raises(ValueError, match="bucket_bytes"):
        next(iter_buckets(named, bucket_bytes=0))

    pulled: list[int] = []
    it = iter_buckets(named_state(100, numel=256, pulled=pulled), bucket_bytes=4 * 1024)  # 4 tensors a bucket
    first = next(it)
    assert len(decode_bucket(first)) == 4 and len(pulled) == 5  # the 5th opened the next bucket


def test_a_packed_bucket_is_safetensors_and_unpacks_without_a_copy():
    from safetensors.torch import load, save

    named = [("w", torch.arange(6, dtype=torch.float32).reshape(2, 3).t()),  # not contiguous
             ("h", torch.ones(3, dtype=torch.bfloat16)), ("step", torch.tensor(7)),  # unaligned int64 after bf16
             ("empty", torch.zeros(0, 4)), ("mask", torch.tensor([True, False]))]
    buf = pack_bucket(named)
    assert buf.dtype == torch.uint8 and buf.dim() == 1
    back = unpack_bucket(buf)
    assert [n for n, _ in back] == [n for n, _ in named]  # the order given, not sorted by name
    for (_, t), (_, u) in zip(named, back):
        assert u.dtype == t.dtype and torch.equal(u, t)
    assert back[0][1].untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()  # a view
    theirs = load(buf.numpy().tobytes())  # any safetensors reader reads it
    assert all(torch.equal(theirs[n], t) for n, t in named)
    ours = dict(unpack_bucket(save({n: t.contiguous() for n, t in named})))  # and we read theirs
    assert all(torch.equal(ours[n], t) for n, t in named)
    assert [n for n, _ in decode_bucket(encode_bucket(named))] == [n for n, _ in named]


def test_a_bucket_is_packed_in_the_serving_dtype():
    named = [("w", torch.full((4,), 1.5)), ("ids", torch.arange(3))]
    back = dict(unpack_bucket(pack_bucket(named, dtype=torch.bfloat16)))
    assert back["w"].dtype == torch.bfloat16 and torch.equal(back["w"].float(), named[0][1])
    assert back["ids"].dtype == torch.int64  # only floating tensors are cast
    made = []

    def allocate(n):
        made.append(n)
        return torch.empty(n, dtype=torch.uint8)

    buckets = list(iter_buckets([(f"t{i}", torch.zeros(256)) for i in range(8)], 1024, torch.bfloat16, allocate))
    assert len(buckets) == 4 and len(made) == 4  # 512 bytes a tensor in bf16: two per 1 KiB bucket


def raw_bucket(header: str, data: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header.encode() + data


@pytest.mark.parametrize("bad, message", [
    (b"\x01", "shorter than the 8-byte header"),
    ((1000).to_bytes(8, "little") + b"{}", "does not fit"),
    (raw_bucket("{x"), "unreadable header"),
    (raw_bucket('{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', bytes(8)),  # truncated data
     "'w' \\(shape \\[4\\], F32\\) does not match its data offsets \\[0, 16\\] in 8 data bytes"),
    (raw_bucket('{"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}', bytes(4)), "unknown dtype 'Q9'"),
])
def test_a_malformed_bucket_is_an_error_naming_what_is_wrong(bad, message):
    with pytest.raises(ValueError, match=message):
        unpack_bucket(bad)



def test_read_ahead_keeps_order_passes_errors_on_and_times_out():
    from rl.weights.base import read_ahead

    assert list(read_ahead(iter(range(5)), 1, 5, "v1")) == list(range(5))

    def broken():
        yield from (0, 1)
        raise RuntimeError("the sender left")

    got = []
    with pytest.raises(RuntimeError, match="the sender left"):
        for x in read_ahead(broken(), 2, 5, "v2"):
            got.append(x)
    assert got == [0, 1]
    never = threading.Event()

    def stuck():
        yield 0
        never.wait(30)

    it = read_ahead(stuck(), 1, 0.3, "version 7 (receiver 0)")
    assert next(it) == 0
    with pytest.raises(TimeoutError, match="next bucket of version 7 \\(receiver 0\\)"):
        next(it)
    never.set()


def test_read_ahead_thread_ends_when_the_consumer_stops_with_the_queue_full():
    """A load that fails (the consumer stops) while the producer holds the end marker or the next bucket with
    the queue full: the producer thread ends instead of blocking on the queue forever (pinning that bucket)."""
    from rl.weights.base import read_ahead

    before = {t.ident for t in threading.enumerate()}
    it = read_ahead(iter(range(2)), 1, 5, "version 3")
    assert next(it) == 0
    time.sleep(0.3)  # the producer has put bucket 1 and now waits to put the end marker
    it.close()  # the consumer stops (its load raised)
    producer = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("read-ahead")]
    for t in producer:
        t.join(2)
    assert producer and not any(t.is_alive() for t in producer)


# --- disk -------------------------------------------------------------------------------------


def test_disk_transport_streams_in_order_with_a_bounded_window(tmp_path):
    transport = DiskTransport(tmp_path / "w", num_receivers=2, window=2, timeout_s=30)
    got: dict[int, list] = {}
    on_disk: list[int] = []

    def receiver(r: int, delay: float):
        out = []
        for data in transport.receive(5, r):
            out += contents([data])
            on_disk.append(len(list((tmp_path / "w").glob("v*/bucket-*"))))
            time.sleep(delay)
        got[r] = out

    threads = [threading.Thread(target=receiver, args=(r, 0.01 * r)) for r in range(2)]
    for t in threads:
        t.start()
    stats = transport.send(5, iter_buckets(named_state(12), bucket_bytes=MB))
    for t in threads:
        t.join(timeout=30)
    assert got == {0: expected(12), 1: expected(12)}
    assert (stats.version, stats.buckets) == (5, 12)
    assert stats.max_in_flight == 2  # the sender waited for the slow receiver
    assert max(on_disk) <= 2
    assert list((tmp_path / "w").iterdir()) == []  # the version folder is gone


def test_disk_waits_time_out_naming_bucket_and_version(tmp_path):
    with pytest.raises(TimeoutError, match="bucket 0 of version 7 \\(receiver 0\\)"):
        next(DiskTransport(tmp_path, num_receivers=1, timeout_s=0.3).receive(7, 0))
    transport = DiskTransport(tmp_path, num_receivers=2, window=2, timeout_s=0.5)

    def only_receiver_0():
        with contextlib.suppress(TimeoutError):  # it waits in vain once the sender gave up
            contents(transport.receive(3, 0))

    only_one = threading.Thread(target=only_receiver_0)
    only_one.start()  # receiver 1 never comes
    with pytest.raises(TimeoutError, match="take bucket 0 of version 3"):
        transport.send(3, iter_buckets(named_state(6), bucket_bytes=MB))
    only_one.join(timeout=10)


def test_disk_sender_keeps_the_end_until_every_receiver_has_read_it(tmp_path):
    """A receiver acknowledges its last bucket when it asks for the next, then looks for END. The sender once
    removed the folder on that acknowledgement, END included, and the receiver waited out its timeout for a
    bucket that never came (the vLLM engine's weight update failed in CI: "waited 60s for bucket 20")."""
    transport = DiskTransport(tmp_path, num_receivers=1, timeout_s=10)
    out: dict = {}
    sender = threading.Thread(target=lambda: out.update(stats=transport.send(2, [b"a", b"b"])))
    sender.start()
    stream = transport.receive(2, 0)
    assert [bytes(next(stream)), bytes(next(stream))] == [b"a", b"b"]
    folder = tmp_path / "v0000000002"
    (folder / "ack-0").write_text("2")  # as the receiver writes it on asking for the next: every bucket taken
    time.sleep(0.3)  # the sender polls every 50 ms at most
    assert (folder / "END").exists() and sender.is_alive()  # END read by nobody yet: kept
    assert list(stream) == []  # END read: acknowledged, the sender cleans up
    sender.join(timeout=10)
    assert out["stats"].buckets == 2 and not folder.exists()


def test_make_transport_rejects_unknown_kinds_and_receivers(tmp_path):
    with pytest.raises(KeyError, match="known: \\['collective', 'disk', 'ipc', 'object_store'\\]"):
        make_transport("carrier_pigeon", num_receivers=1)
    t = make_transport("disk", num_receivers=2, folder=tmp_path)
    with pytest.raises(ValueError, match="receiver 2 is not in 0..1"):
        next(t.receive(1, 2))
    with pytest.raises(ValueError, match="dtype must name a floating torch dtype.*'int8'"):
        make_transport("disk", num_receivers=1, folder=tmp_path, dtype="int8")


def test_streams_travel_pickled_and_say_whether_another_process_may_take_them(tmp_path):
    """A vLLM engine hands a portable stream to its worker process (pickled); the object store's mailbox
    is reachable only from Ray workers, so its streams are not portable."""
    disk = make_transport("disk", num_receivers=1, folder=tmp_path, dtype="bfloat16")
    collective = make_transport("collective", num_receivers=1, host="127.0.0.1", port=1234)
    ipc = make_transport("ipc", num_receivers=1, host="127.0.0.1", port=1235)
    for t in (disk, collective, ipc):
        stream = pickle.loads(pickle.dumps(t.stream(3, 0).for_engine()))
        assert stream.portable and stream.tensors and stream.ahead == 1 and (stream.version, stream.receiver) == (3, 0)
    assert pickle.loads(pickle.dumps(disk)).dtype == torch.bfloat16
    assert not ObjectStoreTransport.portable


# --- collective (gloo here; NCCL on GPU runs the same code) ------------------------------------


def test_collective_gloo_checks_the_version_of_every_bucket():
    """Sender and receiver as threads of one process (two ranks of one gloo group)."""
    errors: list[str] = []

    def receive(transport, version):
        try:
            return contents(transport.receive(version, 0))
        except RuntimeError as err:
            errors.append(str(err))

    transport = CollectiveTransport("127.0.0.1", free_port(), num_receivers=1, backend="gloo", timeout_s=30)
    try:
        r = threading.Thread(target=receive, args=(transport, 4))
        r.start()
        stats = transport.send(4, iter_buckets(named_state(3), bucket_bytes=MB))
        r.join(timeout=30)
        assert (stats.buckets, errors) == (3, [])
    finally:
        transport.close()

    transport = CollectiveTransport("127.0.0.1", free_port(), num_receivers=1, backend="gloo", timeout_s=3)
    try:
        r = threading.Thread(target=receive, args=(transport, 5))  # expects 5, the sender sends 6
        r.start()
        with pytest.raises(TimeoutError, match="sending bucket 0 of version 6"):
            transport.send(6, iter_buckets(named_state(1), bucket_bytes=MB))  # the receiver left
        r.join(timeout=30)
        assert errors and "expected bucket 0 of version 5, the sender sent bucket 0 of version 6" in errors[0]
    finally:
        transport.close()


# --- ipc (shared memory on CPU; CUDA IPC on GPU runs the same framing) ---------------------------


def test_ipc_hands_over_shared_buckets_in_reused_slots_and_leaves_no_file(tmp_path):
    """Sender and receiver as threads of one process: each bucket is packed in place (`allocate`) into a
    shared file both map, the receiver reads it without a copy, and the files are slots reused from bucket
    to bucket and from version to version; `close` removes them."""
    transport = IPCTransport("127.0.0.1", free_port(), num_receivers=1, timeout_s=30, shm_dir=str(tmp_path))
    got, alive = [], []

    def receive(version):
        for data in transport.receive(version, 0):
            got.extend(contents([data]))
            alive.append(len(glob.glob(str(tmp_path / "windward-ipc-*"))))

    try:
        for version in (4, 5):
            r = threading.Thread(target=receive, args=(version,))
            r.start()
            stats = transport.send(version, iter_buckets(named_state(6), bucket_bytes=MB, allocate=transport.allocate))
            r.join(timeout=30)
            assert got[-6:] == expected(6) and stats.buckets == 6
        assert max(alive) <= 3  # the bucket being loaded, the one acknowledged meanwhile, the next one packed
        files = sorted(tmp_path.iterdir())
        assert 2 <= len(files) <= 3  # the second version reused the first one's files
        # a bucket from elsewhere (not packed in place) is copied into a one-off file, removed once loaded
        r = threading.Thread(target=lambda: got.extend(contents(transport.receive(6, 0))))
        r.start()
        transport.send(6, [encode_bucket([("x", torch.ones(3))])])
        r.join(timeout=30)
        assert got[-1] == ("x", 1.0) and sorted(tmp_path.iterdir()) == files
    finally:
        transport.close()
    assert list(tmp_path.iterdir()) == []


def test_ipc_removes_the_slot_files_a_dead_sender_left(tmp_path):
    """A run killed before `close` leaves its slot files; the next transport to create a slot removes those
    whose sending process is gone, and no other."""
    import subprocess

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"windward-ipc-1234-{dead.pid}-0123abcd"
    alive = tmp_path / "windward-ipc-1234-1-4567ef"  # pid 1 never ends
    left.write_bytes(b"x")
    alive.write_bytes(b"x")
    transport = IPCTransport("127.0.0.1", free_port(), num_receivers=1, timeout_s=30, shm_dir=str(tmp_path))
    try:
        transport.allocate(1024)
        assert not left.exists() and alive.exists()
    finally:
        transport.close()


def test_per_rank_parts_each_carry_the_whole_state_to_their_own_engine(tmp_path):
    """Colocated GPUs: rank r streams the whole state to engine r through part r (here two ipc parts on shared
    memory, senders and receivers as threads). A rank past the engines has no part."""
    parts = [IPCTransport("127.0.0.1", free_port(), num_receivers=1, timeout_s=30, shm_dir=str(tmp_path))
             for _ in range(2)]
    transport = PerRankTransport(parts)
    assert transport.num_receivers == 2 and transport.sender(2) is None
    got: dict[int, list] = {}

    def receive(i):
        got[i] = contents(pickle.loads(pickle.dumps(transport.stream(3, i))))  # as an engine gets it

    def send(rank):
        part = pickle.loads(pickle.dumps(transport)).sender(rank)  # as a trainer rank gets it
        part.send(3, iter_buckets(named_state(4), bucket_bytes=MB, allocate=part.allocate))

    try:
        threads = [threading.Thread(target=f, args=(i,)) for i in range(2) for f in (receive, send)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert got == {0: expected(4), 1: expected(4)}
    finally:
        transport.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="exactly one engine"):
        PerRankTransport([IPCTransport("127.0.0.1", 1, num_receivers=2)])


def test_ipc_never_packs_into_a_slot_a_receiver_still_holds(tmp_path):
    """An engine keeps views of a bucket until a layer's other shards arrive: here the receiver keeps
    every bucket of a version to the end. No slot it holds is packed again, so what it kept still reads
    as sent; the next version, once those views are gone, reuses the slots."""
    transport = IPCTransport("127.0.0.1", free_port(), num_receivers=1, timeout_s=30, shm_dir=str(tmp_path))
    kept: list = []

    def receive(version):
        kept.extend(transport.receive(version, 0, as_tensors=True))

    try:
        r = threading.Thread(target=receive, args=(1,))
        r.start()
        transport.send(1, iter_buckets(named_state(5), bucket_bytes=MB, allocate=transport.allocate))
        r.join(timeout=30)
        assert contents(kept) == expected(5)  # read at the end: no bucket was overwritten
        assert len(list(tmp_path.iterdir())) == 5  # one slot each, since every one stayed held
        kept.clear()
        r = threading.Thread(target=lambda: kept.extend(contents(transport.receive(2, 0))))
        r.start()
        transport.send(2, iter_buckets(named_state(5), bucket_bytes=MB, allocate=transport.allocate))
        r.join(timeout=30)
        assert kept == expected(5) and len(list(tmp_path.iterdir())) == 5  # reused, none added
    finally:
        transport.close()


def test_ipc_names_a_bucket_the_receiver_cannot_map(tmp_path):
    transport = IPCTransport("127.0.0.1", free_port(), num_receivers=1, timeout_s=3, shm_dir=str(tmp_path))
    errors = []

    def receive():
        try:
            contents(transport.receive(1, 0))
        except RuntimeError as err:
            errors.append(str(err))

    def vanishing(n):  # as if the receiver ran on another node: the file is not there
        t = transport.allocate(n)
        import os

        os.unlink(t.untyped_storage().filename)
        return t

    try:
        r = threading.Thread(target=receive)
        r.start()
        with pytest.raises((TimeoutError, RuntimeError)):
            transport.send(1, iter_buckets(named_state(1), bucket_bytes=MB, allocate=vanishing))
        r.join(timeout=30)
        assert errors and "bucket 0 of version 1 (receiver 0)" in errors[0] and "is missing" in errors[0]
        transport.close()
        assert list(tmp_path.iterdir()) == []
    finally:
        transport.close()



def test_a_receiver_taking_tensors_never_overwrites_a_view_the_engine_kept():
    """A vLLM worker takes buckets as tensors and keeps views of one while a layer waits for its other
    shards. Receive buffers are reused (a fresh one costs its page faults), but never one still seen."""
    from rl.weights import collective

    transport = CollectiveTransport("127.0.0.1", free_port(), num_receivers=1, backend="gloo", timeout_s=30)
    kept, storages = [], []

    def receive():
        for data in transport.receive(2, 0, as_tensors=True):
            storages.append(data.untyped_storage().data_ptr())
            named = unpack_bucket(data)
            if not kept:
                kept.extend(named)  # bucket 0's views outlive it
            del data, named

    try:
        r = threading.Thread(target=receive)
        r.start()
        transport.send(2, iter_buckets(named_state(6), bucket_bytes=MB, allocate=transport.allocate))
        r.join(timeout=30)
        assert len(storages) == 6 and torch.equal(kept[0][1], torch.zeros(MB // 4))  # not overwritten
        assert storages[0] not in storages[1:] and len(set(storages[1:])) < 5  # the others were reused
        assert len(collective._SPARE[("127.0.0.1", transport.port, 0)]) <= collective.SPARE  # the sender's too
    finally:
        transport.close()


def _collective_rank(transport, rank: int, queue) -> None:
    """One process of the broadcast test: version 1 warms the group up, version 2 (192 MB, 48 buckets)
    is measured. Reports what arrived and how much the peak RSS grew during version 2."""
    try:
        if rank == 0:
            transport.send(1, iter_buckets(named_state(2, numel=MB), bucket_bytes=4 * MB, allocate=transport.allocate))
            base = peak_rss_mb()
            stats = transport.send(2, iter_buckets(named_state(48, numel=MB), bucket_bytes=4 * MB,
                                                   allocate=transport.allocate))
            queue.put((rank, stats.buckets, peak_rss_mb() - base))
        else:
            contents(transport.receive(1, rank - 1))
            base = peak_rss_mb()
            got = contents(transport.receive(2, rank - 1))
            queue.put((rank, got, peak_rss_mb() - base))
    except BaseException as err:  # the parent reports it
        queue.put((rank, repr(err), None))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["collective", "ipc"])
def test_between_processes_memory_stays_bounded(kind):
    """Three processes (sender + 2 receivers), over gloo or shared memory: a 192 MB state arrives complete
    and in order, and no process's peak RSS grows by half the state (each holds a bucket or two)."""
    transport = make_transport(kind, 2, host="127.0.0.1", port=free_port(), timeout_s=120)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_collective_rank, args=(transport, rank, queue)) for rank in range(3)]
    for p in procs:
        p.start()
    try:
        results = {rank: (got, growth) for rank, got, growth in (queue.get(timeout=180) for _ in procs)}
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    state_mb = 48 * 4
    assert results[0][0] == 48, results[0]
    if kind == "ipc":  # slots reused over 48 buckets, two receivers
        assert len(glob.glob(f"/dev/shm/windward-ipc-{transport.port}-*")) <= 4
    transport.close()
    assert not glob.glob(f"/dev/shm/windward-ipc-{transport.port}-*")
    for rank in (1, 2):
        assert results[rank][0] == expected(48), f"receiver {rank}: {str(results[rank][0])[:300]}"
    for rank, (_, growth) in results.items():
        assert growth < state_mb / 2, f"rank {rank}: peak RSS grew {growth:.0f} MB for a {state_mb} MB state"


# --- Ray object store -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    from rl.cluster import connect

    connect(None, num_cpus=4)
    yield
    ray.shutdown()


@ray.remote(num_cpus=0.5)
class Receiver:
    def take(self, transport, version, receiver, delay=0.0):
        out = []
        for data in transport.receive(version, receiver):
            out += contents([data])
            time.sleep(delay)
        return out


@ray.remote(num_cpus=0.5)
class AsyncReceiver:
    async def take(self, transport, version, receiver):
        out = []
        async for data in transport.stream(version, receiver):
            out += contents([data])
        return out


@pytest.mark.slow
def test_object_store_streams_with_at_most_window_buckets_in_flight(ray_session):
    transport = ObjectStoreTransport(num_receivers=2, window=2, timeout_s=60)
    receivers = [Receiver.remote(), AsyncReceiver.remote()]
    try:
        for version in (1, 2):  # the mailbox moves on to the next version
            refs = [receivers[0].take.remote(transport, version, 0, 0.05),
                    receivers[1].take.remote(transport, version, 1)]
            stats = transport.send(version, iter_buckets(named_state(10), bucket_bytes=MB))
            assert ray.get(refs, timeout=60) == [expected(10), expected(10)]
            assert (stats.version, stats.buckets, stats.bytes > 10 * MB) == (version, 10, True)
            assert stats.max_in_flight == 2  # the slow receiver held the sender back
        with pytest.raises(ValueError, match="asked for weight version 1, but version 2 superseded it"):
            ray.get(receivers[0].take.remote(transport, 1, 0), timeout=60)
    finally:
        transport.close()


@pytest.mark.slow
def test_object_store_waits_time_out_naming_bucket_and_version(ray_session):
    transport = ObjectStoreTransport(num_receivers=1, window=2, timeout_s=1)
    try:
        with pytest.raises(TimeoutError, match="bucket 0 of version 9 \\(receiver 0\\)"):
            next(transport.receive(9, 0))
        with pytest.raises(TimeoutError, match="take bucket 0 of version 10"):  # nobody receives
            transport.send(10, iter_buckets(named_state(4), bucket_bytes=MB))
    finally:
        transport.close()


@pytest.mark.slow
def test_rollout_worker_loads_a_stream_from_the_trainer(ray_session, tiny_model):
    """The controller's path: trainer rank 0 sends, the RolloutWorker's `update_weights` iterates
    `transport.stream(version, i)`; the engine then holds exactly the sent state."""
    from transformers import AutoModelForCausalLM

    from rollout.worker import RolloutWorker

    state = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict()
    state = {name: t * 1.5 for name, t in state.items()}
    transport = ObjectStoreTransport(num_receivers=1, timeout_s=60)
    worker = ray.remote(RolloutWorker).options(num_cpus=0.5).remote("hf", tiny_model, {"dtype": "float32"})
    try:
        done = worker.update_weights.remote(transport.stream(7, 0), 7)
        stats = transport.send(7, iter_buckets(state.items(), bucket_bytes=64 * 1024))
        assert ray.get(done, timeout=120) == 7 and stats.buckets > 3
        engine_state = ray.get(worker.__ray_call__.remote(lambda w: w.engine.model.state_dict()), timeout=60)
        for name, t in state.items():
            assert torch.equal(engine_state[name], t), name
    finally:
        transport.close()
        ray.kill(worker)


@ray.remote(num_cpus=0)
class _Rank:
    """A stand-in trainer rank: only its process (node and free port) matters."""


def test_colocated_gpu_ipc_gets_one_part_per_engine_on_its_ranks_node(ray_session):
    """rl/groups.py on colocated GPUs: engine i is served by rank i, each part's rendezvous is a free port on
    that rank's node (distinct ports); an engine without a rank on its GPU is refused by name."""
    from types import SimpleNamespace

    from rl.groups import RLGroups

    actors = [_Rank.remote() for _ in range(3)]
    stub = SimpleNamespace(rollout=SimpleNamespace(num=2), trainer=SimpleNamespace(num=3, actors=actors),
                           placement="colocated", timeout=60)
    transport = RLGroups._per_rank_ipc(stub, {"timeout_s": 60})
    try:
        assert isinstance(transport, PerRankTransport) and len(transport.parts) == 2
        assert len({(p.host, p.port) for p in transport.parts}) == 2
        assert transport.sender(2) is None  # rank 2 has no engine on its GPU
    finally:
        transport.close()
    for rollout, placement in ((4, "colocated"), (2, "split")):
        stub.rollout.num, stub.placement = rollout, placement
        with pytest.raises(ValueError, match="rollout.num_engines <= trainer.num_ranks"):
            RLGroups._per_rank_ipc(stub, {"timeout_s": 60})
    for a in actors:
        ray.kill(a)
