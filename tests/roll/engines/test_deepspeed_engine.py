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
from roll.errors import CheckpointError, StateError  # noqa: E402
from roll.models.lora import LoraConfig  # noqa: E402

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


EQUIVALENT_CONFIGS = {
    "zero0": DeepSpeedConfig(zero_stage=0),
    "zero1": DeepSpeedConfig(zero_stage=1),
    "zero2": DeepSpeedConfig(zero_stage=2),
    "zero3": DeepSpeedConfig(zero_stage=3),
    # torch AdamW stepping the CPU master weights (no JIT-built DeepSpeedCPUAdam)
    "zero2-offload-optimizer": DeepSpeedConfig(zero_stage=2, offload_optimizer=True),
    "zero3-offload-all": DeepSpeedConfig(zero_stage=3, offload_optimizer=True, offload_params=True),
}


@pytest.mark.parametrize("name", EQUIVALENT_CONFIGS)
def test_matches_torch_engine(name, batch, torch_reference) -> None:
    """Same losses, grad norms (before clipping), LRs and weights as TorchTrainEngine over 4
    train_steps of 2 mini-batches × 2 micro-batches each."""
    cfg, want_stats, want_weights = torch_reference
    engine = DeepSpeedTrainEngine(tiny_model(), cfg, EQUIVALENT_CONFIGS[name], 8, "actor")
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


@pytest.mark.slow
def test_deepspeed_cpu_adam_matches_torch_engine(batch, torch_reference) -> None:
    """torch_optimizer: false with offload_optimizer = DeepSpeedCPUAdam. Slow only the first time
    on a machine: DeepSpeed JIT-builds cpu_adam (~40 s idle, ~150 s on a loaded 2-core box; then
    cached under ~/.cache/torch_extensions)."""
    cfg, want_stats, want_weights = torch_reference
    config = DeepSpeedConfig(zero_stage=2, offload_optimizer=True, torch_optimizer=False)
    engine = DeepSpeedTrainEngine(tiny_model(), cfg, config, 8, "actor")
    try:
        assert type(engine.engine.basic_optimizer).__name__ == "DeepSpeedCPUAdam"
        for g, w in zip(train(engine, batch, 4), want_stats, strict=True):
            for key in ("loss/total", "actor/grad_norm", "actor/lr"):
                np.testing.assert_allclose(g[key], w[key], err_msg=key, **STAT_TOL)
        assert_weights_close(engine.state_dict_numpy(), want_weights, **WEIGHT_TOL)
    finally:
        engine.destroy()


@pytest.mark.parametrize(
    ("stage", "overrides"),
    [(3, {"lora": LoraConfig(rank=4)}), (2, {"dtype": "bf16"})],
    ids=["lora-zero3", "autocast-bf16-zero2"],
)
def test_lora_and_autocast_match_torch_engine(stage, overrides, batch) -> None:
    """train.lora (adapters only, merged weights out, reference = adapters off) and train.dtype
    bf16 (autocast over fp32 master weights) behave as in TorchTrainEngine."""
    cfg = optim_config(**overrides)
    torch.manual_seed(0)  # LoRA's A matrices come from the global RNG
    reference = TorchTrainEngine(tiny_model(), cfg, total_steps=8, role="actor")
    want = train(reference, batch, 2)
    torch.manual_seed(0)
    engine = DeepSpeedTrainEngine(tiny_model(), cfg, DeepSpeedConfig(zero_stage=stage), 8, "actor")
    try:
        for g, w in zip(train(engine, batch, 2), want, strict=True):
            for key in ("loss/total", "actor/grad_norm"):
                np.testing.assert_allclose(g[key], w[key], err_msg=key, **STAT_TOL)
        assert_weights_close(engine.state_dict_numpy(), reference.state_dict_numpy(), **WEIGHT_TOL)
        if cfg.lora is not None:
            base = engine.reference_logprobs(batch, 1.0) * batch["response_mask"]
            torch.testing.assert_close(base, batch["old_logprobs"], atol=1e-6, rtol=0)
            with engine.gathered_weights():
                assert all(p.numel() > 0 for p in engine.model.parameters())
    finally:
        engine.destroy()


DP_STAGES = (0, 2, 3)


def run_ranks(out: Path, steps: int, *extra: str) -> list[dict]:
    """Two ranks of ds_rank_main.py on one gloo group, each stage of DP_STAGES in turn; returns
    each rank's records by stage."""
    out.mkdir(parents=True, exist_ok=True)
    address = free_tcp_address()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    script = Path(__file__).with_name("ds_rank_main.py")
    stages = [str(s) for s in DP_STAGES]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), "--rank", str(rank), "--world", "2", "--address", address,
             "--stages", *stages, "--out", str(out), "--steps", str(steps), *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(2)
    ]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.fixture(scope="module")
def data_parallel_runs(tmp_path_factory):
    """Two ranks, 5 steps with a checkpoint after step 3; then two fresh ranks that load it and
    train 2 steps. Returns (uninterrupted records, resumed records), each [rank][stage]."""
    root = tmp_path_factory.mktemp("dp")
    uninterrupted = run_ranks(root / "run", 5, "--save-after", "3")
    resumed = run_ranks(root / "resume", 2, "--load-from", str(root / "run"))
    return uninterrupted, resumed


def same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stage", DP_STAGES)
def test_data_parallel_matches_one_process(stage, batch, data_parallel_runs) -> None:
    """Each rank trains on its half of the batch. Both halves hold 10 response tokens, so the
    per-rank token-mean shares, averaged over ranks by DeepSpeed, equal the whole-batch token mean
    (with unequal counts they would not: the engine, like TorchTrainEngine, normalises per rank).
    Ranks stay bitwise equal and match one process on the whole batch."""
    ranks = [records[stage] for records in data_parallel_runs[0]]
    for step in range(5):
        assert same_weights(ranks[0]["weights"][step], ranks[1]["weights"][step]), f"step {step + 1}"
    single = DeepSpeedTrainEngine(tiny_model(), optim_config(), DeepSpeedConfig(zero_stage=stage), 8, "actor")
    try:
        for step, stats in enumerate(train(single, batch, 3)):
            rank_loss = np.mean([r["stats"][step]["loss/total"] for r in ranks])
            np.testing.assert_allclose(rank_loss, stats["loss/total"], **STAT_TOL)
            for r in ranks:
                np.testing.assert_allclose(
                    r["stats"][step]["actor/grad_norm"], stats["actor/grad_norm"], **STAT_TOL
                )
        assert_weights_close(ranks[0]["weights"][2], single.state_dict_numpy(), **WEIGHT_TOL)
    finally:
        single.destroy()


@pytest.mark.parametrize("stage", DP_STAGES)
def test_data_parallel_checkpoint_resumes_bitwise(stage, data_parallel_runs) -> None:
    """Fresh ranks that load the step-3 checkpoint and train 2 steps end bitwise where the
    uninterrupted 5-step run did, with the same stats (LR schedule included)."""
    uninterrupted, resumed = data_parallel_runs
    for rank in range(2):
        want, got = uninterrupted[rank][stage], resumed[rank][stage]
        for step in (0, 1):
            assert same_weights(got["weights"][step], want["weights"][3 + step]), f"rank {rank}"
            timeless = {k: v for k, v in got["stats"][step].items() if not k.startswith("time/")}
            assert timeless == {k: want["stats"][3 + step][k] for k in timeless}


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


def test_offload_state_machine(batch, tmp_path) -> None:
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
            engine.offload,
        ):
            with pytest.raises(StateError):
                call()
        # Checkpoints and weight reads work while offloaded (reloaded for the duration).
        weights = engine.state_dict_numpy()
        engine.save_checkpoint(tmp_path / "ckpt")
        assert engine.offloader.stats()["state"] == "offloaded"
        stats = engine.reload()
        assert stats["state"] == "active" and stats["total_reloads"] == 3  # 2 inside the reads
        assert stats["bytes_moved_total"] == 6 * offloaded and stats["offloaded_bytes"] == 0
        assert_weights_close(engine.state_dict_numpy(), weights, atol=0)
        with pytest.raises(StateError):
            engine.reload()
        train(engine, batch, 1)
    finally:
        engine.destroy()


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path) -> None:
    engine = DeepSpeedTrainEngine(tiny_model(), optim_config(), DeepSpeedConfig(zero_stage=1), 8, "actor")
    try:
        with pytest.raises(CheckpointError, match="no DeepSpeed checkpoint"):
            engine.load_checkpoint(tmp_path / "empty")
    finally:
        engine.destroy()


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="offload_params needs"):
        DeepSpeedConfig(zero_stage=2, offload_params=True)
    with pytest.raises(ValueError, match="bf16 needs ZeRO"):
        DeepSpeedConfig(zero_stage=0, bf16=True)
    with pytest.raises(ValueError, match="offload_optimizer needs ZeRO"):
        DeepSpeedConfig(zero_stage=0, offload_optimizer=True)
    with pytest.raises(ValueError):
        DeepSpeedConfig(zero_stag=2)
    cfg = DeepSpeedConfig(zero_stage=3, extra={"zero_optimization": {"overlap_comm": False}, "seed": 1})
    ds = cfg.ds_config(optim_config())
    assert ds["zero_optimization"] == {"stage": 3, "overlap_comm": False} and ds["seed"] == 1
    assert ds["gradient_clipping"] == 0.5 and ds["train_micro_batch_size_per_gpu"] == 2
