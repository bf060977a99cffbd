"""Run reward functions under a per-sample wall-clock limit, in a child process that can be killed.

Why a process: a hung Python function cannot be abandoned any other way. A thread cannot be
killed (it keeps its CPU and whatever it holds); ``signal.alarm`` only fires in the main thread and
only between bytecodes, so it cannot stop one long C call such as sympy raising ``9**9**9**9`` to a
big integer. A child process can always be killed.

:class:`RewardProcess` keeps one child alive (``python -m roll.rewards.isolation``) and sends it one
sample at a time; the child resolves the function by its registered name (after importing the job's
``imports:``), so nothing but names and data cross the pipe. When a sample passes its limit the
child's whole process group gets SIGKILL and the next sample starts a fresh child. The child runs
in its own session, with an address-space limit, no core files, and dies with its parent
(PR_SET_PDEATHSIG).

Wire format: each message is a 4-byte big-endian length and a body. Requests (parent → child) are
pickles of ``("call", name, response, row, params)``; replies are JSON ``{"score": x}`` or
``{"error": "..."}`` so the parent never unpickles what the child wrote.
"""

from __future__ import annotations

import json
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import time
from typing import Any, BinaryIO

_HEADER = struct.Struct(">I")
START_TIMEOUT_S = 60.0


class RewardTimeout(Exception):
    """The reward function ran past its limit; its process was killed."""


class RewardFailed(Exception):
    """The reward function raised in the child (the message is the child's ``Type: message``)."""


class RewardProcess:
    """A killable child process that runs registered reward functions by name.

    Args:
        imports: modules the child imports first (the job's ``imports:``, for custom rewards).
        memory_mb: the child's address-space limit (RLIMIT_AS).
    """

    def __init__(self, imports: list[str], memory_mb: int = 2048) -> None:
        self.imports = list(imports)
        self.memory_mb = memory_mb
        self._proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def call(
        self, name: str, response: str, row: dict[str, Any], params: dict[str, Any], timeout_s: float
    ) -> float:
        """Score one sample; raise RewardTimeout past ``timeout_s`` or RewardFailed if it raised."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        assert self._proc is not None and self._proc.stdin is not None and self._proc.stdout is not None
        try:
            _write(self._proc.stdin, pickle.dumps(("call", name, response, row, params)))
            reply = _read(self._proc.stdout, time.monotonic() + timeout_s)
        except TimeoutError:
            self.close()
            raise RewardTimeout(f"timed out after {timeout_s:g} s (reward process killed)") from None
        except (OSError, EOFError) as exc:  # the child died mid-call (memory limit, a crash)
            code = self.close()
            raise RewardFailed(f"reward process died (exit {code}): {exc}") from None
        if "error" in reply:
            raise RewardFailed(reply["error"])
        return float(reply["score"])

    def _start(self) -> None:
        self.close()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "roll.rewards.isolation", str(self.memory_mb), *self.imports],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # its own process group: one killpg takes its children too
        )
        self.restarts += 1
        assert self._proc.stdout is not None
        try:
            ready = _read(self._proc.stdout, time.monotonic() + START_TIMEOUT_S)
        except (TimeoutError, OSError, EOFError) as exc:
            code = self.close()
            raise RewardFailed(f"reward process did not start (exit {code}): {exc}") from None
        if "error" in ready:
            self.close()
            raise RewardFailed(f"reward process could not start: {ready['error']}")

    def close(self) -> int | None:
        """Kill the child and its group (if any); return its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        return proc.wait()

    def __del__(self) -> None:
        self.close()


def _write(stream: BinaryIO, body: bytes) -> None:
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    chunks, left = [], size
    while left:
        wait = deadline - time.monotonic()
        if wait <= 0 or not select.select([fd], [], [], wait)[0]:
            raise TimeoutError
        chunk = os.read(fd, left)
        if not chunk:
            raise EOFError("the reward process closed its pipe")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read(stream: BinaryIO, deadline: float) -> dict[str, Any]:
    """One JSON reply (read from the raw fd, so select() sees every byte)."""
    fd = stream.fileno()
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    return json.loads(_read_exact(fd, size, deadline))


# ---------------------------------------------------------------------------------------- child


def _child_setup(memory_mb: int) -> None:
    import ctypes
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _child_main(argv: list[str]) -> None:
    # Replies go out on a private copy of stdout; the function's own prints go to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = os.fdopen(os.dup(0), "rb")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    try:
        _child_setup(int(argv[0]))
        from roll.imports import import_modules
        from roll.rewards.registry import get_reward

        import_modules(argv[1:])
    except Exception as exc:  # noqa: BLE001 — reported to the parent, which records it
        _write(out, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
        return
    _write(out, json.dumps({"ready": True}).encode())
    while header := requests.read(_HEADER.size):
        (size,) = _HEADER.unpack(header)
        _, name, response, row, params = pickle.loads(requests.read(size))
        try:
            reply: dict[str, Any] = {"score": float(get_reward(name)(response, row, **params))}
        except Exception as exc:  # noqa: BLE001 — one sample's failure, reported to the parent
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        _write(out, json.dumps(reply).encode())


if __name__ == "__main__":
    _child_main(sys.argv[1:])
