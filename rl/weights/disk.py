"""Weights as files (the fallback: any storage the sender and every receiver see).

Owns: `DiskTransport`: buckets written atomically into a versioned folder, acknowledged per receiver,
at most `window` buckets on disk; bucket files are deleted once every receiver read them, the folder
when the version is done. Portable: a vLLM worker reads the files itself.

Never: fsync (a crash loses a sync, which is resent) or keep an old version's files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from rl.weights.base import SendStats, Transport
from rollout.engines.base import host_bytes


def _atomic_write(path: Path, data) -> None:
    """Readers see the whole file or none of it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


_VERSION_DIR = re.compile(r"^v\d{10}$")


class DiskTransport(Transport):
    """Buckets as files in `<folder>/v<version>/`: written under a temporary name and renamed into
    place (a reader never sees half a bucket), acknowledged per receiver in `ack-<i>` files: the number of
    buckets it took, one more once it has read the END file (only then may the sender remove the folder).

    The folder must be visible to the sender and every receiver (a shared filesystem across nodes).
    Constructing the transport (in the driver, once) empties the folder of what a crashed run left.
    """

    kind = "disk"
    portable = True

    def __init__(self, folder: str | os.PathLike, num_receivers: int, *, window: int = 2,
                 timeout_s: float = 600.0, poll_s: float = 0.002, dtype=None):
        super().__init__(num_receivers, timeout_s, dtype)
        if window < 1:
            raise ValueError(f"disk transport: window must be >= 1, got {window}")
        self.folder, self.window, self.poll_s = Path(folder), window, poll_s
        self.folder.mkdir(parents=True, exist_ok=True)
        for p in self._versions():
            shutil.rmtree(p, ignore_errors=True)

    def _dir(self, version: int) -> Path:
        return self.folder / f"v{version:010d}"

    def _versions(self) -> list[Path]:
        return [p for p in self.folder.iterdir() if _VERSION_DIR.match(p.name)]

    def _poll(self, ready, what: str):
        deadline = time.monotonic() + self.timeout_s
        delay = self.poll_s
        while not (got := ready()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"disk transport ({self.folder}): waited {self.timeout_s:.0f}s for {what}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
        return got

    def _acked(self, d: Path) -> list[int]:
        out = []
        for r in range(self.num_receivers):
            try:
                out.append(int((d / f"ack-{r}").read_text() or 0))
            except (FileNotFoundError, ValueError):
                out.append(0)
        return out

    def send(self, version: int, buckets: Iterable) -> SendStats:
        t0 = time.perf_counter()
        for p in self._versions():  # older versions a failed sync left
            if p.name < self._dir(version).name:
                shutil.rmtree(p, ignore_errors=True)
        d = self._dir(version)
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        count = nbytes = max_in_flight = largest = 0
        done = 0

        def room(index):
            nonlocal done
            done = min(self._acked(d))
            for i in range(done):
                (d / f"bucket-{i:06d}").unlink(missing_ok=True)
            return index - done < self.window

        for data in buckets:
            self._poll(lambda: room(count), f"every receiver to take bucket {count - self.window} of "
                                            f"version {version} (window {self.window})")
            _atomic_write(d / f"bucket-{count:06d}", host_bytes(data))
            count += 1
            nbytes += len(data)
            largest = max(largest, len(data))
            max_in_flight = max(max_in_flight, count - done)
        _atomic_write(d / "END", json.dumps({"buckets": count, "bytes": nbytes}).encode())
        # a receiver acknowledges count + 1 once it has read END: removing the folder at count (its last
        # bucket taken) could remove END before the receiver saw it, and it would wait for a bucket that never comes
        self._poll(lambda: min(self._acked(d)) > count,
                   f"every receiver to take all {count} bucket(s) of version {version} and read its end")
        shutil.rmtree(d, ignore_errors=True)
        return SendStats(version, count, nbytes, time.perf_counter() - t0, max_in_flight, largest)

    def receive(self, version: int, receiver: int = 0, as_tensors: bool = False) -> Iterator[bytes]:
        self._check_receiver(receiver)
        d = self._dir(version)
        index = 0
        while True:
            path, end = d / f"bucket-{index:06d}", d / "END"

            def ready():
                if path.exists():
                    return "bucket"
                if end.exists() and index >= json.loads(end.read_text())["buckets"]:
                    return "end"
                return None

            if self._poll(ready, f"bucket {index} of version {version} (receiver {receiver})") == "end":
                _atomic_write(d / f"ack-{receiver}", str(index + 1).encode())  # END read: the sender may clean up
                return
            yield path.read_bytes()
            index += 1
            _atomic_write(d / f"ack-{receiver}", str(index).encode())
