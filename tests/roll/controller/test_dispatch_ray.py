"""WorkerGroup on a real local Ray (2 CPUs, 2 fake GPUs): dispatch modes, futures, failures."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

import roll.controller.group as group_module
from roll.controller import (
    Batch,
    Dispatch,
    GroupFuture,
    Worker,
    WorkerGroup,
    register,
    start_groups,
    wait_all,
)
from roll.errors import StateError, WorkerError

ACTOR = {"num_cpus": 0.25}


def split_range(n_workers: int, start: int, stop: int) -> list:
    """Custom split: contiguous sub-ranges; ranks whose sub-range is empty are not called."""
    per = -(-(stop - start) // n_workers)
    bounds = [(start + i * per, min(stop, start + (i + 1) * per)) for i in range(n_workers)]
    return [((lo, hi), {}) if lo < hi else None for lo, hi in bounds]


def expected_double(batch: Batch) -> Batch:
    """What EchoWorker.double does, row by row, computed on the driver."""
    return Batch.from_dict(
        tensors={
            "y": batch.tensors["x"] * 2 + 1,
            "bf": batch.tensors["bf"] * 2,
            "ids": batch.tensors["ids"],
            "mask": ~batch.tensors["mask"],
        },
        non_tensors={"text": [t.upper() for t in batch.non_tensors["text"]]},
        meta=batch.meta,
    )


class EchoWorker(Worker):
    """Records what it receives so the tests can see how calls were spread."""

    def __init__(self, rank: int, world_size: int, role: str, **kwargs: Any) -> None:
        super().__init__(rank, world_size, role, **kwargs)
        self.chunk_lengths: list[int] = []
        self.rank_zero_calls = 0

    @register(Dispatch.ONE_TO_ALL)
    def whoami(self) -> tuple[int, int, str, dict]:
        return self.rank, self.world_size, self.role, self.init_kwargs

    @register(Dispatch.SPLIT_BY_DP)
    def double(self, batch: Batch) -> Batch:
        self.chunk_lengths.append(len(batch))
        return expected_double(batch)

    @register(Dispatch.SPLIT_BY_DP)
    def tag_rows(self, batch: Batch, suffix: str) -> list[str]:
        return [f"{text}{suffix}@{self.rank}" for text in batch.non_tensors["text"]]

    @register(Dispatch.ONE_TO_ALL)
    def received(self) -> list[int]:
        return self.chunk_lengths

    @register(Dispatch.ONE_TO_ALL)
    def describe(self, value: Any) -> str:
        return f"{type(value).__name__}:{len(value)}"

    @register(Dispatch.RANK_ZERO)
    def bump(self) -> int:
        self.rank_zero_calls += 1
        return self.rank

    @register(Dispatch.ONE_TO_ALL)
    def rank_zero_call_counts(self) -> int:
        return self.rank_zero_calls

    @register(split=split_range, collect=sum)
    def sum_range(self, start: int, stop: int) -> int:
        return sum(range(start, stop))

    @register(Dispatch.ONE_TO_ALL)
    def nap(self, seconds: float) -> int:
        time.sleep(seconds)
        return self.rank

    @register(Dispatch.ONE_TO_ALL)
    def fail_on(self, rank: int) -> int:
        if self.rank == rank:
            raise ValueError("boom")
        return self.rank

    @register(Dispatch.ONE_TO_ALL)
    def exit_on(self, rank: int) -> int:
        if self.rank == rank:
            os._exit(1)
        return self.rank

    @register(Dispatch.ONE_TO_ALL)
    def draw(self) -> tuple[float, float, float]:
        return random.random(), float(torch.rand(1)), float(torch.randn(1))

    def helper(self) -> None:
        """Not registered: the group must not expose it."""


class BrokenWorker(Worker):
    def __init__(self, rank: int, world_size: int, role: str) -> None:
        raise RuntimeError("no model here")


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    # Workers import this module (the actor classes live here) and roll from the checkout. The
    # raylet passes its environment on to every worker it starts, prestarted ones included, so
    # PYTHONPATH is set only while ray.init starts it.
    paths = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).parent)]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", os.pathsep.join(paths))
        ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def groups(ray_session: None) -> Iterator[dict[int, WorkerGroup]]:
    """Groups of 2 (one fake GPU each) and 3 workers, shared by the tests of this module."""
    two = WorkerGroup(
        EchoWorker,
        role="echo",
        actor_options=[{**ACTOR, "num_gpus": 1}] * 2,
        init_kwargs={"lr": 0.1},
    )
    three = WorkerGroup(EchoWorker, role="echo", actor_options=[ACTOR] * 3, name_prefix="t")
    yield {2: two, 3: three}
    two.kill()
    three.kill()


def sample_batch(n: int = 7) -> Batch:
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(n))
    return Batch.from_dict(
        tensors={
            "x": x,
            "bf": x.to(torch.bfloat16),
            "ids": torch.arange(n, dtype=torch.int64),
            "mask": torch.arange(n) % 3 == 0,
        },
        non_tensors={"text": [f"r{i}" for i in range(n)]},
        meta={"step": 1},
    )


@pytest.mark.parametrize("n", [2, 3])
def test_one_to_all_returns_one_result_per_rank(groups: dict[int, WorkerGroup], n: int) -> None:
    kwargs = {"lr": 0.1} if n == 2 else {}
    assert groups[n].whoami() == [(rank, n, "echo", kwargs) for rank in range(n)]
    assert groups[n].world_size == n and len(groups[n].actors) == n


@pytest.mark.parametrize("n", [2, 3])
def test_split_by_dp_gives_equal_chunks_and_collects_in_order(groups: dict[int, WorkerGroup], n: int) -> None:
    batch = sample_batch(7)
    before = [len(lengths) for lengths in groups[n].received()]
    out = groups[n].double(batch)
    chunk = -(-7 // n)  # 4 rows over 2 workers, 3 over 3 (padding fills the last chunk)
    assert [lengths[b:] for lengths, b in zip(groups[n].received(), before, strict=True)] == [[chunk]] * n
    assert len(out) == 7
    assert out.equal(expected_double(batch))  # bitwise, padding gone, order kept


@pytest.mark.parametrize("n", [2, 3])
def test_split_by_dp_list_results_drop_padding_rows(groups: dict[int, WorkerGroup], n: int) -> None:
    tags = groups[n].tag_rows(sample_batch(7), suffix="!")
    chunk = -(-7 // n)
    assert tags == [f"r{i}!@{i // chunk}" for i in range(7)]


def test_rank_zero_runs_only_on_rank_zero(groups: dict[int, WorkerGroup]) -> None:
    group = groups[3]
    assert group.bump() == 0
    assert group.rank_zero_call_counts() == [1, 0, 0]


@pytest.mark.parametrize("n", [2, 3])
def test_custom_split_and_collect(groups: dict[int, WorkerGroup], n: int) -> None:
    assert groups[n].sum_range(0, 100) == sum(range(100))
    assert groups[n].sum_range(5, 6) == 5  # only rank 0 has a non-empty range


def test_shared_arguments_are_put_once_and_chunks_travel_with_their_calls(
    groups: dict[int, WorkerGroup], monkeypatch: pytest.MonkeyPatch
) -> None:
    puts: list[type] = []
    real_put = ray.put
    monkeypatch.setattr(group_module.ray, "put", lambda v: puts.append(type(v)) or real_put(v))
    group, batch = groups[3], sample_batch(6)
    assert group.describe(batch) == ["Batch:6"] * 3  # workers get the Batch, not a ref
    assert puts == [Batch]
    puts.clear()
    assert group.double(batch).equal(expected_double(batch))
    assert puts == []  # each rank's chunk goes inline with its call (Ray stores big ones itself)
    big = sample_batch(20000)  # ~660 KB: past the size Ray inlines
    assert group.double(big).equal(expected_double(big))
    assert puts == []
    assert group.describe("short") == ["str:5"] * 3
    assert puts == []


def test_future_returns_before_workers_finish(groups: dict[int, WorkerGroup]) -> None:
    start = time.monotonic()
    future = groups[2].nap.future(0.5)
    assert time.monotonic() - start < 0.2
    assert isinstance(future, GroupFuture) and not future.done()
    with pytest.raises(TimeoutError, match=r"echo.nap\(\) did not finish"):
        future.get(timeout=0.01)
    assert future.get() == [0, 1]
    assert time.monotonic() - start >= 0.5
    assert future.done() and future.get() == [0, 1]


def test_wait_all_collects_futures_of_several_groups(groups: dict[int, WorkerGroup]) -> None:
    start = time.monotonic()
    nap = groups[2].nap.future(0.3)
    naps, doubled, again = wait_all([nap, groups[3].double.future(sample_batch(5)), nap])
    assert naps == again == [0, 1] and doubled.equal(expected_double(sample_batch(5)))
    assert time.monotonic() - start < 3.0


def test_worker_exception_becomes_worker_error(groups: dict[int, WorkerGroup]) -> None:
    with pytest.raises(WorkerError) as info:
        groups[3].fail_on(2)
    message = str(info.value)
    assert "echo worker rank 2" in message and "fail_on()" in message
    assert "ValueError: boom" in message
    assert isinstance(info.value.__cause__, RayTaskError)
    assert groups[3].fail_on(-1) == [0, 1, 2]  # the group is still usable


def test_dead_worker_becomes_worker_error(ray_session: None) -> None:
    # One actor: every worker process costs ~2 s of CPU (torch import) on this 2-core box.
    group = WorkerGroup(EchoWorker, role="doomed", actor_options=[ACTOR])
    with pytest.raises(WorkerError, match=r"doomed worker rank 0 died during exit_on\(\)") as info:
        group.exit_on(0)
    assert isinstance(info.value.__cause__, RayActorError)
    group.kill()
    with pytest.raises(StateError, match="was killed"):
        group.whoami()
    assert "killed" in repr(group)


def test_constructor_failure_names_role_and_reason(ray_session: None) -> None:
    with pytest.raises(
        WorkerError, match="broken worker rank 0 failed to start.*RuntimeError: no model here"
    ):
        WorkerGroup(BrokenWorker, role="broken", actor_options=[ACTOR])


def test_groups_start_together_and_one_that_fails_takes_the_others_down(ray_session: None) -> None:
    """wait=False: the constructors run while the driver creates the next group; start_groups
    waits for all, and when one fails every group is killed (no half-started job left)."""
    echo = WorkerGroup(EchoWorker, role="early", actor_options=[ACTOR], wait=False)
    assert echo.whoami()[0][2] == "early"  # the first call waits for the start on its own
    fine = WorkerGroup(EchoWorker, role="fine", actor_options=[ACTOR], wait=False)
    broken = WorkerGroup(BrokenWorker, role="broken", actor_options=[ACTOR], wait=False)
    with pytest.raises(WorkerError, match="broken worker rank 0 failed to start.*no model here"):
        start_groups([echo, fine, broken, fine])
    for group in (echo, fine, broken):
        assert "killed" in repr(group) and group.actors == []
    with pytest.raises(StateError, match="was killed"):
        fine.whoami()
    ok = [WorkerGroup(EchoWorker, role=f"ok{i}", actor_options=[ACTOR], wait=False) for i in range(2)]
    start_groups(ok)
    assert [g.whoami()[0][2] for g in ok] == ["ok0", "ok1"]
    for group in ok:
        group.kill()


def test_unplaceable_worker_times_out_with_a_hint(ray_session: None) -> None:
    with pytest.raises(WorkerError, match=r"greedy workers \[0\] did not start within 0.5 s"):
        WorkerGroup(
            EchoWorker,
            role="greedy",
            actor_options=[{**ACTOR, "resources": {"tpu": 1}}],
            start_timeout_s=0.5,
        )


def test_fake_gpus_are_distinct_per_actor(groups: dict[int, WorkerGroup]) -> None:
    infos = groups[2].ping()
    gpu_ids = [info["gpu_ids"] for info in infos]
    assert all(len(ids) == 1 for ids in gpu_ids) and gpu_ids[0] != gpu_ids[1]
    assert [info["cuda_visible_devices"] for info in infos] == [ids[0] for ids in gpu_ids]
    assert len({info["pid"] for info in infos}) == 2
    assert all(info["node_id"] == ray.get_runtime_context().get_node_id() for info in infos)
    assert [info["gpu_ids"] for info in groups[3].ping()] == [[], [], []]


def test_rng_state_round_trip_and_threads(groups: dict[int, WorkerGroup]) -> None:
    group = groups[2]
    states = group.get_rng_state()
    first = group.draw()
    group.set_rng_state(states)
    assert group.draw() == first
    with pytest.raises(ValueError, match="1 states for 2 workers"):
        group.set_rng_state(states[:1])
    assert group.set_threads(2) == [2, 2]


def test_unregistered_methods_are_not_exposed(groups: dict[int, WorkerGroup]) -> None:
    with pytest.raises(AttributeError, match=r"EchoWorker.helper .*@register"):
        getattr(groups[2], "helper")  # noqa: B009 (attribute access is the point)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        getattr(groups[2], "nothing")  # noqa: B009
    assert ray.get_actor("t-echo-1") is not None  # name_prefix names the actors
    assert "world_size=3" in repr(groups[3])


def test_batch_round_trips_through_the_object_store(ray_session: None) -> None:
    batch = sample_batch(5)
    restored = ray.get(ray.put(batch))
    assert restored.equal(batch)
    assert {k: v.dtype for k, v in restored.tensors.items()} == {
        "x": torch.float32,
        "bf": torch.bfloat16,
        "ids": torch.int64,
        "mask": torch.bool,
    }
    restored.tensors["x"].add_(1)  # writable, not the store's read-only memory
