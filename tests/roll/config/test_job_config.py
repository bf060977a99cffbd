"""Job config: shipped YAMLs validate; each kind of bad input gives one clear, located error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from roll.config import load_job
from roll.errors import ConfigError, DevicePlanError
from roll.jobs.local import plan_for

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))
QUICKSTART = (ROOT / "configs" / "quickstart.yaml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_yaml_validates_and_says_how_to_run_it(path: Path) -> None:
    job = load_job(path)
    plan_for(job)
    first_lines = path.read_text().splitlines()[:4]
    assert first_lines[0].startswith("#"), "a shipped YAML opens with a comment"
    assert any(f"roll run {path.relative_to(ROOT)}" in line for line in first_lines)


def test_shipped_configs_found() -> None:
    assert len(SHIPPED) >= 2


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "pipeline: rlvr\nmodel:\n  source: tiny\n   bad_indent: 1\n")
    with pytest.raises(ConfigError) as err:
        load_job(path)
    assert "malformed YAML" in str(err.value) and "line 4" in str(err.value)


def test_unknown_key_names_key_line_and_suggestion(tmp_path: Path) -> None:
    text = QUICKSTART.replace("  max_new_tokens: 3", "  max_new_token: 3")
    path = write(tmp_path, text)
    line = text.splitlines().index("  max_new_token: 3") + 1
    with pytest.raises(ConfigError) as err:
        load_job(path)
    msg = str(err.value)
    assert "rollout.max_new_token" in msg and f"(line {line})" in msg
    assert "unknown key" in msg and "did you mean 'max_new_tokens'" in msg


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, QUICKSTART.replace("  group_size: 16", "  group_size: lots"))
    with pytest.raises(ConfigError) as err:
        load_job(path)
    msg = str(err.value)
    assert "rollout.group_size" in msg and "'lots'" in msg and "integer" in msg


def test_override_with_wrong_type_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_job(write(tmp_path, QUICKSTART), ["train.lr=fast"])
    assert "train.lr" in str(err.value)


def test_overrides_apply(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, QUICKSTART), ["rollout.group_size=4", "roles.actor.devices=[0]"])
    assert job.config.rollout.group_size == 4


def test_missing_model_path(tmp_path: Path) -> None:
    text = QUICKSTART.replace("  source: tiny\n", f"  source: hf\n  path: {tmp_path}/nope\n")
    text = text.replace("  tiny: {", "  #tiny: {")
    with pytest.raises(ConfigError) as err:
        load_job(write(tmp_path, text))
    msg = str(err.value)
    assert "model.path" in msg and "nope" in msg and "config.json" in msg


def test_missing_pipeline_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing 'pipeline:'"):
        load_job(write(tmp_path, "name: x\n"))


def test_unknown_pipeline(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown pipeline 'rlhf'.*rlvr"):
        load_job(write(tmp_path, "pipeline: rlhf\n"))


def test_impossible_device_plan(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, QUICKSTART), ["roles.actor.devices=[0,3]"])
    with pytest.raises(DevicePlanError) as err:
        plan_for(job)
    msg = str(err.value)
    assert "actor" in msg and "3" in msg and "beyond" in msg


def test_dp_size_must_divide_batch(tmp_path: Path) -> None:
    job = load_job(
        write(tmp_path, QUICKSTART),
        [
            "cluster.cpu_slots=2",
            "roles.actor.devices=[0,1]",
            "rollout.prompts_per_step=3",
            "rollout.group_size=3",
        ],
    )
    with pytest.raises(DevicePlanError, match="9"):
        plan_for(job)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "roll.cli.main", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_cli_bad_input_one_message_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, QUICKSTART.replace("steps: 250", "stepz: 250"))
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert "stepz" in result.stderr and "unknown key" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    debug = run_cli("--debug", "validate", str(path))
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_cli_validate_show_plan_ok() -> None:
    assert run_cli("validate", "configs/quickstart.yaml").returncode == 0
    shown = run_cli("show", "configs/quickstart.yaml", "rollout.group_size=4")
    assert shown.returncode == 0 and "group_size: 4" in shown.stdout and "value_clip: 0.2" in shown.stdout
    planned = run_cli("plan", "configs/quickstart.yaml")
    assert planned.returncode == 0
    for role in ("actor", "rollout", "reference", "reward"):
        assert role in planned.stdout


def test_auto_devices_are_planned_and_explained(tmp_path: Path) -> None:
    job = load_job(
        write(tmp_path, QUICKSTART),
        [
            "roles.actor.devices=auto",
            "roles.rollout.devices=auto",
            "cluster.num_gpus=2",
            "cluster.gpu_memory_gb=16",
        ],
    )
    plan = plan_for(job)
    assert plan.roles["actor"].devices == [0, 1] and plan.roles["rollout"].devices == [0, 1]
    assert plan.reasons and any("fit" in r for r in plan.reasons)
    assert "why:" in plan.render()


def test_engines_validate(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, QUICKSTART), ["rollout.engine=vllm"])
    assert job.config.rollout.logprobs_mode == "processed_logprobs"  # top_k 0, top_p 1
    with pytest.raises(ConfigError, match="top_k"):
        load_job(
            write(tmp_path, QUICKSTART), ["rollout.engine=vllm", "rollout.top_k=5", "rollout.temperature=0.7"]
        )
