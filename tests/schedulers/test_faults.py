"""Faults: a rollout or reward worker killed (-9) mid-step is restarted by Ray and its samples
rerun, once; past its restart limit the step fails fast with a clear error; a SIGSTOPped worker's
work moves to another worker when the sample timeout fires."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from sched_helpers import initial_weights, make_scheduler, start_reward, start_rollout, worker_pids

from schedulers.rollout_scheduler import RolloutFailed


def kill_when_first_group_is_scored(scheduler, pid: int) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + 120
        while not scheduler.ready and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=watch, daemon=True)
    thread.pid = pid
    thread.start()
    return thread


def test_killed_worker_restarts_and_the_step_completes_exactly_once(ray_local) -> None:
    rollout, reward = start_rollout(1, max_restarts=1, step_s=0.01), start_reward(1)
    try:
        weights = initial_weights(rollout)
        settings = dict(groups_per_step=6, groups_per_chunk=1)
        scheduler = make_scheduler(rollout, reward, **settings)
        scheduler.update_weights(weights, 0)
        killer = kill_when_first_group_is_scored(scheduler, worker_pids(rollout)[0])
        batch, m = scheduler.generate(1)
        killer.join()
        assert m["scheduler/worker_restarts"] == 1 and m["scheduler/retries"] >= 1
        ids = batch.non_tensors["sample_id"]
        uids = batch.non_tensors["group_uid"]
        assert [sid.rsplit(":", 1)[0] for sid in ids] == uids
        assert sorted({int(uid.split(":")[1]) for uid in uids}) == list(range(6))  # every draw, once
        assert len(set(ids)) == 24 and m["scheduler/done"] == 24 and m["scheduler/failed"] == 0
        scheduler.ledger.check()
        # the rerun chunks sampled the same tokens as an undisturbed run (per-chunk seeds)
        clean = make_scheduler(rollout, reward, **settings)
        clean.update_weights(weights, 0)
        expected, _ = clean.generate(1)
        assert batch.non_tensors["response_text"] == expected.non_tensors["response_text"]
    finally:
        rollout.kill()
        reward.kill()


def test_worker_killed_past_its_restart_limit_fails_the_step_clearly(ray_local) -> None:
    rollout, reward = start_rollout(1, max_restarts=0, step_s=0.01), start_reward(1)
    try:
        scheduler = make_scheduler(rollout, reward, groups_per_step=6, groups_per_chunk=1)
        scheduler.update_weights(initial_weights(rollout), 0)
        kill_when_first_group_is_scored(scheduler, worker_pids(rollout)[0])
        start = time.monotonic()
        with pytest.raises(RolloutFailed, match=r"every rollout worker is gone.*--resume"):
            scheduler.generate(1)
        assert time.monotonic() - start < 60  # fails, does not hang
    finally:
        rollout.kill()
        reward.kill()


def test_stopped_worker_times_out_and_its_work_moves(ray_local) -> None:
    rollout, reward = start_rollout(2, step_s=0.01), start_reward(1)
    stopped = worker_pids(rollout)[1]
    try:
        scheduler = make_scheduler(rollout, reward, groups_per_chunk=1, sample_timeout_s=3.0)
        scheduler.update_weights(initial_weights(rollout), 0)
        os.kill(stopped, signal.SIGSTOP)
        start = time.monotonic()
        batch, m = scheduler.generate(1)
        assert time.monotonic() - start < 30
        assert m["scheduler/timeouts"] == 1 and m["scheduler/retries"] >= 1
        assert set(batch.non_tensors["rollout_rank"]) == {0}  # all of it ran on the live worker
        assert len(set(batch.non_tensors["sample_id"])) == 16 and m["scheduler/done"] == 16
        scheduler.ledger.check()
    finally:
        os.kill(stopped, signal.SIGCONT)
        rollout.kill()
        reward.kill()


def test_killed_reward_worker_is_restarted_and_no_sample_is_lost(ray_local) -> None:
    rollout, reward = start_rollout(1, step_s=0.01), start_reward(1, max_restarts=1)
    try:
        weights = initial_weights(rollout)
        settings = dict(groups_per_step=6, groups_per_chunk=1)
        scheduler = make_scheduler(rollout, reward, **settings)
        scheduler.update_weights(weights, 0)
        killer = kill_when_first_group_is_scored(scheduler, worker_pids(reward)[0])
        batch, m = scheduler.generate(1)
        killer.join()
        assert worker_pids(reward)[0] != killer.pid  # a new process: Ray restarted it
        ids = batch.non_tensors["sample_id"]
        assert len(ids) == len(set(ids)) == 24 and m["scheduler/done"] == 24 and m["scheduler/failed"] == 0
        scheduler.ledger.check()
        clean = make_scheduler(rollout, reward, **settings)
        clean.update_weights(weights, 0)
        expected, _ = clean.generate(1)
        assert batch.non_tensors["response_text"] == expected.non_tensors["response_text"]
        assert batch.tensors["rewards"].tolist() == expected.tensors["rewards"].tolist()
    finally:
        rollout.kill()
        reward.kill()
