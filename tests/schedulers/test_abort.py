"""Aborting in-flight generation: the HF engine's cancel flag, and ray.cancel on a running chunk."""

from __future__ import annotations

import time

import pytest
import ray
from ray.exceptions import TaskCancelledError
from sched_helpers import MODEL, initial_weights, start_rollout

from roll.engines.base import SamplingParams
from roll.engines.hf_engine import HFInferEngine
from roll.models import load_model_and_tokenizer
from schedulers.groups import PromptGroup, chunk_batch


def test_engine_stops_between_decode_steps_when_asked() -> None:
    model, tokenizer = load_model_and_tokenizer(MODEL)
    engine = HFInferEngine(model, tokenizer)
    engine.eos_ids = [model.config.vocab_size + 1]  # no EOS: only the abort can end it early
    calls = []

    def should_abort() -> bool:
        calls.append(1)
        return len(calls) >= 5

    out = engine.generate([[3, 4], [5]], SamplingParams(max_new_tokens=50), should_abort=should_abort)
    assert out.response_ids.shape[1] == 5  # stopped after the 5th decode step, not at 50
    assert out.finish_reasons == ["abort", "abort"]
    full = engine.generate([[3, 4]], SamplingParams(max_new_tokens=6), should_abort=lambda: False)
    assert full.response_ids.shape[1] == 6 and full.finish_reasons == ["length"]


def test_ray_cancel_stops_a_running_chunk(ray_local) -> None:
    rollout = start_rollout(1, step_s=0.05)  # 100 tokens take >= 5 s unless cancelled
    try:
        ray.get(rollout.update_weights.on_rank(0, initial_weights(rollout), 0))
        groups = [PromptGroup("1:0:x", 1, 0, {"id": "x"}, [3, 4], [f"1:0:x:{k}" for k in range(4)])]
        long = chunk_batch(groups, 4, SamplingParams(max_new_tokens=100), 0, 0)
        short = chunk_batch(groups, 4, SamplingParams(max_new_tokens=2), 0, 0)
        ref = rollout.generate_chunk.on_rank(0, long)
        time.sleep(1.0)
        start = time.monotonic()
        ray.cancel(ref)
        with pytest.raises(TaskCancelledError):
            ray.get(ref, timeout=30)
        after = ray.get(rollout.generate_chunk.on_rank(0, short), timeout=30)  # the worker is free again
        assert time.monotonic() - start < 4 and len(after) == 4
    finally:
        rollout.kill()
