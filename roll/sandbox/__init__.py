"""Run untrusted, model-written Python against test cases, contained with what Linux gives.

``run_untrusted(code, tests, limits)`` returns a ``SandboxResult`` judged in the parent (expected
outputs never enter the sandbox). Isolation levels, strongest first; ``available_isolation()`` probes
once which one this machine allows and ``SandboxResult.isolation`` says which was in force:

- ``namespaces`` (root, util-linux ``unshare``): new network, PID, mount, IPC and UTS namespaces; a
  read-only minimal root (/usr, a few /etc files, the interpreter) with a size-capped tmpfs work
  folder; a private uid; rlimits; a watchdog on memory. No network, no host files or processes.
- ``rlimits+uid`` (root, no namespaces): a private uid, rlimits and the watchdog (memory and files).
  The program can read world-readable host files, write world-writable folders (the tops of /tmp,
  /var/tmp and /dev/shm are watched and cleaned) and reach loopback services, such as Ray's.
- ``rlimits`` (not root): rlimits only, as the caller's own uid: the program can signal the caller's
  processes, read its files, and a setsid daemon outlives the run. Not for untrusted code at scale.

Common to all: a fresh interpreter (``python -I -S``) per test, an allow-listed environment, a
wall-clock budget enforced with SIGKILL, capped output. Not contained at any level: kernel exploits
(there is no seccomp filter) and CPU contention among the processes the program may start.
"""

from roll.sandbox.runner import available_isolation, run_untrusted
from roll.sandbox.types import ISOLATION_LEVELS, Limits, SandboxResult, TestCase, TestVerdict

__all__ = [
    "ISOLATION_LEVELS",
    "Limits",
    "SandboxResult",
    "TestCase",
    "TestVerdict",
    "available_isolation",
    "run_untrusted",
]
