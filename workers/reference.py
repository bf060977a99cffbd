"""The reference role: a frozen copy of the initial policy, for the KL penalty."""

from __future__ import annotations

import torch

from roll.controller import Batch, Dispatch, Worker, register
from roll.devices.offload import OffloadManager
from roll.engines.logprobs import response_logprobs
from roll.models.config import ModelConfig
from workers.common import load_model, setup_process


class ReferenceWorker(Worker):
    """Teacher-forced log-probs of responses under the frozen initial weights."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        role: str,
        *,
        model: ModelConfig,
        temperature: float,
        micro_batch_size: int,
        seed: int,
        threads: int | None = None,
    ) -> None:
        super().__init__(rank, world_size, role)
        setup_process(threads, seed + rank)
        self.model, _ = load_model(model, self.device)
        self.model.eval().requires_grad_(False)
        self.temperature = temperature
        self.micro_batch_size = micro_batch_size
        self.offloader = OffloadManager(role, self.device)
        self.offloader.track_module("model", self.model)

    @register(Dispatch.SPLIT_BY_DP)
    @torch.no_grad()
    def compute_ref_log_probs(self, batch: Batch) -> Batch:
        self.offloader.require_active("compute_ref_log_probs")
        t = batch.tensors
        parts = []
        for start in range(0, len(batch), self.micro_batch_size):
            stop = start + self.micro_batch_size
            parts.append(
                response_logprobs(
                    self.model,
                    t["input_ids"][start:stop].to(self.device),
                    t["attention_mask"][start:stop].to(self.device),
                    t["response_mask"].shape[1],
                    self.temperature,
                ).cpu()
            )
        logprobs = torch.cat(parts) * t["response_mask"]
        return Batch.from_dict(tensors={"ref_logprobs": logprobs})

    @register(Dispatch.ONE_TO_ALL)
    def offload(self) -> dict:
        self.offloader.offload()
        return self.offloader.stats()

    @register(Dispatch.ONE_TO_ALL)
    def reload(self) -> dict:
        self.offloader.reload()
        return self.offloader.stats()
