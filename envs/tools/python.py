"""`python(code)`: run model-written Python in a subprocess sandbox (SEEDS 9.1 `code_interpreter`).

Owns: `PythonTool`, its factory `make_python_tool`, the sandbox runner `run_sandboxed`, the choice of
isolation mechanism (`sandbox_mode`) and the seccomp filter (`seccomp_program`). Each call runs in a fresh
interpreter (`python -I -S`: no site, no user paths, no PYTHON* variables) with its own temporary folder as cwd,
HOME and TMPDIR, an explicit minimal environment (nothing of the server's: its secrets stay out), its own process
group (`start_new_session`), resource limits (RLIMIT_AS, CPU, NPROC, FSIZE, NOFILE, CORE), a wall-clock timeout
after which the whole group is SIGKILLed, and an output cap (the pipe is read in chunks; nothing beyond the cap
is ever buffered). As root the code runs under a fresh unprivileged uid per call, so the kernel enforces
RLIMIT_NPROC per sandbox, the code can neither signal the server nor read its /proc environment, and after the
call every process of that uid is killed (a double-forked daemon that left the process group included; the
metadata's `swept` counts them). Calls do not share state. A server that dies takes its sandboxes with it
(parent-death signal), and the next tool sweeps their folders.

Two modes (probed once per process, logged, and reported in every observation's metadata as `sandbox`):

  "namespaces"  new mount, network, pid, ipc and uts namespaces (plus a user namespace when the host
                process is not root); a chroot into a read-only tmpfs root that holds only the system and
                Python directories (bound read-only, nosuid) and a private size-limited tmpfs as the folder;
                an empty network namespace; all capabilities dropped (bounding set, securebits NOROOT) and
                no_new_privs set. A chrooted process may not create a user namespace, so it cannot gain
                capabilities back. An init process (pid 1 of the namespace) reaps and, when the code exits,
                kills everything left in the pid namespace.
  "rlimits"     where namespaces are refused (e.g. a container whose seccomp profile forbids unshare). Not a
                security boundary: the code can read every world-readable file. The tool refuses to start in it
                unless its config says `allow_weak_sandbox: true`; then every observation says so (a line in
                the text, `metadata["weak_sandbox"]`: what is and is not guaranteed on this machine). As root,
                the fresh uid must reach the interpreter by itself: the base Python, else a system Python of the
                same version (`_weak_python`; the tool refuses to start if there is none). As non-root
                it runs as the server's own user (it can signal the server and read its environment; a process
                that leaves the group is killed only by a best-effort sweep of the call's environment marker).

In both, a seccomp filter (classic BPF built here, installed by the launcher after no_new_privs; x86_64 and
aarch64) refuses network sockets (every family but AF_UNIX), ptrace, process_vm_*, kcmp, bpf, perf_event_open,
userfaultfd, keyrings, io_uring, unshare / setns / mount and namespace flags of clone (clone3: ENOSYS, so glibc
falls back to clone), module, kexec, swap, reboot and clock syscalls, and kills a process that uses another ABI.
A kernel without seccomp filters fails the sandbox's setup (closed, not open).

On top of either, an audit hook (`sys.addaudithook`, installed by a bootstrap before the code runs) blocks
open / listdir / chdir / remove ... outside the folder (reading the Python installation is allowed), sockets
and name lookups, starting programs (subprocess, os.system, exec, spawn), forks from a child or beyond
`max_processes`, sqlite outside the folder, gc introspection and, in the weak mode (where it could rewrite the
hook), ctypes. The hook gives clear errors; it is not a security boundary on its own (CPython's audit hooks
are not), the kernel layers are. The limits are set by a small trusted launcher between fork and exec of the
code's interpreter rather than in a `preexec_fn` (which is unsafe in a threaded process such as an actor).

`site_packages=True` adds the host interpreter's site-packages (read-only) to the code's path; packages
that load C libraries through ctypes (numpy) then work in the namespaces mode only.

Errors are observations naming the limit that was hit (`metadata["limit"]`: timeout, cpu, memory,
output, processes, file_size, blocked, exit, setup).

Never: run code in the host process; keep anything between calls; let output or a process outlive
the call; raise into the agent loop; run without kernel isolation unless the config opted in.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import platform
import random
import shutil
import signal
import struct
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
SANDBOX_ENV = "WINDWARD_SANDBOX"  # the call's id (its folder's name) in the code's environment


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
# the limits, installs the seccomp filter and execs the bootstrap. In "rlimits" mode it does the last part
# (as root: the fresh uid, the limits, the filter) and execs the bootstrap.
LAUNCHER = r'''
import ctypes, json, os, resource, select, signal, sys
cfg = json.loads(sys.argv[1])
NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET = 0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
ST_FLAGS = {1: RDONLY, 2: NOSUID, 4: NODEV, 8: NOEXEC, 1024: 1024, 2048: 2048, 4096: 1 << 21}
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 22, 24, 28, 38
SECCOMP_MODE_FILTER = 2
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


class FProg(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp():
    if cfg["seccomp"] is None:
        return
    program = bytes.fromhex(cfg["seccomp"])
    buf = ctypes.create_string_buffer(program, len(program))
    prog = FProg(len(program) // 8, ctypes.addressof(buf))
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0), "seccomp filter")


def drop_and_exec():
    uid = cfg.get("uid")
    if cfg["mode"] == "namespaces":
        for cap in range(64):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break
        check(libc.prctl(PR_SET_SECUREBITS, SECBITS, 0, 0, 0), "securebits")
    if uid is not None:  # root: a fresh unprivileged uid (all capabilities go with uid 0)
        parent = os.getppid()
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # a change of uid cleared it
        if os.getppid() != parent:
            fail("the server exited before the sandbox started")
    limits()
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    seccomp()
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
    alive_r, alive_w = os.pipe()  # EOF on alive_r: the launcher is gone (getppid() says 0 to a pid-ns init)
    init = os.fork()
    if init:  # outside the namespaces: wait for the init and pass its status on
        os._exit(status_code(os.waitpid(init, 0)[1]))
    os.close(alive_w)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if select.select([alive_r], [], [], 0)[0]:  # it died before the line above: nobody would kill this init
        fail("the server exited before the sandbox started")
    os.close(alive_r)
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


# -- the seccomp filter ---------------------------------------------------------------------------------

# Syscall numbers (x86_64: asm/unistd_64.h; aarch64: asm-generic/unistd.h) of what the filter checks.
_DENIED_NR = {
    # name: (x86_64, aarch64)
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "kcmp": (312, 272),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40),
    "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51), "move_mount": (429, 429),
    "open_tree": (428, 428), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442), "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264), "fanotify_init": (300, 262), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "reboot": (169, 142), "swapon": (167, 224), "swapoff": (168, 225),
    "acct": (163, 89), "quotactl": (179, 60), "syslog": (103, 116), "vhangup": (153, 58),
    "lookup_dcookie": (212, 18), "sethostname": (170, 161), "setdomainname": (171, 162),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "clock_adjtime": (305, 266), "adjtimex": (159, 171),
}
_OTHER_NR = {"socket": (41, 198), "clone": (56, 220), "clone3": (435, 435)}
_ARCH = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # (column, AUDIT_ARCH_*)
SYSCALLS = {machine: {name: nrs[col] for name, nrs in {**_DENIED_NR, **_OTHER_NR}.items()}
            for machine, (col, _) in _ARCH.items()}
SECCOMP_DENY = tuple(_DENIED_NR)
_NEW_NAMESPACES = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_AF_UNIX = 1


def seccomp_program(deny: tuple[str, ...] = SECCOMP_DENY, unix_sockets_only: bool = True,
                    machine: str | None = None) -> bytes | None:
    """A classic-BPF seccomp filter (the bytes of its `struct sock_filter` array) for `machine` (default: this
    one), None where no syscall table is known. It kills a process that calls through another ABI (x32, i386),
    fails the `deny` syscalls with EPERM, clone() with a namespace flag with EPERM, clone3() with ENOSYS (its
    flags live in memory a filter cannot read: glibc then falls back to clone(), which is checked) and, with
    `unix_sockets_only`, socket() of any family but AF_UNIX with EPERM. Everything else is allowed."""
    col_arch = _ARCH.get(machine or platform.machine())
    if col_arch is None:
        return None
    col, audit_arch = col_arch
    nr = {name: nrs[col] for name, nrs in {**_DENIED_NR, **_OTHER_NR}.items()}
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|{JEQ,JGE,JSET}|K, BPF_RET|K
    ALLOW, EPERM, ENOSYS, KILL = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS, 0x80000000
    prog: list[tuple[int, object, object, int]] = [(LD, 0, 0, 4), (JEQ, 0, "kill", audit_arch), (LD, 0, 0, 0)]
    if col == 0:
        prog.append((JGE, "eperm", 0, 0x40000000))  # __X32_SYSCALL_BIT
    prog += [(JEQ, "eperm", 0, nr[name]) for name in deny]
    prog += [(JEQ, "enosys", 0, nr["clone3"]), (JEQ, "clone", 0, nr["clone"])]
    if unix_sockets_only:
        prog.append((JEQ, "socket", 0, nr["socket"]))
    prog.append((RET, 0, 0, ALLOW))
    labels = {"clone": len(prog)}
    prog += [(LD, 0, 0, 16), (JSET, "eperm", 0, _NEW_NAMESPACES), (RET, 0, 0, ALLOW)]  # args[0]: the flags
    labels["socket"] = len(prog)
    prog += [(LD, 0, 0, 16), (JEQ, 0, "eperm", _AF_UNIX), (RET, 0, 0, ALLOW)]  # args[0]: the family
    labels.update(eperm=len(prog), enosys=len(prog) + 1, kill=len(prog) + 2)
    prog += [(RET, 0, 0, EPERM), (RET, 0, 0, ENOSYS), (RET, 0, 0, KILL)]
    jump = lambda at, target: target if isinstance(target, int) else labels[target] - at - 1
    return b"".join(struct.pack("<HBBI", code, jump(i, jt), jump(i, jf), k) for i, (code, jt, jf, k) in enumerate(prog))


# -- the host side ------------------------------------------------------------------------------------

_SECCOMP = (seccomp_program() or b"").hex() or None  # this machine's filter, hex for the launcher


def _python() -> tuple[str, str]:
    """(interpreter, installation prefix) of the base Python (not a virtualenv's symlink)."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


def _site_packages() -> list[str]:
    return [os.path.realpath(p) for p in sys.path if p.endswith(("site-packages", "dist-packages"))
            and os.path.isdir(p)]


def _read_roots(site_packages: bool, python: tuple[str, str] | None = None) -> list[str]:
    exe, prefix = python or _python()
    roots = [prefix, os.path.dirname(exe), "/usr/share/zoneinfo"] + (_site_packages() if site_packages else [])
    return list(dict.fromkeys(roots + ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"]))


def _others_reach(path: str) -> bool:
    """An unprivileged uid can reach `path` (every folder above it searchable by others) and read it."""
    try:
        parts = path.rstrip("/").split("/")
        folders = ["/".join(parts[:i]) or "/" for i in range(1, len(parts))]
        return all(os.stat(d).st_mode & 0o001 for d in folders) and bool(os.stat(path).st_mode & 0o004)
    except OSError:
        return False


_WEAK_PYTHON: list[tuple[str, str] | None] = []


def _weak_python() -> tuple[str, str] | None:
    """(interpreter, prefix) for the weak mode as root, where the code runs under a fresh uid that must reach the
    interpreter and its standard library by itself (no mount namespace binds them): the base Python when
    others may reach it, else a system Python of the same version (/usr/local/bin, /usr/bin); None if none."""
    if not _WEAK_PYTHON:
        exe, prefix = _python()
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        found = None
        for cand, cand_prefix in ((exe, prefix), (f"/usr/local/bin/{version}", "/usr/local"),
                                  (f"/usr/bin/{version}", "/usr")):
            cand = os.path.realpath(cand)
            if os.path.isfile(cand) and _others_reach(cand) and _others_reach(f"{cand_prefix}/lib/{version}/os.py"):
                found = (cand, cand_prefix)
                break
        _WEAK_PYTHON.append(found)
    return _WEAK_PYTHON[0]


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
                   site_packages: bool, audit: bool, sandbox_id: str) -> dict:
    cpu = limits.cpu_s if limits.cpu_s is not None else limits.timeout_s
    cpu_soft = max(1, int(round(cpu)))
    is_root = os.geteuid() == 0
    namespaces = code_mode == "namespaces"
    uid = random.SystemRandom().randrange(1 << 20, 1 << 30) if is_root else None  # one uid per call
    python = _python() if namespaces or not is_root else _weak_python() or _python()
    exe = python[0]
    nproc = limits.max_processes
    if namespaces and not is_root:
        nproc += 1  # the init of the pid namespace runs under the same (namespace) uid
    elif not namespaces and not is_root:
        nproc += _user_processes(os.geteuid())  # counted over all of this user's processes
    rlimits = {"AS": limits.memory_mb << 20, "CPU": [cpu_soft, cpu_soft + 1], "FSIZE": limits.max_file_mb << 20,
               "NOFILE": limits.max_open_files, "CORE": 0, "NPROC": nproc}
    work = SANDBOX_WORK if namespaces else work_host
    read_roots = _read_roots(site_packages, python)
    return {
        "mode": code_mode, "userns": namespaces and not is_root, "uid": uid, "root": root_host, "work": work,
        "binds": _binds(site_packages) if namespaces else [], "disk_mb": limits.disk_mb, "rlimits": rlimits,
        "python": exe, "bootstrap": BOOTSTRAP, "parent": os.getpid(), "seccomp": _SECCOMP,
        "boot": {"work": work, "read_roots": read_roots, "max_forks": max(0, limits.max_processes - 1),
                 "audit": audit, "allow_ctypes": namespaces, "paths": _site_packages() if site_packages else []},
        # the whole environment of the code: nothing of the server's (its secrets) is inherited
        "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "MPLBACKEND": "Agg", SANDBOX_ENV: sandbox_id},
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
    sandbox_id = os.path.basename(base)
    work_host, root_host = os.path.join(base, "work"), os.path.join(base, "root")
    os.mkdir(work_host, 0o700)
    os.mkdir(root_host, 0o700)
    cfg = _launch_config(mode, work_host, root_host, limits, site_packages, audit, sandbox_id)
    if mode != "namespaces" and cfg["uid"] is not None:  # the folder belongs to the call's own uid
        os.chmod(base, 0o711)
        os.chown(work_host, cfg["uid"], cfg["uid"])
    exe = cfg["python"]
    swept, cleaned = 0, False
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

        async def cleanup():  # whatever the code left running (it may hold the pipe open) goes now
            nonlocal swept, cleaned
            _killpg(proc.pid)
            swept += await asyncio.to_thread(_sweep, cfg["uid"], sandbox_id if mode != "namespaces" else None)
            cleaned = True

        async def exited():  # not proc.wait(): before 3.12 it also waits for the pipes, which a daemon holds
            while proc.returncode is None:
                await asyncio.sleep(0.01)

        async def finish():
            await asyncio.gather(feed(), exited())
            await cleanup()
            await reader

        reader = asyncio.ensure_future(drain())
        try:
            await asyncio.wait_for(finish(), timeout=limits.timeout_s)
        except asyncio.TimeoutError:
            killed_for = killed_for or "timeout"
        finally:
            reader.cancel()
        rc = proc.returncode
    except OSError as err:
        return SandboxResult("", None, "setup", f"could not start the sandbox: {err}", time.monotonic() - t0, mode)
    finally:
        if proc is not None and not cleaned:
            await cleanup()  # the process group, then what left it
        if proc is not None:
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
    return SandboxResult(output, rc, limit, message, duration, mode, size,
                         {"pgid": proc.pid, "sandbox_id": sandbox_id, "uid": cfg["uid"],
                          "seccomp": cfg["seccomp"] is not None, "swept": swept})


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep(uid: int | None, marker: str | None, wait_s: float = 2.0) -> int:
    """SIGKILL what a call left running after its process group was killed (a process that called setsid, a
    double-forked daemon): every process of the call's uid (exact: as root each call runs under a fresh uid,
    which an unprivileged process cannot leave), else, with `marker`, every process of this user whose
    environment holds the call's id (best effort: a process can rewrite its environment). Kills until none is
    left alive (zombies are dead) or `wait_s` passed; returns how many it killed."""
    if uid is None and marker is None:
        return 0
    needle, own, killed = f"{SANDBOX_ENV}={marker}".encode(), os.geteuid(), set()
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/status", "rb") as f:
                    status = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
                if status.get(b"State", b"Z").strip()[:1] in (b"Z", b"X"):
                    continue
                real_uid = int(status[b"Uid"].split()[0])
                if uid is not None:
                    hit = real_uid == uid
                else:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        hit = real_uid == own and needle in f.read().split(b"\0")
            except (OSError, KeyError, ValueError):
                continue
            if hit:
                found.append(int(pid))
        if not found:
            return len(killed)
        if time.monotonic() > deadline:
            log.warning("python sandbox: %d process(es) of call %s survived SIGKILL: %s", len(found), marker or uid,
                        found[:10])
            return len(killed)
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


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


_MODES: dict[bool, tuple[str, str]] = {}  # site_packages -> (mode, why namespaces are not available)


def sandbox_mode(site_packages: bool = False) -> str:
    """The strongest mechanism that works on this machine ("namespaces" or "rlimits"), probed once."""
    return _probe_mode(site_packages)[0]


def _probe_mode(site_packages: bool) -> tuple[str, str]:
    if site_packages not in _MODES:
        mode, why = "rlimits", "not Linux"
        if sys.platform.startswith("linux"):
            result = asyncio.run(_probe(site_packages)) if not _in_loop() else _probe_in_thread(site_packages)
            if result.exit_code == 0 and result.output.strip() == "ok":
                mode, why = "namespaces", ""
            else:
                why = result.output.strip()[-500:] or result.message
        if mode == "namespaces":
            log.info("python sandbox: namespaces (mount, net, pid, ipc, uts%s), seccomp, rlimits and an audit hook",
                     "" if os.geteuid() == 0 else ", user")
        else:
            log.warning("python sandbox: namespaces are not available (%s); the tool runs only where its config "
                        "sets allow_weak_sandbox: true", why)
        _MODES[site_packages] = (mode, why)
    return _MODES[site_packages]


def weak_sandbox_note(is_root: bool, seccomp: bool) -> str:
    """What the rlimits-only mode does not guarantee, on this machine (in every weak-mode observation)."""
    return ("rlimits only (allow_weak_sandbox): no kernel namespaces, so this is not a security boundary. The code "
            "can read every world-readable file and list the host's processes; " +
            ("it runs under a fresh uid, so it cannot read the server's environment or signal it, RLIMIT_NPROC holds "
             "and every process of that uid is killed after the call; " if is_root else
             "it runs as the server's own user, so it can read the server's /proc environment and signal it, and "
             "a process that leaves its group is killed only by a best-effort sweep of the call's environment "
             "marker; ") +
            ("seccomp refuses network sockets, ptrace and new namespaces." if seccomp else
             "no seccomp filter on this architecture: network sockets are refused only by the audit hook."))


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
                 site_packages: bool = False, audit: bool = True, tmp_dir: str | None = None,
                 allow_weak_sandbox: bool = False):
        if mode not in (None, "auto", "namespaces", "rlimits"):
            raise ValueError(f"python tool: mode={mode!r}; use 'auto', 'namespaces' or 'rlimits'")
        self.limits, self.site_packages, self.audit, self.tmp_dir = limits, site_packages, audit, tmp_dir
        if mode in (None, "auto"):
            self.mode, why = _probe_mode(site_packages)
        else:
            self.mode, why = mode, f"mode={mode!r} was asked for"
        self.weak_note = None
        if self.mode == "rlimits":
            if not allow_weak_sandbox:
                raise ValueError(
                    f"python tool: no kernel isolation for the sandbox ({why}); the rlimits-only mode is not a "
                    "security boundary (the code can read world-readable files and more). Run the EnvServer where "
                    "unshare(2) is allowed (e.g. a container with CAP_SYS_ADMIN or a seccomp profile that allows "
                    "unshare), or set allow_weak_sandbox: true in the tool's config to run it anyway")
            if os.geteuid() == 0 and _weak_python() is None:
                raise ValueError(
                    f"python tool: the weak sandbox runs the code under a fresh unprivileged uid, which cannot reach "
                    f"the interpreter {_python()[0]} or its standard library (a folder above it is not searchable "
                    f"by others) and no system python{sys.version_info.major}.{sys.version_info.minor} was found "
                    "in /usr/local/bin or /usr/bin; install one there or make the interpreter's folders searchable")
            self.weak_note = weak_sandbox_note(os.geteuid() == 0, _SECCOMP is not None)
            log.warning("python sandbox: %s", self.weak_note)
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
        weak = ""
        if self.weak_note:
            meta["weak_sandbox"] = self.weak_note
            weak = "\n[weak sandbox: no kernel isolation on this machine]"
        if r.limit is None:
            return Observation((r.output if r.output.strip() else "(no output)") + weak, metadata=meta)
        shown = r.output if len(r.output) <= DISPLAY_BYTES else r.output[:DISPLAY_BYTES] + "\n[... output cut ...]"
        text = f"Error: python: {r.message}." + (f"\nOutput:\n{shown}" if shown.strip() else "")
        return Observation(text + weak, metadata=meta, error=True)


def make_python_tool(context: dict, timeout_s: float = 10.0, memory_mb: int = 512, cpu_s: float | None = None,
                     max_output_bytes: int = 65_536, max_processes: int = 16, max_file_mb: int = 64,
                     max_open_files: int = 64, disk_mb: int = 64, mode: str = "auto", site_packages: bool = False,
                     audit: bool = True, allow_weak_sandbox: bool = False) -> PythonTool:
    """Factory for `envs.registry`: {"python": {"kind": "python", "timeout_s": 10, "memory_mb": 512}}.
    `allow_weak_sandbox: true` runs the tool where the kernel refuses namespaces (rlimits only, not a boundary)."""
    limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb, cpu_s=cpu_s, max_output_bytes=max_output_bytes,
                           max_processes=max_processes, max_file_mb=max_file_mb, max_open_files=max_open_files,
                           disk_mb=disk_mb)
    return PythonTool(limits, mode=mode, site_packages=site_packages, audit=audit,
                      tmp_dir=context.get("tmp_dir"), allow_weak_sandbox=allow_weak_sandbox)


__all__ = ["PythonTool", "SandboxLimits", "SandboxResult", "SYSCALLS", "make_python_tool", "run_sandboxed",
           "sandbox_mode", "seccomp_program", "weak_sandbox_note"]
