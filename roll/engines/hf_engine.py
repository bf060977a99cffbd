"""Inference engine on Hugging Face transformers models: batched sampling with per-token log-probs.

Its own decode loop over the model's forward and KV cache, rather than ``model.generate``:
rows leave the batch as they finish, each distinct prompt is prefilled once, sampling draws by
inverse CDF (roll/engines/sampling.py), and the log-prob of each sampled token is taken from the
raw logits divided by the temperature, i.e. the policy's distribution, not the top-k/top-p
processed one. With left padding and position ids that skip it, they match a teacher-forced
forward of the training engine to ~1e-6 for the same weights (tests/roll/engines). Measured on
SmolLM2-135M, 4 prompts x 8 samples x 32 tokens, fp32 on 2 cores: see bench/RESULTS.md.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from roll.devices.offload import OffloadManager
from roll.engines.base import GenerationOutput, SamplingParams
from roll.engines.fast_decode import LeanDecoder
from roll.engines.logprobs import position_ids_from_mask
from roll.engines.sampling import sample_next
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


class HFInferEngine:
    """Samples from a transformers causal LM with its own batched decode loop (KV cache)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        role: str = "rollout",
        *,
        lean: bool = True,
        track_offload: bool = True,
    ) -> None:
        """``lean``: decode with :class:`~roll.engines.fast_decode.LeanDecoder` when the model
        supports it (same logits, a fraction of the Python per step). ``track_offload``: False
        when another engine in this process owns the model's offload (a fused actor+rollout)."""
        self.model = model.eval()
        self.lean = LeanDecoder.build(model) if lean else None
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id
        eos_list = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if tokenizer.eos_token_id is not None:
            eos_list.append(tokenizer.eos_token_id)
        self.eos_ids = sorted(set(eos_list))
        self.offloader = OffloadManager(role, self.device)
        if track_offload:
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
        self.model.eval()  # a fused actor's model comes back from train_step in train mode
        input_ids, attention_mask = left_pad(prompt_ids, self.pad_id)
        try:
            response, logprobs, aborted = self._decode(
                input_ids.to(self.device), attention_mask.to(self.device), params, should_abort
            )
        finally:
            if self.lean is not None:
                self.lean.unpack()  # packed weight copies live only while generating
        lengths, reasons = response_lengths(response, set(self.eos_ids), params.stop, self.tokenizer)
        if aborted:
            reasons = ["abort" if r == "length" else r for r in reasons]
        positions = torch.arange(response.shape[1])[None, :]
        mask = positions < torch.tensor(lengths)[:, None]
        response = torch.where(mask, response, torch.full_like(response, self.pad_id))
        return GenerationOutput(
            response_ids=response,
            response_mask=mask,
            logprobs=torch.where(mask, logprobs, torch.zeros_like(logprobs)),
            finish_reasons=reasons,
        )

    def _decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        params: SamplingParams,
        should_abort: Callable[[], bool] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The decode loop: ([B, R] sampled ids, [B, R] float32 log-probs, aborted).

        A row that emits EOS or a stop string is finished; finished rows leave the batch (and the
        KV cache) once they are half of it (HF generate keeps decoding them as padding until the
        last row ends). Each distinct prompt is prefilled once and its cache expanded to its rows.
        Log-probs are of the sampled token under softmax(raw logits / temperature).
        """
        batch = input_ids.shape[0]
        temperature = params.temperature if params.temperature > 0 else 1.0
        response = torch.full((batch, params.max_new_tokens), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros((batch, params.max_new_tokens), dtype=torch.float32)
        lean = self.lean
        if lean is not None:
            logits, cache = self._lean_prefill(input_ids, attention_mask, params.max_new_tokens)
        else:
            logits, cache = self._prefill(input_ids, attention_mask)
        rows = torch.arange(batch)  # original index of each row in the decoding batch
        live = torch.ones(batch, dtype=torch.bool)  # rows of the batch that have not finished
        mask = attention_mask
        positions = position_ids_from_mask(attention_mask)[:, -1]
        eos = torch.tensor(self.eos_ids, dtype=torch.long)
        window = max((len(s) for s in params.stop), default=0) + 2
        steps, aborted = 0, False
        for t in range(params.max_new_tokens):
            tokens = sample_next(logits, params.temperature, params.top_k, params.top_p)
            z = logits.float() / temperature if temperature != 1.0 else logits.float()
            picked = z.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)
            tokens_cpu = tokens.cpu()
            alive = live.nonzero().squeeze(-1)
            targets = rows[alive]
            response[targets, t] = tokens_cpu[alive]
            logprobs[targets, t] = picked.float().cpu()[alive]
            steps = t + 1
            done = torch.isin(tokens_cpu, eos) & live
            if params.stop:
                tails = response[targets, max(0, steps - window) : steps].tolist()
                texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
                done[alive] |= torch.tensor([any(s in text for s in params.stop) for text in texts])
            live &= ~done
            if steps == params.max_new_tokens or not bool(live.any()):
                break
            if should_abort is not None and should_abort():
                aborted = True
                break
            # finished rows leave the batch and the KV cache once they are half of it: until then
            # they decode along (ignored), which costs less than copying the cache each time
            if 2 * int((~live).sum()) >= len(live):
                keep = live.nonzero().squeeze(-1)
                rows, live, keep = rows[keep], live[keep], keep.to(self.device)
                tokens, mask, positions = tokens[keep], mask[keep], positions[keep]
                if lean is not None:
                    cache.select(keep)
                else:
                    cache.batch_select_indices(keep)
            positions = positions + 1
            if lean is not None:
                logits = lean.step(cache, tokens, positions)
                continue
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=positions[:, None],
                cache=cache,
                use_cache=True,
            )
            logits, cache = out.logits[:, -1, :], out.cache
        return response[:, :steps], logprobs[:, :steps], aborted

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """([B, V] logits for each row's first response token, KV cache of the prompts). Each
        distinct prompt runs once and its cache is expanded to its rows (a GRPO group repeats a
        prompt group_size times)."""
        keys = torch.cat([input_ids, attention_mask], dim=1)
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
        width = input_ids.shape[1]
        ids, mask = unique[:, :width], unique[:, width:]
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            logits_to_keep=1,
            use_cache=True,
        )
        cache = out.cache
        cache.reorder_cache(inverse)  # unique rows come sorted: expand and restore the order
        return out.logits[inverse, -1, :], cache

    def _lean_prefill(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int
    ) -> tuple[torch.Tensor, Any]:
        """:meth:`_prefill` on the lean decoder: each distinct prompt once, then expanded."""
        keys = torch.cat([input_ids, attention_mask], dim=1)
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
        width = input_ids.shape[1]
        ids, mask = unique[:, :width], unique[:, width:]
        state, logits = self.lean.prefill(
            ids, mask, position_ids_from_mask(mask), max_new_tokens, decode_rows=input_ids.shape[0]
        )
        state.expand(inverse)
        return logits[inverse], state

    def update_weights(self, state: dict[str, np.ndarray]) -> int:
        self.offloader.require_active("update_weights")
        return load_numpy_state(self.model, state)

    def offload(self) -> dict[str, Any]:
        self.offloader.offload()
        return self.offloader.stats()

    def reload(self) -> dict[str, Any]:
        self.offloader.reload()
        return self.offloader.stats()
