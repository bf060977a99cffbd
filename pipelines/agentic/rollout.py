"""The multi-turn rollout: environment workers and rollout workers take turns until every episode ends.

Each turn the driver gathers the context of every live trajectory, the rollout workers generate one
action for all of them in one batched call, and the environment workers step all of them in one
routed call; each trajectory then gets its action tokens (trained on) and its next observation's
tokens (context only) appended::

    reset_batch(tasks × group_size)                  # first observations → prompts
    while live trajectories:
        generate(contexts of the live ones)          # one batched call per turn
        step_batch(their action texts)               # env workers, routed to the owning rank
        append action tokens (mask 1) + observation tokens (mask 0)
    release(all trajectory ids)

An episode ends when the environment says so (terminated, or truncated at ``env.max_turns``), when
its environment raises (the episode's :class:`~roll.envs.Episode` turns that into a truncated
result with ``info["error"]``; the run goes on), when the environment worker lost it, or when the
next turn could overflow ``rollout.max_context_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pipelines.agentic.config import AgenticConfig
from roll.controller import Batch, WorkerGroup
from roll.engines.base import SamplingParams
from roll.envs.trajectory import TokenTrajectory
from workers.environment import make_reset_batch

#: ``info["outcome"]`` values of the built-in environments that mean the task was solved; an
#: environment may instead put ``info["success"]`` (bool) in its final step.
SUCCESS_OUTCOMES = frozenset({"goal", "solved", "correct"})


@dataclass
class TrajectoryRecord:
    """One trajectory of a step: its tokens, and what the environment said along the way."""

    traj_id: str
    task: int
    seed: int
    tokens: TokenTrajectory
    env_rank: int = 0
    env_return: float = 0.0
    turns: int = 0
    invalid_actions: int = 0
    actions: list[str] = field(default_factory=list)
    done: bool = False
    outcome: str = "running"
    success: bool = False
    error: str | None = None

    def finish(self, outcome: str, info: dict[str, Any] | None = None) -> None:
        info = info or {}
        self.done, self.outcome = True, outcome
        self.success = bool(info.get("success", outcome in SUCCESS_OUTCOMES))
        self.error = info.get("error")


def task_seeds(cfg: AgenticConfig, step: int) -> list[int]:
    """Environment seeds of step ``step`` (1-based): fresh tasks every step, the same on a resume."""
    first = cfg.rollout.env_seed_offset + (step - 1) * cfg.rollout.tasks_per_step
    return list(range(first, first + cfg.rollout.tasks_per_step))


def encode(tokenizer: Any, text: str, *, first: bool) -> list[int]:
    """Token ids of an observation; the first one carries the tokenizer's special tokens (BOS)."""
    return list(tokenizer(text, add_special_tokens=first)["input_ids"])


_ACTION_MARK = "ROLLACTIONMARK"


class ObservationEncoder:
    """Token ids of the first observation (the prompt) and of each later one (appended after an action).

    Plain: the first observation with the tokenizer's special tokens, later ones through
    ``observation_template``. Chat: the first as a user turn plus the generation prompt; a later
    one as what the chat template puts after an assistant turn (its end-of-turn marker, the user
    turn, the generation prompt), without the end-of-turn token when the action already ended
    with it (the model generated it).
    """

    def __init__(self, cfg: AgenticConfig, tokenizer: Any) -> None:
        self.tokenizer, self.template = tokenizer, cfg.rollout.observation_template
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.chat = has_template if cfg.rollout.chat_template is None else cfg.rollout.chat_template
        if self.chat and not has_template:
            raise ValueError(
                "rollout.chat_template: true, but the tokenizer has no chat template; set it to false"
            )

    def first(self, observation: str) -> list[int]:
        if not self.chat:
            return encode(self.tokenizer, observation, first=True)
        message = [{"role": "user", "content": self.template.format(observation=observation)}]
        return list(
            self.tokenizer.apply_chat_template(
                message, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )

    def after_action(self, observation: str, action_ids: list[int]) -> list[int]:
        text = self.template.format(observation=observation)
        if not self.chat:
            return encode(self.tokenizer, text, first=False)
        turns = [
            {"role": "user", "content": "-"},
            {"role": "assistant", "content": _ACTION_MARK},
            {"role": "user", "content": text},
        ]
        rendered = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        ids = encode(
            self.tokenizer, rendered[rendered.index(_ACTION_MARK) + len(_ACTION_MARK) :], first=False
        )
        if action_ids and ids and action_ids[-1] == ids[0] == self.tokenizer.eos_token_id:
            ids = ids[1:]
        return ids


def reset_episodes(
    cfg: AgenticConfig, env: WorkerGroup, tokenizer: Any, observations: ObservationEncoder, step: int
) -> list[TrajectoryRecord]:
    """Start ``group_size`` trajectories of each task of ``step`` on the environment workers."""
    seeds = task_seeds(cfg, step)
    out = env.reset_batch(make_reset_batch(cfg.env, seeds, cfg.rollout.group_size, prefix=f"step{step}"))
    episodes = []
    for i in range(len(out)):
        traj_id, info = out.non_tensors["traj_id"][i], out.non_tensors["info"][i]
        task = i // cfg.rollout.group_size
        prompt = observations.first(out.non_tensors["observation"][i]) or [tokenizer.pad_token_id]
        episode = TrajectoryRecord(
            traj_id, task, seeds[task], TokenTrajectory(prompt), out.non_tensors["env_rank"][i]
        )
        if bool(out.tensors["done"][i]):  # the environment failed to start: an isolated error
            episode.finish(info.get("outcome", "error"), info)
        episodes.append(episode)
    return episodes


def sampling_params(cfg: AgenticConfig) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        stop=tuple(r.stop),
    )


def generate_actions(rollout: WorkerGroup, live: list[TrajectoryRecord], params: SamplingParams) -> list[str]:
    """One batched generate over the live contexts; appends each action's tokens and log-probs."""
    contexts = [e.tokens.context for e in live]
    width = max(len(c) for c in contexts)
    batch = Batch.from_dict(
        non_tensors={"prompt_ids": contexts}, meta={"sampling": params, "prompt_width": width}
    )
    out = rollout.generate(batch)
    response = out.tensors["input_ids"][:, width:]
    mask = out.tensors["response_mask"]
    for i, episode in enumerate(live):
        keep = mask[i].bool()
        episode.tokens.add_action(
            response[i][keep].tolist(), out.tensors["rollout_logprobs"][i][keep].tolist()
        )
    return list(out.non_tensors["response_text"])


def step_environments(
    cfg: AgenticConfig,
    env: WorkerGroup,
    observations: ObservationEncoder,
    live: list[TrajectoryRecord],
    actions: list[str],
) -> None:
    """Step every live episode with its action; record rewards and ends, append observations."""
    batch = Batch.from_dict(
        non_tensors={
            "traj_id": [e.traj_id for e in live],
            "turn": [e.turns for e in live],
            "action_text": actions,
            "env_rank": [e.env_rank for e in live],
        }
    )
    out = env.step_batch(batch)
    for i, episode in enumerate(live):
        info, status = out.non_tensors["info"][i], out.non_tensors["status"][i]
        episode.turns += 1
        episode.actions.append(actions[i])
        episode.env_return += float(out.tensors["reward"][i])
        episode.invalid_actions += bool(info.get("invalid"))
        if status == "lost":
            episode.finish("lost", {"error": "the environment worker lost this trajectory (restarted?)"})
        elif bool(out.tensors["done"][i]):
            default = "terminated" if bool(out.tensors["terminated"][i]) else "truncated"
            episode.finish(info.get("outcome", default), info)
        else:
            ids = observations.after_action(out.non_tensors["observation"][i], episode.tokens.last_action)
            if len(episode.tokens.context) + len(ids) + cfg.rollout.max_new_tokens > cfg.context_limit:
                episode.finish("context_limit")  # the next turn could not fit: end before it
            else:
                episode.tokens.add_observation(ids)


def play_episodes(
    cfg: AgenticConfig, groups: dict[str, WorkerGroup], tokenizer: Any, step: int, timer: Any
) -> list[TrajectoryRecord]:
    """Reset, then alternate generate and env steps until every episode of the step has ended.

    ``timer`` is the pipeline's stage timer: ``time/reset``, ``time/generate`` and ``time/env``
    add up over the turns.
    """
    params = sampling_params(cfg)
    observations = ObservationEncoder(cfg, tokenizer)
    with timer("reset"):
        episodes = reset_episodes(cfg, groups["environment"], tokenizer, observations, step)
    for e in episodes:
        if not e.done and len(e.tokens.context) + params.max_new_tokens > cfg.context_limit:
            e.finish("context_limit")  # not even the first action fits
    while True:
        live = [e for e in episodes if not e.done]
        if not live:
            break
        with timer("generate"):
            actions = generate_actions(groups["rollout"], live, params)
        with timer("env"):
            step_environments(cfg, groups["environment"], observations, live, actions)
    groups["environment"].release([e.traj_id for e in episodes])
    return episodes


def episode_tensors(episodes: list[TrajectoryRecord]) -> dict[str, torch.Tensor]:
    """Per-trajectory ``rewards`` (the environment return), ``group_ids`` (the task) [B]."""
    return {
        "rewards": torch.tensor([e.env_return for e in episodes], dtype=torch.float32),
        "group_ids": torch.tensor([e.task for e in episodes], dtype=torch.long),
    }
