"""DeepSpeed train engine: same math as TorchTrainEngine for ZeRO 0-3, data-parallel ranks agree
with one process, checkpoints resume exactly, bf16 trains, offload is a state machine.

Tolerances (fp32, CPU): per-step losses and grad norms agree with the torch engine to 2e-6
absolute + 1e-5 relative, weights after the run to 2e-5 absolute (AdamW's 1/sqrt(v) amplifies
the ~1e-7 differences of flat-buffer sums). Checkpoint resume is bitwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'roll[deepspeed]')")

from ds_rank_main import make_batch, optim_config, policy_loss, tiny_model  # noqa: E402

from roll.engines.deepspeed_engine import DeepSpeedConfig, DeepSpeedTrainEngine, free_tcp_address  # noqa: E402
from roll.engines.torch_engine import TorchTrainEngine  # noqa: E402
from roll.errors import StateError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

REPO = Path(__file__).resolve().parents[3]
STAT_TOL = dict(atol=2e-6, rtol=1e-5)
WEIGHT_TOL = dict(atol=1e-4, rtol=0)


def train(engine, batch, steps: int) -> list[dict[str, float]]:
    return [engine.train_step(batch, policy_loss, "response_mask") for _ in range(steps)]


def assert_weights_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray], **tol) -> None:
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], err_msg=name, **tol)


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    return make_batch()


@pytest.fixture(scope="module")
def torch_reference(batch):
    """4 steps of TorchTrainEngine: 2 mini-batches × 2 micro-batches, clipping, warmup + cosine."""
    cfg = optim_config(mini_batches=2, lr_schedule="cosine")
    engine = TorchTrainEngine(tiny_model(), cfg, total_steps=8, role="actor")
    return cfg, train(engine, batch, 4), engine.state_dict_numpy()


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_matches_torch_engine(stage, batch, torch_reference) -> None:
    cfg, want_stats, want_weights = torch_reference
    engine = DeepSpeedTrainEngine(tiny_model(), cfg, DeepSpeedConfig(zero_stage=stage), 8, "actor")
    try:
        got = train(engine, batch, 4)
        for g, w in zip(got, want_stats, strict=True):
            for key in ("loss/total", "actor/grad_norm", "actor/lr"):
                np.testing.assert_allclose(g[key], w[key], err_msg=key, **STAT_TOL)
        assert want_stats[0]["actor/grad_norm"] > cfg.max_grad_norm  # clipping was exercised
        assert_weights_close(engine.state_dict_numpy(), want_weights, **WEIGHT_TOL)
        logprobs = engine.forward_logprobs(batch, temperature=1.0)
        assert logprobs.shape == batch["response_mask"].shape
    finally:
        engine.destroy()


def run_ranks(out: Path, stage: int, steps: int, *extra: str) -> list[dict]:
    """Two ranks of ds_rank_main.py on one gloo group; returns their records."""
    out.mkdir(parents=True, exist_ok=True)
    address = free_tcp_address()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    script = Path(__file__).with_name("ds_rank_main.py")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), "--rank", str(rank), "--world", "2", "--address", address,
             "--stage", str(stage), "--out", str(out), "--steps", str(steps), *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(2)
    ]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.mark.parametrize("stage", [2, 3])
def test_data_parallel_ranks_and_resume(stage, batch, tmp_path) -> None:
    """Two ranks, each on its half of the batch (equal token counts, so per-rank token-mean
    weighting averaged over ranks is the whole-batch token mean): 5 steps with a checkpoint after
    step 3. Ranks stay bitwise equal, match one process on the whole batch, and fresh ranks that
    load the checkpoint and train 2 steps end bitwise where the uninterrupted run did."""
    ranks = run_ranks(tmp_path / "run", stage, 5, "--save-after", "3")
    for step in range(5):
        a, b = (r["weights"][step] for r in ranks)
        assert all(np.array_equal(a[k], b[k]) for k in a), f"ranks differ after step {step + 1}"

    single = DeepSpeedTrainEngine(tiny_model(), optim_config(), DeepSpeedConfig(zero_stage=stage), 8, "actor")
    try:
        for step, stats in enumerate(train(single, batch, 3)):
            rank_loss = np.mean([r["stats"][step]["loss/total"] for r in ranks])
            np.testing.assert_allclose(rank_loss, stats["loss/total"], **STAT_TOL)
            for r in ranks:
                np.testing.assert_allclose(r["stats"][step]["actor/grad_norm"], stats["actor/grad_norm"], **STAT_TOL)
        assert_weights_close(ranks[0]["weights"][2], single.state_dict_numpy(), **WEIGHT_TOL)
    finally:
        single.destroy()

    resumed = run_ranks(tmp_path / "resume", stage, 2, "--load-from", str(tmp_path / "run" / "ckpt"))
    for rank in range(2):
        want, got = ranks[rank]["weights"][4], resumed[rank]["weights"][1]
        assert all(np.array_equal(want[k], got[k]) for k in want), f"rank {rank} resumed differently"
        assert resumed[rank]["stats"][1] | {"time/train_compute": 0} == ranks[rank]["stats"][4] | {
            "time/train_compute": 0
        }


def test_bf16_zero2_trains(batch) -> None:
    cfg = optim_config(lr=3e-3, max_grad_norm=None)
    engine = DeepSpeedTrainEngine(tiny_model(), cfg, DeepSpeedConfig(zero_stage=2, bf16=True), 8, "actor")
    try:
        assert next(engine.model.parameters()).dtype == torch.bfloat16
        losses = [s["loss/total"] for s in train(engine, batch, 5)]
        assert losses[-1] < losses[0] - 0.05, losses
        weights = engine.state_dict_numpy()
        assert weights["model.embed_tokens.weight"].dtype == np.int16  # bf16 bit patterns
    finally:
        engine.destroy()


def test_offload_state_machine(batch) -> None:
    engine = DeepSpeedTrainEngine(tiny_model(), optim_config(), DeepSpeedConfig(zero_stage=2), 8, "actor")
    try:
        train(engine, batch, 1)
        n_params = sum(p.numel() for p in engine.model.parameters())
        stats = engine.offload()
        offloaded = stats["offloaded_bytes"]
        # fp32 parameters + fp32 master copy + AdamW's two moments (+ 4-byte step counters)
        assert stats["state"] == "offloaded"
        assert 4 * 4 * n_params <= offloaded < 4 * 4 * n_params + 1024
        for call in (
            lambda: engine.train_step(batch, policy_loss, "response_mask"),
            lambda: engine.forward_logprobs(batch, 1.0),
            lambda: engine.state_dict_numpy(),
            engine.offload,
        ):
            with pytest.raises(StateError):
                call()
        stats = engine.reload()
        assert stats["state"] == "active" and stats["total_reloads"] == 1
        assert stats["bytes_moved_total"] == 2 * offloaded and stats["offloaded_bytes"] == 0
        with pytest.raises(StateError):
            engine.reload()
        train(engine, batch, 1)
    finally:
        engine.destroy()


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="offload_params needs"):
        DeepSpeedConfig(zero_stage=2, offload_params=True)
    with pytest.raises(ValueError, match="offload_optimizer needs ZeRO"):
        DeepSpeedConfig(zero_stage=0, offload_optimizer=True)
    with pytest.raises(ValueError):
        DeepSpeedConfig(zero_stag=2)
    cfg = DeepSpeedConfig(zero_stage=3, extra={"zero_optimization": {"overlap_comm": False}, "seed": 1})
    ds = cfg.ds_config(optim_config())
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": False} and ds["seed"] == 1
    assert ds["gradient_clipping"] == 0.5 and ds["train_micro_batch_size_per_gpu"] == 2
