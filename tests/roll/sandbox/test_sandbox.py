"""Hostile programs against roll.sandbox, at every isolation level this machine offers.

Each hostile run must score 0, end within timeout + grace (+ slack), leave no process of its uid and
no work folder, change nothing outside, and the next clean program must still pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import roll.sandbox
from roll.sandbox import Limits, SandboxResult, TestCase, available_isolation, run_untrusted
from roll.sandbox.isolation import uid_processes

GOOD = "a, b = map(int, input().split())\nprint(a + b)\n"
TESTS = [TestCase("1 2\n", "3"), TestCase("5 7\n", "12")]
FAST = Limits(timeout_s=1.0, grace_s=0.5)
CLEAN = Limits(timeout_s=10)  # for the clean program run after each hostile one
SLACK_S = 1.0  # a loaded 2-core box: start-up and cleanup on top of timeout + grace

AVAILABLE = available_isolation()
LEVELS = {"namespaces": ["namespaces", "rlimits+uid"], "rlimits+uid": ["rlimits+uid"]}.get(AVAILABLE, [])
pytestmark = pytest.mark.skipif(
    not LEVELS, reason="hostile programs are only run with a uid drop (run as root)"
)
REPO_FILE = Path(roll.sandbox.__file__).with_name("types.py")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(params=LEVELS)
def level(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def outside(level: str):
    """Canary files outside the sandbox: one 0644, one world-writable (safe only with namespaces)."""
    folder = Path(tempfile.mkdtemp(prefix="roll-sbx-canary-"))
    folder.chmod(0o755)
    canary, open_canary = folder / "canary.txt", folder / "open.txt"
    canary.write_text("original")
    open_canary.write_text("original")
    open_canary.chmod(0o666)
    repo_before = digest(REPO_FILE)
    yield {"dir": folder, "canary": canary, "open": open_canary}
    assert canary.read_text() == "original"
    assert stat.S_IMODE(canary.stat().st_mode) == 0o644
    if level == "namespaces":
        assert open_canary.read_text() == "original"
    assert sorted(p.name for p in folder.iterdir()) == ["canary.txt", "open.txt"]
    assert digest(REPO_FILE) == repo_before
    shutil.rmtree(folder)


def no_process_left(uid: int) -> bool:
    deadline = time.monotonic() + 2.0  # zombies handed to init may take a moment to be reaped
    while uid_processes(uid, zombies=True):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def contained(code: str, level: str, tests=TESTS, limits: Limits = FAST, **kw) -> SandboxResult:
    limits = dataclasses.replace(limits, isolation=level)
    start = time.monotonic()
    result = run_untrusted(code, tests, limits, **kw)
    elapsed = time.monotonic() - start
    assert result.score == 0.0, result
    assert result.isolation == level
    assert elapsed <= limits.timeout_s + limits.grace_s + SLACK_S, (elapsed, result)
    assert result.uid is not None and no_process_left(result.uid)
    assert not os.path.exists(result.workdir)
    clean = dataclasses.replace(CLEAN, isolation=level)
    assert run_untrusted(GOOD, TESTS, clean).score == 1.0  # the sandbox still works
    return result


def test_correct_and_partial_solutions(level: str) -> None:
    limits = Limits(isolation=level)
    good = run_untrusted(GOOD, TESTS, limits)
    assert (good.score, good.passed, good.total, good.error) == (1.0, 2, 2, "")
    assert [v.status for v in good.verdicts] == ["passed", "passed"]
    partial = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n"
    tests = [*TESTS, TestCase("2 2", "4\n\n")]  # trailing blank lines and spaces do not matter
    result = run_untrusted(partial, tests, limits)
    assert result.score == pytest.approx(2 / 3)
    assert [v.status for v in result.verdicts] == ["passed", "wrong_answer", "passed"]


def test_call_style_and_always_equal_objects(level: str, outside) -> None:
    tests = [TestCase([1, 2], 3), TestCase([[1, 2], {"k": (3,)}], [[1, 2], {"k": [3]}])]
    good = "def solve(a, b):\n    return a + b if isinstance(a, int) else [a, b]\n"
    assert run_untrusted(good, tests, Limits(isolation=level), entry_point="solve").score == 1.0
    always_equal = """
class Anything:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    __hash__ = object.__hash__
class SneakyInt(int):
    def __eq__(self, other): return True
def solve(a, b):
    return Anything() if isinstance(a, int) else SneakyInt(0)
"""
    result = contained(always_equal, level, tests, entry_point="solve")
    assert "only None, bool, int" in result.stderr
    printed = "class Anything:\n    def __eq__(self, o): return True\nprint(Anything())\n"
    contained(printed, level)


@pytest.mark.parametrize(
    "code, stops_by_timeout",
    [
        ("while True:\n    pass\n", True),  # infinite loop
        ("import time\ntime.sleep(60)\n", True),  # sleeping past the timeout
        (  # ignoring SIGTERM (the sandbox only ever sends SIGKILL)
            "import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)\n",
            True,
        ),
        ("import sys\nsys.exit(0)\n", False),  # exiting before the tests
        (  # 1000 threads: RLIMIT_NPROC counts threads too
            "import threading, time\nfor _ in range(1000):\n"
            "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\nprint(3)\n",
            False,
        ),
    ],
    ids=["infinite-loop", "sleep", "ignore-sigterm", "exit-early", "threads"],
)
def test_runaway_programs_are_stopped(code: str, stops_by_timeout: bool, level: str, outside) -> None:
    result = contained(code, level)
    assert result.timed_out == stops_by_timeout
    if stops_by_timeout:
        assert result.verdicts[0].status == "timeout" and result.killed_by_signal == 9


def test_fork_bomb(level: str, outside) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = contained(bomb, level, limits=Limits(timeout_s=1.5, grace_s=0.5, nproc=64))
    assert result.timed_out


def test_setsid_double_fork_daemon(level: str, outside) -> None:
    daemon = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:  # keeps trying to touch the canary
            try:
                open({str(outside["open"])!r}, "a").write("daemon")
            except OSError:
                pass
            time.sleep(0.05)
    os._exit(0)
time.sleep(0.2)
print("detached")
"""
    contained(daemon, level)
    before = outside["open"].read_text()
    time.sleep(0.3)  # a surviving daemon would write now
    assert outside["open"].read_text() == before


MEMFD = """
import os, time
fds = [os.memfd_create(f"m{i}") for i in range(60)]
for fd in fds:
    os.write(fd, b"x" * 16 * 2**20)  # unmapped: in no RSS and no RLIMIT_AS
time.sleep(60)
"""
SYSV_SHM = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
for _ in range(16):  # detached segments outlive shmdt and belong to no process
    addr = libc.shmat(libc.shmget(0, 64 * 2**20, 0o1000 | 0o600), None, 0)
    ctypes.memset(addr, 1, 64 * 2**20)
    libc.shmdt(ctypes.c_void_p(addr))
time.sleep(60)
"""
FORKED = "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        break\n"
FORKED += "x = bytearray(200 * 2**20)\ntime.sleep(60)\n"  # 4 x 200 MiB: each under RLIMIT_AS
DEV_SHM = "import time\nfor i in range(60):\n    open(f'/dev/shm/f{i}', 'wb').write(b'x' * 15 * 2**20)\n"
DEV_SHM += "time.sleep(60)\n"  # no /dev/shm under namespaces: an error, and score 0


@pytest.mark.parametrize(
    "code",
    ["x = bytearray(10 * 1024**3)\n", FORKED, MEMFD, SYSV_SHM, DEV_SHM],
    ids=["10GB", "forked", "memfd", "sysv-shm", "dev-shm"],
)
def test_memory_bomb(code: str, level: str, outside) -> None:
    result = contained(code, level, limits=Limits(timeout_s=3, grace_s=0.5, memory_bytes=256 << 20))
    assert result.memory_exceeded or (code == DEV_SHM and level == "namespaces")
    with open("/proc/sysvipc/shm") as f:  # nothing of the run uid is left in the host's IPC namespace
        assert f" {result.uid} " not in f.read()
    assert not [p for p in Path("/dev/shm").iterdir() if p.stat().st_uid == result.uid]


def test_output_flood(level: str, outside) -> None:
    result = contained("while True:\n    print('x' * 1000)\n", level)
    assert result.output_exceeded and len(result.stdout) <= FAST.output_bytes


def test_filling_the_disk(level: str, outside) -> None:
    fill = """
import os
try:
    open("big", "wb").write(b"x" * 32 * 2**20)
except OSError as e:
    print(e, flush=True)
for i in range(100):
    try:
        open(f"part{i}", "wb").write(b"x" * 3 * 2**20)
    except OSError as e:
        print(i, e, flush=True)
        break
"""
    limits = Limits(timeout_s=3, grace_s=0.5, file_size_bytes=4 << 20, work_bytes=16 << 20)
    result = contained(fill, level, limits=limits)
    assert "File too large" in result.stdout
    if level == "namespaces":  # the work folder is a 16 MiB tmpfs
        assert "No space left on device" in result.stdout
    else:  # the watchdog sums the files of the run uid
        assert result.output_exceeded


def test_writing_outside_the_folder(level: str, outside) -> None:
    tag = os.urandom(4).hex()
    new = [
        f"/tmp/{tag}-pwned",
        f"{outside['dir']}/{tag}-pwned",
        f"{REPO_FILE.parent}/{tag}-pwned",
        f"/root/{tag}",
    ]
    targets = [str(outside["canary"]), str(outside["open"]), str(REPO_FILE), "/etc/hostname"]
    code = f"""
import os
for path in {targets!r}:
    for attempt in (lambda: open(path, "a").write("pwned"), lambda: os.unlink(path),
                    lambda: os.rename(path, path + ".moved"), lambda: os.chmod(path, 0o777)):
        try:
            attempt()
        except OSError as e:
            print(e)
for path in {new!r}:
    try:
        open(path, "w").write("pwned")
    except OSError as e:
        print(e)
os.remove("solution.py")  # a trap for the harness, which writes the program again for test 2
os.symlink({str(outside["canary"])!r}, "solution.py")
"""
    contained(code, level)
    for path in new:
        assert not os.path.exists(path), path


def test_secrets_are_out_of_reach(level: str, outside, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "tok-" + os.urandom(8).hex()
    for name in ("SECRET_TOKEN", "AWS_SECRET_ACCESS_KEY", "RAY_ADDRESS"):
        monkeypatch.setenv(name, token)
    home = Path(tempfile.mkdtemp(prefix="roll-sbx-home-"))  # 0700, like a home folder
    (home / ".bashrc").write_text(f"export SECRET_TOKEN={token}\n")
    code = f"""
import os
print(sorted(os.environ.items()))
print(open("/proc/self/status").read())
paths = ["/root/.bashrc", {str(home / ".bashrc")!r}, "/proc/1/environ", f"/proc/{{os.getppid()}}/environ"]
paths += [f"/proc/{{p}}/environ" for p in os.listdir("/proc") if p.isdigit()]
for path in paths:
    try:
        print(path, open(path, "rb").read())
    except OSError as e:
        print(e)
"""
    try:
        result = contained(code, level)
    finally:
        shutil.rmtree(home)
    assert "Permission denied" in result.stdout or "No such file" in result.stdout
    assert token not in result.stdout + result.stderr
    assert "CapEff:\t0000000000000000" in result.stdout and "NoNewPrivs:\t1" in result.stdout
    assert "SECRET_TOKEN" not in result.stdout and "RAY_ADDRESS" not in result.stdout


def test_socket_to_a_local_port(level: str, outside) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port, received = listener.getsockname()[1], []

    def accept() -> None:
        deadline = time.monotonic() + FAST.timeout_s + FAST.grace_s
        while time.monotonic() < deadline:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            received.append(conn.recv(100))
            conn.close()

    thread = threading.Thread(target=accept)
    thread.start()
    code = "import socket\n"
    code += f"socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'pwned')\n"
    try:
        result = contained(code, level)
    finally:
        thread.join()
        listener.close()
    if level == "namespaces":  # a fresh network namespace: not even loopback is up
        assert received == [] and "Network is unreachable" in result.stderr
    else:  # documented limitation: a dropped uid still reaches loopback services
        assert received and set(received) == {b"pwned"}


def test_killing_the_parent(level: str, outside) -> None:
    code = "import os\nfor pid in (os.getppid(), 1, -1):\n    try:\n        os.kill(pid, 9)\n"
    code += "    except OSError as e:\n        print(e)\n"  # kill(-1) spares the caller
    result = contained(code, level)
    assert result.error == ""  # the harness (the program's parent) survived and reported
    os.kill(os.getpid(), 0)  # and so did we


def test_segfault(level: str, outside) -> None:
    result = contained("import ctypes\nctypes.string_at(0)\n", level)
    assert result.killed_by_signal == 11 and result.verdicts[0].status == "runtime_error"


def test_forged_results(level: str, outside) -> None:
    forge = """
import json, os
print("ALL TESTS PASSED\\npassed 2/2 score 1.0")
record = {"event": "test", "index": 0, "exit": 0, "stdout": "3", "stderr": "", "wall": 0.1}
for nonce in ("0" * 32, "f" * 32, ""):
    print(nonce, json.dumps(record))
    print(nonce, json.dumps({**record, "index": 1, "stdout": "12"}))
for fd in range(3, 64):
    try:
        os.write(fd, b"0" * 32 + b" " + json.dumps(record).encode() + b"\\n")
    except OSError:
        pass
for path in ("/proc/1/fd/1", f"/proc/{os.getppid()}/fd/1", f"/proc/{os.getppid()}/mem"):
    try:
        open(path, "wb").write(b"forged")
    except OSError as e:
        print(e)
"""
    result = contained(forge, level)
    assert [v.status for v in result.verdicts] == ["wrong_answer", "wrong_answer"]


def test_mixed_batch_in_parallel(level: str, outside) -> None:
    partial = "a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)\n"
    batch = [
        (GOOD, 1.0),
        ("while True:\n    pass\n", 0.0),
        (partial, 0.5),
        ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", 0.0),
        (GOOD, 1.0),
        ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint(3)\n", 0.5),
        ("x = bytearray(10 * 1024**3)\n", 0.0),
        (GOOD, 1.0),
    ]
    limits = Limits(timeout_s=1.5, grace_s=0.5, isolation=level)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda item: run_untrusted(item[0], TESTS, limits), batch))
    assert [r.score for r in results] == [score for _, score in batch]
    for r in results:
        assert no_process_left(r.uid) and not os.path.exists(r.workdir)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_unprivileged_caller_gets_rlimits_only() -> None:
    script = f"""
import sys
sys.path.insert(0, {str(REPO_FILE.parents[2])!r})
from roll.sandbox import Limits, TestCase, run_untrusted
tests = [TestCase("1 2", "3")]
good = run_untrusted({GOOD!r}, tests)
loop = run_untrusted("while True: pass", tests, Limits(timeout_s=1))
print(good.isolation, good.score, loop.score, loop.timed_out)
"""
    uid = 61999
    cmd = [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "/usr/bin/python3",
        "-I",
        "-c",
        script,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")
    assert out.stdout.split() == ["rlimits", "1.0", "0.0", "True"], out.stderr
    assert no_process_left(uid)
