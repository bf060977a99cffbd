"""Run untrusted, model-written Python against test cases, contained with what Linux gives.

``run_untrusted(code, tests, limits)`` returns a ``SandboxResult`` judged in the parent. Isolation
levels, strongest first (``SandboxResult.isolation`` says which was in force):

- ``namespaces`` (root with util-linux ``unshare``): new network, PID, mount, IPC and UTS namespaces;
  a read-only minimal root (/usr, /etc, the interpreter) with a size-capped tmpfs work folder; a
  private uid; rlimits. No network at all, no view of host files or processes.
- ``rlimits+uid`` (root without working namespaces): a private uid and rlimits. The program can read
  world-readable host files, write world-writable folders (cleaned up after) and reach loopback.
- ``rlimits`` (not root): rlimits only, as the caller's own uid: the program can signal the caller's
  processes and read its files. Run reward workers as root for real containment.
"""

from roll.sandbox.runner import available_isolation, run_untrusted
from roll.sandbox.types import Limits, SandboxResult, TestCase, TestVerdict

__all__ = ["Limits", "SandboxResult", "TestCase", "TestVerdict", "available_isolation", "run_untrusted"]
