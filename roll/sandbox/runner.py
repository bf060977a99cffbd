"""run_untrusted: run model-written Python against test cases and judge it here, in the parent.

Process tree (namespaces level, the strongest)::

    caller (root) ── unshare --net --pid --ipc --uts --mount --fork --kill-child   own session
                        └─ python -I -S _harness.py     root, PID 1 of the new namespaces
                              └─ python -I -S -c RUNNER  per test: run uid, chroot, rlimits, own session

The caller's hard deadline (timeout_s + grace_s) SIGKILLs the unshare process group; the harness is
PID 1 of the PID namespace, so its death kills every process in it. Whatever the level, every process
of the run's private uid is killed at the end, and the temporary folder is removed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from roll.sandbox.isolation import (
    SAFE_PATH,
    kill_uid_processes,
    remove_tree,
    remove_uid_files,
    remove_uid_ipc,
    sandbox_python,
    uid_slot,
)
from roll.sandbox.types import ISOLATION_LEVELS, Isolation, Limits, SandboxResult, TestCase, TestVerdict

log = logging.getLogger(__name__)

HARNESS = Path(__file__).with_name("_harness.py")
NAMESPACES = ["--net", "--pid", "--ipc", "--uts", "--mount", "--fork", "--mount-proc", "--kill-child"]
IN_SANDBOX_WORK = "/sandbox"  # the work folder's path inside the namespaces' root (see _harness)

_probe_lock = threading.Lock()
_available: Isolation | None = None


def run_untrusted(
    code: str, tests: list[TestCase], limits: Limits | None = None, *, entry_point: str | None = None
) -> SandboxResult:
    """Run ``code`` once per test and judge each run against the test's expected output.

    Stdin/stdout style (default): each ``TestCase.input`` is fed to stdin and stdout must equal
    ``output`` (trailing whitespace per line and trailing blank lines ignored). Call style (with
    ``entry_point``): ``entry_point(*input)`` must return ``output``; only plain JSON data is judged.
    Never raises because of what the program does; raises ValueError for malformed tests or limits.
    """
    limits = limits or Limits()
    return execute(code, tests, limits, resolve_isolation(limits.isolation), entry_point)


def available_isolation() -> Isolation:
    """The strongest level this machine allows, probed once per process with a real run."""
    global _available
    with _probe_lock:
        if _available is None:
            _available = _probe()
        return _available


def _probe() -> Isolation:
    if os.geteuid() != 0:
        return "rlimits"
    if shutil.which("unshare", path=SAFE_PATH + ":/usr/sbin:/sbin") is None:
        log.warning("roll.sandbox: no unshare binary (util-linux); isolating with rlimits and a uid only")
        return "rlimits+uid"
    result = execute("print(input())", [TestCase("ok\n", "ok")], Limits(timeout_s=20), "namespaces", None)
    if result.passed != 1:
        log.warning("roll.sandbox: namespaces do not work here (%s); using rlimits and a uid", result.error)
        return "rlimits+uid"
    return "namespaces"


def resolve_isolation(requested: str) -> Isolation:
    available = available_isolation()
    if requested == "auto":
        return available
    if requested not in ISOLATION_LEVELS:
        raise ValueError(f"Limits.isolation={requested!r}: use 'auto' or one of {ISOLATION_LEVELS}")
    if requested == "rlimits" and os.geteuid() == 0:
        raise ValueError(
            "Limits.isolation='rlimits' would run the program as root; use 'auto' or 'rlimits+uid'"
        )
    if ISOLATION_LEVELS.index(requested) > ISOLATION_LEVELS.index(available):
        raise ValueError(
            f"Limits.isolation={requested!r} is not available here (best: {available!r}); use 'auto'"
        )
    return requested  # type: ignore[return-value]


def execute(
    code: str, tests: list[TestCase], limits: Limits, level: Isolation, entry_point: str | None
) -> SandboxResult:
    """run_untrusted at a given isolation level (the probe uses it to try namespaces)."""
    call = entry_point is not None
    for i, test in enumerate(tests):
        if call != isinstance(test.input, list):
            want = "a list of call arguments" if call else "stdin text"
            raise ValueError(f"tests[{i}].input must be {want} (entry_point={entry_point!r})")
        try:
            json.dumps([test.input, test.output])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tests[{i}] must hold plain JSON data: {exc}") from exc
    start = time.monotonic()
    with uid_slot(limits.uid_base) if level != "rlimits" else nullcontext(None) as uid:
        base = tempfile.mkdtemp(prefix="roll-sandbox-")
        try:
            os.chmod(base, 0o711)  # the run uid may pass through to base/work, not list or rename
            job = _job(code, tests, limits, level, uid, base, entry_point)
            records, error, hard_killed = _launch(job, limits, level, uid)
        finally:
            if uid is not None:
                kill_uid_processes(uid)
                if level == "rlimits+uid":
                    remove_uid_files(uid)
                    remove_uid_ipc(uid)
            remove_tree(base)
    verdicts = judge(tests, records, call, hard_killed)
    signals = [v.signal for v in verdicts if v.signal]
    ran = [r for r in records if r.get("event") == "test"]
    return SandboxResult(
        passed=sum(v.passed for v in verdicts),
        total=len(tests),
        verdicts=verdicts,
        timed_out=any(v.status == "timeout" for v in verdicts),
        killed_by_signal=signals[0] if signals else (signal.SIGKILL if hard_killed else None),
        memory_exceeded=any(v.status == "memory" for v in verdicts),
        output_exceeded=any(v.status == "output_limit" for v in verdicts),
        stdout="".join(r["stdout"] for r in ran)[: limits.output_bytes],
        stderr="".join(r["stderr"] for r in ran)[: limits.output_bytes],
        wall_time=time.monotonic() - start,
        isolation=level,
        error=error,
        uid=uid,
        workdir=base,
    )


def _job(
    code: str,
    tests: list[TestCase],
    limits: Limits,
    level: Isolation,
    uid: int | None,
    base: str,
    entry_point: str | None,
) -> dict[str, Any]:
    """What the harness gets on stdin: everything but the expected outputs."""
    work = IN_SANDBOX_WORK if level == "namespaces" else os.path.join(base, "work")
    return {
        "nonce": secrets.token_hex(16),
        "code": code,
        "inputs": [t.input for t in tests],
        "entry_point": entry_point,
        "isolation": level,
        "uid": uid,
        "base": base,
        "timeout_s": limits.timeout_s,
        "work_bytes": limits.work_bytes,
        "env": {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": work, "TMPDIR": work},
        "limits": {
            "memory_bytes": limits.memory_bytes,
            "cpu_s": limits.cpu_seconds,
            "file_size_bytes": limits.file_size_bytes,
            "nofile": limits.nofile,
            "nproc": limits.nproc,
            "output_bytes": limits.output_bytes,
        },
    }


def _launch(
    job: dict[str, Any], limits: Limits, level: Isolation, uid: int | None
) -> tuple[list[dict[str, Any]], str, bool]:
    """Start the harness, feed it the job, collect its records until it ends or the hard deadline."""
    cmd = [sandbox_python(), "-I", "-S", str(HARNESS)]
    if level == "namespaces":
        cmd = [
            shutil.which("unshare", path=SAFE_PATH + ":/usr/sbin:/sbin") or "unshare",
            *NAMESPACES,
            "--",
            *cmd,
        ]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"},
        cwd="/",
        start_new_session=True,
    )
    hard_killed = False
    try:
        out, err = proc.communicate(json.dumps(job).encode(), timeout=limits.timeout_s + limits.grace_s)
    except subprocess.TimeoutExpired:
        hard_killed = True
        os.killpg(proc.pid, signal.SIGKILL)
        if uid is not None:
            kill_uid_processes(uid)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # not expected: every holder of the pipes is dead
            out, err = b"", b"the sandbox's pipes stayed open after it was killed"
    records, stray = [], 0
    prefix = job["nonce"].encode() + b" "
    for line in out.splitlines():
        try:
            if not line.startswith(prefix):
                raise ValueError("no nonce")
            records.append(json.loads(line[len(prefix) :]))
        except ValueError:  # a line without the nonce, or the last one, cut short by the hard kill
            stray += 1
    error = err.decode("utf-8", "replace")[-4000:].strip()
    if not any(r.get("event") == "ready" for r in records) and not error:
        error = f"the sandbox did not start (exit status {proc.returncode})"
    if stray:
        error += f"\n{stray} unreadable or unauthenticated line(s) from the harness were ignored"
    return records, error.strip(), hard_killed


def same_stdout(actual: str, expected: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines."""

    def lines(text: str) -> list[str]:
        rows = [row.rstrip() for row in text.replace("\r\n", "\n").split("\n")]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    return lines(actual) == lines(expected)


def same_return(actual_stdout: str, expected: Any) -> bool:
    """The call runner's {"value": ...} envelope, parsed to plain data, == the expected plain data."""
    try:
        got = json.loads(actual_stdout)
    except ValueError:
        return False
    return (
        isinstance(got, dict) and set(got) == {"value"} and got["value"] == json.loads(json.dumps(expected))
    )


def judge(
    tests: list[TestCase], records: list[dict[str, Any]], call: bool, hard_killed: bool
) -> list[TestVerdict]:
    """One verdict per test, from the harness's records; a test without a record ran out of time
    (or the harness died, which the result's error then says)."""
    by_index = {r["index"]: r for r in records if r.get("event") == "test"}
    finished = hard_killed or any(r.get("event") == "done" for r in records)
    verdicts = []
    for i, test in enumerate(tests):
        rec = by_index.get(i)
        if rec is None:
            verdicts.append(TestVerdict(i, "timeout" if finished else "not_run"))
            continue
        code = rec["exit"]
        sig = -code if code is not None and code < 0 else None
        if rec.get("timed_out"):
            status = "timeout"
        elif rec.get("memory"):
            status = "memory"
        elif rec.get("output_limit"):
            status = "output_limit"
        elif code != 0:
            status = "runtime_error"
        elif (
            same_return(rec["stdout"], test.output) if call else same_stdout(rec["stdout"], str(test.output))
        ):
            status = "passed"
        else:
            status = "wrong_answer"
        verdicts.append(TestVerdict(i, status, None if sig else code, sig, rec["wall"]))
    return verdicts
