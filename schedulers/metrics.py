"""The rollout scheduler's per-step metrics (namespaced ``scheduler/``), from its ledger.

Counts of live samples are taken at the end of the step (what async carries into the next one);
done / aborted / failed count the transitions during the step; times are means per sample of
the batch, per lifecycle state.
"""

from __future__ import annotations

from collections import Counter

from schedulers.groups import PromptGroup
from schedulers.lifecycle import SampleLedger
from schedulers.lifecycle import SampleState as S


def step_metrics(
    ledger: SampleLedger,
    stats: Counter,
    selected: list[PromptGroup],
    before: Counter,
    version: int,
    groups_per_step: int,
) -> dict[str, float]:
    """``before``: ``ledger.reasons`` at the start of the step; ``stats``: the step's counters."""
    delta = Counter(ledger.reasons)
    delta.subtract(before)
    ended = {
        state: sum(n for k, n in delta.items() if k.startswith(state + ":"))
        for state in ("done", "aborted", "failed")
    }
    live = ledger.counts()
    staleness = [version - g.version for g in selected]
    stages = ledger.stage_seconds([sid for g in selected for sid in g.sample_ids])
    m = {
        f"scheduler/{state.value}": float(live[state])
        for state in (S.QUEUED, S.GENERATING, S.REWARDING, S.READY)
    }
    m |= {f"scheduler/{state}": float(n) for state, n in ended.items()}
    m |= {
        "scheduler/aborted_tail": float(delta["aborted:batch_full"]),
        "scheduler/aborted_surplus": float(delta["aborted:surplus"]),
        "scheduler/dropped_zero_variance": float(delta["aborted:zero_variance"]),
        "scheduler/dropped_stale": float(delta["aborted:stale"]),
        "scheduler/abort_rate": ended["aborted"] / max(1, sum(ended.values())),
        "scheduler/refills": float(stats["refills"]),
        "scheduler/refill_rate": stats["refills"] / groups_per_step,
        "scheduler/refill_cap_hit": float(stats["refill_cap_hit"]),
        "scheduler/filler_groups": float(stats["filler_groups"]),
        "scheduler/retries": float(stats["retries"]),
        "scheduler/timeouts": float(stats["timeouts"]),
        "scheduler/worker_restarts": float(stats["worker_restarts"]),
        "scheduler/late_results_ignored": float(stats["late_results"]),
        "scheduler/duplicates_ignored": float(ledger.duplicates_ignored),
        "scheduler/queue_depth": float(stats["queue_depth_max"]),
        "scheduler/staleness_mean": sum(staleness) / len(staleness),
        "scheduler/staleness_max": float(max(staleness)),
    }
    m |= {f"scheduler/time_{stage}_s": s for stage, s in stages.items()}
    return m
