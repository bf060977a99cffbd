"""RLVR: reinforcement learning with verifiable rewards (GRPO).

Paper: DeepSeekMath, Shao et al. 2024, arXiv:2402.03300 (GRPO, sec. 4.1). Each step samples a
group of completions per prompt, scores them with rule rewards, normalises rewards within each
group into advantages, and takes PPO-clip steps with an optional k3 KL penalty to the reference.

    for step in steps:
        rollouts  = scheduler.generate(step)             # generate: draw prompts, sample, reward
                                                         #   each group as it finishes (schedulers/)
        rewards   = shape_rewards(rollouts)              # reward (overlong penalty)
        ref_logp  = reference.compute_ref_log_probs(...) # reference (only when kl_coef > 0)
        adv       = compute_grpo_advantages(...)         # advantage
        metrics   = actor.train_step(batch)              # train
        scheduler.update_weights(actor.publish_weights()) # sync
        checkpoint every N steps                         # checkpoint
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from pipelines.rlvr.config import RLVRConfig
from roll.algos import group_reward_stats, kl_penalty
from roll.algos.kl_control import AdaptiveKLController, FixedKLController
from roll.algos.registry import compute_advantages
from roll.algos.reward_shaping import overlong_penalty
from roll.algos.token_advantages import clip_advantages
from roll.config.registry import register_pipeline
from roll.controller import Batch, GroupFuture, WorkerGroup, start_groups
from roll.data import PromptSampler, load_rows
from roll.engines.base import SamplingParams
from roll.jobs.checkpoint import CheckpointWriter, read_json, write_json
from roll.jobs.local import RunContext
from roll.models import load_tokenizer
from roll.models.sources import prepare_model_source
from roll.tracking import ConsoleProgress
from schedulers.rollout_scheduler import RolloutFailed, RolloutScheduler, SchedulerSettings
from workers.actor import ActorWorker
from workers.actor_rollout import SHARED_WEIGHTS, ActorRolloutWorker
from workers.critic import CriticWorker
from workers.reference import ReferenceWorker
from workers.reward import RewardWorker
from workers.rollout import RolloutWorker

CONSOLE_KEYS = ["reward/mean", "actor/kl", "loss/policy", "time/step", "perf/tokens_per_s"]


class StageTimer:
    """``with timer("generate"):`` records seconds per named stage of the current step."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.times[f"time/{name}"] = self.times.get(f"time/{name}", 0.0) + time.perf_counter() - start


class ColocationSwitch:
    """Reloads a role before its stage and offloads it after, when it shares devices.

    The transitions are submitted without waiting: Ray runs one actor's calls in order, so a
    reload always lands before the stage's work and an offload after it, and the driver saves a
    round trip per transition. Their results (the bytes each switch moved, from the workers'
    offload state machines) are collected once a step as ``offload/bytes_moved``; a failed
    transition raises there, or earlier from the work call that needed the role active.
    """

    def __init__(
        self, groups: dict[str, WorkerGroup], ctx: RunContext, aliases: dict[str, str] | None = None
    ) -> None:
        # aliases: role -> the role whose processes it runs in (roles.<role>.devices.same_process)
        self.aliases = aliases or {}
        shared = set()
        for roles in ctx.plan.device_groups().values():
            processes = {self.aliases.get(name, name) for name in roles}
            if len(processes) > 1:
                shared |= processes
        self.groups = {name: g for name, g in groups.items() if name in shared and name not in self.aliases}
        self.pending: dict[str, GroupFuture] = {}
        self.moved: dict[str, int] = {}
        self.reported = 0
        for name, group in self.groups.items():
            self.pending[name] = group.offload.future()

    @contextmanager
    def active(self, role: str) -> Iterator[None]:
        role = self.aliases.get(role, role)
        group = self.groups.get(role)
        if group is not None:
            group.reload.future()
        yield
        if group is not None:
            self.pending[role] = group.offload.future()

    def step_metrics(self) -> dict[str, float]:
        for role, future in self.pending.items():
            self.moved[role] = sum(s["bytes_moved_total"] for s in future.get())
        self.pending = {}
        total = sum(self.moved.values())
        delta, self.reported = total - self.reported, total
        return {"offload/bytes_moved": float(delta)}


def encode_prompts(rows: list[dict[str, Any]], tokenizer: Any, chat: bool | None) -> list[list[int]]:
    use_chat = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    if use_chat:
        return [
            list(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": r["prompt"]}],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                )
            )
            for r in rows
        ]
    return [tokenizer(r["prompt"], add_special_tokens=True)["input_ids"] for r in rows]


def start_workers(cfg: RLVRConfig, ctx: RunContext) -> dict[str, WorkerGroup]:
    plan, total_opt_steps = ctx.plan, cfg.steps * cfg.train.epochs * cfg.train.mini_batches

    def group(role: str, cls: type, **kwargs: Any) -> WorkerGroup:
        options = ctx.placement.actor_options(role)
        if role in ("rollout", "reward"):  # restarted by Ray when killed; the scheduler reruns work
            restarts = cfg.rollout.worker_max_restarts
            retries = 0 if role == "rollout" else restarts  # rollout: rerun after a weight resync
            options = [{**o, "max_restarts": restarts, "max_task_retries": retries} for o in options]
        return WorkerGroup(
            cls,
            role=role,
            actor_options=options,
            init_kwargs={"threads": plan.roles[role].threads, **kwargs} if role != "reward" else kwargs,
            wait=False,  # every role's processes start at once (start_groups below)
        )

    temp = cfg.rollout.temperature
    groups = {
        "actor": group(
            "actor",
            ActorRolloutWorker if cfg.rollout_in_actor else ActorWorker,
            model=cfg.model,
            train=cfg.train,
            loss_params=cfg.algo.actor_loss_params(cfg.rollout.max_new_tokens),
            temperature=temp,
            total_optimizer_steps=total_opt_steps,
            seed=cfg.seed,
        ),
        "reward": group("reward", RewardWorker, reward=cfg.reward, imports=cfg.imports),
    }
    if cfg.rollout_in_actor:  # the actor's processes serve the rollout's calls too
        groups["rollout"] = groups["actor"]
    else:
        groups["rollout"] = group(
            "rollout",
            RolloutWorker,
            model=cfg.model,
            seed=cfg.seed,
            engine=cfg.rollout.engine,
            logprobs_mode=cfg.rollout.logprobs_mode if cfg.rollout.engine == "vllm" else "processed_logprobs",
            colocated=len(plan.roles_on(plan.roles["rollout"].devices[0])) > 1
            if plan.roles["rollout"].devices
            else False,
        )
    if "critic" in cfg.active_roles:
        groups["critic"] = group(
            "critic",
            CriticWorker,
            model=cfg.model,
            train=cfg.critic,
            value_clip=cfg.algo.value_clip,
            total_optimizer_steps=cfg.steps * cfg.critic.epochs * cfg.critic.mini_batches,
            seed=cfg.seed,
        )
    if "reference" in cfg.active_roles:  # with LoRA the actor is its own reference
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


def build_prompt_batch(cfg: RLVRConfig, rows: list[dict], prompt_ids: list[list[int]], step: int) -> Batch:
    g = cfg.rollout.group_size
    sampling = SamplingParams(
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        top_k=cfg.rollout.top_k,
        stop=tuple(cfg.rollout.stop),
    )
    return Batch.from_dict(
        tensors={"group_ids": torch.arange(len(rows)).repeat_interleave(g)},
        non_tensors={
            "prompt_ids": [ids for ids in prompt_ids for _ in range(g)],
            "row": [row for row in rows for _ in range(g)],
            # the same row can appear twice in a step (epoch boundary): the slot i keeps ids unique
            "sample_id": [f"{step}:{i}:{row['id']}:{k}" for i, row in enumerate(rows) for k in range(g)],
        },
        meta={"sampling": sampling, "prompt_width": max(len(ids) for ids in prompt_ids)},
    )


def make_scheduler(
    cfg: RLVRConfig, groups: dict[str, WorkerGroup], sampler: PromptSampler, tokenizer: Any
) -> RolloutScheduler:
    """The rollout scheduler over this job's rollout and reward workers, drawing from ``sampler``."""
    r = cfg.rollout

    def draw(n: int) -> list[tuple[dict, list[int]]]:
        rows = sampler.next(n)
        return list(zip(rows, encode_prompts(rows, tokenizer, cfg.data.chat_template), strict=True))

    settings = SchedulerSettings(
        groups_per_step=r.prompts_per_step,
        group_size=r.group_size,
        sampling=SamplingParams(
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            stop=tuple(r.stop),
        ),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        seed=cfg.seed,
        groups_per_chunk=r.groups_per_chunk,
        dynamic_sampling=r.dynamic_sampling,
        max_refills=r.max_refills,
        async_ratio=r.async_ratio,
        oversample=r.oversample,
        sample_timeout_s=r.sample_timeout_s,
        max_attempts=r.max_attempts,
    )
    return RolloutScheduler(groups["rollout"], groups["reward"], settings, draw)


def step_metrics(batch: Batch, train: dict[str, float], reward_names: list[str]) -> dict[str, float]:
    t = batch.tensors
    rewards, lengths = t["rewards"], t["response_mask"].sum(-1).float()
    stats = group_reward_stats(rewards, t["group_ids"])
    metrics = {
        "reward/mean": rewards.mean().item(),
        "reward/std": rewards.std().item() if len(rewards) > 1 else 0.0,
        **{f"reward/{n}": t[f"reward/{n}"].mean().item() for n in reward_names},
        "groups/zero_std_share": stats["zero_std_group_share"],
        "response/length_mean": lengths.mean().item(),
        "response/length_max": lengths.max().item(),
        "response/truncated_share": sum(r == "length" for r in batch.non_tensors["finish_reason"])
        / len(batch),
        "reward/error_count": float(sum(bool(e) for e in batch.non_tensors["reward_error"])),
        **train,
    }
    metrics["actor/kl"] = train.get("loss/kl", 0.0)
    metrics["actor/entropy"] = train.get("loss/entropy", 0.0)
    mask = t["response_mask"].float()
    metrics["advantage/abs_mean"] = float((t["advantages"].abs() * mask).sum() / mask.sum().clamp(min=1))
    return metrics


# the rollout role holds no state of its own: every chunk samples with a seed of its own
CHECKPOINTED_ROLES = ("actor", "critic")


def save_checkpoint(cfg: RLVRConfig, ctx: RunContext, groups, sampler_state: dict, kl_ctl, step: int) -> None:
    start = time.perf_counter()
    with CheckpointWriter(ctx.checkpoint_root, step, keep_last=cfg.checkpoint.keep_last) as writer:
        for role in CHECKPOINTED_ROLES:
            if role in groups:
                groups[role].save_checkpoint(str(writer.tmp_dir))
        state = {"step": step, "sampler": sampler_state, "kl_ctl": kl_ctl.state_dict()}
        write_json(writer.tmp_dir / "driver.json", state)
    ctx.tracker.event(
        "checkpoint", f"saved step {step}", step=step, data={"seconds": time.perf_counter() - start}
    )


def load_checkpoint(ctx: RunContext, groups, sampler: PromptSampler, kl_ctl) -> int:
    folder = ctx.resume_from
    for role in CHECKPOINTED_ROLES:
        if role in groups:
            groups[role].load_checkpoint(str(folder))
    state = read_json(folder / "driver.json")
    sampler.load_state_dict(state["sampler"])
    kl_ctl.load_state_dict(state["kl_ctl"])
    ctx.store.truncate_after(ctx.run_id, state["step"])
    return int(state["step"])


def make_kl_controller(cfg: RLVRConfig) -> FixedKLController | AdaptiveKLController:
    if cfg.algo.kl_control == "adaptive":
        return AdaptiveKLController(cfg.algo.kl_coef, cfg.algo.kl_target, cfg.algo.kl_horizon)
    return FixedKLController(cfg.algo.kl_coef)


def shape_rewards(cfg: RLVRConfig, batch: Batch) -> Batch:
    """DAPO's soft overlong penalty, added to the rule rewards (``reward/overlong``)."""
    if cfg.algo.overlong_buffer is None:
        return batch
    lengths = batch.tensors["response_mask"].sum(-1)
    penalty = overlong_penalty(
        lengths, cfg.rollout.max_new_tokens, cfg.algo.overlong_buffer, cfg.algo.overlong_penalty
    )
    batch.tensors["rewards"] = batch.tensors["rewards"] + penalty
    batch.tensors["reward/overlong"] = penalty
    return batch


def advantages(cfg: RLVRConfig, batch: Batch, kl_coef: float) -> Batch:
    """Token-level advantages of the configured algorithm (and critic returns for ppo)."""
    t, algo = batch.tensors, cfg.algo
    kl = None
    if algo.kl_in_reward and algo.kl_coef > 0:
        kl = kl_penalty(t["old_logprobs"], t["ref_logprobs"], algo.kl_kind or algo.spec.kl_kind)
    adv, returns = compute_advantages(
        algo.name,
        rewards=t["rewards"],
        group_ids=t["group_ids"],
        response_mask=t["response_mask"],
        values=t.get("values"),
        kl=kl,
        kl_coef=kl_coef if kl is not None else 0.0,
        gamma=algo.gamma,
        lam=algo.lam,
        norm_by_std=algo.norm_adv_by_std,
    )
    adv = clip_advantages(adv, algo.adv_clip)
    out = {"advantages": adv}
    if returns is not None:
        out["returns"] = returns
    return Batch.from_dict(tensors=out)


def sync_weights(
    groups: dict[str, WorkerGroup], switch: ColocationSwitch, scheduler: RolloutScheduler, version: int
) -> None:
    """Actor weights → rollout workers, as policy ``version`` (training steps done so far)."""
    if groups["rollout"] is groups["actor"]:  # same processes: only the version is news
        scheduler.update_weights(SHARED_WEIGHTS, version)
        return
    with switch.active("actor"):
        refs = groups["actor"].publish_weights()
    with switch.active("rollout"):
        scheduler.update_weights(refs, version)


def checkpoint_after_failure(cfg, ctx, groups, sampler_state: dict, kl_ctl, step: int, err: Exception):
    """The rollout could not finish step ``step``: keep a resumable checkpoint of the last finished
    step (unless one exists) and say how to resume."""
    done = step - 1
    if not (ctx.checkpoint_root / f"step_{done:06d}" / "MANIFEST.json").exists():
        save_checkpoint(cfg, ctx, groups, sampler_state, kl_ctl, done)
    return RolloutFailed(
        f"step {step} failed: {err}. The last finished step ({done}) is checkpointed under "
        f"{ctx.checkpoint_root}; rerun the same command with --resume to continue from it"
    )


@register_pipeline("rlvr", config=RLVRConfig, description="GRPO on verifiable rewards")
def run_rlvr(cfg: RLVRConfig, ctx: RunContext) -> None:
    prepare_model_source(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    sampler = PromptSampler(load_rows(cfg.data), seed=cfg.seed, shuffle=cfg.data.shuffle)
    groups = start_workers(cfg, ctx)
    switch = ColocationSwitch(groups, ctx, aliases={"rollout": "actor"} if cfg.rollout_in_actor else None)
    kl_ctl = make_kl_controller(cfg)
    start_step = load_checkpoint(ctx, groups, sampler, kl_ctl) if ctx.resume_from else 0
    scheduler = make_scheduler(cfg, groups, sampler, tokenizer)
    sync_weights(groups, switch, scheduler, version=start_step)
    reward_names = [f.name for f in cfg.reward.functions]
    console = ConsoleProgress(cfg.steps, start_step=start_step, keys=CONSOLE_KEYS, stream=ctx.stream)
    metrics: dict[str, float] = {}
    run_start = time.perf_counter()
    for step in range(start_step + 1, cfg.steps + 1):
        timer, step_start = StageTimer(), time.perf_counter()
        sampler_state = sampler.state_dict()  # what a resume from the previous step starts from
        try:
            with timer("generate"), switch.active("rollout"):
                batch, rollout_metrics = scheduler.generate(step)  # sampled and scored
        except RolloutFailed as err:
            raise checkpoint_after_failure(cfg, ctx, groups, sampler_state, kl_ctl, step, err) from err
        with timer("reward"):
            batch = shape_rewards(cfg, batch)
        with timer("old_logprobs"):
            if not cfg.algo.recompute_old_logprobs:  # behaviour log-probs of the rollout engine
                batch = batch.union(
                    Batch.from_dict(tensors={"old_logprobs": batch.tensors["rollout_logprobs"]})
                )
            elif not cfg.old_logprobs_in_train_step:  # else the actor's training forward gives them
                with switch.active("actor"):
                    batch = batch.union(groups["actor"].compute_log_probs(batch.select(*TRAIN_INPUTS)))
        if cfg.algo.kl_coef > 0:
            ref_role = "reference" if "reference" in groups else "actor"
            with timer("reference"), switch.active(ref_role):
                batch = batch.union(groups[ref_role].compute_ref_log_probs(batch.select(*TRAIN_INPUTS)))
        if "critic" in groups:
            with timer("values"), switch.active("critic"):
                batch = batch.union(groups["critic"].compute_values(batch.select(*TRAIN_INPUTS)))
        with timer("advantage"):
            batch = batch.union(advantages(cfg, batch, kl_ctl.value))
        with timer("train"), switch.active("actor"):
            keys = [*TRAIN_INPUTS, "advantages"] + (["ref_logprobs"] if cfg.algo.kl_coef > 0 else [])
            keys += ["old_logprobs"] if "old_logprobs" in batch.tensors else []
            actor_batch = batch.select(*keys)
            actor_batch.meta["kl_coef"] = kl_ctl.value
            train_metrics = groups["actor"].train_step(actor_batch)
        if "critic" in groups:
            with timer("critic"), switch.active("critic"):
                critic_batch = batch.select(*TRAIN_INPUTS, "values", "returns")
                train_metrics |= groups["critic"].train_step(critic_batch)
        kl_ctl.update(train_metrics.get("loss/kl", 0.0), len(batch))
        train_metrics["actor/kl_coef"] = kl_ctl.value
        with timer("sync"):
            sync_weights(groups, switch, scheduler, version=step)
        step_time = time.perf_counter() - step_start
        metrics = step_metrics(batch, train_metrics, reward_names) | timer.times | switch.step_metrics()
        metrics |= rollout_metrics
        metrics["time/step"] = step_time
        metrics["perf/tokens_per_s"] = float(batch.tensors["response_mask"].sum()) / step_time
        metrics["perf/samples_per_s"] = len(batch) / step_time
        # the step is recorded before its checkpoint: a checkpoint at step N implies every record up
        # to N exists, so a resume from it neither loses nor repeats a step's rows
        ctx.tracker.log(step, metrics)
        ctx.store.log_rollouts(ctx.run_id, step, rollout_rows(batch, cfg.tracking.rollouts_per_step))
        console.log(step, metrics)
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or (
            step == cfg.steps and cfg.checkpoint.save_final
        ):
            save_checkpoint(cfg, ctx, groups, sampler.state_dict(), kl_ctl, step)
    if cfg.checkpoint.export_model:
        export = ctx.run_dir / "model"
        groups["actor"].save_pretrained(str(export))
    summary_line = console.summary(metrics)
    console.close()
    ctx.summary.update(
        final_metrics=metrics, summary_line=summary_line, seconds=time.perf_counter() - run_start
    )
    for group in {id(g): g for g in groups.values()}.values():
        group.kill()


TRAIN_INPUTS = ("input_ids", "attention_mask", "response_mask")


def rollout_rows(batch: Batch, limit: int | None) -> list[dict[str, Any]]:
    t, nt = batch.tensors, batch.non_tensors
    n = len(batch) if limit is None else min(limit, len(batch))
    mask = t["response_mask"].float()
    seq_adv = (t["advantages"] * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # mean over the response
    return [
        {
            "sample_id": nt["sample_id"][i],
            "group_id": int(t["group_ids"][i]),
            "prompt": nt["row"][i]["prompt"],
            "response": nt["response_text"][i],
            "reward": float(t["rewards"][i]),
            "advantage": float(seq_adv[i]),
            "state": "done",
        }
        for i in range(n)
    ]
