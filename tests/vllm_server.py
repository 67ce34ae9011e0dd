"""vLLM's OpenAI-compatible server on a model folder, for tests: a subprocess on a free port, started and waited
for (with a deadline that names what it waited for) by a `with` block, ended with its process group at the end.
ASSETS: `vllm serve` fails in the CPU packaging (it looks itself up as "vllm"); the server module starts the same
server. On these 2 cores it is up in about 25 s with `--enforce-eager`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx


class VLLMServer:
    def __init__(self, model: str, served_name: str = "tiny", max_model_len: int = 1024, start_timeout_s: float = 300,
                 dtype: str = "float32"):
        self.model, self.served_name = model, served_name
        self.max_model_len, self.start_timeout_s, self.dtype = max_model_len, start_timeout_s, dtype
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> "VLLMServer":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING")
        # stderr to a file (a pipe nobody reads would block the server once full); its own process group, so the
        # engine-core child ends with it
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
             "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(port),
             "--gpu-memory-utilization", "0.3", "--max-model-len", str(self.max_model_len), "--enforce-eager", "--dtype", self.dtype],
            stdout=subprocess.DEVNULL, stderr=self.log, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}/v1"
        try:
            self._wait_until_up()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server on {self.model} exited {self.proc.returncode} while starting: "
                                   f"{self._log_tail()}")
            try:
                if httpx.get(self.url + "/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the vLLM server on {self.model} did not answer {self.url}/models within "
                                   f"{self.start_timeout_s:.0f} s")
            time.sleep(1)

    def _log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):  # the group: the server and its engine
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self.log.close()
        self.proc = None
