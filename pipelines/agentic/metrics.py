"""Step metrics and run-store rows of the agentic pipeline.

Metrics (namespaced like the other pipelines):

- ``reward/mean``, ``reward/std``: trajectory returns (sum of the environment's step rewards);
- ``env/success_rate``: share of trajectories that solved their task (``info["success"]``, else an
  outcome in ``SUCCESS_OUTCOMES``: goal / solved / correct);
- ``env/turns_mean``, ``env/turns_max``: actions per trajectory;
- ``env/invalid_action_share``: invalid actions (format errors, ``info["invalid"]``) / all actions;
- ``env/error_count``: trajectories ended by an environment exception (isolated; the run goes on);
- ``env/truncated_share``: trajectories cut at the turn limit; ``env/context_limit_share``: ended
  because the next turn could overflow ``rollout.max_context_tokens``;
- ``env/outcome/<name>``: share of each end reason (goal, hole, turn_limit, error ...);
- ``groups/zero_std_share``: task groups whose returns all tie (they teach nothing);
- ``response/generated_tokens_mean``, ``response/context_tokens_mean``: per trajectory.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pipelines.agentic.rollout import TrajectoryRecord
from roll.algos import group_reward_stats
from roll.controller import Batch


def episode_metrics(episodes: list[TrajectoryRecord], batch: Batch) -> dict[str, float]:
    t = batch.tensors
    n = len(episodes)
    rewards = t["rewards"]
    actions = sum(e.turns for e in episodes)
    outcomes = Counter(e.outcome for e in episodes)
    mask = t["response_mask"].float()
    metrics = {
        "reward/mean": rewards.mean().item(),
        "reward/std": rewards.std().item() if n > 1 else 0.0,
        "env/success_rate": sum(e.success for e in episodes) / n,
        "env/turns_mean": actions / n,
        "env/turns_max": float(max(e.turns for e in episodes)),
        "env/invalid_action_share": sum(e.invalid_actions for e in episodes) / max(actions, 1),
        "env/error_count": float(sum(e.error is not None for e in episodes)),
        "env/truncated_share": outcomes["turn_limit"] / n,
        "env/context_limit_share": outcomes["context_limit"] / n,
        **{f"env/outcome/{name}": count / n for name, count in sorted(outcomes.items())},
        "groups/zero_std_share": group_reward_stats(rewards, t["group_ids"])["zero_std_group_share"],
        "response/generated_tokens_mean": mask.sum(-1).mean().item(),
        "response/context_tokens_mean": t["attention_mask"].sum(-1).float().mean().item(),
    }
    metrics["advantage/abs_mean"] = float((t["advantages"].abs() * mask).sum() / mask.sum().clamp(min=1))
    return metrics


def rollout_rows(
    episodes: list[TrajectoryRecord], batch: Batch, tokenizer: Any, limit: int | None
) -> list[dict[str, Any]]:
    """Run-store rows: the first observation as the prompt, the rest of the transcript as the response."""
    n = len(episodes) if limit is None else min(limit, len(episodes))
    mask = batch.tensors["response_mask"].float()
    seq_adv = (batch.tensors["advantages"] * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return [
        {
            "sample_id": e.traj_id,
            "group_id": e.task,
            "prompt": tokenizer.decode(e.tokens.prompt_ids, skip_special_tokens=True),
            "response": tokenizer.decode(e.tokens.ids, skip_special_tokens=True),
            "reward": e.env_return,
            "advantage": float(seq_adv[i]),
            "state": "failed" if e.error else "done",
            "seed": e.seed,
            "turns": e.turns,
            "outcome": e.outcome,
            "actions": e.actions,
            **({"error": e.error} if e.error else {}),
        }
        for i, e in enumerate(episodes[:n])
    ]
