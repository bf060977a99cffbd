"""Inference engine on vLLM: paged KV cache, continuous batching, sleep mode for colocation.

GPU hosts only. ``vllm`` pins a CUDA torch and transformers<5.23, so it is the optional extra
``pip install -e '.[vllm]'`` and is imported inside :class:`VLLMInferEngine`'s constructor, never at
module import. Everything that does not talk to vLLM is a plain function here, tested on CPU
(tests/roll/engines/test_vllm_adapter.py): sampling kwargs, prompts, output extraction, weight
names and dtypes, the sleep state machine. Written against vLLM's V1 engine, >= 0.10.2 (the first
with ``logprobs_mode``); each call into vLLM whose spelling has moved between releases lives in one
small ``_vllm_*`` function at the end of this module.

Log-probs. ``GenerationOutput.logprobs`` is log p(token) under softmax(logits / T): the policy at
the sampling temperature, before top-k/top-p truncation (HFInferEngine's definition, and what the
actor recomputes). vLLM returns one of (engine argument ``logprobs_mode``):

- ``raw_logprobs`` (vLLM's default): log_softmax of the model's logits before penalties,
  temperature and top-k/top-p, i.e. the policy at T = 1;
- ``processed_logprobs``: after temperature and top-k/top-p (truncated tokens dropped, the rest
  renormalised); for greedy requests, the logits at T = 1.

So ``processed_logprobs`` is exact when top_k == 0 and top_p == 1 (any temperature, greedy too),
``raw_logprobs`` when T == 1 or greedy, and neither when T != 1 *and* top-k/top-p truncate.
:func:`choose_logprobs_mode` picks the exact mode from the rollout settings (the engine is built
with it) and ``generate`` refuses settings its mode cannot serve. No penalty, logit bias or bad
word is ever set, and ``generation_config="vllm"`` keeps the model folder's sampling defaults out.
To check on a GPU host: ``python bench/gpu_check.py --phase logprobs`` samples with this engine
and recomputes the same tokens with a teacher-forced HF forward; the mean |difference| should be
kernel noise (~1e-3 in bf16), not a systematic offset. In a run, ``algo.recompute_old_logprobs:
true`` makes the actor recompute them regardless.

Ends of responses match HFInferEngine: EOS (the generation config's and the tokenizer's, passed as
``stop_token_ids``) and the token that completes a stop string are kept and masked in; the rest of
the row is ``pad_id`` with mask False and log-prob 0.

Process and memory. ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps vLLM's engine core in this process
(the Ray worker): weight updates hand CPU tensors to the model's ``load_weights`` without pickling
them to another process, and sleep frees this process's device memory. When colocated, the engine
is built with ``enable_sleep_mode`` and ``offload()``/``reload()`` are ``sleep(level=1)`` (weights
to host memory, KV cache dropped) and ``wake_up()``.

Aborts. ``generate`` drives the engine step by step (``add_request`` + ``step``) rather than
``LLM.generate``, so request ids are ours and an abort takes effect between two steps. ``abort`` and
``abort_all`` are thread-safe; they matter for a ``generate`` running on another thread (a Ray
actor with ``max_concurrency > 1``). Aborted rows keep the tokens generated so far, finish reason
``"abort"``.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from roll.devices.offload import OffloadState, OffloadStateMachine
from roll.engines.base import GenerationOutput, SamplingParams
from roll.errors import ConfigError, ModelSourceError
from roll.models.config import ModelConfig

VLLM_MISSING = (
    "engine: vllm needs the vllm extra on a GPU host: pip install -e '.[vllm]'; use engine: hf on CPU"
)
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EMBED_NAME = "model.embed_tokens.weight"  # Llama / Qwen2 family, as in HF checkpoints
LM_HEAD_NAME = "lm_head.weight"


# ---- log-probs mode ---------------------------------------------------------------------------
def choose_logprobs_mode(temperature: float, top_k: int, top_p: float) -> str:
    """The vLLM ``logprobs_mode`` whose values are the policy's log-probs for these settings.

    Raises:
        ConfigError: T != 1 with top-k/top-p truncation; no vLLM mode gives the policy's values.
    """
    if top_k == 0 and top_p >= 1.0:
        return "processed_logprobs"
    if temperature in (0.0, 1.0):
        return "raw_logprobs"
    raise ConfigError(_inexact_message(temperature, top_k, top_p))


def check_logprobs_mode(mode: str, params: SamplingParams) -> None:
    """Raise ConfigError unless ``mode`` yields the policy's log-probs under ``params``."""
    greedy = params.temperature == 0
    if mode == "processed_logprobs":
        exact = greedy or (params.top_k == 0 and params.top_p >= 1.0)
    else:
        exact = greedy or params.temperature == 1.0
    if not exact:
        raise ConfigError(_inexact_message(params.temperature, params.top_k, params.top_p, mode))


def _inexact_message(temperature: float, top_k: int, top_p: float, mode: str | None = None) -> str:
    built = f" (this engine was built with logprobs_mode={mode})" if mode else ""
    return (
        f"rollout: vLLM cannot return the policy's log-probs at temperature {temperature} with "
        f"top_k={top_k}, top_p={top_p}{built}: its raw log-probs are at temperature 1 and its "
        "processed ones are after top-k/top-p truncation. Set rollout.top_k: 0 and rollout.top_p: 1.0, "
        "or rollout.temperature: 1.0, or use rollout.engine: hf"
    )


# ---- requests and outputs ---------------------------------------------------------------------
def build_vllm_sampling_kwargs(params: SamplingParams, eos_ids: Iterable[int]) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for one completion per prompt.

    ``logprobs=0`` returns the sampled token's log-prob alone; ``top_k=0`` disables top-k;
    detokenizing is needed only to find stop strings.
    """
    greedy = params.temperature == 0
    return {
        "n": 1,
        "max_tokens": params.max_new_tokens,
        "temperature": 0.0 if greedy else float(params.temperature),
        "top_p": 1.0 if greedy else float(params.top_p),
        "top_k": 0 if greedy else int(params.top_k),
        "stop_token_ids": sorted(set(eos_ids)),
        "stop": list(params.stop),
        "include_stop_str_in_output": True,
        "skip_special_tokens": True,
        "detokenize": bool(params.stop),
        "logprobs": 0,
    }


def build_prompts(prompt_ids: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """``TokensPrompt`` dicts (``{"prompt_token_ids": [...]}``), one per prompt, in order."""
    prompts = []
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} is empty; vLLM needs at least one prompt token")
        prompts.append({"prompt_token_ids": [int(t) for t in ids]})
    return prompts


def extract_outputs(
    request_outputs: Sequence[Any],
    max_new_tokens: int,
    pad_id: int,
    eos_ids: Iterable[int],
    stop: Sequence[str] = (),
) -> GenerationOutput:
    """vLLM ``RequestOutput``s (one per prompt, in prompt order) → a right-padded GenerationOutput.

    Reads ``outputs[0].token_ids``, ``.logprobs`` (per position a dict token id → ``Logprob`` with
    ``.logprob``), ``.finish_reason`` and ``.stop_reason``. Each response ends at its first EOS
    (kept) or at vLLM's own stop; width R is the longest response. Reasons: "stop" (EOS, stop
    token, stop string), "length", "abort" (aborted or never finished).
    """
    eos = set(eos_ids)
    rows = [
        _completion_row(i, r.outputs[0], max_new_tokens, eos, stop) for i, r in enumerate(request_outputs)
    ]
    width = max((len(tokens) for tokens, _, _ in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    logprobs = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (tokens, lps, _) in enumerate(rows):
        ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[i, : len(tokens)] = True
        logprobs[i, : len(tokens)] = torch.tensor(lps, dtype=torch.float32)
    return GenerationOutput(ids, mask, logprobs, [reason for _, _, reason in rows])


def _completion_row(
    index: int, completion: Any, max_new_tokens: int, eos: set[int], stop: Sequence[str]
) -> tuple[list[int], list[float], str]:
    """Tokens up to the end of one response, their log-probs and the finish reason."""
    tokens = [int(t) for t in completion.token_ids]
    reason = {"stop": "stop", "length": "length"}.get(completion.finish_reason, "abort")
    if reason == "stop" and isinstance(completion.stop_reason, str) and completion.stop_reason not in stop:
        raise ValueError(
            f"response {index} stopped on {completion.stop_reason!r}, which is not a requested stop "
            f"string {tuple(stop)}; the engine must not add stop strings of its own"
        )
    if len(tokens) > max_new_tokens:
        tokens, reason = tokens[:max_new_tokens], "length"
    for t, token in enumerate(tokens):
        if token in eos:
            tokens, reason = tokens[: t + 1], "stop"
            break
    if tokens and completion.logprobs is None:
        raise ValueError(f"response {index} has no log-probs; request them with logprobs=0")
    logprobs = []
    for t, token in enumerate(tokens):
        position = completion.logprobs[t]
        if token not in position:
            raise ValueError(f"response {index}, position {t}: no log-prob for the sampled token {token}")
        logprobs.append(float(position[token].logprob))
    return tokens, logprobs, reason


# ---- weights ----------------------------------------------------------------------------------
def hf_to_vllm_weight_items(
    state: dict[str, np.ndarray], dtype: torch.dtype, *, tie_word_embeddings: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs for vLLM's ``model.load_weights`` from an HF-named numpy state dict.

    vLLM's loaders take HF checkpoint names and fuse q/k/v and gate/up themselves; here names lose
    a wrapper's ``module.`` prefix, int16 arrays (bf16 bit patterns, roll.engines.weights) are read
    back as bf16, and every tensor is cast to ``dtype``, the engine's. With tied embeddings vLLM
    has no lm_head of its own: ``lm_head.weight`` is dropped, or sent as the embedding when the
    state lacks it.

    Raises:
        KeyError: the model does not tie its embeddings and the state has no ``lm_head.weight``.
    """
    names = {name.removeprefix("module."): name for name in state}
    if not tie_word_embeddings and LM_HEAD_NAME not in names:
        raise KeyError(
            f"weight update lacks {LM_HEAD_NAME!r} and the model does not tie it to the embeddings; "
            "publish the full state dict"
        )
    for name, key in names.items():
        if tie_word_embeddings and name == LM_HEAD_NAME:
            if EMBED_NAME in names:
                continue
            name = EMBED_NAME
        yield name, _array_to_tensor(state[key], dtype)


def _array_to_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only object-store arrays: vLLM only copies from them
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(np.asarray(array))
    if tensor.dtype == torch.int16:
        tensor = tensor.view(torch.bfloat16)
    return tensor.to(dtype)


# ---- sleep state machine ----------------------------------------------------------------------
class EngineSleepState(OffloadStateMachine):
    """ACTIVE <-> OFFLOADED for an engine that frees its own device memory (vLLM sleep/wake_up).

    The same state machine and ``stats()`` keys as ``OffloadManager``: ``require_active`` refuses
    work while OFFLOADED, and a transition that fails leaves the state unchanged. Without a
    ``sleep``/``wake`` pair (an engine that is not colocated) the transitions are bookkeeping only.
    Bytes are the device memory the sleep released (weights backed up to host, KV cache dropped)
    and the wake took back, read with ``free_device_bytes`` (0 when it is None).
    """

    def __init__(
        self,
        name: str,
        sleep: Callable[[], None] | None = None,
        wake: Callable[[], None] | None = None,
        free_device_bytes: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(name)
        self._sleep, self._wake, self._free = sleep, wake, free_device_bytes or (lambda: 0)

    def offload(self) -> int:
        """ACTIVE -> OFFLOADED (calls ``sleep``). Returns the device bytes released."""
        self._require(OffloadState.ACTIVE, "offload", "already offloaded; call reload() first")
        start, before = time.perf_counter(), self._free()
        if self._sleep is not None:
            self._sleep()
        freed = max(0, self._free() - before)
        self.state = OffloadState.OFFLOADED
        self._offloaded_bytes = freed
        self._bytes_moved_total += freed
        self._total_offloads += 1
        self._last_offload_s = time.perf_counter() - start
        return freed

    def reload(self) -> int:
        """OFFLOADED -> ACTIVE (calls ``wake``). Returns the device bytes taken back."""
        self._require(OffloadState.OFFLOADED, "reload", "nothing is offloaded; call offload() first")
        start, before = time.perf_counter(), self._free()
        if self._wake is not None:
            self._wake()
        taken = max(0, before - self._free())
        self.state = OffloadState.ACTIVE
        self._offloaded_bytes = 0
        self._bytes_moved_total += taken
        self._total_reloads += 1
        self._last_reload_s = time.perf_counter() - start
        return taken


# ---- engine -----------------------------------------------------------------------------------
def import_vllm() -> Any:
    """The ``vllm`` module, or a ModelSourceError that says how to get it."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core in this process
    try:
        import vllm
    except ImportError as err:
        raise ModelSourceError(f"{VLLM_MISSING} (import vllm failed: {err})") from err
    return vllm


def model_folder(cfg: ModelConfig) -> Path:
    """The Hugging Face folder vLLM loads for ``cfg`` (the smollm2 cache is made by the driver)."""
    if cfg.source == "tiny":
        raise ModelSourceError(
            "engine: vllm loads the model from a Hugging Face folder and model.source 'tiny' has none; "
            "use model.source hf or smollm2, or engine: hf"
        )
    folder = Path(str(cfg.path)).expanduser() if cfg.source == "hf" else cfg.smollm2_cache_dir
    if not (folder / "config.json").is_file():
        raise ModelSourceError(
            f"engine: vllm needs a converted model folder at {folder} (no config.json); the driver "
            "prepares it (roll.models.sources.prepare_model_source) before starting workers"
        )
    return folder


def build_llm_kwargs(
    folder: Path,
    *,
    dtype: str,
    seed: int,
    colocated: bool,
    gpu_memory_utilization: float,
    logprobs_mode: str,
    max_model_len: int | None,
    enforce_eager: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` (engine arguments) for one single-device engine."""
    if logprobs_mode not in LOGPROBS_MODES:
        raise ConfigError(f"logprobs_mode {logprobs_mode!r}: choose one of {', '.join(LOGPROBS_MODES)}")
    kwargs: dict[str, Any] = {
        "model": str(folder),
        "tokenizer": str(folder),
        "dtype": VLLM_DTYPES[dtype],
        "seed": seed,
        "tensor_parallel_size": 1,
        "distributed_executor_backend": "uni",
        "enable_sleep_mode": colocated,
        "gpu_memory_utilization": gpu_memory_utilization,
        "logprobs_mode": logprobs_mode,
        "generation_config": "vllm",
        "enforce_eager": enforce_eager,
        "disable_log_stats": True,
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    return kwargs | (extra or {})


def eos_token_ids(generation_eos: int | list[int] | None, tokenizer_eos: int | None) -> list[int]:
    """EOS ids as HFInferEngine collects them: the generation config's plus the tokenizer's."""
    ids = generation_eos if isinstance(generation_eos, list) else [generation_eos]
    return sorted({int(i) for i in [*ids, tokenizer_eos] if i is not None})


def _folder_eos_and_tying(folder: Path) -> tuple[int | list[int] | None, bool]:
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    try:
        generation = GenerationConfig.from_pretrained(folder, local_files_only=True)
    except OSError:  # no generation_config.json: HF derives it from config.json
        generation = GenerationConfig.from_model_config(config)
    return generation.eos_token_id, bool(config.tie_word_embeddings)


class VLLMInferEngine:
    """Samples with vLLM; same interface as HFInferEngine (see the module docstring).

    Args:
        model_path: Hugging Face model folder (config.json, weights, tokenizer files).
        tokenizer: the job's tokenizer (pad and EOS ids; prompts arrive as token ids).
        role: role name, used in error messages.
        dtype: "fp32" or "bf16", the weights' precision in vLLM.
        colocated: build with sleep mode so offload()/reload() free and retake the device.
        gpu_memory_utilization: fraction of the device vLLM may take (weights + KV cache).
        logprobs_mode: "processed_logprobs" or "raw_logprobs"; see :func:`choose_logprobs_mode`.
        engine_kwargs: further ``vllm.LLM`` engine arguments (override the defaults).
    """

    def __init__(
        self,
        model_path: str | Path,
        tokenizer: Any,
        role: str = "rollout",
        *,
        dtype: str = "bf16",
        seed: int = 0,
        colocated: bool = True,
        gpu_memory_utilization: float = 0.3,
        logprobs_mode: str = "processed_logprobs",
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._vllm = import_vllm()
        folder = Path(model_path)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        generation_eos, self.tie_word_embeddings = _folder_eos_and_tying(folder)
        self.eos_ids = eos_token_ids(generation_eos, tokenizer.eos_token_id)
        self.dtype = TORCH_DTYPES[dtype]
        self.logprobs_mode = logprobs_mode
        kwargs = build_llm_kwargs(
            folder,
            dtype=dtype,
            seed=seed,
            colocated=colocated,
            gpu_memory_utilization=gpu_memory_utilization,
            logprobs_mode=logprobs_mode,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            extra=engine_kwargs,
        )
        self.llm = self._vllm.LLM(**kwargs)
        self.sleep_state = EngineSleepState(
            role,
            sleep=(lambda: _vllm_sleep(self.llm)) if colocated else None,
            wake=(lambda: _vllm_wake_up(self.llm)) if colocated else None,
            free_device_bytes=(lambda: torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None,
        )
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._pending_aborts: set[str] = set()
        self._calls = 0

    @classmethod
    def from_model_config(
        cls, cfg: ModelConfig, tokenizer: Any, role: str = "rollout", **kwargs: Any
    ) -> VLLMInferEngine:
        """The engine for a job's ``model:`` section (source hf or smollm2, in its dtype)."""
        return cls(model_folder(cfg), tokenizer, role, dtype=cfg.dtype, **kwargs)

    def generate(
        self, prompt_ids: list[list[int]], params: SamplingParams, request_ids: list[str] | None = None
    ) -> GenerationOutput:
        """One completion per prompt, in prompt order (see GenerationOutput for the layout)."""
        self.sleep_state.require_active("generate")
        check_logprobs_mode(self.logprobs_mode, params)
        if request_ids is None:
            self._calls += 1
            request_ids = [f"roll-{self._calls}-{i}" for i in range(len(prompt_ids))]
        if len(request_ids) != len(prompt_ids) or len(set(request_ids)) != len(request_ids):
            raise ValueError("request_ids must be unique and one per prompt")
        sampling = self._vllm.SamplingParams(**build_vllm_sampling_kwargs(params, self.eos_ids))
        latest = self._run(request_ids, build_prompts(prompt_ids), sampling)
        rows = [latest.get(rid, _NO_OUTPUT) for rid in request_ids]
        return extract_outputs(rows, params.max_new_tokens, self.pad_id, self.eos_ids, params.stop)

    def _run(self, request_ids: list[str], prompts: list[dict], sampling: Any) -> dict[str, Any]:
        """Step the engine until every request has finished or was aborted; last output per id.

        Outputs are cumulative (vLLM's default output kind), so an aborted request's last output
        holds everything it generated.
        """
        own: dict[str, str] = {}  # vLLM's id (external or internal) -> ours
        latest: dict[str, Any] = {}
        with self._lock:
            self._in_flight, self._pending_aborts = set(request_ids), set()
        try:
            for rid, prompt in zip(request_ids, prompts, strict=True):
                internal = _vllm_add_request(self.llm, rid, prompt, sampling)
                own[rid] = rid
                if internal:
                    own[internal] = rid
            while _vllm_has_unfinished(self.llm):
                aborts = self._take_aborts()
                if aborts:
                    _vllm_abort(self.llm, aborts)
                for output in _vllm_step(self.llm):
                    rid = own.get(output.request_id)
                    if rid is not None and output.outputs:
                        latest[rid] = output
                        if output.finished:
                            with self._lock:
                                self._in_flight.discard(rid)
        except BaseException:
            _vllm_abort(self.llm, request_ids)  # leave nothing of ours running in the engine
            raise
        finally:
            with self._lock:
                self._in_flight, self._pending_aborts = set(), set()
        return latest

    def abort(self, request_ids: Iterable[str]) -> int:
        """Abort these in-flight requests at the next engine step; returns how many were in flight."""
        with self._lock:
            hits = self._in_flight.intersection(request_ids)
            self._pending_aborts |= hits
        return len(hits)

    def abort_all(self) -> int:
        """Abort every in-flight request at the next engine step; returns how many."""
        with self._lock:
            self._pending_aborts |= self._in_flight
            return len(self._in_flight)

    def _take_aborts(self) -> list[str]:
        with self._lock:
            ids = sorted(self._pending_aborts)
            self._in_flight -= self._pending_aborts
            self._pending_aborts = set()
        return ids

    def update_weights(self, state: dict[str, np.ndarray]) -> int:
        """Load HF-named numpy weights into vLLM's model; returns the bytes loaded."""
        self.sleep_state.require_active("update_weights")
        items = list(hf_to_vllm_weight_items(state, self.dtype, tie_word_embeddings=self.tie_word_embeddings))
        _vllm_load_weights(self.llm, items)
        _vllm_reset_prefix_cache(self.llm)  # cached KV blocks were computed with the old weights
        return sum(t.numel() * t.element_size() for _, t in items)

    def offload(self) -> dict[str, Any]:
        self.sleep_state.offload()
        return self.sleep_state.stats()

    def reload(self) -> dict[str, Any]:
        self.sleep_state.reload()
        return self.sleep_state.stats()


# A request that produced no output before it was aborted.
_NO_OUTPUT = SimpleNamespace(
    outputs=[SimpleNamespace(token_ids=[], logprobs=[], finish_reason="abort", stop_reason=None)]
)


# ---- the calls into vLLM (one function each, so a release that moves one changes one place) ------
def _vllm_add_request(llm: Any, request_id: str, prompt: dict, sampling: Any) -> str | None:
    """Queue a request; returns vLLM's internal id (our id plus a random suffix since ~0.11)."""
    return llm.llm_engine.add_request(request_id, prompt, sampling)


def _vllm_step(llm: Any) -> list[Any]:
    return llm.llm_engine.step()


def _vllm_has_unfinished(llm: Any) -> bool:
    return llm.llm_engine.has_unfinished_requests()


def _vllm_abort(llm: Any, request_ids: list[str]) -> None:
    llm.llm_engine.abort_request(list(request_ids))  # by our (external) ids


def _vllm_load_weights(llm: Any, items: list[tuple[str, torch.Tensor]]) -> None:
    llm.collective_rpc(_load_weights_on_worker, args=(items,))


def _load_weights_on_worker(worker: Any, items: list[tuple[str, torch.Tensor]]) -> None:
    worker.model_runner.model.load_weights(weights=items)


def _vllm_reset_prefix_cache(llm: Any) -> None:
    llm.reset_prefix_cache()


def _vllm_sleep(llm: Any) -> None:
    llm.sleep(level=1)


def _vllm_wake_up(llm: Any) -> None:
    llm.wake_up()
