"""Async generation with bounded staleness: groups for the next step generate while the "actor"
trains (here: the driver sleeps and then bumps the policy version, as the pipeline's sync does)."""

from __future__ import annotations

import time

import pytest
from sched_helpers import initial_weights, make_scheduler, start_reward, start_rollout

from schedulers.lifecycle import SampleState


@pytest.fixture(scope="module")
def workers(ray_local):
    rollout, reward = start_rollout(1, step_s=0.01), start_reward(1)
    yield rollout, reward, initial_weights(rollout)
    rollout.kill()
    reward.kill()


def test_staleness_bound_holds_and_generation_overlaps_training(workers) -> None:
    rollout, reward, weights = workers
    scheduler = make_scheduler(rollout, reward, async_ratio=1, groups_per_chunk=1)
    scheduler.update_weights(weights, 0)
    staleness_seen = []
    for step in range(1, 5):
        batch, m = scheduler.generate(step)
        versions = batch.non_tensors["policy_version"]
        current = step - 1
        assert all(current - 1 <= v <= current for v in versions), (step, versions)
        assert m["scheduler/staleness_max"] <= 1
        staleness_seen.append(m["scheduler/staleness_max"])
        # groups for the next step are live while the actor "trains"
        live = sum(m[f"scheduler/{s}"] for s in ("queued", "generating", "rewarding", "ready"))
        assert live == 16
        time.sleep(0.5)  # train_step
        scheduler.update_weights(weights, step)  # sync: version = steps trained
    assert max(staleness_seen) == 1  # some batches were generated one version back
    scheduler.ledger.check()


def test_groups_older_than_the_bound_are_discarded(workers) -> None:
    rollout, reward, weights = workers
    scheduler = make_scheduler(rollout, reward, async_ratio=1, groups_per_chunk=1, max_refills=8)
    scheduler.update_weights(weights, 0)
    scheduler.generate(1)
    time.sleep(0.5)  # the prefetched groups for step 2 finish with version 0
    scheduler.update_weights(weights, 5)  # ... then the policy jumps ahead by 5 versions
    batch, m = scheduler.generate(2)
    assert set(batch.non_tensors["policy_version"]) == {5}
    assert m["scheduler/dropped_stale"] == 16  # the 4 prefetched groups, version 0 < 5 - 1
    # replaced by fresh groups (new draws for step 2, or step 3's prefetch if it finished first)
    assert not {"2:0", "2:1", "2:2", "2:3"} & {
        uid.rsplit(":", 1)[0] for uid in batch.non_tensors["group_uid"]
    }
    counts = scheduler.ledger.counts()
    assert counts[SampleState.DONE] == 32
    assert sum(counts.values()) == scheduler.ledger.created
