"""The rollout scheduler's options through the rlvr job: config checks, and a short run with
async generation, dynamic sampling and redundancy on a disaggregated rollout worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import read_run, run_roll

from pipelines.rlvr.config import RLVRConfig

BASE = {"pipeline": "rlvr", "model": {"source": "tiny", "tiny": {"vocab": "digits"}}}


def test_async_needs_its_own_rollout_devices_and_behaviour_logprobs() -> None:
    with pytest.raises(ValueError, match=r"async_ratio=1 .*colocated roles take turns.*devices: \[1\]"):
        RLVRConfig.model_validate({**BASE, "rollout": {"async_ratio": 1}})
    own = {"cluster": {"cpu_slots": 2}, "roles": {"rollout": {"devices": [1]}}}
    with pytest.raises(ValueError, match="behaviour log-probs"):
        RLVRConfig.model_validate(
            {**BASE, **own, "rollout": {"async_ratio": 1}, "algo": {"recompute_old_logprobs": True}}
        )
    cfg = RLVRConfig.model_validate({**BASE, **own, "rollout": {"async_ratio": 1, "oversample": 0.5}})
    assert cfg.rollout.async_ratio == 1
    with pytest.raises(ValueError, match="max_refilz"):
        RLVRConfig.model_validate({**BASE, "rollout": {"max_refilz": 3}})  # unknown keys are errors


def test_async_dynamic_redundant_run_completes_within_the_staleness_bound(tmp_path: Path) -> None:
    run_dir = tmp_path / "async"
    result = run_roll(
        "run",
        "configs/quickstart.yaml",
        f"output_dir={run_dir}",
        "steps=4",
        "cluster.cpu_slots=2",
        "roles.rollout.devices=[1]",
        "rollout.prompts_per_step=4",
        "rollout.group_size=8",
        "rollout.groups_per_chunk=1",
        "rollout.async_ratio=1",
        "rollout.dynamic_sampling=true",
        "rollout.max_refills=64",
        "rollout.oversample=0.5",
        "checkpoint.export_model=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = read_run(run_dir)
    m = {k: [v for _, v in series] for k, series in data["metrics"].items()}
    assert len(m["reward/mean"]) == 4
    assert max(m["scheduler/staleness_max"]) <= 1 and max(m["scheduler/staleness_max"][1:]) == 1
    assert all(v == 32 for v in m["scheduler/done"])  # every step trained on a full batch
    assert sum(m["scheduler/dropped_zero_variance"]) > 0  # a random policy's groups often agree
    # a zero-variance group only enters the batch as filler once refills run out (they did not)
    assert sum(m["scheduler/filler_groups"]) == 0 and max(m["groups/zero_std_share"]) == 0
    assert len(data["rollouts"]) == 4 * 32
