"""@register and DispatchSpec.plan without Ray: how one call becomes per-rank calls and a collect."""

from __future__ import annotations

import pytest
import torch

from roll.controller import Batch, Dispatch, DispatchSpec, Worker, get_dispatch, register


def rows(n: int) -> Batch:
    return Batch.from_dict(tensors={"x": torch.arange(n)}, non_tensors={"t": list(range(n))})


def test_register_stores_a_typed_spec_and_returns_the_function() -> None:
    def f(self: object) -> int:
        return 1

    assert register(Dispatch.RANK_ZERO)(f) is f
    assert get_dispatch(f) == DispatchSpec(mode=Dispatch.RANK_ZERO)
    assert get_dispatch(lambda: None) is None
    assert get_dispatch(Worker.ping).mode is Dispatch.ONE_TO_ALL
    assert get_dispatch(Worker.set_rng_state).mode is Dispatch.CUSTOM


def test_register_misuse_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="needs a Dispatch mode or a split"):
        register()
    with pytest.raises(TypeError, match="use @register"):
        register(lambda self: None)  # bare @register without parentheses
    with pytest.raises(TypeError, match="only for custom"):
        register(Dispatch.ONE_TO_ALL, split=lambda n: [])
    with pytest.raises(TypeError, match="CUSTOM needs split"):
        register(Dispatch.CUSTOM)
    with pytest.raises(TypeError, match="Dispatch member"):
        register("one_to_all")  # type: ignore[arg-type]


def test_one_to_all_and_rank_zero_plans() -> None:
    plan = DispatchSpec(Dispatch.ONE_TO_ALL).plan(3, (1,), {"k": 2})
    assert plan.calls == [((1,), {"k": 2})] * 3 and plan.ranks == [0, 1, 2]
    assert plan.collect(["a", "b", "c"]) == ["a", "b", "c"]
    plan = DispatchSpec(Dispatch.RANK_ZERO).plan(3, (1,), {})
    assert plan.ranks == [0] and plan.collect(["only"]) == "only"


def test_split_by_dp_pads_splits_every_batch_and_broadcasts_the_rest() -> None:
    a, b = rows(7), rows(7)
    plan = DispatchSpec(Dispatch.SPLIT_BY_DP).plan(3, (a, "shared"), {"other": b, "scale": 2})
    assert plan.ranks == [0, 1, 2]
    for _rank, (args, kwargs) in enumerate(plan.calls):
        assert len(args[0]) == len(kwargs["other"]) == 3
        assert args[1] == "shared" and kwargs["scale"] == 2
    assert plan.calls[2][0][0].non_tensors["t"] == [6, 0, 1]  # padding repeats the first rows
    chunks = [args[0] for args, _ in plan.calls]
    assert plan.collect(chunks).equal(a)
    assert plan.collect([c.non_tensors["t"] for c in chunks]) == list(range(7))
    assert plan.collect([{"loss": 1.0}] * 3) == [{"loss": 1.0}] * 3


def test_split_by_dp_argument_errors() -> None:
    spec = DispatchSpec(Dispatch.SPLIT_BY_DP)
    with pytest.raises(TypeError, match="at least one Batch"):
        spec.plan(2, ([1, 2, 3],), {})
    with pytest.raises(ValueError, match=r"different lengths \[7, 5\]"):
        spec.plan(2, (rows(7), rows(5)), {})
    plan = spec.plan(2, (rows(3),), {})
    with pytest.raises(ValueError, match="one item per row"):
        plan.collect([[1], [2]])


def test_custom_split_skips_ranks_with_none_and_uses_collect() -> None:
    def split(n: int, items: list[int]) -> list:
        per = -(-len(items) // n)
        parts = [items[i * per : (i + 1) * per] for i in range(n)]
        return [((p,), {}) if p else None for p in parts]

    spec = get_dispatch(register(split=split, collect=sum)(lambda self, items: sum(items)))
    assert spec is not None and spec.mode is Dispatch.CUSTOM
    plan = spec.plan(4, ([1, 2, 3],), {})
    assert plan.ranks == [0, 1, 2]
    assert plan.collect([3, 3]) == 6

    bad = DispatchSpec(Dispatch.CUSTOM, split=lambda n: [((), {})])
    with pytest.raises(ValueError, match="returned 1 calls for 2 workers"):
        bad.plan(2, (), {})
    worse = DispatchSpec(Dispatch.CUSTOM, split=lambda n: [(1, 2)] * n)
    with pytest.raises(TypeError, match=r"\(args_tuple, kwargs_dict\) or None"):
        worse.plan(2, (), {})


def test_collect_override_applies_to_builtin_modes() -> None:
    def mean_loss(results: list[dict]) -> float:
        return sum(r["loss"] for r in results) / len(results)

    spec = get_dispatch(register(Dispatch.SPLIT_BY_DP, collect=mean_loss)(lambda self, b: None))
    assert spec is not None
    assert spec.plan(2, (rows(4),), {}).collect([{"loss": 1.0}, {"loss": 3.0}]) == 2.0
