"""Load the policy model and tokenizer a ``ModelConfig`` names, offline.

Every source returns the model in eval mode on CPU, in ``cfg.dtype``, and a tokenizer ready for
batched generation: ``padding_side == "left"`` and a pad token set. Nothing is downloaded: Hugging
Face loaders get ``local_files_only=True``, and a missing model is a ``ModelSourceError`` that says
what to change.

Workers that only need the tokenizer (reward workers, the data loader) call :func:`load_tokenizer`,
which never builds or reads model weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from roll.errors import ModelSourceError
from roll.models.config import ModelConfig
from roll.models.smollm2 import find_gguf_file, is_complete_cache, load_smollm2, load_smollm2_tokenizer
from roll.models.tiny import build_tiny_model, tiny_model_hf_config
from roll.models.tokenizer import build_tokenizer, load_tokenizer_folder

TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_model_and_tokenizer(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build or load the model and tokenizer of ``cfg.source``, with weights in ``cfg.dtype``.

    Raises:
        ModelSourceError: the model cannot be found or loaded (message says how to fix it).
    """
    if cfg.source == "tiny":
        tokenizer = build_tokenizer(cfg.tiny.vocab)
        model = build_tiny_model(cfg.tiny, tokenizer)
    elif cfg.source == "hf":
        folder = _checked_hf_folder(cfg)
        tokenizer = load_tokenizer_folder(folder)
        model = _load_hf_model(folder, TORCH_DTYPES[cfg.dtype])
    else:
        model, tokenizer = load_smollm2(cfg.smollm2_cache_dir)
    return model.to(TORCH_DTYPES[cfg.dtype]).eval(), _ready_for_generation(tokenizer)


def prepare_model_source(cfg: ModelConfig) -> None:
    """Do once, in the driver, what every worker would otherwise repeat: for ``smollm2``, convert
    the GGUF into the plain HF cache folder (workers then load it in under a second)."""
    if cfg.source == "smollm2":
        gguf = find_gguf_file()
        if not is_complete_cache(cfg.smollm2_cache_dir, gguf):
            load_smollm2(cfg.smollm2_cache_dir)


SMOLLM2_CONFIG = {  # SmolLM2-135M-Instruct's config.json numbers (for planning without loading it)
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "tie_word_embeddings": True,
}


def model_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The model's HF config as a dict, without building or reading weights (for planning)."""
    if cfg.source == "tiny":
        return tiny_model_hf_config(cfg.tiny, build_tokenizer(cfg.tiny.vocab)).to_dict()
    if cfg.source == "hf":
        return json.loads((_checked_hf_folder(cfg) / "config.json").read_text())
    return dict(SMOLLM2_CONFIG)


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer of ``cfg.source`` alone (cheap: no model weights are built or read)."""
    if cfg.source == "tiny":
        tokenizer = build_tokenizer(cfg.tiny.vocab)
    elif cfg.source == "hf":
        tokenizer = load_tokenizer_folder(_checked_hf_folder(cfg))
    else:
        tokenizer = load_smollm2_tokenizer(cfg.smollm2_cache_dir)
    return _ready_for_generation(tokenizer)


def describe_model(model: PreTrainedModel) -> dict[str, Any]:
    """A short summary for logs and the dashboard.

    Returns:
        ``{"arch": class name, "model_type": HF model type, "n_params": parameter count (tied
        weights counted once), "dtype": e.g. "float32"}``.
    """
    return {
        "arch": type(model).__name__,
        "model_type": model.config.model_type,
        "n_params": sum(p.numel() for p in model.parameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
    }


def _checked_hf_folder(cfg: ModelConfig) -> Path:
    """``cfg.path`` as a folder holding ``config.json``, or a ModelSourceError saying what to set."""
    folder = Path(str(cfg.path)).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelSourceError(
            f"model.path '{cfg.path}' does not exist (or has no config.json); set model.path to a local "
            "Hugging Face folder (config.json + weights), or use model.source: tiny"
        )
    return folder


def _load_hf_model(folder: Path, dtype: torch.dtype) -> PreTrainedModel:
    try:
        return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as err:
        raise ModelSourceError(
            f"cannot load a causal LM from model.path '{folder}' ({err}); the folder needs config.json "
            "and the weights (model.safetensors or pytorch_model.bin) saved by save_pretrained"
        ) from err


def _ready_for_generation(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding (batched generation) and a pad token (the eos token when the model has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelSourceError(
                "the tokenizer has neither a pad nor an eos token; add a pad_token to its "
                "tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
