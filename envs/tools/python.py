"""`python(code)`: run model-written Python in a subprocess sandbox (SEEDS 9.1 `code_interpreter`).

Owns: `PythonTool`, its factory `make_python_tool`, the sandbox runner `run_sandboxed`, and the choice of
isolation mechanism (`sandbox_mode`). Each call runs in a fresh interpreter (`python -I -S`: no site,
no user paths, no PYTHON* variables) with its own temporary folder as cwd, HOME and TMPDIR, a cleared
environment, its own process group (`start_new_session`), resource limits (RLIMIT_AS, CPU, NPROC,
FSIZE, NOFILE, CORE), a wall-clock timeout after which the whole group is SIGKILLed, and an output cap
(the pipe is read in chunks; nothing beyond the cap is ever buffered). Calls do not share state. A server
that dies takes its sandboxes with it (parent-death signal), and the next tool sweeps their folders.

Two layers, the strongest that works here (probed once per process, logged, and reported in every
observation's metadata as `sandbox`):

  "namespaces"  new mount, network, pid, ipc and uts namespaces (plus a user namespace when the host
                process is not root); a chroot into a read-only tmpfs root that holds only the system and
                Python directories (bound read-only, nosuid) and a private size-limited tmpfs as the folder;
                an empty network namespace; all capabilities dropped (bounding set, securebits NOROOT) and
                no_new_privs set. A chrooted process may not create a user namespace, so it cannot gain
                capabilities back. As root the code also runs as a fresh unprivileged uid, so that the kernel
                enforces RLIMIT_NPROC per sandbox. An init process (pid 1 of the namespace) reaps and, when
                the code exits, kills everything left in the pid namespace.
  "rlimits"     the fallback where namespaces are refused (e.g. a container whose seccomp profile forbids
                unshare): the same limits and folder, no kernel isolation of files and network.

On top of either, an audit hook (`sys.addaudithook`, installed by a bootstrap before the code runs) blocks
open / listdir / chdir / remove ... outside the folder (reading the Python installation is allowed), sockets
and name lookups, starting programs (subprocess, os.system, exec, spawn), forks from a child or beyond
`max_processes`, sqlite outside the folder, gc introspection and, in the fallback (where it could rewrite the
hook), ctypes. The hook gives clear errors; it is not a security boundary on its own (CPython's audit hooks
are not), the namespaces are. The limits are set by a small trusted launcher between fork and exec of the
code's interpreter rather than in a `preexec_fn` (which is unsafe in a threaded process such as an actor).

`site_packages=True` adds the host interpreter's site-packages (read-only) to the code's path; packages
that load C libraries through ctypes (numpy) then work in the namespaces mode only.

Errors are observations naming the limit that was hit (`metadata["limit"]`: timeout, cpu, memory,
output, processes, file_size, blocked, exit, setup).

Never: run code in the host process; keep anything between calls; let output or a process outlive
the call; raise into the agent loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from envs.base import Observation, error_observation

log = logging.getLogger("windward.envs.python")

EXIT_MEMORY, EXIT_BLOCKED, EXIT_SETUP = 113, 114, 115  # set by the bootstrap / the launcher
SANDBOX_WORK = "/sandbox"  # the folder's path inside the namespaces
DISPLAY_BYTES = 16_384  # output shown in an error observation
TMP_PREFIX = "windward-py-"  # + the server's pid: the folders of a server that died are swept


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 10.0  # wall clock, then the process group is killed
    memory_mb: int = 512  # RLIMIT_AS of the interpreter
    cpu_s: float | None = None  # RLIMIT_CPU; None: timeout_s
    max_output_bytes: int = 65_536  # stdout + stderr; beyond it the process group is killed
    max_processes: int = 16  # processes and threads at once, the code's own included
    max_file_mb: int = 64  # RLIMIT_FSIZE: the largest file the code may write
    max_open_files: int = 64  # RLIMIT_NOFILE
    disk_mb: int = 64  # size of the folder (a tmpfs) in the namespaces mode

    def __post_init__(self):
        for key in ("timeout_s", "memory_mb", "max_output_bytes", "max_processes", "max_file_mb",
                    "max_open_files", "disk_mb"):
            if not getattr(self, key) > 0:
                raise ValueError(f"python tool: {key}={getattr(self, key)!r} must be > 0")
        if self.cpu_s is not None and not self.cpu_s > 0:
            raise ValueError(f"python tool: cpu_s={self.cpu_s!r} must be > 0 (or None for timeout_s)")


@dataclass
class SandboxResult:
    output: str  # stdout and stderr interleaved, cut at the cap
    exit_code: int | None
    limit: str | None  # which limit ended the run, or "exit" / "setup"; None on success
    message: str  # what happened, for the observation
    duration_s: float
    mode: str
    output_bytes: int = 0
    extra: dict = field(default_factory=dict)


# -- the code that runs in the child ------------------------------------------------------------------

# The bootstrap runs as `python -I -S -c BOOTSTRAP <config>` with the code on stdin; it installs the
# audit hook, then runs the code as __main__ and echoes the value of a final expression (as a notebook).
BOOTSTRAP = r'''
import sys, os, json
cfg = json.loads(sys.argv[1])
sys.argv = ["<code>"]
code = sys.stdin.buffer.read().decode("utf-8", "replace")
_fd = os.open(os.devnull, os.O_RDONLY); os.dup2(_fd, 0); os.close(_fd)
sys.path.extend(cfg["paths"])

class SandboxViolation(PermissionError):
    pass

def _install(work, read_roots, max_forks, root_pid, allow_ctypes):
    fspath, fsdecode, realpath, getpid = os.fspath, os.fsdecode, os.path.realpath, os.getpid
    WR = (work,)
    RO = tuple(read_roots) + WR
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    state = {"forks": 0, "busy": False}
    PROGRAMS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile",
                "pty.spawn", "os.forkpty"}
    NET = {"socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
           "socket.gethostbyaddr", "socket.getnameinfo", "socket.sendto", "socket.sendmsg"}
    PATH1 = {"os.listdir", "os.scandir", "os.chdir", "os.mkdir", "os.rmdir", "os.remove", "os.truncate",
             "os.chmod", "os.chown", "os.utime", "os.chflags", "os.lchflags", "os.getxattr", "os.listxattr",
             "os.setxattr", "os.removexattr", "shutil.rmtree", "os.mkfifo", "os.mknod"}
    WRITES = PATH1 - {"os.listdir", "os.scandir", "os.getxattr", "os.listxattr"}
    PATH2 = {"os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
             "shutil.move"}
    NOPE = {"sys.addaudithook", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
            "sqlite3.enable_load_extension", "sqlite3.load_extension", "os.chroot", "pty.openpty"}
    if not allow_ctypes:  # ctypes can rewrite the hook's memory: only where the kernel isolates anyway
        NOPE |= {"ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata"}

    def inside(path, roots):
        if isinstance(path, int):
            return True  # an already open descriptor
        if path is None:
            path = "."
        p = fspath(path)
        if isinstance(p, bytes):
            p = fsdecode(p)
        p = realpath(p)
        return any(p == r or p.startswith(r + "/") for r in roots)

    def deny(what):
        raise SandboxViolation(f"sandbox: {what} is not allowed")

    def hook(event, args):
        if state["busy"]:
            return
        state["busy"] = True
        try:
            if event == "open":
                path, mode, flags = (tuple(args) + (None, None))[:3]
                write = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                        (isinstance(flags, int) and flags & WRITE_FLAGS)
                if not inside(path, WR if write else RO):
                    deny(f"open({path!r}{', for writing' if write else ''}) outside the sandbox folder")
            elif event in PATH1:
                if not inside(args[0] if args else None, WR if event in WRITES else RO):
                    deny(f"{event}({args[0] if args else ''!r}) outside the sandbox folder")
            elif event in PATH2:
                for p in args[:2]:
                    if isinstance(p, (str, bytes, os.PathLike)) and not inside(p, WR):
                        deny(f"{event}({p!r}) outside the sandbox folder")
            elif event in NET or event.startswith("socket."):
                deny(f"network access ({event})")
            elif event in PROGRAMS:
                deny(f"starting programs ({event})")
            elif event == "os.fork":
                if getpid() != root_pid:
                    deny("os.fork in a child process")
                state["forks"] += 1
                if state["forks"] > max_forks:
                    deny(f"more than {max_forks} os.fork calls (max_processes)")
            elif event in ("os.kill", "os.killpg"):
                if args and args[0] not in (0, getpid()):
                    deny(f"{event}({args[0]})")
            elif event == "import":
                if not allow_ctypes and args and args[0] in ("ctypes", "_ctypes"):
                    deny("importing ctypes")
            elif event == "sqlite3.connect":
                db = args[0] if args else ":memory:"
                if db not in (":memory:", "", b":memory:", b"") and not inside(db, WR):
                    deny(f"sqlite3.connect({db!r}) outside the sandbox folder")
            elif event == "object.__setattr__":
                if args and args[0] is hook:
                    deny("changing the sandbox hook")
            elif event in NOPE:
                deny(event)
        finally:
            state["busy"] = False

    sys.addaudithook(hook)

if cfg["audit"]:
    _install(cfg["work"], cfg["read_roots"], cfg["max_forks"], os.getpid(), cfg["allow_ctypes"])
del _install, _fd


def _run(code):
    import ast
    tree = ast.parse(code, "<code>")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    env = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(tree, "<code>", "exec"), env)
    if last is not None:
        value = eval(compile(last, "<code>", "eval"), env)
        if value is not None:
            print(repr(value))


try:
    _run(code)
except SystemExit:
    raise
except BaseException as err:
    import traceback
    try:  # the user's frames and the library's, not the bootstrap's
        frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename != "<string>"]
        sys.stderr.write("Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
                         + "".join(traceback.format_exception_only(type(err), err)))
    except MemoryError:
        sys.stderr.write(f"{type(err).__name__}: {err}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(113 if isinstance(err, MemoryError) else 114 if isinstance(err, SandboxViolation) else 1)
'''

# The launcher runs as `python -I -S -c LAUNCHER <config>` in a new session. In "namespaces" mode it
# unshares, builds the read-only root, forks an init (pid 1 of the new pid namespace) that chroots,
# forks the code's process, reaps, and kills what is left; the code's process drops privileges, sets
# the limits and execs the bootstrap. In "rlimits" mode it sets the limits and execs the bootstrap.
LAUNCHER = r'''
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = 0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
ST_FLAGS = {1: RDONLY, 2: NOSUID, 4: NODEV, 8: NOEXEC, 1024: 1024, 2048: 2048, 4096: 1 << 21}
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 24, 28, 38
SECBITS = 0x3F  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS_LOCKED, all locked: uid 0 gets no capabilities on exec
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def fail(what):
    os.write(2, f"sandbox setup failed: {what}\n".encode())
    os._exit(115)


def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        fail(f"{what}: {os.strerror(e)}")


def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: s.encode() if s is not None else None
    check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)), f"mount {src} on {dst}")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def limits():
    for name, value in cfg["rlimits"].items():
        soft, hard = value if isinstance(value, list) else (value, value)
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (soft, hard))


def drop_and_exec():
    uid = cfg.get("uid")
    if cfg["mode"] == "namespaces":
        for cap in range(64):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break
        check(libc.prctl(PR_SET_SECUREBITS, SECBITS, 0, 0, 0), "securebits")
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
    limits()
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    py = cfg["python"]
    os.execve(py, [py, "-I", "-S", "-c", cfg["bootstrap"], json.dumps(cfg["boot"])], cfg["env"])


def status_code(status):
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


try:
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # the server died: so does the sandbox
    if os.getppid() != cfg["parent"]:
        fail("the server exited before the sandbox started")
    if cfg["mode"] != "namespaces":
        os.chdir(cfg["work"])
        drop_and_exec()
    flags = NEWNS | NEWNET | NEWPID | NEWIPC | NEWUTS | (NEWUSER if cfg["userns"] else 0)
    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(flags), "unshare")
    if cfg["userns"]:
        write("/proc/self/setgroups", "deny")
        write("/proc/self/uid_map", f"0 {uid} 1")
        write("/proc/self/gid_map", f"0 {gid} 1")
    mount(None, "/", None, REC | PRIVATE)
    root = cfg["root"]
    mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=1m,mode=0755")
    for src, kind in cfg["binds"]:
        dst = root + src
        if os.path.islink(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(os.readlink(src), dst)
            continue
        if not os.path.exists(src):
            continue
        if os.path.isdir(src):
            os.makedirs(dst, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            open(dst, "w").close()
        mount(src, dst, None, BIND | REC)
        have = os.statvfs(dst).f_flag
        keep = sum(ms for st, ms in ST_FLAGS.items() if have & st)
        mount(None, dst, None, REMOUNT | BIND | RDONLY | NOSUID | (0 if kind == "dev" else NODEV) | keep)
    work = root + cfg["work"]
    os.makedirs(work)
    owner = cfg.get("uid") or 0
    mount("tmpfs", work, "tmpfs", NOSUID | NODEV,
          f"size={cfg['disk_mb']}m,mode=0700,uid={owner},gid={owner}")
    if not os.path.exists(root + "/tmp"):  # /tmp is the sandbox's folder too (TMPDIR points there anyway)
        os.makedirs(root + "/tmp")
        mount(work, root + "/tmp", None, BIND)
    # else: a bound system path lives under /tmp (e.g. a virtual env in /tmp): keep it visible
    mount(None, root, None, REMOUNT | BIND | RDONLY | NOSUID | NODEV)
    init = os.fork()
    if init:  # outside the namespaces: wait for the init and pass its status on
        os._exit(status_code(os.waitpid(init, 0)[1]))
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.chroot(root)
    os.chdir(cfg["work"])
    child = os.fork()
    if child == 0:
        drop_and_exec()
    code = 1
    while True:  # pid 1: reap everything until the code's process exits
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid == child:
            code = status_code(status)
            break
    try:
        os.kill(-1, signal.SIGKILL)  # whatever the code left behind in the pid namespace
    except ProcessLookupError:
        pass
    os._exit(code)
except SystemExit:
    raise
except BaseException as err:
    fail(f"{type(err).__name__}: {err}")
'''


# -- the host side ------------------------------------------------------------------------------------

def _python() -> tuple[str, str]:
    """(interpreter, installation prefix) of the base Python (not a virtualenv's symlink)."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


def _site_packages() -> list[str]:
    return [os.path.realpath(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))
            and os.path.isdir(p)]


def _read_roots(site_packages: bool) -> list[str]:
    exe, prefix = _python()
    roots = [prefix, os.path.dirname(exe), "/usr/share/zoneinfo"] + (_site_packages() if site_packages else [])
    return list(dict.fromkeys(roots + ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]))


def _binds(site_packages: bool) -> list[tuple[str, str]]:
    system = [("/usr", "ro"), ("/bin", "ro"), ("/sbin", "ro"), ("/lib", "ro"), ("/lib64", "ro"),
              ("/lib32", "ro"), ("/libx32", "ro"), ("/etc/ld.so.cache", "ro"), ("/etc/localtime", "ro")]
    devices = [(d, "dev") for d in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full")]
    own = [(p, "ro") for p in _read_roots(site_packages) if not p.startswith("/dev/")]
    seen, out = set(), []
    for src, kind in system + own + devices:
        # a path under one already bound (e.g. /usr/local/...) needs no mount of its own
        if src in seen or any(src.startswith(s + "/") for s, k in out if k == "ro" and not os.path.islink(s)):
            continue
        seen.add(src)
        out.append((src, kind))
    return out


def _user_processes(uid: int) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += 1 + max(0, len(os.listdir(f"/proc/{pid}/task")) - 1)
            except OSError:
                pass
    return n


def _launch_config(code_mode: str, work_host: str, root_host: str, limits: SandboxLimits,
                   site_packages: bool, audit: bool) -> dict:
    exe, _ = _python()
    cpu = limits.cpu_s if limits.cpu_s is not None else limits.timeout_s
    cpu_soft = max(1, int(round(cpu)))
    is_root = os.geteuid() == 0
    namespaces = code_mode == "namespaces"
    uid = random.SystemRandom().randrange(1 << 20, 1 << 30) if namespaces and is_root else None
    nproc = limits.max_processes
    if namespaces and not is_root:
        nproc += 1  # the init of the pid namespace runs under the same (namespace) uid
    elif not namespaces and not is_root:
        nproc += _user_processes(os.geteuid())  # counted over all of this user's processes
    rlimits = {"AS": limits.memory_mb << 20, "CPU": [cpu_soft, cpu_soft + 1], "FSIZE": limits.max_file_mb << 20,
               "NOFILE": limits.max_open_files, "CORE": 0}
    if namespaces or not is_root:  # the kernel ignores RLIMIT_NPROC for root
        rlimits["NPROC"] = nproc
    work = SANDBOX_WORK if namespaces else work_host
    read_roots = _read_roots(site_packages)
    return {
        "mode": code_mode, "userns": namespaces and not is_root, "uid": uid, "root": root_host, "work": work,
        "binds": _binds(site_packages) if namespaces else [], "disk_mb": limits.disk_mb, "rlimits": rlimits,
        "python": exe, "bootstrap": BOOTSTRAP, "parent": os.getpid(),
        "boot": {"work": work, "read_roots": read_roots, "max_forks": max(0, limits.max_processes - 1),
                 "audit": audit, "allow_ctypes": namespaces, "paths": _site_packages() if site_packages else []},
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "MPLBACKEND": "Agg"},
    }


def _classify(rc: int | None, output: str, limits: SandboxLimits, mode: str) -> tuple[str | None, str]:
    cpu = limits.cpu_s if limits.cpu_s is not None else limits.timeout_s
    sig = -rc if rc is not None and rc < 0 else rc - 128 if rc is not None and rc > 128 else None
    if rc == 0:
        return None, "ok"
    if rc == EXIT_MEMORY or "MemoryError" in output[-2000:]:
        return "memory", f"the code ran out of memory (limit {limits.memory_mb} MB)"
    if rc == EXIT_BLOCKED and "os.fork" in output[-2000:]:
        return "processes", f"the code started more processes than allowed ({limits.max_processes})"
    if rc == EXIT_BLOCKED:
        return "blocked", "the sandbox blocked an operation (files outside its folder, network, programs)"
    if rc == EXIT_SETUP:
        return "setup", f"the sandbox ({mode}) could not start"
    if sig == signal.SIGXCPU:
        return "cpu", f"the code used more than its CPU time limit ({cpu:g} s) and was killed"
    if "File too large" in output[-2000:]:
        return "file_size", f"the code wrote a file larger than the limit ({limits.max_file_mb} MB)"
    if "BlockingIOError" in output[-2000:] and ("fork" in output[-2000:] or "Resource temporarily" in output):
        return "processes", f"the code started more processes than allowed ({limits.max_processes})"
    if sig is not None:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return "exit", f"the code was killed by signal {name}"
    return "exit", f"the code exited with status {rc}"


async def run_sandboxed(code: str, limits: SandboxLimits = SandboxLimits(), mode: str | None = None,
                        site_packages: bool = False, audit: bool = True, tmp_dir: str | None = None) -> SandboxResult:
    """Run `code` in a fresh sandbox; never raises for anything the code does."""
    mode = mode or sandbox_mode(site_packages)
    base = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=tmp_dir)
    work_host, root_host = os.path.join(base, "work"), os.path.join(base, "root")
    os.mkdir(work_host, 0o700)
    os.mkdir(root_host, 0o700)
    cfg = _launch_config(mode, work_host, root_host, limits, site_packages, audit)
    exe = cfg["python"]
    t0 = time.monotonic()
    proc = None
    chunks, size, killed_for = [], 0, None
    try:
        proc = await asyncio.create_subprocess_exec(
            exe, "-I", "-S", "-c", LAUNCHER, json.dumps(cfg), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, cwd=base, env=cfg["env"])

        async def feed():
            try:
                proc.stdin.write(code.encode("utf-8", "replace"))
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                proc.stdin.close()

        async def drain():
            nonlocal size, killed_for
            while True:
                chunk = await proc.stdout.read(65_536)
                if not chunk:
                    return
                keep = max(0, limits.max_output_bytes - size)
                size += len(chunk)
                if keep:
                    chunks.append(chunk[:keep])
                if size > limits.max_output_bytes:
                    killed_for = "output"
                    _killpg(proc.pid)
                    return

        try:
            await asyncio.wait_for(asyncio.gather(feed(), drain(), proc.wait()), timeout=limits.timeout_s)
        except asyncio.TimeoutError:
            killed_for = killed_for or "timeout"
        rc = proc.returncode
    except OSError as err:
        return SandboxResult("", None, "setup", f"could not start the sandbox: {err}", time.monotonic() - t0, mode)
    finally:
        if proc is not None:
            _killpg(proc.pid)  # also whatever the code left in its process group
            if proc.returncode is None:
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except asyncio.TimeoutError:
                    log.warning("python sandbox: process %d did not exit after SIGKILL", proc.pid)
        shutil.rmtree(base, ignore_errors=True)
    duration = time.monotonic() - t0
    output = b"".join(chunks).decode("utf-8", "replace")
    if killed_for == "output":
        limit, message = "output", (f"the code printed more than the output limit ({limits.max_output_bytes} "
                                    "bytes) and was killed")
    elif killed_for == "timeout":
        limit, message = "timeout", f"the code ran longer than the time limit ({limits.timeout_s:g} s) and was killed"
    else:
        limit, message = _classify(rc, output, limits, mode)
    return SandboxResult(output, rc, limit, message, duration, mode, size, {"pgid": proc.pid})


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def sweep_folders(tmp_dir: str | None = None) -> int:
    """Remove the sandbox folders left by servers that died (a killed process runs no `finally`)."""
    root, removed = tmp_dir or tempfile.gettempdir(), 0
    for name in os.listdir(root):
        pid = name[len(TMP_PREFIX):].split("-", 1)[0] if name.startswith(TMP_PREFIX) else ""
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


_MODES: dict[bool, str] = {}


def sandbox_mode(site_packages: bool = False) -> str:
    """The strongest mechanism that works on this machine ("namespaces" or "rlimits"), probed once."""
    if site_packages not in _MODES:
        mode, why = "rlimits", "not Linux"
        if sys.platform.startswith("linux"):
            result = asyncio.run(_probe(site_packages)) if not _in_loop() else _probe_in_thread(site_packages)
            if result.exit_code == 0 and result.output.strip() == "ok":
                mode = "namespaces"
            else:
                why = result.output.strip()[-500:] or result.message
        if mode == "namespaces":
            log.info("python sandbox: namespaces (mount, net, pid, ipc, uts%s), rlimits and an audit hook",
                     "" if os.geteuid() == 0 else ", user")
        else:
            log.warning("python sandbox: namespaces are not available (%s); falling back to rlimits and an "
                        "audit hook (no kernel isolation of files and network)", why)
        _MODES[site_packages] = mode
    return _MODES[site_packages]


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False


def _probe_in_thread(site_packages: bool) -> SandboxResult:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _probe(site_packages)).result()


async def _probe(site_packages: bool) -> SandboxResult:
    return await run_sandboxed("print('ok')", SandboxLimits(timeout_s=20), mode="namespaces",
                               site_packages=site_packages, audit=False)


class PythonTool:
    name = "python"
    schema = {
        "name": "python",
        "description": ("Run Python code in a sandbox and return what it prints (the value of a final "
                        "expression is printed too). Each call starts fresh: no state is kept between calls. "
                        "No network; only the standard library; files only in the current folder."),
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The Python code to run."}},
            "required": ["code"],
        },
    }

    def __init__(self, limits: SandboxLimits = SandboxLimits(), mode: str | None = None,
                 site_packages: bool = False, audit: bool = True, tmp_dir: str | None = None):
        if mode not in (None, "auto", "namespaces", "rlimits"):
            raise ValueError(f"python tool: mode={mode!r}; use 'auto', 'namespaces' or 'rlimits'")
        self.limits, self.site_packages, self.audit, self.tmp_dir = limits, site_packages, audit, tmp_dir
        self.mode = sandbox_mode(site_packages) if mode in (None, "auto") else mode
        sweep_folders(tmp_dir)
        if site_packages:
            self.schema = dict(self.schema, description=self.schema["description"].replace(
                "only the standard library", "the installed packages"))

    async def call(self, arguments: dict) -> Observation:
        code = arguments.get("code")
        if not isinstance(code, str) or not code.strip():
            return error_observation(f"Error: python needs 'code': a non-empty string, got {code!r}",
                                     tool=self.name)
        r = await run_sandboxed(code, self.limits, self.mode, self.site_packages, self.audit, self.tmp_dir)
        meta = {"tool": self.name, "sandbox": r.mode, "exit_code": r.exit_code, "limit": r.limit,
                "duration_s": round(r.duration_s, 4), "output_bytes": r.output_bytes, **r.extra}
        if r.limit is None:
            return Observation(r.output if r.output.strip() else "(no output)", metadata=meta)
        shown = r.output if len(r.output) <= DISPLAY_BYTES else r.output[:DISPLAY_BYTES] + "\n[... output cut ...]"
        text = f"Error: python: {r.message}." + (f"\nOutput:\n{shown}" if shown.strip() else "")
        return Observation(text, metadata=meta, error=True)


def make_python_tool(context: dict, timeout_s: float = 10.0, memory_mb: int = 512, cpu_s: float | None = None,
                     max_output_bytes: int = 65_536, max_processes: int = 16, max_file_mb: int = 64,
                     max_open_files: int = 64, disk_mb: int = 64, mode: str = "auto", site_packages: bool = False,
                     audit: bool = True) -> PythonTool:
    """Factory for `envs.registry`: {"python": {"kind": "python", "timeout_s": 10, "memory_mb": 512}}."""
    limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, max_output_bytes=max_output_bytes,
                           max_processes=max_processes, max_file_mb=max_file_mb, max_open_files=max_open_files,
                           disk_mb=disk_mb)
    return PythonTool(limits, mode=mode, site_packages=site_packages, audit=audit,
                      tmp_dir=context.get("tmp_dir"))


__all__ = ["PythonTool", "SandboxLimits", "SandboxResult", "make_python_tool", "run_sandboxed", "sandbox_mode"]
