"""Prompt datasets and the resumable sampler."""

from roll.data.datasets import ArithmeticConfig, DataConfig, PromptSampler, load_rows

__all__ = ["ArithmeticConfig", "DataConfig", "PromptSampler", "load_rows"]
