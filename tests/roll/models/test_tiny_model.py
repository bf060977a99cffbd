"""The in-code word tokenizer and the tiny Qwen2/Llama models: ids, determinism, generate log-probs."""

import pytest
import torch
from torch.testing import assert_close

from roll.errors import ModelSourceError
from roll.models import (
    ARITHMETIC_WORDS,
    TinyModelConfig,
    build_tiny_model,
    build_tokenizer,
    build_word_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("arithmetic")


def test_special_token_ids_come_first(tok):
    assert [tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id] == [0, 1, 2, 3]
    assert [tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token] == [
        "<pad>",
        "<unk>",
        "<bos>",
        "<eos>",
    ]
    assert len(tok) == 4 + len(ARITHMETIC_WORDS) == 111
    assert tok.padding_side == "left"


def test_arithmetic_round_trip_and_ids(tok):
    ids = tok.encode("3 + 4 = 7")
    # <bos>, then word i has id 4 + i: "3" -> 7, "+" -> 4 + 100 = 104, "=" -> 4 + 103 = 107.
    assert ids == [2, 7, 104, 8, 107, 11]
    assert tok.decode(ids, skip_special_tokens=True) == "3 + 4 = 7"
    assert tok.encode("3 + 4 = 7", add_special_tokens=False) == [7, 104, 8, 107, 11]
    for text in ["answer : 42", "99 * 0 - 12 = ?", "answer"]:
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    assert tok.decode([2, 7, 3]) == "<bos> 3 <eos>"


def test_unknown_words_and_extra_spaces(tok):
    assert tok.encode("  3   +\t100 ", add_special_tokens=False) == [7, 104, 1]
    assert tok.decode(tok.encode("3 + 100"), skip_special_tokens=True) == "3 +"


def test_batch_encode_pads_on_the_left(tok):
    batch = tok(["1 + 1 =", "12"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[2, 5, 104, 5, 107], [0, 0, 0, 2, 16]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]


def test_word_tokenizer_is_deterministic_and_checks_words():
    a, b = build_word_tokenizer(["x", "y"]), build_word_tokenizer(["x", "y"])
    assert a.get_vocab() == b.get_vocab() == {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3, "x": 4, "y": 5}
    for bad in (["x", "x"], ["a b"], [""], ["<eos>"], ["##x"]):
        with pytest.raises(ValueError):
            build_word_tokenizer(bad)


def test_unknown_vocab_lists_known_names():
    with pytest.raises(ModelSourceError, match="arithmetic"):
        build_tokenizer("english")


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_build_is_bitwise_deterministic(tok, arch):
    cfg = TinyModelConfig(arch=arch)
    a, b = build_tiny_model(cfg, tok).state_dict(), build_tiny_model(cfg, tok).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = build_tiny_model(TinyModelConfig(arch=arch, seed=1), tok).state_dict()
    assert not torch.equal(a["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_build_leaves_caller_rng_alone(tok):
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_tiny_model(TinyModelConfig(), tok)
    assert torch.equal(torch.rand(4), expected)


def test_model_config_follows_tokenizer(tok):
    cfg = TinyModelConfig(arch="llama", hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=1)
    model = build_tiny_model(cfg, tok)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tok)
    assert (model.config.num_hidden_layers, model.config.num_key_value_heads) == (3, 1)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    gen = model.generation_config
    assert (gen.pad_token_id, gen.bos_token_id, gen.eos_token_id) == (0, 2, 3)
    assert not model.training


def test_heads_must_divide():
    with pytest.raises(ValueError, match="num_kv_heads"):
        TinyModelConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        TinyModelConfig(hidden_size=64, num_heads=5, num_kv_heads=1)


@pytest.mark.parametrize("positions", ["from_mask", "arange"])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_generate_logprobs_match_teacher_forced_forward(tok, arch, positions):
    """Raw-logit log-probs from ``generate`` equal a teacher-forced forward over prompt + completion.

    Position ids: generate derives them from the attention mask (``cumsum - 1``, pads set to 0), and
    passing those to the forward ("from_mask") reproduces generate. Leaving ``position_ids=None``
    ("arange", pads counted) matches as well, to the same ~5e-7: RoPE scores depend only on the
    offset between query and key, which a constant shift per row does not change, and the padded
    keys are masked out. So the mask-derived ids are the exact choice, arange is not wrong for
    these RoPE models; the training forward should use the mask-derived ones.
    """
    model = build_tiny_model(TinyModelConfig(arch=arch), tok)
    prompts = tok(["3 + 4 =", "12 + 13 = ? answer :", "1"], padding=True, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(
        **prompts,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
        max_new_tokens=5,
        output_logits=True,
        return_dict_in_generate=True,
    )
    prompt_len = prompts["input_ids"].shape[1]
    completion = out.sequences[:, prompt_len:]  # [3, 5]
    gen_logprobs = torch.log_softmax(torch.stack(out.logits, dim=1), dim=-1)  # [3, 5, V]
    gen_logprobs = gen_logprobs.gather(-1, completion[..., None])[..., 0]

    mask = torch.cat([prompts["attention_mask"], torch.ones_like(completion)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0) if positions == "from_mask" else None
    with torch.no_grad():
        logits = model(input_ids=out.sequences, attention_mask=mask, position_ids=position_ids).logits
    # logits[t] predicts token t + 1: the completion is predicted by positions prompt_len - 1 .. -2.
    tf_logprobs = torch.log_softmax(logits[:, prompt_len - 1 : -1], dim=-1)
    tf_logprobs = tf_logprobs.gather(-1, completion[..., None])[..., 0]

    # After a row samples <eos>, generate pads it with forced tokens the raw logits did not pick.
    is_eos = completion == tok.eos_token_id
    valid = (is_eos.cumsum(-1) - is_eos.long()) == 0
    assert valid.sum() >= 10
    assert_close(tf_logprobs[valid], gen_logprobs[valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("vocab", ["arithmetic", "digits"])
def test_every_named_vocabulary_round_trips(vocab):
    tok = build_tokenizer(vocab)
    assert TinyModelConfig(vocab=vocab).vocab == vocab
    assert tok.decode(tok.encode("3 + 4 = 7"), skip_special_tokens=True) == "3 + 4 = 7"
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<unk>", "<bos>", "<eos>"]
