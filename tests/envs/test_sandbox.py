"""The python sandbox: escape attempts end in a clear error observation within the limits, the host untouched.

Each attempt runs under every isolation mode this machine has: "namespaces" (kernel isolation plus the audit
hook) where available, and always "rlimits" (the fallback: limits and the audit hook). Where namespaces work,
the kernel layer is also checked alone (audit hook off): files and network must be out of reach without it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from envs.registry import build_tools
from envs.tools.python import PythonTool, SandboxLimits, make_python_tool, sandbox_mode

ROOT = Path(__file__).resolve().parents[2]
MODES = ["namespaces", "rlimits"] if sandbox_mode() == "namespaces" else ["rlimits"]
LIMITS = SandboxLimits(timeout_s=3.0, cpu_s=2.0, memory_mb=512, max_output_bytes=65_536, max_processes=8)
SLACK_S = 3.0  # process start-up and teardown on a loaded machine


def run(tool: PythonTool, code: str):
    t0 = time.monotonic()
    obs = asyncio.run(tool.call({"code": code}))
    return obs, time.monotonic() - t0


def gone(pgid: int, wait_s: float = 3.0) -> bool:
    """No process of the sandbox's process group is left (killed ones may take a moment to be reaped)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@pytest.fixture(params=MODES)
def tool(request):
    return PythonTool(LIMITS, mode=request.param, allow_weak_sandbox=request.param == "rlimits")


@pytest.fixture
def kernel_only():
    if "namespaces" not in MODES:
        pytest.skip("namespaces are not available here; the audit-hook fallback is tested instead")
    return PythonTool(LIMITS, mode="namespaces", audit=False)


def test_a_normal_computation_works_and_files_stay_in_its_folder(tool):
    code = ("import os, math\n"
            "open('notes.txt', 'w').write(str(math.factorial(20)))\n"
            "print(open('notes.txt').read())\n"
            "print(os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR'], sorted(os.listdir('.')))\n"
            "sum(i * i for i in range(10))")
    obs, elapsed = run(tool, code)
    assert not obs.error, obs.text
    assert obs.text.split("\n")[:3] == ["2432902008176640000", "True ['notes.txt']", "285"]
    assert obs.metadata["sandbox"] == tool.mode and obs.metadata["limit"] is None
    assert gone(obs.metadata["pgid"])


def test_reading_etc_passwd_is_refused(tool):
    obs, elapsed = run(tool, "print(open('/etc/passwd').read())")
    assert obs.error and obs.metadata["limit"] == "blocked", obs.text
    assert "/etc/passwd" in obs.text and "root:" not in obs.text
    assert elapsed < LIMITS.timeout_s


def test_reading_a_project_file_is_refused(tool):
    readme = ROOT / "README.md"
    first = readme.read_text().splitlines()[0]
    for code in (f"print(open({str(readme)!r}).read())",
                 f"import os; print(os.read(os.open({str(readme)!r}, os.O_RDONLY), 10000).decode())",
                 f"import os; print(os.listdir({str(ROOT)!r}))"):
        obs, _ = run(tool, code)
        assert obs.error and obs.metadata["limit"] == "blocked", obs.text
        assert first not in obs.text and "pyproject.toml" not in obs.text


def test_writing_outside_its_folder_is_refused(tool):
    target = Path("/tmp") / f"windward-escape-{uuid.uuid4().hex}"
    obs, _ = run(tool, f"open({str(target)!r}, 'w').write('escaped')")
    assert obs.error and obs.metadata["limit"] == "blocked", obs.text
    assert not target.exists()


class Listener:
    """A TCP server on the host's loopback that records whether anyone connected."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def test_opening_a_socket_is_refused(tool):
    listener = Listener()
    try:
        code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {listener.port}), timeout=2)\n"
                "s.sendall(b'hello'); print('connected')")
        obs, elapsed = run(tool, code)
        time.sleep(0.3)
    finally:
        listener.close()
    assert obs.error and obs.metadata["limit"] == "blocked", obs.text
    assert "network" in obs.text and "connected" not in obs.text.splitlines()
    assert listener.connections == 0
    assert elapsed < LIMITS.timeout_s


def test_a_fork_bomb_is_stopped_and_leaves_nothing_behind(tool):
    obs, elapsed = run(tool, "import os\nwhile True:\n    os.fork()")
    assert obs.error and obs.metadata["limit"] in ("blocked", "processes"), obs.text
    assert "fork" in obs.text or "processes" in obs.text
    assert elapsed < LIMITS.timeout_s + SLACK_S
    assert gone(obs.metadata["pgid"])


def test_allocating_8_gb_hits_the_memory_limit(tool):
    obs, elapsed = run(tool, "x = bytearray(8 * 1024 ** 3)\nprint('allocated')")
    assert obs.error and obs.metadata["limit"] == "memory", obs.text
    assert "MemoryError" in obs.text and "512 MB" in obs.text and "allocated" not in obs.text
    assert elapsed < LIMITS.timeout_s


def test_an_endless_loop_is_killed_at_its_limit(tool):
    obs, elapsed = run(tool, "while True:\n    pass")
    assert obs.error and obs.metadata["limit"] in ("timeout", "cpu"), obs.text
    assert "limit" in obs.text
    assert elapsed < LIMITS.timeout_s + SLACK_S
    assert gone(obs.metadata["pgid"])


def test_sleeping_forever_is_killed_at_the_wall_clock_limit(tool):
    obs, elapsed = run(tool, "import time\ntime.sleep(3600)")
    assert obs.error and obs.metadata["limit"] == "timeout", obs.text
    assert "time limit (3 s)" in obs.text
    assert LIMITS.timeout_s - 0.5 < elapsed < LIMITS.timeout_s + SLACK_S


def test_printing_1_gb_is_cut_at_the_output_limit(tool):
    obs, elapsed = run(tool, "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2 ** 20)")
    assert obs.error and obs.metadata["limit"] == "output", obs.text
    assert "output limit (65536 bytes)" in obs.text
    assert len(obs.text) < 2 * LIMITS.max_output_bytes  # what was kept, not a gigabyte
    assert elapsed < LIMITS.timeout_s
    assert gone(obs.metadata["pgid"])


def test_starting_programs_is_refused(tool):
    codes = ["import subprocess; subprocess.run(['cat', '/etc/passwd'])", "import os; os.system('id')"]
    if tool.mode == "rlimits":  # ctypes could rewrite the hook; in the namespaces it meets the kernel instead
        codes.append("import ctypes")
    for code in codes:
        obs, _ = run(tool, code)
        assert obs.error and obs.metadata["limit"] == "blocked", (code, obs.text)
        assert "root:" not in obs.text


def test_errors_and_exit_codes_are_error_observations(tool):
    obs, _ = run(tool, "print('before')\n1 / 0")
    assert obs.error and obs.metadata["limit"] == "exit" and "ZeroDivisionError" in obs.text and "before" in obs.text
    obs, _ = run(tool, "import sys; sys.exit(3)")
    assert obs.error and obs.metadata["exit_code"] == 3
    bad = asyncio.run(tool.call({"code": ""}))
    assert bad.error and "non-empty string" in bad.text


def test_the_kernel_alone_hides_host_files_and_the_network(kernel_only):
    """Namespaces without the audit hook: /etc/passwd and the project do not exist, no network socket opens,
    and a fork bomb meets RLIMIT_NPROC."""
    obs, _ = run(kernel_only, "print(open('/etc/passwd').read())")
    assert obs.error and "No such file" in obs.text and "root:" not in obs.text
    obs, _ = run(kernel_only, f"print(open({str(ROOT / 'README.md')!r}).read())")
    assert obs.error and "No such file" in obs.text
    obs, _ = run(kernel_only, f"import os; print(os.path.exists({str(ROOT)!r}), os.path.exists('/etc/hostname'))")
    assert not obs.error and obs.text.strip() == "False False", obs.text
    listener = Listener()
    try:
        obs, _ = run(kernel_only, f"import socket; socket.create_connection(('127.0.0.1', {listener.port}), 2)")
    finally:
        listener.close()
    # seccomp refuses the socket (EPERM) before the empty network namespace could (unreachable)
    assert obs.error and ("Operation not permitted" in obs.text or "unreachable" in obs.text) \
        and listener.connections == 0, obs.text
    obs, elapsed = run(kernel_only, "import os\nwhile True:\n    os.fork()")
    assert obs.error and obs.metadata["limit"] == "processes", obs.text
    assert elapsed < LIMITS.timeout_s + SLACK_S and gone(obs.metadata["pgid"])


def test_the_registry_builds_the_tool_with_its_limits():
    (tool,) = build_tools({"code_interpreter": {"kind": "python", "timeout_s": 3, "memory_mb": 256}})
    assert tool.name == "code_interpreter" and tool.schema["name"] == "code_interpreter"
    assert tool.limits.timeout_s == 3 and tool.limits.memory_mb == 256
    assert tool.schema["parameters"]["required"] == ["code"]
    with pytest.raises(ValueError, match="timeout_s"):
        make_python_tool({}, timeout_s=0)


def test_installed_packages_on_request():
    if "namespaces" not in MODES:
        pytest.skip("packages that load C libraries through ctypes (numpy) need the namespaces mode")
    tool = make_python_tool({}, timeout_s=20, memory_mb=1024, site_packages=True)
    obs, _ = run(tool, "import numpy as np\nnp.linalg.solve(np.array([[2.0, 0], [0, 4]]), np.array([2.0, 8])).tolist()")
    assert not obs.error and obs.text == "[1.0, 2.0]\n", obs.text
    assert "installed packages" in tool.schema["description"]


@pytest.mark.parametrize("mode", MODES)
def test_the_sandbox_dies_with_its_server(tmp_path, mode):
    """A server killed without a chance to clean up (SIGKILL) takes its running sandboxes with it (also in the
    weak mode, where the code's change of uid clears the parent-death signal: it is set again), and the next
    tool sweeps the folders it left."""
    import signal
    import subprocess
    import sys

    server = subprocess.Popen(
        [sys.executable, "-c", "import asyncio, sys\n"
         "from envs.tools.python import PythonTool\n"
         f"tool = PythonTool(tmp_dir={str(tmp_path)!r}, mode={mode!r}, allow_weak_sandbox=True)\n"
         "print('ready', flush=True)\n"
         "asyncio.run(tool.call({'code': 'import time; time.sleep(3600)'}))"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        mark = f"windward-py-{server.pid}-".encode()

        def sandboxes():
            found = []
            for entry in Path("/proc").iterdir():
                try:
                    if entry.name.isdigit() and mark in (entry / "cmdline").read_bytes():
                        found.append(entry.name)
                except OSError:
                    pass
            return found

        deadline = time.monotonic() + 10
        while not sandboxes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sandboxes(), "the sandbox did not start"
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    deadline = time.monotonic() + 5
    while sandboxes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sandboxes()
    assert list(tmp_path.glob(f"windward-py-{server.pid}-*"))  # left behind by the killed server ...
    PythonTool(tmp_dir=str(tmp_path), allow_weak_sandbox=True)
    assert not list(tmp_path.glob("windward-py-*"))  # ... and swept by the next tool
