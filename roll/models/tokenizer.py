"""Word-level tokenizers built in code: deterministic, no files, no hub.

A word-level vocabulary keeps the tiny models' tasks readable: every token is a whole word, so
``"3 + 4 = 7"`` is exactly five tokens and decodes back to the same string. Ids are fixed by the
order of the word list, so two builds (in two processes) agree on every id.

Special tokens always take the first ids::

    0 <pad>   1 <unk>   2 <bos>   3 <eos>

Encoding with ``add_special_tokens=True`` (the default) prepends ``<bos>``; no ``<eos>`` is appended
(prompts are continued by generation). Padding is on the left, as batched generation needs.

Saved with ``save_pretrained``, these tokenizers come back through :func:`load_tokenizer_folder`,
not plain ``AutoTokenizer`` (see there why).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from roll.errors import ModelSourceError

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS)

# WordPiece's decoder puts a space before every token that does not start with this prefix; words
# may therefore not start with it (checked in build_word_tokenizer).
_CONTINUATION_PREFIX = "##"

ARITHMETIC_WORDS: list[str] = [str(i) for i in range(100)] + ["+", "-", "*", "=", "?", "answer", ":"]
"""Vocabulary ``arithmetic``: the integers 0..99 as words, the operators and the answer marker."""


def build_word_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """Build a whitespace-split, word-level tokenizer over ``SPECIAL_TOKENS + words``.

    Args:
        words: the vocabulary, one token per word; word ``i`` gets id ``4 + i``. Words must be
            non-empty, contain no whitespace, be unique and differ from the special tokens.

    Returns:
        A fast tokenizer with pad/unk/bos/eos set and left padding. Unknown words map to ``<unk>``.
        ``decode(encode(s), skip_special_tokens=True) == s`` for any ``s`` made of known words
        separated by single spaces.
    """
    _check_words(words)
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # With cleanup off, WordPiece's decoder is a plain join with single spaces (no word starts with
    # the continuation prefix). Metaspace and the default decoder join without spaces.
    backend.decoder = decoders.WordPiece(prefix=_CONTINUATION_PREFIX, cleanup=False)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B:1",
        special_tokens=[(BOS, vocab[BOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def _check_words(words: Sequence[str]) -> None:
    """Raise ValueError naming the first word a word-level vocabulary cannot hold."""
    seen: set[str] = set()
    for word in words:
        if not word or word != "".join(word.split()):
            raise ValueError(f"vocabulary word {word!r} is empty or contains whitespace")
        if word in SPECIAL_TOKENS:
            raise ValueError(f"vocabulary word {word!r} is a special token; remove it from the list")
        if word.startswith(_CONTINUATION_PREFIX):
            raise ValueError(f"vocabulary word {word!r} may not start with {_CONTINUATION_PREFIX!r}")
        if word in seen:
            raise ValueError(f"vocabulary word {word!r} appears twice")
        seen.add(word)


DIGITS_WORDS: list[str] = [str(i) for i in range(10)] + ["+", "-", "*", "=", "?"]
"""Vocabulary ``digits``: the digits 0..9 and the operators. A random policy over it names the
right single-digit answer often enough (about 1 in 19 tokens) for GRPO groups to differ from step 1."""

FROZEN_LAKE_WORDS: list[str] = ["left", "down", "right", "up", "P", "_", "O", "G"]
"""Vocabulary ``frozen_lake``: the four moves and the board cells of FrozenLake's ``render: cells``
observations. A random policy names a move with about 1 token in 3 (4 of 12 ids)."""

_VOCABULARIES: dict[str, Callable[[], Sequence[str]]] = {
    "arithmetic": lambda: ARITHMETIC_WORDS,
    "digits": lambda: DIGITS_WORDS,
    "frozen_lake": lambda: FROZEN_LAKE_WORDS,
}


def build_tokenizer(vocab: str) -> PreTrainedTokenizerFast:
    """Build the in-code tokenizer named ``vocab`` (see ``TinyModelConfig.vocab``).

    Raises:
        ModelSourceError: ``vocab`` is not a known vocabulary name.
    """
    if vocab not in _VOCABULARIES:
        known = ", ".join(sorted(_VOCABULARIES))
        raise ModelSourceError(
            f"unknown tokenizer vocabulary {vocab!r}; set model.tiny.vocab to one of: {known}"
        )
    return build_word_tokenizer(_VOCABULARIES[vocab]())


# Classes that mean "tokenizer.json is the whole tokenizer".
_GENERIC_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer_folder(folder: Path) -> PreTrainedTokenizerBase:
    """Load the tokenizer saved in a local Hugging Face folder, offline.

    A folder whose tokenizer_config.json declares the generic class (``TokenizersBackend``, as
    ``save_pretrained`` writes for the word tokenizers above) is loaded from its tokenizer.json as
    is. ``AutoTokenizer`` would not: for some model types (qwen2 among them) transformers 5
    distrusts the declared class and rebuilds the tokenizer as that model's byte-level BPE, which
    turns "3 + 4" into "3+4" and "100" into three tokens. Other folders go through ``AutoTokenizer``.

    Raises:
        ModelSourceError: the folder has no tokenizer files, or they cannot be loaded.
    """
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelSourceError(
            f"'{folder}' has no tokenizer files ({', '.join(_TOKENIZER_FILES)}); save the tokenizer "
            "next to the model with tokenizer.save_pretrained(folder)"
        )
    config_file = folder / "tokenizer_config.json"
    declared = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    generic = declared in _GENERIC_TOKENIZER_CLASSES and (folder / "tokenizer.json").is_file()
    loader = PreTrainedTokenizerFast if generic else AutoTokenizer
    try:
        return loader.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"cannot load the tokenizer saved in '{folder}': {err}") from err
