"""The reward role: scores completions with registered reward functions (rules, custom).

A reward function that raises scores the sample 0 and the error is returned with the sample; the
run never crashes because of one bad completion.
"""

from __future__ import annotations

import torch

from roll.controller import Batch, Dispatch, Worker, register
from roll.imports import import_modules
from roll.rewards import RewardConfig, get_reward


class RewardWorker(Worker):
    def __init__(
        self, rank: int, world_size: int, role: str, *, reward: RewardConfig, imports: list[str]
    ) -> None:
        super().__init__(rank, world_size, role)
        import_modules(imports)
        self.terms = [(t.name, t.weight, t.params, get_reward(t.name)) for t in reward.functions]

    @register(Dispatch.SPLIT_BY_DP)
    def compute_rewards(self, batch: Batch) -> Batch:
        """non_tensors "response_text" and "row" → tensors "rewards" and "reward/<name>" [B]."""
        texts, rows = batch.non_tensors["response_text"], batch.non_tensors["row"]
        totals = torch.zeros(len(texts), dtype=torch.float32)
        per_term = {name: torch.zeros(len(texts), dtype=torch.float32) for name, *_ in self.terms}
        errors: list[str] = [""] * len(texts)
        for i, (text, row) in enumerate(zip(texts, rows, strict=True)):
            for name, weight, params, fn in self.terms:
                try:
                    score = float(fn(text, row, **params))
                except Exception as exc:  # noqa: BLE001 — a bad sample must not stop the run
                    score = 0.0
                    errors[i] += f"{name}: {type(exc).__name__}: {exc}; "
                per_term[name][i] = score
                totals[i] += weight * score
        tensors = {"rewards": totals, **{f"reward/{name}": v for name, v in per_term.items()}}
        return Batch.from_dict(tensors=tensors, non_tensors={"reward_error": errors})
