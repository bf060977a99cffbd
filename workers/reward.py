"""The reward role: scores completions with registered reward functions, routed by row domain.

Each row goes to the reward terms of its domain (``row[reward.domain_key]``, default domain
``reward.functions``); see roll/rewards/router.py. A reward function that raises or passes its
time limit scores the sample 0 and the error is returned with the sample; the run never crashes
because of one bad completion. Several reward workers split a batch by data-parallel rank; routing
is per sample, so any split gives the same scores.
"""

from __future__ import annotations

import torch

from roll.controller import Batch, Dispatch, Worker, register
from roll.imports import import_modules
from roll.rewards import RewardConfig
from roll.rewards.router import RewardRouter


class RewardWorker(Worker):
    def __init__(
        self, rank: int, world_size: int, role: str, *, reward: RewardConfig, imports: list[str]
    ) -> None:
        super().__init__(rank, world_size, role)
        import_modules(imports)
        self.router = RewardRouter(reward, imports)

    @register(Dispatch.SPLIT_BY_DP)
    def compute_rewards(self, batch: Batch) -> Batch:
        """non_tensors "response_text" and "row" → tensors "rewards" and "reward/<name>" [B] (one
        column per term name over all domains, 0 where the row's domain lacks the term) and
        non_tensors "reward_error" ("" when every term scored)."""
        scores = self.router.score(batch.non_tensors["response_text"], batch.non_tensors["row"])
        tensors = {"rewards": torch.tensor(scores.totals, dtype=torch.float32)}
        for name, values in scores.per_term.items():
            tensors[f"reward/{name}"] = torch.tensor(values, dtype=torch.float32)
        return Batch.from_dict(tensors=tensors, non_tensors={"reward_error": scores.errors})
