"""Host-side pieces of isolation: the interpreter the sandbox runs, a private uid per concurrent run,
and cleanup of whatever that uid left behind (processes anywhere, files in world-writable folders)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from typing import Iterator

UID_SLOTS = 256
SAFE_PATH = "/usr/bin:/bin"
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")
IPC_RMID = 0
_KILL_ALL = "import os\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n"


def world_executable(path: str) -> bool:
    """Whether any uid may execute ``path``: the file and every folder above it have the x bit for others."""
    real = os.path.realpath(path)
    try:
        if not os.stat(real).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(real)
        while True:
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
            if parent == "/":
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


@functools.cache
def sandbox_python() -> str:
    """The interpreter for the harness and the programs: this one when another uid can run it (a venv
    under /root cannot be), else the system's python3. Resolved, so that the sandbox binds its prefix."""
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3", path=SAFE_PATH)):
        if candidate and world_executable(candidate):
            return os.path.realpath(candidate)
    raise RuntimeError(
        "roll.sandbox needs a Python 3.11+ interpreter that an unprivileged uid can execute; install "
        "python3 under /usr/bin or run from an interpreter outside a private home folder"
    )


@functools.cache
def _uid_is_taken(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _lock_dir() -> str:
    base = "/run" if os.path.isdir("/run") and os.access("/run", os.W_OK) else tempfile.gettempdir()
    path = os.path.join(base, f"roll-sandbox-uids-{os.geteuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise RuntimeError(f"{path} must be a folder owned by uid {os.geteuid()} with mode 0700; remove it")
    return path


@contextlib.contextmanager
def uid_slot(uid_base: int) -> Iterator[int]:
    """Hold one uid of ``uid_base .. uid_base + 255`` for a run: an flock makes it exclusive across
    threads and processes, so RLIMIT_NPROC (counted per uid) and kill-by-uid see this run alone.
    Leftovers of an earlier run that crashed are killed first. Waits while all uids are in use."""
    lock_dir = _lock_dir()
    while True:
        for uid in range(uid_base, uid_base + UID_SLOTS):
            if _uid_is_taken(uid):  # a real account: never run as it, never kill its processes
                continue
            fd = os.open(
                f"{lock_dir}/{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                kill_uid_processes(uid)
                remove_uid_ipc(uid)
                yield uid
            finally:
                os.close(fd)
            return
        time.sleep(0.05)


def uid_processes(uid: int, *, zombies: bool = False) -> list[int]:
    """Pids whose real uid is ``uid`` (from /proc; zombies only if asked: they run nothing)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and (zombies or not fields["State"].strip().startswith("Z")):
            found.append(int(name))
    return found


def kill_uid_processes(uid: int) -> bool:
    """SIGKILL every process of ``uid`` (also those that left the session with setsid), by running
    ``kill(-1)`` as that uid: the kernel signals all of them in one pass that no fork can outrun.
    Returns whether none is left."""
    for _ in range(50):
        if not uid_processes(uid):
            return True
        subprocess.run(
            [sandbox_python(), "-I", "-S", "-c", _KILL_ALL],
            user=uid,
            group=uid,
            extra_groups=[],
            env={"PATH": SAFE_PATH},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            timeout=30,
        )
        time.sleep(0.01)
    return not uid_processes(uid)


def remove_uid_ipc(uid: int) -> None:
    """Remove the SysV shared memory, semaphores and message queues of ``uid`` (they outlive their
    processes; without an IPC namespace they would stay on the host)."""
    libc = ctypes.CDLL(None, use_errno=True)
    removers = {"shm": lambda i: libc.shmctl(i, IPC_RMID, None), "sem": lambda i: libc.semctl(i, 0, IPC_RMID)}
    removers["msg"] = lambda i: libc.msgctl(i, IPC_RMID, None)
    for kind, remove in removers.items():
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                header = f.readline().split()
                rows = [dict(zip(header, r.split(), strict=False)) for r in f]
        except OSError:
            continue
        for cols in rows:
            if uid in (int(cols["uid"]), int(cols["cuid"])):
                remove(int(cols[{"shm": "shmid", "sem": "semid", "msg": "msqid"}[kind]]))


def remove_tree(path: str) -> None:
    """rm -rf without following links; GNU rm also copes with folders nested deeper than Python recurses."""
    with contextlib.suppress(OSError, RecursionError):
        shutil.rmtree(path)
    if os.path.lexists(path):
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], check=False)


def remove_uid_files(uid: int) -> None:
    """Remove what ``uid`` created at the top of the world-writable folders (without namespaces the
    program can write there; deeper world-writable folders are not searched)."""
    for folder in WORLD_WRITABLE:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    remove_tree(entry.path)
                else:
                    os.unlink(entry.path)
