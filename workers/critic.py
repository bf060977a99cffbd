"""The critic role (PPO): a value model V(s_t) on the policy's backbone, trained on GAE returns."""

from __future__ import annotations

import torch

from roll.algos.value_loss import value_loss
from roll.controller import Batch, Dispatch, Worker, register
from roll.engines.config import OptimConfig
from roll.engines.logprobs import position_ids_from_mask
from roll.engines.torch_engine import TorchTrainEngine
from roll.models.config import ModelConfig
from workers.common import load_model, load_rng, mean_metrics, rank_folder, save_rng, setup_process


class ValueModel(torch.nn.Module):
    """The causal LM's decoder with a scalar head instead of the LM head (head starts at 0)."""

    def __init__(self, causal_lm: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = causal_lm.get_decoder()
        self.head = torch.nn.Linear(causal_lm.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, response_len: int) -> torch.Tensor:
        """[B, R] values of the states before each response token (positions P-1 .. P+R-2)."""
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state
        return self.head(hidden[:, -response_len - 1 : -1]).squeeze(-1).float()


class CriticWorker(Worker):
    def __init__(
        self,
        rank: int,
        world_size: int,
        role: str,
        *,
        model: ModelConfig,
        train: OptimConfig,
        value_clip: float | None,
        total_optimizer_steps: int,
        seed: int,
        threads: int | None = None,
    ) -> None:
        super().__init__(rank, world_size, role)
        setup_process(train.threads or threads, seed + 2000 + rank)
        causal_lm, _ = load_model(model, self.device)
        self.engine = TorchTrainEngine(ValueModel(causal_lm), train, total_optimizer_steps, role)
        self.value_clip = value_clip

    @register(Dispatch.SPLIT_BY_DP)
    @torch.no_grad()
    def compute_values(self, batch: Batch) -> Batch:
        self.engine.offloader.require_active("compute_values")
        t, model = batch.tensors, self.engine.model.eval()
        size, parts = self.engine.cfg.micro_batch_size, []
        for start in range(0, len(batch), size):
            stop = start + size
            parts.append(
                model(
                    t["input_ids"][start:stop], t["attention_mask"][start:stop], t["response_mask"].shape[1]
                )
            )
        return Batch.from_dict(tensors={"values": torch.cat(parts) * t["response_mask"]})

    @register(Dispatch.SPLIT_BY_DP, collect=mean_metrics)
    def train_step(self, batch: Batch) -> dict[str, float]:
        """batch: input_ids, attention_mask, response_mask, values (old), returns."""
        return self.engine.train_step(dict(batch.tensors), self._loss, "response_mask")

    def _loss(self, model: torch.nn.Module, micro: dict[str, torch.Tensor]):
        mask = micro["response_mask"].float()
        values = model(micro["input_ids"], micro["attention_mask"], mask.shape[1])
        loss, stats = value_loss(values, micro["values"], micro["returns"], mask, clip_range=self.value_clip)
        stats = {f"critic/{k}": float(v) for k, v in stats.items()}
        stats["critic/loss"] = float(loss.detach())
        return loss, stats

    @register(Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, root: str) -> None:
        folder = rank_folder(root, self.role, self.rank)
        self.engine.save_checkpoint(folder)
        save_rng(folder)

    @register(Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, root: str) -> None:
        folder = rank_folder(root, self.role, self.rank)
        self.engine.load_checkpoint(folder)
        load_rng(folder)

    @register(Dispatch.ONE_TO_ALL)
    def offload(self) -> dict:
        return self.engine.offload()

    @register(Dispatch.ONE_TO_ALL)
    def reload(self) -> dict:
        return self.engine.reload()
