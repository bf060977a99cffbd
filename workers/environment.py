"""The environment role: plays text environments for multi-turn agents, many trajectories per worker.

This is the seam the agentic pipeline drives; it alternates ``rollout.generate`` and
``environment.step_batch`` until every trajectory is done::

    group = WorkerGroup(EnvironmentWorker, role="environment", actor_options=[{"num_cpus": 0.25}] * 2)
    out = group.reset_batch(make_reset_batch(env_cfg, seeds=[11, 12], group_size=4, prefix="step3"))
    while not out.tensors["done"].all():        # (the pipeline keeps only the live rows)
        live = out[~out.tensors["done"]]
        actions = policy(live.non_tensors["observation"])
        out = group.step_batch(make_step_batch(live, actions))
    group.release([...])                         # forget the finished trajectories

Trajectories are routed, not split by position: ``reset_batch`` spreads tasks round-robin over the
ranks (all trajectories of a task on one rank) and answers each row with its ``env_rank``;
``step_batch`` sends every row to that rank, whatever rows the batch holds. Results come back in
the order of the input rows.

Output columns (reset and step alike): tensors ``reward`` float32, ``terminated``/``truncated``/
``done`` bool, ``turn`` int64 (actions played so far) [B]; non-tensors ``traj_id``,
``observation``, ``info`` (dict), ``status`` (``ok``/``replayed``/``lost``) and ``env_rank``.
A retried call returns the stored results (``status == "replayed"``); ``lost`` rows (the worker was
restarted or the id released) are done and must be rerun from a reset. An environment that raises
ends its trajectory (reward 0, ``info["error"]``); the worker keeps serving the others.
"""

from __future__ import annotations

import torch

from roll.controller import Batch, Dispatch, Worker, register
from roll.controller.dispatch import RankCall
from roll.envs import EnvConfig, EnvPool, EnvReply, ResetRequest, StepRequest
from roll.imports import import_modules

#: Non-tensor column that carries each routed row's position in the caller's batch, so the collect
#: step can restore the caller's order; workers echo it.
ROUTE_COLUMN = "env_route_row"
RESET_COLUMNS = ("traj_id", "task_id", "seed", "env")
STEP_COLUMNS = ("traj_id", "turn", "action_text", "env_rank")


def make_reset_batch(env: EnvConfig, seeds: list[int], group_size: int, prefix: str) -> Batch:
    """A ``reset_batch`` input: ``group_size`` trajectories per seed (one task per seed).

    Trajectory ids are ``f"{prefix}/{seed}/{k}"``; use a fresh ``prefix`` per training step.
    """
    rows = [(f"{prefix}/{seed}/{k}", f"{prefix}/{seed}", seed) for seed in seeds for k in range(group_size)]
    return Batch.from_dict(
        non_tensors={
            "traj_id": [row[0] for row in rows],
            "task_id": [row[1] for row in rows],
            "seed": [row[2] for row in rows],
            "env": [env] * len(rows),
        }
    )


def make_step_batch(previous: Batch, actions: list[str]) -> Batch:
    """A ``step_batch`` input: one action per row of ``previous`` (live rows of the last output)."""
    if len(actions) != len(previous):
        raise ValueError(f"make_step_batch got {len(actions)} actions for {len(previous)} trajectories")
    return Batch.from_dict(
        non_tensors={
            "traj_id": previous.non_tensors["traj_id"],
            "turn": previous.tensors["turn"].tolist(),
            "action_text": list(actions),
            "env_rank": previous.non_tensors["env_rank"],
        }
    )


# ---------------------------------------------------------------------- routing
def _route(n_workers: int, batch: Batch, ranks: list[int]) -> list[RankCall]:
    bad = sorted({rank for rank in ranks if not 0 <= rank < n_workers})
    if bad:
        raise ValueError(
            f"env_rank {bad} is outside this group of {n_workers} environment workers; step only "
            "trajectories that this group's reset_batch started"
        )
    calls: list[RankCall] = []
    for rank in range(n_workers):
        rows = [i for i, owner in enumerate(ranks) if owner == rank]
        if not rows:
            calls.append(None)
            continue
        part = batch[rows]
        part.non_tensors[ROUTE_COLUMN] = rows
        calls.append(((part,), {}))
    return calls


def _route_by_task(n_workers: int, batch: Batch) -> list[RankCall]:
    """Tasks round-robin over the ranks, in order of first appearance; a task stays on one rank."""
    _require(batch, RESET_COLUMNS, "reset_batch")
    tasks = batch.non_tensors["task_id"]
    owner = {task: i % n_workers for i, task in enumerate(dict.fromkeys(tasks))}
    return _route(n_workers, batch, [owner[task] for task in tasks])


def _route_by_owner(n_workers: int, batch: Batch) -> list[RankCall]:
    _require(batch, STEP_COLUMNS, "step_batch")
    return _route(n_workers, batch, [int(rank) for rank in batch.non_tensors["env_rank"]])


def _in_caller_order(results: list[Batch]) -> Batch:
    merged = Batch.concat(results)
    positions = merged.pop(ROUTE_COLUMN)
    return merged[sorted(range(len(positions)), key=positions.__getitem__)]


def _require(batch: Batch, columns: tuple[str, ...], call: str) -> None:
    missing = [c for c in columns if c not in batch.non_tensors]
    if missing:
        raise ValueError(
            f"{call} needs non-tensor columns {list(columns)}; missing {missing} (build the batch "
            f"with workers.environment.make_{call}())"
        )


class EnvironmentWorker(Worker):
    """Holds an :class:`~roll.envs.EnvPool`; see the module docstring for the call protocol.

    Args:
        threads: environments stepped concurrently in this worker.
        imports: modules to import first, so user environments (``@register_env``) are known.
    """

    def __init__(
        self, rank: int, world_size: int, role: str, *, threads: int = 8, imports: list[str] | None = None
    ) -> None:
        super().__init__(rank, world_size, role)
        import_modules(imports or [])
        self.pool = EnvPool(threads)

    @register(split=_route_by_task, collect=_in_caller_order)
    def reset_batch(self, batch: Batch) -> Batch:
        """non_tensors traj_id (str), task_id, seed (int), env (EnvConfig) → first observations."""
        _require(batch, RESET_COLUMNS, "reset_batch")
        columns = [batch.non_tensors[c] for c in RESET_COLUMNS]
        requests = [
            ResetRequest(str(traj_id), task_id, int(seed), _env_config(env))
            for traj_id, task_id, seed, env in zip(*columns, strict=True)
        ]
        return self._answer(batch, self.pool.reset(requests))

    @register(split=_route_by_owner, collect=_in_caller_order)
    def step_batch(self, batch: Batch) -> Batch:
        """non_tensors traj_id, turn (actions played so far), action_text, env_rank → next results."""
        _require(batch, STEP_COLUMNS, "step_batch")
        requests = [
            StepRequest(str(traj_id), int(turn), str(action))
            for traj_id, turn, action in zip(
                batch.non_tensors["traj_id"],
                batch.non_tensors["turn"],
                batch.non_tensors["action_text"],
                strict=True,
            )
        ]
        return self._answer(batch, self.pool.step(requests))

    @register(Dispatch.ONE_TO_ALL, collect=sum)
    def release(self, traj_ids: list[str]) -> int:
        """Forget these trajectories (each rank drops the ones it holds); returns how many were held."""
        return self.pool.release(list(traj_ids))

    @register(Dispatch.ONE_TO_ALL)
    def stats(self) -> dict[str, int]:
        """Per rank: live/finished trajectories held and reset/step/replayed/lost/error counts."""
        return self.pool.stats()

    def _answer(self, batch: Batch, replies: list[EnvReply]) -> Batch:
        results = [reply.result for reply in replies]
        non_tensors = {
            "traj_id": [reply.traj_id for reply in replies],
            "observation": [r.observation for r in results],
            "info": [r.info for r in results],
            "status": [reply.status for reply in replies],
            "env_rank": [self.rank] * len(replies),
        }
        if ROUTE_COLUMN in batch.non_tensors:
            non_tensors[ROUTE_COLUMN] = batch.non_tensors[ROUTE_COLUMN]
        return Batch.from_dict(
            tensors={
                "reward": torch.tensor([r.reward for r in results], dtype=torch.float32),
                "terminated": torch.tensor([r.terminated for r in results], dtype=torch.bool),
                "truncated": torch.tensor([r.truncated for r in results], dtype=torch.bool),
                "done": torch.tensor([r.done for r in results], dtype=torch.bool),
                "turn": torch.tensor([reply.turns for reply in replies], dtype=torch.int64),
            },
            non_tensors=non_tensors,
        )


def _env_config(value: object) -> EnvConfig:
    """Rows may carry an EnvConfig or its dict form (e.g. straight from a dataset row)."""
    return value if isinstance(value, EnvConfig) else EnvConfig.model_validate(value)
