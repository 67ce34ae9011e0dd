"""A Ray head for tests: `ray start --head --block` on 127.0.0.1 with its own ports and temp dir, ended by PID
(never `ray stop`, which would end other people's clusters on this machine).

Two uses: the `ray job submit` test starts one with the dashboard (the job API), and tests/conftest.py starts one
per session without it (`shared_ray`) that every launch of the session joins through RAY_ADDRESS, instead of each
starting and ending a private cluster (measured: 4.0 s to start one and 1.4 s to end it, per launch)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LocalHead:
    """`ray start --head --block` on 127.0.0.1 with its own ports and temp dir; ended by PID.

    `dashboard`: with the dashboard (and so the job API at `address`); without it the head starts faster and
    costs no CPU between tests. `gcs_address` is what a driver's RAY_ADDRESS names. `env`: extra variables of
    the head's processes (its workers inherit them). `node_ip`: None lets Ray choose the node's address, as a
    driver that joins through RAY_ADDRESS does (a head on 127.0.0.1 is reachable only by `ray job submit`)."""

    def __init__(self, num_cpus: int = 8, dashboard: bool = True, env: dict | None = None,
                 node_ip: str | None = "127.0.0.1"):
        self.tmp = tempfile.mkdtemp(prefix="wwray", dir="/tmp")  # short: socket paths are limited
        gcs, self.dash, agent, agent_grpc, client, metrics, rt_env, nm, om = free_ports(9)
        self.env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", RAY_AUTH_MODE="token") | (env or {})
        self.env.pop("RAY_ADDRESS", None)
        self.dashboard = dashboard
        cmd = [str(BIN / "ray"), "start", "--head", "--block", *([f"--node-ip-address={node_ip}"] if node_ip else []),
               f"--port={gcs}", f"--include-dashboard={'true' if dashboard else 'false'}",
               "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dash}", f"--dashboard-agent-listen-port={agent}",
               f"--dashboard-agent-grpc-port={agent_grpc}", f"--ray-client-server-port={client}",
               f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}",
               f"--node-manager-port={nm}", f"--object-manager-port={om}",
               "--min-worker-port=0", "--max-worker-port=0", f"--num-cpus={num_cpus}", f"--temp-dir={self.tmp}",
               "--disable-usage-stats"]
        self.log_path = Path(self.tmp) / "head.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.address = f"http://127.0.0.1:{self.dash}"
        self.gcs_address = f"{node_ip or self._own_ip()}:{gcs}"

    @staticmethod
    def _own_ip() -> str:
        """The address a driver on this machine connects from (Ray's own choice when no node address is given)."""
        from ray._private.services import get_node_ip_address

        return get_node_ip_address()

    def wait_ready(self, timeout_s: float = 180):
        """Until the job API answers (with the dashboard) or `ray start` says the runtime started (without)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray head exited: {self.log_path.read_text()[-2000:]}")
            if self.dashboard:
                try:
                    import httpx

                    if httpx.get(f"{self.address}/api/version", timeout=2).status_code in (200, 401, 403):
                        return
                except Exception:
                    pass
            elif "Ray runtime started" in self.log_path.read_text():
                return
            time.sleep(0.5)
        raise TimeoutError(f"ray head on {self.gcs_address} not ready after {timeout_s}s; its log: {self.log_path}")

    def session(self) -> list[int]:
        """Every live process of the head's session: `ray start` and its children, and the workers the raylet
        started (each in a process group of its own)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[3]) == self.proc.pid and fields[0] != "Z":  # the session id; zombies are harmless
                pids.append(int(stat.parent.name))
        return pids

    def stop(self, grace_s: float = 5.0):
        """SIGTERM to the head, then SIGKILL to what is left of its session after `grace_s` (a graceful
        `ray start --block` takes about 30 s to wind down here, and nothing of this throwaway cluster is kept)."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
        for _ in range(3):
            for pid in self.session():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.proc.poll() is None:
                self.proc.wait(timeout=30)
            time.sleep(0.2)
        assert not self.session(), f"processes of the ray head's session left: {self.session()}"
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
