"""LoRA on the actor (peft): adapters only are trained; the reference is the same model with the
adapters disabled (no second copy); weight syncs and exports carry merged weights.

Merged weights are computed as W + ΔW next to the model, never by merging and unmerging in place
(that round trip is not bitwise exact in floating point and would drift over many syncs).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from roll.config.base import ConfigBase


class LoraConfig(ConfigBase):
    """Low-rank adapters on the actor's linear layers (Hu et al. 2021, arXiv:2106.09685)."""

    rank: int = Field(8, ge=1, description="Adapter rank r.")
    alpha: float = Field(16.0, gt=0, description="Scale numerator: ΔW = (alpha / r) · B A.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Names of the linear layers that get adapters.",
    )


def apply_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """Wrap ``model`` with fresh adapters (B = 0, so the wrapped model equals the base model)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def _clean(name: str) -> str:
    return name.replace(".base_layer.", ".")


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Plain (non-peft) parameter names → merged weights; for a non-LoRA model, its state dict."""
    if not is_lora(model):
        return dict(model.state_dict())
    base = model.get_base_model()
    out = {_clean(k): v for k, v in base.state_dict().items() if ".lora_" not in k}
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            key = f"{name}.weight"
            out[key] = module.base_layer.weight + module.get_delta_weight("default").to(
                module.base_layer.weight.dtype
            )
    return out


def export_hf(model: torch.nn.Module, tokenizer: Any, folder: str | Path) -> None:
    """Write a plain Hugging Face folder (merged when LoRA) that loads with transformers alone."""
    folder = Path(folder)
    if is_lora(model):
        plain = copy.deepcopy(model).merge_and_unload()
    else:
        plain = model
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
