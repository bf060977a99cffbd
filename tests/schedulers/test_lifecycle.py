"""Sample lifecycle on real workers (tiny model, rule rewards, local Ray): accounting, routing,
per-chunk seeds, dynamic sampling and redundancy."""

from __future__ import annotations

from collections import Counter

import pytest
import ray
import torch
from sched_helpers import initial_weights, make_scheduler, start_reward, start_rollout

from schedulers.groups import PromptGroup, chunk_batch
from schedulers.lifecycle import LifecycleError, SampleLedger, SampleState


@pytest.fixture(scope="module")
def workers(ray_local):
    rollout, reward = start_rollout(2), start_reward(1)
    weights = initial_weights(rollout)
    yield rollout, reward, weights
    rollout.kill()
    reward.kill()


def fresh(workers, **overrides):
    rollout, reward, weights = workers
    scheduler = make_scheduler(rollout, reward, **overrides)
    scheduler.update_weights(weights, 0)
    return scheduler


def assert_groups_whole(batch, group_size: int) -> None:
    """Each group's samples are adjacent, share one prompt, one group id and one worker."""
    nt = batch.non_tensors
    for start in range(0, len(batch), group_size):
        rows = range(start, start + group_size)
        assert len({nt["group_uid"][i] for i in rows}) == 1
        assert len({tuple(nt["prompt_ids"][i]) for i in rows}) == 1
        assert len({nt["rollout_rank"][i] for i in rows}) == 1
        assert batch.tensors["group_ids"][start : start + group_size].unique().tolist() == [
            start // group_size
        ]


def test_ledger_transitions_are_checked_and_idempotent() -> None:
    ledger = SampleLedger()
    ledger.add(["a", "b"])
    with pytest.raises(LifecycleError, match="created twice"):
        ledger.add(["a"])
    with pytest.raises(LifecycleError, match="queued -> ready is not allowed"):
        ledger.move(["a"], SampleState.READY)
    ledger.move(["a", "b"], SampleState.GENERATING)
    ledger.move(["a"], SampleState.QUEUED)  # a retry
    assert ledger.records["a"].attempts == 2
    assert ledger.move(["b"], SampleState.FAILED, "worker lost") == 1
    assert ledger.move(["b"], SampleState.ABORTED, "late") == 0  # terminal: a repeat is ignored
    assert ledger.duplicates_ignored == 1 and ledger.state("b") is SampleState.FAILED
    ledger.check()
    assert ledger.counts()[SampleState.FAILED] == 1 and ledger.counts()[SampleState.QUEUED] == 1


def test_sync_steps_account_for_every_sample(workers) -> None:
    scheduler = fresh(workers)  # 4 groups x 4 samples, one chunk per worker
    seen: set[str] = set()
    for step in (1, 2):
        batch, m = scheduler.generate(step)
        ids = batch.non_tensors["sample_id"]
        assert len(ids) == 16 and len(set(ids)) == 16 and not seen & set(ids)
        assert sorted({i.rsplit(":", 3)[0] for i in ids}) == [str(step)]
        seen |= set(ids)
        assert_groups_whole(batch, 4)
        assert batch.tensors["rewards"].shape == (16,) and batch.non_tensors["policy_version"] == [0] * 16
        assert m["scheduler/done"] == 16 and m["scheduler/aborted"] == 0 and m["scheduler/failed"] == 0
        assert m["scheduler/queued"] == m["scheduler/generating"] == m["scheduler/ready"] == 0
        assert m["scheduler/staleness_max"] == 0 and m["scheduler/time_generating_s"] > 0
    counts = scheduler.ledger.counts()
    assert counts[SampleState.DONE] == 32 and sum(counts.values()) == scheduler.ledger.created == 32


def test_routing_keeps_groups_together_and_balances_load(workers) -> None:
    scheduler = fresh(workers, groups_per_step=8, groups_per_chunk=1)
    batch, _ = scheduler.generate(1)
    assert_groups_whole(batch, 4)
    per_rank = Counter(batch.non_tensors["rollout_rank"][::4])
    assert per_rank == {0: 4, 1: 4}  # least-loaded routing alternates between equal workers


def test_a_chunk_samples_the_same_tokens_on_any_worker(workers) -> None:
    rollout, _, _ = workers
    scheduler = fresh(workers)
    groups = [
        PromptGroup(f"9:{i}:x", 9, i, {"id": "x"}, [3, 4, 5], [f"9:{i}:x:{k}" for k in range(4)])
        for i in range(2)
    ]
    batch = chunk_batch(groups, 4, scheduler.cfg.sampling, seed=0, version=0)
    on0, on1 = ray.get([rollout.generate_chunk.on_rank(0, batch), rollout.generate_chunk.on_rank(1, batch)])
    assert torch.equal(on0.tensors["input_ids"], on1.tensors["input_ids"])
    assert torch.equal(on0.tensors["rollout_logprobs"], on1.tensors["rollout_logprobs"])
    assert on0.non_tensors["rollout_rank"] == [0] * 8 and on1.non_tensors["rollout_rank"] == [1] * 8


def test_dynamic_sampling_fills_the_batch_with_informative_groups(workers) -> None:
    # sched_test_parity scores every prompt "a + b =" with an even a zero: the first 5 prompts
    # (a = 0) are zero-variance groups for sure, and must be replaced
    scheduler = fresh(workers, dynamic_sampling=True, max_refills=40, groups_per_chunk=2)
    batch, m = scheduler.generate(1)
    rewards = batch.tensors["rewards"].view(4, 4)
    assert (rewards.std(dim=1) > 0).all(), rewards
    assert all(int(row["prompt"].split()[0]) % 2 == 1 for row in batch.non_tensors["row"])
    dropped = m["scheduler/dropped_zero_variance"]
    assert dropped >= 5 * 4 and dropped % 4 == 0 and m["scheduler/refills"] >= dropped / 4
    assert m["scheduler/filler_groups"] == 0 and m["scheduler/refill_cap_hit"] == 0
    counts = scheduler.ledger.counts()
    assert counts[SampleState.DONE] == 16
    assert sum(counts.values()) == scheduler.ledger.created == 16 + m["scheduler/aborted"]


def test_refill_cap_fills_with_zero_variance_groups(workers) -> None:
    scheduler = fresh(workers, dynamic_sampling=True, max_refills=0, groups_per_step=8)
    batch, m = scheduler.generate(1)
    assert len(batch) == 32 and m["scheduler/refills"] == 0
    degenerate = int((batch.tensors["rewards"].view(8, 4).std(dim=1) == 0).sum())
    assert (
        degenerate > 0 and m["scheduler/filler_groups"] == degenerate and m["scheduler/refill_cap_hit"] == 1
    )


def test_oversample_aborts_the_tail_and_counts_add_up(workers) -> None:
    scheduler = fresh(workers, oversample=1.0, groups_per_chunk=1)
    batch, m = scheduler.generate(1)
    assert len(batch) == 16
    extra = m["scheduler/aborted_tail"] + m["scheduler/aborted_surplus"]
    assert extra == 16 and m["scheduler/aborted"] == 16 and m["scheduler/abort_rate"] == 0.5
    counts = scheduler.ledger.counts()
    assert counts[SampleState.DONE] == 16 and counts[SampleState.ABORTED] == 16
    assert all(counts[s] == 0 for s in (SampleState.QUEUED, SampleState.GENERATING, SampleState.READY))
    batch2, m2 = scheduler.generate(2)  # the aborted tail does not leak into the next step
    assert {i.split(":")[0] for i in batch2.non_tensors["sample_id"]} == {"2"} and m2["scheduler/done"] == 16
