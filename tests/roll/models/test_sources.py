"""ModelConfig validation and the 'tiny' and 'hf' sources of load_model_and_tokenizer."""

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from roll.errors import ModelSourceError
from roll.models import ModelConfig, TinyModelConfig, load_model_and_tokenizer, load_tokenizer
from roll.models.config import DEFAULT_SMOLLM2_CACHE_DIR
from roll.models.sources import describe_model

INPUT = "3 + 4 = 7"


def test_defaults_build_the_tiny_qwen2():
    cfg = ModelConfig()
    assert (cfg.source, cfg.path, cfg.dtype, cfg.tiny) == ("tiny", None, "fp32", TinyModelConfig())
    model, tok = load_model_and_tokenizer(cfg)
    assert describe_model(model) == {
        "arch": "Qwen2ForCausalLM",
        "model_type": "qwen2",
        "n_params": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
    }
    assert len(tok) == model.config.vocab_size == 111
    assert tok.padding_side == "left"


def test_config_rejects_unknown_keys_and_misplaced_path():
    with pytest.raises(ValidationError, match="extra"):
        ModelConfig(source="tiny", revision="main")
    with pytest.raises(ValidationError, match="extra"):
        ModelConfig(tiny={"layers": 3})
    with pytest.raises(ValidationError, match="trust_remote_code"):
        ModelConfig(trust_remote_code=True)
    with pytest.raises(ValidationError, match="needs model.path"):
        ModelConfig(source="hf")
    with pytest.raises(ValidationError, match="only used by model.source 'hf'"):
        ModelConfig(source="tiny", path="/models/x")


def test_every_field_is_described():
    for model_cls in (ModelConfig, TinyModelConfig):
        for name, field in model_cls.model_fields.items():
            assert field.description, f"{model_cls.__name__}.{name} has no description"


def test_smollm2_cache_dir_default_and_override(tmp_path):
    assert ModelConfig(source="smollm2").smollm2_cache_dir == Path(DEFAULT_SMOLLM2_CACHE_DIR).expanduser()
    assert ModelConfig(source="smollm2", cache_dir=str(tmp_path)).smollm2_cache_dir == tmp_path.resolve()


def test_bf16_weights():
    model, _ = load_model_and_tokenizer(ModelConfig(dtype="bf16", tiny={"arch": "llama"}))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert describe_model(model)["dtype"] == "bfloat16"


def test_load_tokenizer_matches_full_load():
    cfg = ModelConfig(tiny={"arch": "llama"})
    _, tok = load_model_and_tokenizer(cfg)
    assert load_tokenizer(cfg).get_vocab() == tok.get_vocab()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_hf_folder_round_trip_gives_identical_logits(tmp_path, arch):
    tiny_model, tiny_tok = load_model_and_tokenizer(ModelConfig(tiny={"arch": arch}))
    tiny_model.save_pretrained(tmp_path)
    tiny_tok.save_pretrained(tmp_path)

    cfg = ModelConfig(source="hf", path=str(tmp_path))
    model, tok = load_model_and_tokenizer(cfg)
    assert type(model) is type(tiny_model)
    assert not model.training
    assert tok.padding_side == "left" and tok.pad_token_id == 0
    # The word-level pipeline survives (AutoTokenizer alone would rebuild a qwen2 one as BPE).
    assert tok.get_vocab() == tiny_tok.get_vocab()
    for text in (INPUT, "100 + 99 = ?"):
        assert tok.encode(text) == tiny_tok.encode(text)
    assert tok.decode(tok.encode(INPUT), skip_special_tokens=True) == INPUT
    batch = tok([INPUT, "answer : 5"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = tiny_model(**batch).logits
        got = model(**batch).logits
    # The reloaded model runs sdpa, the tiny one eager: they agree to float rounding wherever
    # the attention mask is 1. Padded positions attend to nothing; their outputs are unused.
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-6, rtol=0)
    assert load_tokenizer(cfg).get_vocab() == tiny_tok.get_vocab()


def test_hf_missing_path_says_what_to_set(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelSourceError, match="model.path") as err:
        load_model_and_tokenizer(ModelConfig(source="hf", path=str(missing)))
    assert str(missing) in str(err.value)
    assert "source: tiny" in str(err.value)
    # A folder without config.json is the same mistake, also for the tokenizer-only path.
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="config.json"):
        load_tokenizer(ModelConfig(source="hf", path=str(tmp_path / "empty")))


def test_hf_folder_without_tokenizer_files(tmp_path):
    model, _ = load_model_and_tokenizer(ModelConfig())
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="tokenizer"):
        load_model_and_tokenizer(ModelConfig(source="hf", path=str(tmp_path)))
