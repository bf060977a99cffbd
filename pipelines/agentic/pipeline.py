"""Agentic: multi-turn trajectory GRPO in text environments.

Papers: RAGEN / StarPO (Wang et al. 2025, arXiv:2504.20073: multi-turn trajectory-level
optimisation of LLM agents, FrozenLake and Sokoban as text games) and ROLL's agentic pipeline
(Wang et al. 2025, arXiv:2506.06122); the advantage is GRPO's (Shao et al. 2024, arXiv:2402.03300,
sec. 4.1.2) with a trajectory's environment return in place of a response's reward.

Each step plays ``group_size`` trajectories of each of ``tasks_per_step`` tasks (environment
seeds): the policy sees the observation, generates an action, the environment steps, and the next
observation is appended to the context, until the episode ends or ``env.max_turns``. The return of
a trajectory (the sum of its step rewards) is normalised within its task's group; every token the
policy generated in that trajectory gets that advantage, and observation tokens get no loss (they
are context only; see ``roll.envs.trajectory``).

    for step in steps:
        episodes = play_episodes(...)                    # reset, then generate ⇄ env.step per turn
        batch    = pack_trajectories(...)                # prompt | actions + observations, loss mask
        ref_logp = reference.compute_ref_log_probs(...)  # reference (only when kl_coef > 0)
        adv      = trajectory_advantages(...)            # advantage: GRPO over trajectory returns
        metrics  = actor.train_step(batch)               # train
        rollout.update_weights(actor.publish_weights())  # sync
        checkpoint every N steps                         # checkpoint
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from pipelines.agentic.config import AgenticConfig
from pipelines.agentic.metrics import episode_metrics, rollout_rows
from pipelines.agentic.rollout import episode_tensors, play_episodes
from roll.algos import kl_penalty
from roll.algos.registry import compute_advantages
from roll.algos.token_advantages import clip_advantages
from roll.config.registry import register_pipeline
from roll.controller import Batch, GroupFuture, WorkerGroup, start_groups
from roll.envs.trajectory import pack_trajectories
from roll.jobs.checkpoint import CheckpointWriter, read_json, write_json
from roll.jobs.local import RunContext
from roll.models import load_tokenizer
from roll.models.sources import prepare_model_source
from roll.tracking import ConsoleProgress
from workers.actor import ActorWorker
from workers.environment import EnvironmentWorker
from workers.reference import ReferenceWorker
from workers.rollout import RolloutWorker

CONSOLE_KEYS = [
    "reward/mean",
    "env/success_rate",
    "env/turns_mean",
    "loss/policy",
    "time/step",
    "perf/tokens_per_s",
]
TRAIN_INPUTS = ("input_ids", "attention_mask", "response_mask")
CHECKPOINTED_ROLES = ("actor", "rollout")


class StageTimer:
    """``with timer("generate"):`` adds the seconds of a named stage to ``time/<name>``.

    (The same small helper as the RLVR pipeline's; pipelines share no code but roll/.)
    """

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.times[f"time/{name}"] = self.times.get(f"time/{name}", 0.0) + time.perf_counter() - start


class ColocationSwitch:
    """Reloads a role before its stage and offloads it after, when it shares devices (as in RLVR:
    transitions are submitted without waiting; Ray runs one actor's calls in order)."""

    def __init__(self, groups: dict[str, WorkerGroup], ctx: RunContext) -> None:
        shared = {name for roles in ctx.plan.device_groups().values() if len(roles) > 1 for name in roles}
        self.groups = {name: g for name, g in groups.items() if name in shared}
        self.pending: dict[str, GroupFuture] = {name: g.offload.future() for name, g in self.groups.items()}

    @contextmanager
    def active(self, role: str) -> Iterator[None]:
        group = self.groups.get(role)
        if group is not None:
            group.reload.future()
        yield
        if group is not None:
            self.pending[role] = group.offload.future()

    def settle(self) -> None:
        for future in self.pending.values():
            future.get()
        self.pending = {}


def start_workers(cfg: AgenticConfig, ctx: RunContext) -> dict[str, WorkerGroup]:
    plan = ctx.plan

    def group(role: str, cls: type, **kwargs: Any) -> WorkerGroup:
        threads = {"threads": plan.roles[role].threads} if role != "environment" else {}
        return WorkerGroup(
            cls,
            role=role,
            actor_options=ctx.placement.actor_options(role),
            init_kwargs={**threads, **kwargs},
            wait=False,  # every role's processes start at once (start_groups below)
        )

    temp = cfg.rollout.temperature
    groups = {
        "actor": group(
            "actor",
            ActorWorker,
            model=cfg.model,
            train=cfg.train,
            loss_params=cfg.algo.actor_loss_params(cfg.max_generated_tokens),
            temperature=temp,
            total_optimizer_steps=cfg.steps * cfg.train.epochs * cfg.train.mini_batches,
            seed=cfg.seed,
        ),
        "rollout": group("rollout", RolloutWorker, model=cfg.model, seed=cfg.seed),
        "environment": group(
            "environment", EnvironmentWorker, threads=cfg.rollout.env_threads, imports=cfg.imports
        ),
    }
    if "reference" in cfg.active_roles:
        groups["reference"] = group(
            "reference",
            ReferenceWorker,
            model=cfg.model,
            temperature=temp,
            micro_batch_size=cfg.train.micro_batch_size,
            seed=cfg.seed,
        )
    start_groups(groups.values())
    if groups["actor"].world_size > 1:
        groups["actor"].init_distributed(groups["actor"].rendezvous_address())
    return groups


def trajectory_advantages(cfg: AgenticConfig, batch: Batch) -> Batch:
    """GRPO-family advantages of the trajectory returns within each task's group, on generated tokens."""
    t, algo = batch.tensors, cfg.algo
    kl = None
    if algo.kl_in_reward and algo.kl_coef > 0:  # rloo: the KL lowers the trajectory's return
        kl = kl_penalty(t["old_logprobs"], t["ref_logprobs"], algo.kl_kind or algo.spec.kl_kind)
    adv, _ = compute_advantages(
        algo.name,
        rewards=t["rewards"],
        group_ids=t["group_ids"],
        response_mask=t["response_mask"],
        kl=kl,
        kl_coef=algo.kl_coef if kl is not None else 0.0,
        norm_by_std=algo.norm_adv_by_std,
    )
    return Batch.from_dict(tensors={"advantages": clip_advantages(adv, cfg.algo.adv_clip)})


def sync_weights(groups: dict[str, WorkerGroup], switch: ColocationSwitch) -> None:
    with switch.active("actor"):
        refs = groups["actor"].publish_weights()
    with switch.active("rollout"):
        groups["rollout"].update_weights(refs)


def save_checkpoint(cfg: AgenticConfig, ctx: RunContext, groups: dict[str, WorkerGroup], step: int) -> None:
    start = time.perf_counter()
    with CheckpointWriter(ctx.checkpoint_root, step, keep_last=cfg.checkpoint.keep_last) as writer:
        for role in CHECKPOINTED_ROLES:
            groups[role].save_checkpoint(str(writer.tmp_dir))
        write_json(writer.tmp_dir / "driver.json", {"step": step})  # task seeds follow from the step
    ctx.tracker.event(
        "checkpoint", f"saved step {step}", step=step, data={"seconds": time.perf_counter() - start}
    )


def load_checkpoint(ctx: RunContext, groups: dict[str, WorkerGroup]) -> int:
    folder = ctx.resume_from
    for role in CHECKPOINTED_ROLES:
        groups[role].load_checkpoint(str(folder))
    step = int(read_json(folder / "driver.json")["step"])
    ctx.store.truncate_after(ctx.run_id, step)
    return step


@register_pipeline(
    "agentic", config=AgenticConfig, description="multi-turn trajectory GRPO in text environments"
)
def run_agentic(cfg: AgenticConfig, ctx: RunContext) -> None:
    prepare_model_source(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    groups = start_workers(cfg, ctx)
    switch = ColocationSwitch(groups, ctx)
    start_step = load_checkpoint(ctx, groups) if ctx.resume_from else 0
    sync_weights(groups, switch)
    console = ConsoleProgress(cfg.steps, start_step=start_step, keys=CONSOLE_KEYS, stream=ctx.stream)
    metrics: dict[str, float] = {}
    run_start = time.perf_counter()
    for step in range(start_step + 1, cfg.steps + 1):
        timer, step_start = StageTimer(), time.perf_counter()
        with switch.active("rollout"):  # times reset / generate / env inside
            episodes = play_episodes(cfg, groups, tokenizer, step, timer)
        with timer("pack"):
            tensors = pack_trajectories([e.tokens for e in episodes], tokenizer.pad_token_id)
            batch = Batch.from_dict(tensors={**tensors, **episode_tensors(episodes)})
        if cfg.algo.kl_coef > 0:
            ref_role = "reference" if "reference" in groups else "actor"
            with timer("reference"), switch.active(ref_role):
                batch = batch.union(groups[ref_role].compute_ref_log_probs(batch.select(*TRAIN_INPUTS)))
        with timer("advantage"):
            batch = batch.union(trajectory_advantages(cfg, batch))
        with timer("train"), switch.active("actor"):
            keys = [*TRAIN_INPUTS, "old_logprobs", "advantages"] + (
                ["ref_logprobs"] if cfg.algo.kl_coef > 0 else []
            )
            actor_batch = batch.select(*keys)
            actor_batch.meta["kl_coef"] = cfg.algo.kl_coef
            train_metrics = groups["actor"].train_step(actor_batch)
        with timer("sync"):
            sync_weights(groups, switch)
            switch.settle()
        step_time = time.perf_counter() - step_start
        metrics = episode_metrics(episodes, batch) | train_metrics | timer.times
        metrics["time/step"] = step_time
        metrics["perf/tokens_per_s"] = float(batch.tensors["response_mask"].sum()) / step_time
        metrics["perf/env_steps_per_s"] = sum(e.turns for e in episodes) / step_time
        ctx.tracker.log(step, metrics)  # recorded before its checkpoint (see the RLVR pipeline)
        ctx.store.log_rollouts(
            ctx.run_id, step, rollout_rows(episodes, batch, tokenizer, cfg.tracking.rollouts_per_step)
        )
        console.log(step, metrics)
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or (
            step == cfg.steps and cfg.checkpoint.save_final
        ):
            save_checkpoint(cfg, ctx, groups, step)
    if cfg.checkpoint.export_model:
        groups["actor"].save_pretrained(str(ctx.run_dir / "model"))
    summary_line = console.summary(metrics)
    console.close()
    ctx.summary.update(
        final_metrics=metrics, summary_line=summary_line, seconds=time.perf_counter() - run_start
    )
    for group in groups.values():
        group.kill()
