"""The rollout role: samples completions with per-token log-probs (HF engine or vLLM).

Two ways in: :meth:`RolloutWorker.generate` (SPLIT_BY_DP, a whole batch over every rank) and
:meth:`RolloutWorker.generate_chunk`, which the rollout scheduler (schedulers/) calls on one rank
per chunk of prompt groups. Chunks carry their own sampling seed and the policy version they need,
so a chunk rerun on another worker, or on this one after Ray restarted it, draws the same tokens
from the same weights; ``ray.cancel`` on a running chunk stops it between two decode steps.
"""

from __future__ import annotations

from typing import Callable

import ray
import torch

from roll.controller import Batch, Dispatch, Worker, register
from roll.engines.base import SamplingParams
from roll.engines.hf_engine import HFInferEngine
from roll.engines.vllm_engine import VLLMInferEngine
from roll.models import load_tokenizer
from roll.models.config import ModelConfig
from workers.common import load_model, load_rng, rank_folder, save_rng, setup_process


class StaleWeightsError(RuntimeError):
    """A chunk was sent for a policy version this worker does not hold."""


class RolloutWorker(Worker):
    """Generates responses for tokenised prompts; its weights follow the actor's."""

    def __init__(
        self,
        rank: int,
        world_size: int,
        role: str,
        *,
        model: ModelConfig,
        seed: int,
        threads: int | None = None,
        engine: str = "hf",
        logprobs_mode: str = "processed_logprobs",
        colocated: bool = True,
    ) -> None:
        super().__init__(rank, world_size, role)
        setup_process(threads, seed + 1000 + rank)
        if engine == "vllm":  # GPU hosts with the vllm extra; imported lazily
            self.tokenizer = load_tokenizer(model)
            self.engine = VLLMInferEngine.from_model_config(
                model,
                self.tokenizer,
                role,
                seed=seed + 1000 + rank,
                colocated=colocated,
                logprobs_mode=logprobs_mode,
            )
        else:
            net, self.tokenizer = load_model(model, self.device)
            self.engine = HFInferEngine(net, self.tokenizer, role)
        self.policy_version = -1  # no weights from the actor yet (also after a restart by Ray)

    @property
    def infer_engine(self) -> HFInferEngine | VLLMInferEngine:
        """The engine that generates (a fused actor+rollout worker's is not ``self.engine``)."""
        return self.engine

    @register(Dispatch.SPLIT_BY_DP)
    def generate(self, batch: Batch) -> Batch:
        """batch.non_tensors["prompt_ids"]: token id lists; meta: "sampling" (SamplingParams) and
        "prompt_width" (the left-padded prompt width shared by every rank, so chunks concat).

        Returns input_ids/attention_mask [B, P+R] (prompt left-padded, response right-padded to
        max_new_tokens), response_mask [B, R], rollout_logprobs [B, R], response_text, finish_reason.
        """
        return self._generate(batch, should_abort=None)

    @register(Dispatch.RANK_ZERO)
    def generate_chunk(self, batch: Batch) -> Batch:
        """One scheduler chunk (whole prompt groups), called on one rank with ``.on_rank``.

        meta: "sampling" and "prompt_width" (as :meth:`generate`), "seed" (the chunk's sampling
        seed) and "policy_version" (the weights version the scheduler last sent this worker).

        Returns the input batch with :meth:`generate`'s columns and non_tensors "policy_version"
        and "rollout_rank" [B] added. Raises :class:`StaleWeightsError` when this worker holds
        another version (Ray restarted it and it has its initial weights).
        """
        expected = batch.meta["policy_version"]
        if self.policy_version != expected:
            raise StaleWeightsError(
                f"rollout rank {self.rank} holds weights version {self.policy_version}, the chunk "
                f"needs {expected}; send update_weights first"
            )
        context = ray.get_runtime_context()
        # the chunk's own seed, not this process's RNG stream: same tokens wherever it runs
        with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
            torch.manual_seed(batch.meta["seed"])
            out = self._generate(batch, should_abort=context.is_canceled)
        out.non_tensors["policy_version"] = [expected] * len(out)
        out.non_tensors["rollout_rank"] = [self.rank] * len(out)
        return batch.union(out)

    def _generate(self, batch: Batch, should_abort: Callable[[], bool] | None) -> Batch:
        params: SamplingParams = batch.meta["sampling"]
        width: int = batch.meta["prompt_width"]
        prompts = batch.non_tensors["prompt_ids"]
        engine = self.infer_engine
        if isinstance(engine, HFInferEngine):  # vLLM aborts through its own request ids
            out = engine.generate(prompts, params, should_abort=should_abort)
        else:
            out = engine.generate(prompts, params)
        rows, r_max = len(prompts), params.max_new_tokens
        pad = engine.pad_id
        response = torch.full((rows, r_max), pad, dtype=torch.long)
        resp_mask = torch.zeros((rows, r_max), dtype=torch.bool)
        logprobs = torch.zeros((rows, r_max), dtype=torch.float32)
        got = out.response_ids.shape[1]
        response[:, :got], resp_mask[:, :got], logprobs[:, :got] = (
            out.response_ids,
            out.response_mask,
            out.logprobs,
        )
        prompt_ids = torch.full((rows, width), pad, dtype=torch.long)
        prompt_mask = torch.zeros((rows, width), dtype=torch.long)
        for i, ids in enumerate(prompts):
            prompt_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            prompt_mask[i, width - len(ids) :] = 1
        texts = self.tokenizer.batch_decode(
            [row[: int(m.sum())] for row, m in zip(response.tolist(), resp_mask, strict=True)],
            skip_special_tokens=True,
        )
        return Batch.from_dict(
            tensors={
                "input_ids": torch.cat([prompt_ids, response], dim=1),
                "attention_mask": torch.cat([prompt_mask, resp_mask.long()], dim=1),
                "response_mask": resp_mask,
                "rollout_logprobs": logprobs,
            },
            non_tensors={"response_text": texts, "finish_reason": out.finish_reasons},
        )

    @register(Dispatch.ONE_TO_ALL)
    def update_weights(self, refs: list, version: int = 0) -> int:
        """Load the actor's weights from the object store ([ref] from publish_weights); they are
        policy ``version`` (the actor's optimizer steps so far, counted in training steps)."""
        moved = self.infer_engine.update_weights(ray.get(refs[0]))
        self.policy_version = version
        return moved

    @register(Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, root: str) -> None:
        save_rng(rank_folder(root, self.role, self.rank))

    @register(Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, root: str) -> None:
        load_rng(rank_folder(root, self.role, self.rank))

    @register(Dispatch.ONE_TO_ALL)
    def offload(self) -> dict:
        return self.engine.offload()

    @register(Dispatch.ONE_TO_ALL)
    def reload(self) -> dict:
        return self.engine.reload()
