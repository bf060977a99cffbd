"""Test plugin (imported through ``imports:``): a reward that, once per marker file, SIGKILLs the
rollout worker of its own Ray (a sibling process under the same raylet) when it scores the first
sample of step ``ROLL_TEST_KILL_STEP`` (counted as ``group_size * prompts_per_step`` calls a step)."""

import os
import signal
from pathlib import Path

from roll.rewards import register_reward
from roll.rewards.rules import first_int_match

CALLS = {"n": 0}


def kill_rollout_siblings() -> int:
    killed, parent = 0, os.getppid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if int(stat[1]) == parent and cmdline.startswith("ray::RolloutWorker"):
            os.kill(int(proc.name), signal.SIGKILL)
            killed += 1
    return killed


@register_reward("kill_rollout_once")
def kill_rollout_once(response: str, row: dict) -> float:
    CALLS["n"] += 1
    marker = Path(os.environ["ROLL_TEST_KILL_MARKER"])
    per_step = int(os.environ["ROLL_TEST_SAMPLES_PER_STEP"])
    if not marker.exists() and CALLS["n"] == per_step * (int(os.environ["ROLL_TEST_KILL_STEP"]) - 1) + 1:
        marker.write_text(str(kill_rollout_siblings()))
    return first_int_match(response, row)
