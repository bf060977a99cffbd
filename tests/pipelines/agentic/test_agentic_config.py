"""Agentic job config: the shipped job validates and plans; bad input gives one clear, located error."""

from __future__ import annotations

from pathlib import Path

import pytest

from roll.config import load_job
from roll.errors import ConfigError
from roll.jobs.local import plan_for

ROOT = Path(__file__).resolve().parents[3]
JOB = ROOT / "configs" / "agentic" / "frozen_lake_tiny.yaml"


def test_shipped_job_validates_and_plans_an_environment_role() -> None:
    job = load_job(JOB)
    cfg = job.config
    assert job.pipeline == "agentic" and cfg.env.params["render"] == "cells"
    assert cfg.active_roles == ["actor", "rollout", "environment"]  # no KL: no reference
    assert cfg.rollout.batch_size == 64 and cfg.context_limit == 256
    assert cfg.max_generated_tokens == 10
    plan = plan_for(job)
    assert not plan.roles["environment"].needs_device


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algo.name=ppo", "algo.name 'ppo' is not supported by the agentic pipeline"),
        ("algo.kl_control=adaptive", "fixed KL weight"),
        ("rollout.max_context_tokens=999", "exceeds the tiny model's max_position_embeddings=256"),
        ("rollout.observation_template=obs", "must contain {observation}"),
        ("train.mini_batches=3", "does not divide the batch of 64"),
        ("env.name=chess", "unknown environment 'chess'"),
        ("env.params.size=1", "env.params"),
        ("rollout.group_size=1", "rollout.group_size"),
    ],
)
def test_bad_input_names_what_to_change(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_job(JOB, [override])
    assert message in str(err.value)


def test_kl_starts_a_reference() -> None:
    cfg = load_job(JOB, ["algo.kl_coef=0.05"]).config
    assert cfg.active_roles == ["actor", "rollout", "reference", "environment"]


def test_unknown_key_is_located(tmp_path: Path) -> None:
    text = JOB.read_text().replace("  tasks_per_step: 8", "  tasks_per_stp: 8")
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_job(path)
    assert "rollout.tasks_per_stp" in str(err.value) and "did you mean 'tasks_per_step'" in str(err.value)
