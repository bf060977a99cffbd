"""How a call on a :class:`~roll.controller.group.WorkerGroup` is spread over its workers.

A worker method declares its dispatch mode with one decorator::

    class ActorWorker(Worker):
        @register(Dispatch.SPLIT_BY_DP)
        def compute_log_probs(self, batch: Batch) -> Batch: ...

        @register(Dispatch.ONE_TO_ALL)
        def load_checkpoint(self, path: str) -> None: ...

        @register(split=split_prompts_by_length, collect=merge_rollouts)
        def generate(self, prompts: list[str]) -> list[str]: ...

The decorator stores a typed :class:`DispatchSpec` on the function (read it back with
:func:`get_dispatch`) and returns the function unchanged, so the worker still calls it directly.
On the driver, :meth:`DispatchSpec.plan` turns one call into per-rank arguments and a collect step.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from roll.controller.batch import Batch

F = TypeVar("F", bound=Callable[..., Any])

#: One rank's call: ``(args, kwargs)``, or ``None`` to leave that rank out of the call.
RankCall = tuple[tuple, dict] | None
#: ``split(n_workers, *args, **kwargs) -> list[RankCall]`` with one entry per rank.
SplitFn = Callable[..., list[RankCall]]
#: ``collect(results) -> Any``; ``results`` are the called ranks' return values in rank order.
CollectFn = Callable[[list], Any]

# The one attribute that carries dispatch metadata; only this module reads or writes it.
_DISPATCH_ATTR = "__roll_dispatch__"


class Dispatch(enum.Enum):
    """Built-in ways of spreading a call over the ranks of a worker group."""

    #: Every rank gets the same arguments; the result is the list of per-rank results.
    ONE_TO_ALL = "one_to_all"
    #: Every ``Batch`` argument is padded to a multiple of the world size and split, one contiguous
    #: chunk per rank; other arguments go to every rank. Results: Batches are concatenated and
    #: the padding rows dropped; lists (one entry per row) are concatenated without padding rows;
    #: anything else comes back as the list of per-rank results.
    SPLIT_BY_DP = "split_by_dp"
    #: Only rank 0 is called; the result is rank 0's result.
    RANK_ZERO = "rank_zero"
    #: A user-supplied ``split``/``collect`` pair (see :func:`register`).
    CUSTOM = "custom"


@dataclass(frozen=True)
class CallPlan:
    """One call spread over the ranks: what each rank gets and how to combine the results."""

    calls: list[RankCall]
    collect: CollectFn

    @property
    def ranks(self) -> list[int]:
        """The ranks that take part in the call."""
        return [rank for rank, call in enumerate(self.calls) if call is not None]


@dataclass(frozen=True)
class DispatchSpec:
    """Dispatch metadata of one worker method (stored by :func:`register`).

    Attributes:
        mode: the dispatch mode; ``Dispatch.CUSTOM`` when ``split`` was given.
        split: the custom split function (``CUSTOM`` only).
        collect: a collect function that replaces the mode's default, or ``None``.
    """

    mode: Dispatch
    split: SplitFn | None = None
    collect: CollectFn | None = None

    def plan(self, n_workers: int, args: tuple, kwargs: dict) -> CallPlan:
        """Spread one call ``f(*args, **kwargs)`` over ``n_workers`` ranks."""
        if self.mode is Dispatch.ONE_TO_ALL:
            plan = CallPlan([(args, kwargs)] * n_workers, list)
        elif self.mode is Dispatch.RANK_ZERO:
            plan = CallPlan([(args, kwargs)] + [None] * (n_workers - 1), _first)
        elif self.mode is Dispatch.SPLIT_BY_DP:
            plan = _plan_split_by_dp(n_workers, args, kwargs)
        else:
            assert self.split is not None
            calls = list(self.split(n_workers, *args, **kwargs))
            if len(calls) != n_workers:
                raise ValueError(
                    f"custom split {_name(self.split)} returned {len(calls)} calls for "
                    f"{n_workers} workers; return one (args, kwargs) tuple or None per rank"
                )
            plan = CallPlan([_check_rank_call(call, self.split) for call in calls], list)
        if self.collect is not None:
            plan = CallPlan(plan.calls, self.collect)
        if not plan.ranks:
            raise ValueError("a dispatched call must reach at least one rank")
        return plan


def register(
    dispatch: Dispatch | None = None,
    *,
    split: SplitFn | None = None,
    collect: CollectFn | None = None,
) -> Callable[[F], F]:
    """Mark a worker method as callable through a ``WorkerGroup`` and say how calls are spread.

    Args:
        dispatch: a built-in mode. Leave it out (or pass ``Dispatch.CUSTOM``) with ``split``.
        split: ``split(n_workers, *args, **kwargs) -> list[(args, kwargs) | None]``, one entry
            per rank (``None`` skips that rank).
        collect: ``collect(results: list) -> Any`` over the called ranks' results in rank order;
            replaces the mode's default collect (for SPLIT_BY_DP it sees the raw per-rank results,
            whose last chunks may hold padding rows).

    Returns:
        A decorator that stores a :class:`DispatchSpec` on the function and returns it unchanged.
    """
    if callable(dispatch) and not isinstance(dispatch, Dispatch):
        raise TypeError("use @register(Dispatch.<MODE>) or @register(split=..., collect=...)")
    if dispatch is None:
        if split is None:
            raise TypeError("register() needs a Dispatch mode or a split function")
        dispatch = Dispatch.CUSTOM
    if not isinstance(dispatch, Dispatch):
        raise TypeError(f"register() takes a Dispatch member, got {dispatch!r}")
    if dispatch is Dispatch.CUSTOM and split is None:
        raise TypeError("Dispatch.CUSTOM needs split=fn(n_workers, *args, **kwargs)")
    if dispatch is not Dispatch.CUSTOM and split is not None:
        raise TypeError(f"split= is only for custom dispatch; {dispatch} splits by itself")
    spec = DispatchSpec(mode=dispatch, split=split, collect=collect)

    def decorate(fn: F) -> F:
        setattr(fn, _DISPATCH_ATTR, spec)
        return fn

    return decorate


def get_dispatch(fn: Any) -> DispatchSpec | None:
    """The :class:`DispatchSpec` stored by :func:`register`, or ``None`` for undecorated callables."""
    spec = getattr(fn, _DISPATCH_ATTR, None)
    return spec if isinstance(spec, DispatchSpec) else None


# ---------------------------------------------------------------------- SPLIT_BY_DP
def _plan_split_by_dp(n_workers: int, args: tuple, kwargs: dict) -> CallPlan:
    batches = [a for a in args if isinstance(a, Batch)]
    batches += [v for v in kwargs.values() if isinstance(v, Batch)]
    if not batches:
        raise TypeError(
            "a SPLIT_BY_DP method needs at least one Batch argument; use Dispatch.ONE_TO_ALL "
            "for calls without data"
        )
    length = len(batches[0])
    if any(len(b) != length for b in batches):
        raise ValueError(f"SPLIT_BY_DP Batch arguments have different lengths {[len(b) for b in batches]}")
    pad = 0

    def chunks(value: Any) -> list[Any]:
        nonlocal pad
        if not isinstance(value, Batch):
            return [value] * n_workers
        padded, pad = value.pad_to_multiple(n_workers)
        return padded.split(n_workers)

    split_args = [chunks(a) for a in args]
    split_kwargs = {k: chunks(v) for k, v in kwargs.items()}
    calls: list[RankCall] = [
        (tuple(a[rank] for a in split_args), {k: v[rank] for k, v in split_kwargs.items()})
        for rank in range(n_workers)
    ]
    return CallPlan(calls, partial(_collect_split_by_dp, pad=pad, rows=length + pad))


def _collect_split_by_dp(results: list, *, pad: int, rows: int) -> Any:
    """Concatenate per-rank Batches or row lists and drop the ``pad`` padding rows at the end."""
    if results and all(isinstance(r, Batch) for r in results):
        return Batch.concat(results).unpad(pad)
    if results and all(isinstance(r, list) for r in results):
        merged = [item for r in results for item in r]
        if len(merged) == rows:
            return merged[: rows - pad]
        if pad == 0:
            return merged
        raise ValueError(
            f"SPLIT_BY_DP workers returned lists of {[len(r) for r in results]} items for "
            f"{rows} rows ({pad} of them padding); return one item per row, or register the "
            "method with collect=... to combine the results yourself"
        )
    return list(results)


# ---------------------------------------------------------------------- helpers
def _first(results: list) -> Any:
    return results[0]


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", repr(fn))


def _check_rank_call(call: Any, split: Callable) -> RankCall:
    if call is None:
        return None
    if (
        isinstance(call, tuple)
        and len(call) == 2
        and isinstance(call[0], (tuple, list))
        and isinstance(call[1], dict)
    ):
        return tuple(call[0]), call[1]
    raise TypeError(
        f"custom split {_name(split)} returned {call!r} for a rank; each entry must be "
        "(args_tuple, kwargs_dict) or None"
    )
