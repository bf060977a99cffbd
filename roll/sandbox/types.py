"""What goes into a sandbox run (tests, limits) and what comes out (per-test verdicts, the result)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

Isolation = Literal["namespaces", "rlimits+uid", "rlimits"]
ISOLATION_LEVELS: list[Isolation] = ["rlimits", "rlimits+uid", "namespaces"]  # weakest first
MiB = 1 << 20


@dataclass(frozen=True)
class TestCase:
    """One test: ``input`` is stdin text (stdin/stdout style) or a list of call arguments (call style,
    when ``run_untrusted`` gets an ``entry_point``); ``output`` is the expected stdout text or return
    value (plain JSON data). Expected outputs stay in the parent: they never enter the sandbox."""

    __test__ = False  # not a pytest class

    input: str | list[Any]
    output: Any


@dataclass(frozen=True)
class Limits:
    """Resource limits for one run; every limit is per run unless it says otherwise."""

    timeout_s: float = 5.0
    """Wall-clock budget for all tests together; the program is killed (SIGKILL) when it is spent."""
    grace_s: float = 0.5
    """Extra wall time for sandbox start-up and reporting; past timeout_s + grace_s everything is
    killed from outside."""
    memory_bytes: int = 512 * MiB
    """RLIMIT_AS of every process, and the cap on what the run uid holds in all (resident memory,
    memfds, SysV shared memory; checked every 0.1 s; not under 'rlimits')."""
    cpu_s: int | None = None
    """RLIMIT_CPU of every process in seconds; None: ceil(timeout_s) + 1."""
    file_size_bytes: int = 16 * MiB
    """RLIMIT_FSIZE: the largest file the program may write."""
    work_bytes: int = 64 * MiB
    """Cap on the files the program writes: its tmpfs work folder's size under 'namespaces'; under
    'rlimits+uid' the files on the host disk are summed every 0.1 s; not under 'rlimits'."""
    nofile: int = 64
    """RLIMIT_NOFILE: open file descriptors per process."""
    nproc: int = 64
    """RLIMIT_NPROC: processes and threads of the run uid together (under 'rlimits', all of the
    caller's own processes and threads count)."""
    output_bytes: int = MiB
    """Cap on stdout and on stderr of each test; a program that writes more is stopped."""
    isolation: Literal["auto", "namespaces", "rlimits+uid", "rlimits"] = "auto"
    """'auto': the strongest level this machine allows; a named level to insist on it (or a weaker
    one, for tests). 'rlimits' is refused when running as root: it would run the program as root."""
    uid_base: int = 60000
    """First of 256 uids reserved for sandbox runs (one per concurrent run; no user may own them)."""

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_bytes", "file_size_bytes", "work_bytes", "nofile", "nproc"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")
        if self.grace_s < 0 or self.output_bytes < 1:
            raise ValueError("Limits.grace_s must be >= 0 and Limits.output_bytes >= 1")

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


Status = Literal["passed", "wrong_answer", "runtime_error", "timeout", "memory", "output_limit", "not_run"]


@dataclass
class TestVerdict:
    """How one test went.

    status: passed | wrong_answer (exited 0, other output) | runtime_error (non-zero exit or a
    signal) | timeout (the run's wall-clock budget ran out) | memory (RLIMIT_AS hit, or the run uid
    held more than memory_bytes) | output_limit (a stream passed output_bytes, or the files written
    passed work_bytes) | not_run (the sandbox failed; SandboxResult.error says why).
    """

    __test__ = False

    index: int
    status: Status
    exit_code: int | None = None
    """None when the program did not exit on its own (see signal) or did not run."""
    signal: int | None = None
    """The signal that ended the program: 9 when the sandbox killed it, 11 for a segfault, ..."""
    wall_time: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class SandboxResult:
    """The outcome of one run, judged in the parent: nothing the program prints can claim a pass."""

    passed: int
    total: int
    verdicts: list[TestVerdict]
    timed_out: bool
    """Some test ran out of the wall-clock budget (the program was SIGKILLed)."""
    killed_by_signal: int | None
    """The first signal that ended a test's program, if any."""
    memory_exceeded: bool
    output_exceeded: bool
    stdout: str
    """The program's stdout over all tests, cut at output_bytes."""
    stderr: str
    """The program's stderr over all tests, cut at output_bytes."""
    wall_time: float
    """Seconds for the whole call, start-up and cleanup included."""
    isolation: Isolation
    """The isolation level that was in force."""
    error: str = ""
    """Trouble of the sandbox itself (not of the program); empty when all went well."""
    uid: int | None = None
    """The uid the program ran as (None: the caller's own uid)."""
    workdir: str = ""
    """Host path of the run's temporary folder (already removed)."""

    @property
    def score(self) -> float:
        """passed / total, 0 for no tests."""
        return self.passed / self.total if self.total else 0.0
