"""``WorkerGroup``: one role's Ray actors, called from the driver as if they were one local object.

::

    group = WorkerGroup(ActorWorker, role="actor",
                        actor_options=[{"num_cpus": 0.5}, {"num_cpus": 0.5}])
    out = group.compute_log_probs(batch)              # blocks; SPLIT_BY_DP splits and gathers
    fut = group.train_step.future(batch)              # returns at once
    metrics = fut.get()                               # collects when asked
    a, b = wait_all([fut1, fut2])                     # several groups at once

Every ``@register``-ed worker method becomes a :class:`GroupMethod` attribute. An argument that
several ranks receive (a broadcast Batch, a large shared value) is ``ray.put`` once and sent by
reference; one that a single rank receives (a data-parallel chunk) travels with its call. Failures
in a worker come back as :class:`~roll.errors.WorkerError` naming the role, rank and method, with
the Ray exception as ``__cause__``.
"""

from __future__ import annotations

import enum
import inspect
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorDiedError, RayActorError, RayError, RayTaskError

from roll.controller.dispatch import CallPlan, CollectFn, DispatchSpec, get_dispatch
from roll.controller.worker import Worker
from roll.errors import StateError, WorkerError

# Arguments cheap enough to send inline to every rank; anything else shared by several ranks is
# put in the object store once instead of being serialized once per rank.
_INLINE_TYPES = (type(None), bool, int, float, complex, enum.Enum, ray.ObjectRef)
_INLINE_MAX_CHARS = 64 * 1024


class CallTimeoutError(TimeoutError):
    """A group call did not finish in time; ``ranks`` are the ranks still running."""

    def __init__(self, message: str, ranks: list[int]) -> None:
        super().__init__(message)
        self.ranks = ranks


@dataclass(frozen=True)
class _RankCall:
    """One in-flight call on one rank."""

    role: str
    method: str
    rank: int
    ref: ray.ObjectRef


class GroupFuture:
    """The pending result of one group call; :meth:`get` waits and collects."""

    def __init__(self, calls: list[_RankCall], collect: CollectFn) -> None:
        self._calls = calls
        self._collect = collect
        self._result: Any = None
        self._collected = False

    @property
    def refs(self) -> list[ray.ObjectRef]:
        """The per-rank object refs (empty once the result was collected)."""
        return [call.ref for call in self._calls]

    def done(self) -> bool:
        """True when every rank has finished (successfully or not); never blocks."""
        if self._collected:
            return True
        _, pending = ray.wait(self.refs, num_returns=len(self._calls), timeout=0)
        return not pending

    def get(self, timeout: float | None = None) -> Any:
        """Wait for every rank and return the collected result (cached after the first call).

        Raises:
            WorkerError: a rank raised or died (the first failure seen is reported).
            CallTimeoutError: ``timeout`` seconds passed first (a ``TimeoutError``); the call keeps
                running and ``get`` may be called again.
        """
        if not self._collected:
            self._finish(_gather(self._calls, timeout))
        return self._result

    def _finish(self, values: list) -> None:
        self._result = self._collect(values)
        self._collected = True
        self._calls = []  # drop the refs so the object store can free the results

    def __repr__(self) -> str:
        state = "collected" if self._collected else f"{len(self._calls)} ranks pending"
        return f"GroupFuture({state})"


def wait_all(futures: Iterable[GroupFuture], timeout: float | None = None) -> list[Any]:
    """Wait for several futures (of one or many groups) and return their results in order.

    Fails fast: the first failed rank of any future raises :class:`WorkerError`.
    """
    futures = list(futures)
    open_futures = [f for f in dict.fromkeys(futures) if not f._collected]  # each future once
    calls = [call for f in open_futures for call in f._calls]
    values = _gather(calls, timeout)
    start = 0
    for future in open_futures:
        n = len(future._calls)
        future._finish(values[start : start + n])
        start += n
    return [f.get() for f in futures]


class GroupMethod:
    """A registered worker method seen from the driver: call it, or call ``.future(...)``."""

    def __init__(self, group: WorkerGroup, name: str, spec: DispatchSpec) -> None:
        self._group = group
        self.name = name
        self.spec = spec

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run on the workers, wait, and return the collected result."""
        return self.future(*args, **kwargs).get()

    def future(self, *args: Any, **kwargs: Any) -> GroupFuture:
        """Submit the call and return at once; ``.get()`` on the result waits and collects."""
        plan = self.spec.plan(self._group.world_size, args, kwargs)
        return GroupFuture(self._group._submit(self.name, plan), plan.collect)

    def on_rank(self, rank: int, *args: Any, **kwargs: Any) -> ray.ObjectRef:
        """Call this method on one rank only, bypassing its dispatch mode; returns the raw ref.

        For schedulers that route work themselves (schedulers/): the ref can be passed to
        ``ray.wait``, ``ray.cancel``, or as an argument of another call (Ray resolves it there).
        An ``ObjectRef`` argument is passed through unresolved.
        """
        if not 0 <= rank < self._group.world_size:
            raise ValueError(f"{self._group.role} has ranks 0..{self._group.world_size - 1}, not {rank}")
        plan = CallPlan([None] * rank + [(args, kwargs)] + [None] * (self._group.world_size - rank - 1), list)
        return self._group._submit(self.name, plan)[0].ref

    def __repr__(self) -> str:
        return f"<{self._group.role}.{self.name} dispatch={self.spec.mode.name}>"


class WorkerGroup:
    """``len(actor_options)`` Ray actors of one worker class, one per rank.

    Args:
        worker_cls: a :class:`Worker` subclass (a plain class; it is wrapped with ``ray.remote``).
        role: the role name, used in actor names and error messages.
        actor_options: one ``ActorClass.options(**opts)`` dict per rank (``num_cpus``,
            ``num_gpus``, ``resources``, ``scheduling_strategy``, ``runtime_env`` ...).
        init_kwargs: extra constructor keyword arguments, the same for every rank.
        name_prefix: when given, rank ``i`` becomes the named actor ``f"{name_prefix}-{role}-{i}"``
            (unless its options name it).
        start_timeout_s: how long to wait for every actor to be placed and constructed
            (``None``: forever). Actors asking for resources the cluster lacks stay pending.

    Raises:
        WorkerError: an actor could not be created, raised in its constructor, or did not start
            within ``start_timeout_s``; the other actors are killed.
    """

    def __init__(
        self,
        worker_cls: type[Worker],
        *,
        role: str,
        actor_options: list[dict[str, Any]],
        init_kwargs: dict[str, Any] | None = None,
        name_prefix: str | None = None,
        start_timeout_s: float | None = 300.0,
        wait: bool = True,
    ) -> None:
        if not (inspect.isclass(worker_cls) and issubclass(worker_cls, Worker)):
            raise TypeError(f"WorkerGroup needs a roll.controller.Worker subclass, got {worker_cls!r}")
        if not actor_options:
            raise ValueError(f"WorkerGroup '{role}' needs at least one entry in actor_options")
        self.role = role
        self.worker_cls = worker_cls
        self._world_size = len(actor_options)
        self._actors: list[ray.actor.ActorHandle] | None = []
        self._methods = self._expose_methods(worker_cls)
        self._actors = self._create_actors(actor_options, init_kwargs or {}, name_prefix)
        self._starting: tuple[float | None, list[dict[str, Any]]] | None = (start_timeout_s, actor_options)
        if wait:
            self.wait_until_alive()

    def wait_until_alive(self) -> WorkerGroup:
        """Block until every actor has finished its constructor (done by the constructor unless
        ``wait=False``, which lets several groups start at once: see :func:`start_groups`; the
        first call on the group waits too). Raises ``WorkerError`` as the constructor would."""
        if self._starting is not None:
            timeout, options = self._starting
            self._starting = None
            self._wait_until_alive(timeout, options)
        return self

    # ------------------------------------------------------------------ construction
    def _expose_methods(self, worker_cls: type[Worker]) -> dict[str, GroupMethod]:
        methods = {}
        taken = set(dir(type(self))) | set(vars(self))
        for name, member in inspect.getmembers(worker_cls, callable):
            spec = get_dispatch(member)
            if spec is None:
                continue
            if name in taken:
                raise TypeError(
                    f"{worker_cls.__name__}.{name} clashes with the WorkerGroup attribute "
                    f"'{name}'; rename the worker method"
                )
            methods[name] = GroupMethod(self, name, spec)
            setattr(self, name, methods[name])
        return methods

    def _create_actors(
        self,
        actor_options: list[dict[str, Any]],
        init_kwargs: dict[str, Any],
        name_prefix: str | None,
    ) -> list[ray.actor.ActorHandle]:
        remote_cls = ray.remote(self.worker_cls)
        actors = []
        for rank, options in enumerate(actor_options):
            options = dict(options)
            if name_prefix is not None:
                options.setdefault("name", f"{name_prefix}-{self.role}-{rank}")
            try:
                actor = remote_cls.options(**options).remote(
                    rank=rank, world_size=self._world_size, role=self.role, **init_kwargs
                )
            except Exception as err:  # bad options: Ray validates them on submission
                _kill_all(actors)
                raise WorkerError(
                    f"could not create {self.role} worker rank {rank} with options {options}: "
                    f"{type(err).__name__}: {err}"
                ) from err
            actors.append(actor)
        return actors

    def _wait_until_alive(self, timeout: float | None, actor_options: list[dict[str, Any]]) -> None:
        assert self._actors is not None
        calls = [
            _RankCall(self.role, "__init__", rank, actor.ping.remote())
            for rank, actor in enumerate(self._actors)
        ]
        try:
            _gather(calls, timeout)
        except CallTimeoutError as err:
            self.kill()
            pending = err.ranks
            raise WorkerError(
                f"{self.role} workers {pending} did not start within {timeout} s; the cluster may "
                f"lack the resources they ask for ({[actor_options[r] for r in pending]}). "
                "Check `ray status`, or lower num_cpus/num_gpus/resources in the role's options"
            ) from err
        except WorkerError:
            self.kill()
            raise

    # ------------------------------------------------------------------ calls
    def _submit(self, method: str, plan: CallPlan) -> list[_RankCall]:
        """Send each rank its arguments; values shared by several ranks go by object ref."""
        if self._starting is not None and self._actors is not None:
            self.wait_until_alive()
        if self._actors is None:
            raise StateError(
                f"{self.role} worker group was killed; create a new WorkerGroup to call {method}()"
            )
        refs: dict[int, ray.ObjectRef] = {}  # id(value) -> ref, so a shared value is put once
        # how many ranks receive each argument object: one that goes to several is put in the
        # object store once; one that goes to a single rank (a data-parallel chunk, a one-rank
        # call) travels with its call, which Ray inlines when small (no object-store round trip
        # for the driver) and stores itself when large
        uses: dict[int, int] = {}
        for rank in plan.ranks:
            args, kwargs = plan.calls[rank]
            for value in (*args, *kwargs.values()):
                uses[id(value)] = uses.get(id(value), 0) + 1

        def by_ref(value: Any) -> Any:
            if uses[id(value)] > 1 and not _send_inline(value):
                if id(value) not in refs:
                    refs[id(value)] = ray.put(value)
                return refs[id(value)]
            return value

        calls = []
        for rank in plan.ranks:
            args, kwargs = plan.calls[rank]
            args = tuple(by_ref(a) for a in args)
            kwargs = {k: by_ref(v) for k, v in kwargs.items()}
            ref = getattr(self._actors[rank], method).remote(*args, **kwargs)
            calls.append(_RankCall(self.role, method, rank, ref))
        return calls

    # ------------------------------------------------------------------ group facts
    @property
    def world_size(self) -> int:
        """The number of ranks."""
        return self._world_size

    @property
    def actors(self) -> list[ray.actor.ActorHandle]:
        """The actor handles by rank (empty after :meth:`kill`)."""
        return list(self._actors or [])

    def kill(self) -> None:
        """Kill every actor of the group (no restarts); later calls raise ``StateError``."""
        _kill_all(self._actors or [])
        self._actors = None

    def __enter__(self) -> WorkerGroup:  # noqa: PYI034 (Self needs 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: explain unregistered worker methods.
        worker_cls = self.__dict__.get("worker_cls")
        if worker_cls is not None and not name.startswith("__") and callable(getattr(worker_cls, name, None)):
            raise AttributeError(
                f"{worker_cls.__name__}.{name} is not callable through a WorkerGroup: decorate "
                f"it with @register(Dispatch.ONE_TO_ALL) (or another Dispatch mode)"
            )
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __repr__(self) -> str:
        state = "killed" if self._actors is None else "alive"
        return (
            f"WorkerGroup(role={self.role!r}, worker_cls={self.worker_cls.__name__}, "
            f"world_size={self._world_size}, {state})"
        )


# ---------------------------------------------------------------------- helpers
def _send_inline(value: Any) -> bool:
    if isinstance(value, _INLINE_TYPES):
        return True
    return isinstance(value, (str, bytes)) and len(value) <= _INLINE_MAX_CHARS


def _kill_all(actors: list[ray.actor.ActorHandle]) -> None:
    for actor in actors:
        ray.kill(actor, no_restart=True)


def _gather(calls: list[_RankCall], timeout: float | None) -> list[Any]:
    """Results of ``calls`` in order; raises at the first failed call, not after all finish."""
    deadline = None if timeout is None else time.monotonic() + timeout
    position = {call.ref: i for i, call in enumerate(calls)}
    values: list[Any] = [None] * len(calls)
    pending = [call.ref for call in calls]
    while pending:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, pending = ray.wait(pending, num_returns=1, timeout=remaining)
        if not ready:
            waiting = [calls[position[ref]] for ref in pending]
            names = sorted({f"{c.role}.{c.method}()" for c in waiting})
            ranks = [c.rank for c in waiting]
            raise CallTimeoutError(
                f"{', '.join(names)} did not finish within {timeout} s on ranks {ranks}", ranks
            )
        for ref in ready:
            call = calls[position[ref]]
            try:
                values[position[ref]] = ray.get(ref)
            except RayError as err:
                raise _worker_error(call, err) from err
    return values


def describe_failure(role: str, method: str, rank: int, err: RayError) -> WorkerError:
    """The group's user-facing error for a failed call on one rank (for :meth:`GroupMethod.on_rank`)."""
    return _worker_error(_RankCall(role, method, rank, None), err)


def _worker_error(call: _RankCall, err: RayError) -> WorkerError:
    """A user-facing message for a failed rank: who failed, where, and the worker-side reason."""
    who = f"{call.role} worker rank {call.rank}"
    if isinstance(err, RayActorError):
        if err.actor_init_failed:
            return WorkerError(f"{who} failed to start: its constructor raised {_last_line(str(err))}")
        if call.method == "__init__":
            return WorkerError(f"{who} died while starting: {_death_reason(err)}")
        return WorkerError(f"{who} died during {call.method}(): {_death_reason(err)}")
    if isinstance(err, RayTaskError):
        cause = err.cause
        if isinstance(cause, Exception) and not isinstance(cause, RayError):
            reason = f"{type(cause).__name__}: {cause}"
        else:  # the worker's exception could not be pickled: use its traceback text
            reason = _last_line(err.traceback_str)
        return WorkerError(f"{who} raised in {call.method}(): {reason}")
    return WorkerError(f"{who} failed in {call.method}(): {type(err).__name__}: {_last_line(str(err))}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _death_reason(err: RayActorError, max_chars: int = 240) -> str:
    """The first sentences of Ray's explanation of an actor death (the full text is the cause)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("\t")]
    text = " ".join(line for line in lines if line != ActorDiedError.BASE_ERROR_MSG)
    if len(text) <= max_chars:
        return text or "the actor process exited"
    cut = text.rfind(". ", 0, max_chars)
    return (text[: cut + 1] if cut > 0 else text[:max_chars] + "...") + " (more in the cause)"


def start_groups(groups: Iterable[WorkerGroup]) -> None:
    """Wait for groups made with ``wait=False`` (each role's processes import torch and build
    their model at the same time instead of one role after another). If one fails to start,
    every group is killed and its ``WorkerError`` raised."""
    unique = list({id(g): g for g in groups}.values())
    try:
        for group in unique:
            group.wait_until_alive()
    except BaseException:
        for group in unique:
            group.kill()
        raise
