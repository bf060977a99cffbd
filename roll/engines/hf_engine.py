"""Inference engine on Hugging Face ``generate``: batched sampling with per-token log-probs.

Log-probs come from the raw logits (``output_logits=True``) divided by the temperature, i.e. the
policy's distribution, not from ``output_scores`` (which are after top-k/top-p processing). With
left padding and position ids that skip it, they match a teacher-forced forward of the training
engine to ~1e-6 for the same weights (tests/roll/engines).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from roll.devices.offload import OffloadManager
from roll.engines.base import GenerationOutput, SamplingParams
from roll.engines.logprobs import position_ids_from_mask, token_logprobs
from roll.engines.weights import load_numpy_state


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, P] input ids and attention mask, shorter prompts padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def response_lengths(
    response_ids: torch.Tensor, eos_ids: set[int], stop: tuple[str, ...], tokenizer: Any
) -> tuple[list[int], list[str]]:
    """Length of each response up to and including its first EOS or stop string."""
    lengths, reasons = [], []
    width = response_ids.shape[1]
    for row in response_ids.tolist():
        length, reason = width, "length"
        for t, token in enumerate(row):
            if token in eos_ids:
                length, reason = t + 1, "stop"
                break
        if stop:  # a stop string may end the response before EOS (it is kept, like EOS)
            for t in range(1, length + 1):
                text = tokenizer.decode(row[:t], skip_special_tokens=True)
                if any(s in text for s in stop):
                    length, reason = t, "stop"
                    break
        lengths.append(length)
        reasons.append(reason)
    return lengths, reasons


class StopOnStrings(StoppingCriteria):
    """Ends a row once its response text contains a stop string.

    HF's own ``stop_strings`` precomputes token/byte tables that assume a byte-level BPE and
    fails on other tokenizers (e.g. word-level ones); decoding the tail of each response works
    with any tokenizer. A stop string of c characters spans at most c tokens, so only the last
    c + 2 tokens are decoded each step.
    """

    def __init__(self, stops: tuple[str, ...], prompt_width: int, tokenizer: Any) -> None:
        self.stops = stops
        self.prompt_width = prompt_width
        self.tokenizer = tokenizer
        self.window = max(len(s) for s in stops) + 2

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        tails = input_ids[:, self.prompt_width :][:, -self.window :].tolist()
        texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)


class StopOnAbort(StoppingCriteria):
    """Ends every row once ``should_abort()`` is true; checked between two decode steps.

    The rollout worker passes Ray's cancellation flag (``ray.cancel`` on a running actor task),
    so a scheduler can cut the long tail of a batch without killing the worker.
    """

    def __init__(self, should_abort: Callable[[], bool]) -> None:
        self.should_abort = should_abort
        self.fired = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.fired = self.fired or bool(self.should_abort())
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


class HFInferEngine:
    """Samples from ``model`` with HF generate (KV cache, batched)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, role: str = "rollout") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        eos_list = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if tokenizer.eos_token_id is not None:
            eos_list.append(tokenizer.eos_token_id)
        self.eos_ids = sorted(set(eos_list))
        self.offloader = OffloadManager(role, self.device)
        self.offloader.track_module("model", model)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        params: SamplingParams,
        should_abort: Callable[[], bool] | None = None,
    ) -> GenerationOutput:
        """Sample one response per prompt. ``should_abort`` is polled between decode steps; once
        it returns True generation stops and every unfinished row ends with reason "abort"."""
        self.offloader.require_active("generate")
        input_ids, attention_mask = left_pad(prompt_ids, self.pad_id)
        greedy = params.temperature == 0
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            max_new_tokens=params.max_new_tokens,
            do_sample=not greedy,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            output_logits=True,
            return_dict_in_generate=True,
        )
        if not greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        criteria = []
        if params.stop:
            criteria.append(StopOnStrings(params.stop, input_ids.shape[1], self.tokenizer))
        abort = StopOnAbort(should_abort) if should_abort is not None else None
        if abort is not None:
            criteria.append(abort)
        if criteria:
            kwargs.update(stopping_criteria=StoppingCriteriaList(criteria))
        kwargs.update(self._shared_prefill(kwargs["input_ids"], kwargs["attention_mask"]))
        out = self.model.generate(**kwargs)
        response = out.sequences[:, input_ids.shape[1] :].cpu()
        logits = torch.stack(out.logits, dim=1)  # [B, R, V] raw
        logprobs = token_logprobs(logits, response.to(logits.device), 1.0 if greedy else params.temperature)
        lengths, reasons = response_lengths(response, set(self.eos_ids), params.stop, self.tokenizer)
        if abort is not None and abort.fired and response.shape[1] < params.max_new_tokens:
            reasons = ["abort" if r == "length" else r for r in reasons]
        positions = torch.arange(response.shape[1])[None, :]
        mask = positions < torch.tensor(lengths)[:, None]
        response = torch.where(mask, response, torch.full_like(response, self.pad_id))
        return GenerationOutput(
            response_ids=response,
            response_mask=mask,
            logprobs=torch.where(mask, logprobs.cpu().float(), torch.zeros_like(logprobs.cpu().float())),
            finish_reasons=reasons,
        )

    def _shared_prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, Any]:
        """{"cache": KV cache of every prompt but its last token}, computed once per distinct
        prompt and expanded to its rows (a GRPO group repeats each prompt group_size times);
        generate then runs only the last prompt token per row. {} when no prompt repeats."""
        keys = torch.cat([input_ids, attention_mask], dim=1)
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
        width = input_ids.shape[1]
        if len(unique) == len(keys) or width < 2:
            return {}
        ids, mask = unique[:, : width - 1], unique[:, width:-1]
        cache = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            logits_to_keep=1,
            use_cache=True,
        ).cache
        cache.reorder_cache(inverse)
        return {"cache": cache}

    def update_weights(self, state: dict[str, np.ndarray]) -> int:
        self.offloader.require_active("update_weights")
        return load_numpy_state(self.model, state)

    def offload(self) -> dict[str, Any]:
        self.offloader.offload()
        return self.offloader.stats()

    def reload(self) -> dict[str, Any]:
        self.offloader.reload()
        return self.offloader.stats()
