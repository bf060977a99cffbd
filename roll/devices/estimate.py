"""Memory estimates of roles, for the automatic device planner (``roll.devices.auto``).

Plain numbers in, bytes out: this package knows neither pipelines nor model classes. A pipeline
describes each role with a ``RoleNeeds`` (parameter count, precision, ZeRO stage, LoRA, KV cache)
and ``estimate_memory`` says what ONE worker of that role holds on its device.

Bytes per device, for P parameters of b bytes each (bf16: 2, fp32: 4) over dp workers:

- ``train``: weights P·b, gradients P·b, AdamW moments 2 × 4 × P (fp32), and an fp32 master copy
  4·P when b < 4 (mixed precision). ZeRO stage 1 divides the optimizer part (moments + master) by
  dp, stage 2 the gradients too, stage 3 the weights too. With LoRA only the L adapter parameters
  train: weights (P + L)·b, gradients L·b, optimizer L·(8 [+ 4]).
- ``infer``: weights P·b plus the KV cache of the role's whole batch split over dp (each worker
  holds its share of the sequences).
- ``frozen`` (e.g. a reference model): weights P·b.
- ``cpu``: nothing on a device.

Every device role adds ``activation_bytes`` (peak activations of one worker). Not counted: the CUDA
context and allocator fragmentation (about 1-2 GiB a GPU); the planner keeps a safety margin for them.

Also here: ``estimate_params_from_hf_config`` (exact parameter count of a Llama/Qwen2-style decoder
from its config.json numbers) and ``kv_cache_bytes``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

RoleKind = Literal["train", "infer", "frozen", "cpu"]

GIB = 2**30
# Bytes per element of the precisions a ModelConfig names.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# AdamW keeps two fp32 moments per trained parameter.
ADAM_BYTES_PER_PARAM = 2 * 4
# Mixed precision keeps an fp32 master copy of every trained parameter.
MASTER_BYTES_PER_PARAM = 4
# Linear layers a LoRA adapter usually targets in a Llama-style layer: q, k, v, o, gate, up, down.
DEFAULT_LORA_TARGETS = 7


@dataclass(frozen=True)
class RoleNeeds:
    """What a role needs on its devices, as plain numbers (see the module docstring for the sums).

    Attributes:
        role: role name, as in the job's ``roles:``.
        kind: "train" (weights + grads + optimizer), "infer" (weights + KV cache), "frozen"
            (weights only) or "cpu" (no device).
        n_params: parameters of the model the role holds.
        dtype_bytes: bytes per weight (4 fp32, 2 bf16/fp16); below 4 a trained role also keeps an
            fp32 master copy.
        zero_stage: ZeRO stage 0-3 of a train role (which parts are sharded over dp).
        dp_size_hint: data-parallel size used when ``estimate_memory`` is given none (estimates made
            before planning); the planner passes the size it tries.
        lora_rank: LoRA rank of a train role; None trains every parameter.
        lora_params: adapter parameters; None estimates them from lora_rank, hidden_size,
            num_layers and lora_targets.
        hidden_size: model width (for the LoRA estimate).
        num_layers: decoder layers (for the LoRA estimate).
        lora_targets: adapted linear layers per decoder layer.
        kv_cache_bytes: KV cache of the role's WHOLE batch (``kv_cache_bytes(...)`` over every
            sequence at full length); split over the role's dp workers.
        activation_bytes: peak activation memory of ONE worker.
        needs_gpu: the role's engine runs only on GPUs (e.g. vLLM); a CPU-only cluster is an error.
    """

    role: str
    kind: RoleKind
    n_params: int
    dtype_bytes: int
    zero_stage: int = 0
    dp_size_hint: int | None = None
    lora_rank: int | None = None
    lora_params: int | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    lora_targets: int = DEFAULT_LORA_TARGETS
    kv_cache_bytes: int = 0
    activation_bytes: int = 0
    needs_gpu: bool = False

    def __post_init__(self) -> None:
        where = f"RoleNeeds of role '{self.role}'"
        if self.kind not in ("train", "infer", "frozen", "cpu"):
            raise ValueError(f"{where}: kind must be train, infer, frozen or cpu, got {self.kind!r}")
        if self.n_params < 0 or self.dtype_bytes < 1:
            raise ValueError(f"{where}: n_params must be >= 0 and dtype_bytes >= 1")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"{where}: zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.dp_size_hint is not None and self.dp_size_hint < 1:
            raise ValueError(f"{where}: dp_size_hint must be >= 1 or None")
        if min(self.kv_cache_bytes, self.activation_bytes) < 0:
            raise ValueError(f"{where}: kv_cache_bytes and activation_bytes must be >= 0")
        if self.lora_rank is not None:
            if self.lora_rank < 1:
                raise ValueError(f"{where}: lora_rank must be >= 1 or None")
            if self.lora_params is None and (self.hidden_size is None or self.num_layers is None):
                raise ValueError(
                    f"{where}: lora_rank is set, so give lora_params, or hidden_size and "
                    "num_layers to estimate the adapter's parameters"
                )

    @property
    def adapter_params(self) -> int:
        """Trainable LoRA parameters (0 without LoRA)."""
        if self.lora_rank is None:
            return 0
        if self.lora_params is not None:
            return self.lora_params
        assert self.hidden_size is not None and self.num_layers is not None  # checked above
        return lora_adapter_params(self.lora_rank, self.hidden_size, self.num_layers, self.lora_targets)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one worker of a role holds on its device, by part.

    Attributes:
        role: role name.
        kind: the role's kind ("unknown" when no RoleNeeds was given).
        parts: label -> bytes, in display order, zero parts left out ("weights", "grads", "Adam",
            "fp32 master", "KV cache", "activations"; "memory_gb" when overridden).
        dp_size: data-parallel size the estimate is for.
        zero_stage: ZeRO stage (train roles).
        lora_rank: LoRA rank, if any.
    """

    role: str
    kind: str
    parts: dict[str, int] = field(default_factory=dict)
    dp_size: int = 1
    zero_stage: int = 0
    lora_rank: int | None = None

    @property
    def total(self) -> int:
        """Bytes per device."""
        return sum(self.parts.values())

    def describe(self, device_word: str = "GPU") -> str:
        """E.g. "~104.3 GiB per GPU (weights 13.0 + grads 13.0 + Adam 52.2 + fp32 master 26.1,
        ZeRO-0 over 1 GPU)"."""
        unit, scale = _unit(self.total)
        head = f"~{self.total / scale:.1f} {unit} per {device_word}"
        if "memory_gb" in self.parts:
            return f"{head} (memory_gb set)"
        if self.kind == "unknown":
            return "no memory estimate given (assumed to fit)"
        terms = " + ".join(f"{label} {b / scale:.1f}" for label, b in self.parts.items())
        over = f"{self.dp_size} {device_word}{'s' if self.dp_size != 1 else ''}"
        if self.kind == "train":
            lora = f", LoRA rank {self.lora_rank}" if self.lora_rank else ""
            terms += f"{lora}, ZeRO-{self.zero_stage} over {over}"
        elif "KV cache" in self.parts:
            terms += f", KV cache split over {over}"
        return f"{head} ({terms or 'nothing'})"


def estimate_memory(needs: RoleNeeds, dp_size: int | None = None) -> MemoryEstimate:
    """Bytes one worker of ``needs.role`` holds on its device with ``dp_size`` workers.

    Args:
        needs: the role's numbers.
        dp_size: data-parallel size (ZeRO and the KV cache split over it); None uses
            ``needs.dp_size_hint`` or 1.
    """
    dp = dp_size or needs.dp_size_hint or 1
    b = needs.dtype_bytes
    parts: dict[str, float] = {}
    if needs.kind == "train":
        trained = needs.adapter_params if needs.lora_rank else needs.n_params
        held = needs.n_params + (trained if needs.lora_rank else 0)
        stage = needs.zero_stage
        parts["weights"] = held * b / (dp if stage >= 3 else 1)
        parts["grads"] = trained * b / (dp if stage >= 2 else 1)
        optim_split = dp if stage >= 1 else 1
        parts["Adam"] = trained * ADAM_BYTES_PER_PARAM / optim_split
        if b < 4:
            parts["fp32 master"] = trained * MASTER_BYTES_PER_PARAM / optim_split
    elif needs.kind in ("infer", "frozen"):
        parts["weights"] = needs.n_params * b
        if needs.kind == "infer":
            parts["KV cache"] = needs.kv_cache_bytes / dp
    if needs.kind != "cpu":
        parts["activations"] = needs.activation_bytes
    return MemoryEstimate(
        role=needs.role,
        kind=needs.kind,
        parts={k: math.ceil(v) for k, v in parts.items() if v > 0},
        dp_size=dp,
        zero_stage=needs.zero_stage,
        lora_rank=needs.lora_rank,
    )


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, dtype_bytes: int, tokens: int) -> int:
    """KV cache of ``tokens`` tokens: 2 (K and V) × layers × kv_heads × head_dim × dtype_bytes × tokens.

    ``tokens`` counts every position held at once, e.g. sequences × (prompt + completion length).
    """
    return 2 * n_layers * n_kv_heads * head_dim * dtype_bytes * tokens


def lora_adapter_params(
    rank: int, hidden_size: int, num_layers: int, num_targets: int = DEFAULT_LORA_TARGETS
) -> int:
    """Approximate LoRA parameters: every target treated as hidden × hidden, so A (rank × hidden)
    plus B (hidden × rank) = 2 × rank × hidden per target and layer."""
    return 2 * rank * hidden_size * num_layers * num_targets


def estimate_params_from_hf_config(config: Mapping[str, Any]) -> int:
    """Parameter count of a Llama/Qwen2/Qwen3/Mistral-style decoder from its config.json numbers.

    Counts the embedding (vocab × hidden), per layer the attention projections (q and o:
    hidden × heads·head_dim; k and v: hidden × kv_heads·head_dim; biases on q/k/v for Qwen2, on all
    four with ``attention_bias``), the gated MLP (3 × hidden × intermediate, ``mlp_bias`` adds
    biases), two RMSNorms (and Qwen3's q/k norms), the final norm, and an lm_head unless
    ``tie_word_embeddings``. Exact for those families (the tests compare with transformers).
    """
    vocab = int(config["vocab_size"])
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config["intermediate_size"])
    model_type = config.get("model_type", "llama")
    attention_bias = bool(config.get("attention_bias", False))
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim

    attention = hidden * q_dim * 2 + hidden * kv_dim * 2  # q, o; k, v
    if model_type == "qwen2":
        attention += q_dim + 2 * kv_dim  # q/k/v biases, none on o
    elif attention_bias:
        attention += q_dim + 2 * kv_dim + hidden
    mlp = 3 * hidden * inter + ((2 * inter + hidden) if config.get("mlp_bias", False) else 0)
    norms = 2 * hidden + (2 * head_dim if model_type == "qwen3" else 0)
    per_layer = attention + mlp + norms
    embed = vocab * hidden
    lm_head = 0 if config.get("tie_word_embeddings", False) else vocab * hidden
    return embed + layers * per_layer + hidden + lm_head


def kv_cache_bytes_from_hf_config(config: Mapping[str, Any], dtype_bytes: int, tokens: int) -> int:
    """``kv_cache_bytes`` with the layer and head numbers of a config.json."""
    heads = int(config["num_attention_heads"])
    return kv_cache_bytes(
        n_layers=int(config["num_hidden_layers"]),
        n_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
        dtype_bytes=dtype_bytes,
        tokens=tokens,
    )


def format_bytes(n: float) -> str:
    """E.g. "13.0 GiB", "2.4 MiB"."""
    unit, scale = _unit(n)
    return f"{n / scale:.1f} {unit}"


def _unit(n: float) -> tuple[str, int]:
    if n >= GIB:
        return "GiB", GIB
    if n >= 2**20:
        return "MiB", 2**20
    return "KiB", 2**10
