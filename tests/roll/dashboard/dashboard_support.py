"""Shared data of the dashboard tests: run stores written with RunStore, constants, helpers."""

from __future__ import annotations

import math
import socket

from roll.jobs.runstore import RunStore

PORT = 8686  # what TestClient's Host header says; nothing listens there
BASE = f"http://127.0.0.1:{PORT}"
TOKEN = "test-token-" + "x" * 40
RUN_A = "alpha-20260101-000000-aaaaaa"
RUN_B = "beta-20260102-000000-bbbbbb"
STEPS = 500
SPIKE_STEP, SPIKE = 317, 25.0
DIP_STEP, DIP = 123, -30.0
T0 = 1_767_225_600.0
LONG_RESPONSE = "The answer is " + "very " * 120 + "long: 7"


def reward_at(step: int) -> float:
    if step == SPIKE_STEP:
        return SPIKE
    if step == DIP_STEP:
        return DIP
    return 0.5 + 0.1 * math.sin(step / 20)


def step_metrics(step: int, steps: int = STEPS) -> dict[str, float]:
    reward = reward_at(step)
    return {
        "reward/mean": reward,
        "reward/std": 0.3,
        "reward/first_int_match": reward * 0.9,
        "groups/zero_std_share": 0.2,
        "actor/kl": 0.01 * step / steps,
        "actor/entropy": 1.0 - 0.5 * step / steps,
        "actor/clip_frac": 0.05,
        "response/length_mean": 10.0,
        "response/length_max": 20.0,
        "response/truncated_share": 0.1,
        "perf/tokens_per_s": 1000.0 + step,
        "time/generate": 0.5,
        "time/reward": 0.1,
        "time/reference": 0.2,
        "time/train": 0.7,
        "time/sync": 0.05,
        "time/step": 1.6,
    }


def rollout_rows(step: int) -> list[dict]:
    rows = []
    for group in range(2):
        prompt = f"{group + 1} + {step % 5} ="
        for sample in range(4):
            response = LONG_RESPONSE if (group, sample) == (1, 3) else f"answer {sample} at step {step}"
            rows.append(
                {
                    "sample_id": f"{step}:{group}:{sample}",
                    "group_id": group,
                    "prompt": prompt,
                    "response": response,
                    "reward": float(sample == group),
                    "advantage": (sample - 1.5) / 2,
                    "state": "done" if sample < 3 else "truncated",
                }
            )
    return rows


def write_run(
    store: RunStore, run_id: str, steps: int, *, rollout_steps=(100, 200), status="running"
) -> None:
    store.create_run(
        run_id, run_id.split("-")[0], "rlvr", {"pipeline": "rlvr", "name": run_id, "steps": steps}
    )
    with store.transaction():
        for step in range(1, steps + 1):
            store.log_metrics(run_id, step, step_metrics(step, steps), wall_time=T0 + 2.0 * step)
        for step in rollout_steps:
            store.log_rollouts(run_id, step, rollout_rows(step))
    store.log_event(run_id, "checkpoint", "saved step 100", step=100)
    store.log_event(run_id, "stage", "generate took 0.5 s", step=101, data={"stage": "generate"})
    if status != "running":
        store.set_status(run_id, status)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
