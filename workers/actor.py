"""The actor role: the policy being trained (torch engine), and the source of weight syncs."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from pathlib import Path

import ray
import torch
import torch.distributed as dist

from roll.algos import broadcast_to_tokens
from roll.algos.policy_loss import ActorLossParams, compute_actor_loss
from roll.controller import Batch, Dispatch, Worker, register
from roll.engines.config import OptimConfig
from roll.engines.logprobs import response_logprobs
from roll.engines.torch_engine import TorchTrainEngine
from roll.errors import ConfigError
from roll.models.config import ModelConfig
from roll.models.lora import export_hf
from workers.common import load_model, load_rng, mean_metrics, rank_folder, save_rng, setup_process


class ActorWorker(Worker):
    """Trains the policy with a clipped policy-gradient loss (GRPO family) on rollout batches."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        role: str,
        *,
        model: ModelConfig,
        train: OptimConfig,
        loss_params: ActorLossParams,
        temperature: float,
        total_optimizer_steps: int,
        seed: int,
        threads: int | None = None,
    ) -> None:
        super().__init__(rank, world_size, role)
        setup_process(train.threads or threads, seed + rank)
        self.base_loss_params: ActorLossParams = loss_params
        self.loss_params = loss_params
        self.temperature = temperature
        net, self.tokenizer = load_model(model, self.device)
        self.train_cfg = train
        self._engine_args = (net, train, total_optimizer_steps, role)
        # DeepSpeed needs the data-parallel group when it starts: with several ranks it is built in
        # init_distributed; alone it starts its own one-process group.
        self.engine = None if train.engine == "deepspeed" and world_size > 1 else self._build_engine()

    def _build_engine(self):
        net, train, total_steps, role = self._engine_args
        if train.engine == "deepspeed":
            try:
                from roll.engines.deepspeed_engine import DeepSpeedTrainEngine
            except ImportError as err:  # pragma: no cover - depends on the install
                raise ConfigError("train.engine: deepspeed needs pip install 'roll[deepspeed]'") from err
            return DeepSpeedTrainEngine(net, train, train.deepspeed, total_steps, role)
        return TorchTrainEngine(net, train, total_steps, role)

    # ---- data-parallel setup -------------------------------------------------------------------
    @register(Dispatch.RANK_ZERO)
    def rendezvous_address(self) -> str:
        """tcp:// address (this node, a free port) for torch.distributed's gloo/NCCL group."""
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    @register(Dispatch.ONE_TO_ALL)
    def init_distributed(self, address: str) -> None:
        backend = "nccl" if self.device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=address, rank=self.rank, world_size=self.world_size)
        if self.engine is None:
            self.engine = self._build_engine()

    # ---- compute -------------------------------------------------------------------------------
    @register(Dispatch.SPLIT_BY_DP)
    def compute_log_probs(self, batch: Batch) -> Batch:
        logprobs = self.engine.forward_logprobs(batch.tensors, self.temperature)
        return Batch.from_dict(tensors={"old_logprobs": logprobs * batch.tensors["response_mask"]})

    @register(Dispatch.SPLIT_BY_DP)
    def compute_ref_log_probs(self, batch: Batch) -> Batch:
        """With LoRA, the reference is this model with its adapters disabled (no second copy)."""
        logprobs = self.engine.reference_logprobs(batch.tensors, self.temperature)
        return Batch.from_dict(tensors={"ref_logprobs": logprobs * batch.tensors["response_mask"]})

    @register(Dispatch.SPLIT_BY_DP, collect=mean_metrics)
    def train_step(self, batch: Batch) -> dict[str, float]:
        """batch: input_ids, attention_mask, response_mask, old_logprobs (optional: without them
        the current policy's detached log-probs are used), advantages ([B] or [B, R]) and, with
        a KL loss, ref_logprobs; meta "kl_coef" overrides the loss's KL weight (adaptive KL)."""
        tensors = dict(batch.tensors)
        mask = tensors["response_mask"].float()
        adv = tensors.pop("advantages")
        tensors["token_advantages"] = adv * mask if adv.dim() == 2 else broadcast_to_tokens(adv, mask)
        tensors["row_weight"] = (mask.sum(-1) > 0).float()
        self.loss_params = self.base_loss_params
        if "kl_coef" in batch.meta and self.base_loss_params.use_kl_loss:
            self.loss_params = dataclasses.replace(self.base_loss_params, kl_coef=batch.meta["kl_coef"])
        weight_key = "response_mask" if self.loss_params.agg == "token-mean" else "row_weight"
        return self.engine.train_step(tensors, self._loss, weight_key)

    def _loss(self, model: torch.nn.Module, micro: dict[str, torch.Tensor]):
        logp, entropy = response_logprobs(
            model,
            micro["input_ids"],
            micro["attention_mask"],
            micro["response_mask"].shape[1],
            self.temperature,
            with_entropy=True,
        )
        if self.loss_params.entropy_coef == 0:
            entropy = entropy.detach()  # reported, not trained on
        # no old log-probs: one optimizer step per batch (train.single_update), so the current
        # weights are the ones the pipeline would have recomputed them with
        old = micro["old_logprobs"] if "old_logprobs" in micro else logp.detach()
        loss, stats = compute_actor_loss(
            logp,
            old,
            micro.get("ref_logprobs"),
            micro["token_advantages"],
            micro["response_mask"].float(),
            self.loss_params,
            entropy=entropy,
        )
        return loss, {k: float(v) for k, v in stats.items()}

    # ---- weights, checkpoints, offload ---------------------------------------------------------
    @register(Dispatch.ONE_TO_ALL, collect=lambda refs: refs[0])
    def publish_weights(self) -> list:
        """Put the weights (numpy) in the object store; returns [ref] so Ray passes the ref
        itself to the receivers instead of pulling the data through the driver. Every rank takes
        part (ZeRO-3 gathers the weights collectively); rank 0's copy is published."""
        state = self.engine.state_dict_numpy()
        return [ray.put(state)] if self.rank == 0 else []

    @register(Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, root: str) -> None:
        folder = rank_folder(root, self.role, self.rank)
        self.engine.save_checkpoint(self._engine_folder(root, folder))
        save_rng(folder)

    @register(Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, root: str) -> None:
        folder = rank_folder(root, self.role, self.rank)
        self.engine.load_checkpoint(self._engine_folder(root, folder))
        load_rng(folder)

    def _engine_folder(self, root: str, rank_dir: Path) -> Path:
        """DeepSpeed's ranks share one folder (each writes its shards); torch writes per rank."""
        return Path(root) / self.role / "deepspeed" if self.train_cfg.engine == "deepspeed" else rank_dir

    @register(Dispatch.ONE_TO_ALL, collect=lambda results: results[0])
    def save_pretrained(self, folder: str) -> None:
        """A plain Hugging Face folder (LoRA merged) that loads with transformers alone."""
        with self._whole_weights():
            if self.rank == 0:
                export_hf(self.engine.model, self.tokenizer, folder)

    def _whole_weights(self):
        """ZeRO-3 partitions parameters: gather them (collective) for exports and checksums."""
        if self.train_cfg.engine == "deepspeed":
            return self.engine.gathered_weights()
        return contextlib.nullcontext()

    @register(Dispatch.ONE_TO_ALL)
    def offload(self) -> dict:
        return self.engine.offload()

    @register(Dispatch.ONE_TO_ALL)
    def reload(self) -> dict:
        return self.engine.reload()

    @register(Dispatch.ONE_TO_ALL, collect=lambda results: results[0])
    def parameter_checksum(self) -> float:
        """Sum of all weights in float64: a cheap fingerprint for logs and tests."""
        with self._whole_weights():
            return float(sum(p.detach().double().sum() for p in self.engine.model.parameters()))
