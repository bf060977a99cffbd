"""llm_judge: score parsing, and a real judge model (tiny, trained here to answer per completion)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from roll.errors import ConfigError
from roll.models import TinyModelConfig, build_tiny_model, build_word_tokenizer
from roll.rewards import RewardConfig
from roll.rewards.judge import LLMJudge, ScoreParseError, parse_score
from roll.rewards.router import RewardRouter

PARSED = [
    ("Score: 7/10", 0.7),
    ("**Score:** 8 out of 10", 0.8),
    ("score = 3", 0.3),  # out of the default scale 10
    ("I'd give it 9/10.", 0.9),
    ("6", 0.6),
    (" 10 . ", 1.0),
    ("Score : 7 / 10", 0.7),  # word-tokenizer spacing
    ("Rating: 4.5/5", 0.9),
    ("Score: 7/10\nOn reflection, score: 4/10", 0.4),  # the last labelled score wins
    ("Grade: 0 out of 4", 0.0),
    ("__Score__: 2/4", 0.5),
]


@pytest.mark.parametrize("reply, score", PARSED)
def test_parse_score(reply: str, score: float) -> None:
    assert parse_score(reply) == pytest.approx(score)


@pytest.mark.parametrize(
    "reply, message",
    [
        ("I cannot judge this.", "no score in the judge's reply"),
        ("Score: 12/10", "score 12/10 is out of range"),
        ("Score: -1", "score -1/10 is out of range"),
        ("Score: 3/0", "out of range"),
        ("Score: seven", "no score"),
        ("", "no score"),
    ],
)
def test_unparseable_replies_raise(reply: str, message: str) -> None:
    with pytest.raises(ScoreParseError, match=message):
        parse_score(reply)


def test_scale_applies_to_bare_scores() -> None:
    assert parse_score("Score: 4", scale=5) == pytest.approx(0.8)


TEMPLATE = "Rate : ? {response}"
WORDS = ["Rate", ":", "?", "good", "bad", "meh", "Score", "/", "I", "cannot", "say"] + [
    str(i) for i in range(11)
]
# The reply's first token follows the completion's word, so a few dozen steps teach it.
TARGETS = {"good": "9 / 10", "bad": "2 / 10", "meh": "I cannot say"}


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 + word tokenizer overfit to answer TARGETS[response] after the judge prompt."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only wait on each other on a busy box
    tokenizer = build_word_tokenizer(WORDS)
    model = build_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, seed=0), tokenizer)
    torch.manual_seed(0)
    rows, masks = [], []
    for response, target in TARGETS.items():
        prompt = tokenizer(TEMPLATE.format(response=response))["input_ids"]
        answer = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(prompt + answer)
        masks.append([0] * len(prompt) + [1] * len(answer))
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    labels = torch.where(torch.tensor([m + [0] * (width - len(m)) for m in masks]).bool(), ids, -100)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("judge")
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_judge_model_scores_through_the_router(judge_folder: Path) -> None:
    cfg = RewardConfig.model_validate(
        {
            "functions": [{"name": "exact_match", "weight": 0.5}],
            "domains": {
                "essay": [
                    {
                        "name": "llm_judge",
                        "params": {
                            "model": {"source": "hf", "path": str(judge_folder)},
                            "template": TEMPLATE,
                            "max_new_tokens": 8,
                            "batch_size": 2,
                        },
                    }
                ]
            },
        }
    )
    router = RewardRouter(cfg, [])
    texts = ["good", "bad", "meh", "good", "x"]
    rows = [{"tag": "essay"}] * 4 + [{"answer": "x"}]
    out = router.score(texts, rows)
    judge = router.domains["essay"][0].instance
    assert judge.last_replies == ["9 / 10", "2 / 10", "I cannot say", "9 / 10"]
    assert out.totals == pytest.approx([0.9, 0.2, 0.0, 0.9, 0.5])
    assert out.per_term["llm_judge"] == pytest.approx([0.9, 0.2, 0.0, 0.9, 0.0])
    assert out.errors[2] == "llm_judge: ScoreParseError: no score in the judge's reply 'I cannot say'; "
    assert out.errors[:2] == ["", ""] and out.errors[3:] == ["", ""]


def test_template_fields_missing_from_a_row_are_recorded(judge_folder: Path) -> None:
    judge = LLMJudge({"source": "hf", "path": str(judge_folder)}, template="Rate : {topic} {response}")
    results = judge.score_batch(["good", "good"], [{"topic": "?"}, {}])
    assert isinstance(results[0], float)
    assert isinstance(results[1], KeyError) and "needs row field(s) ['topic']" in str(results[1])


def test_bad_judge_params_say_what_to_change() -> None:
    with pytest.raises(ConfigError, match=r"params.template must contain \{response\}"):
        LLMJudge({"source": "tiny"}, template="no placeholder")
    with pytest.raises(ConfigError, match="params.model is not a valid model section"):
        LLMJudge({"source": "gpt"})


def test_reply_prefix_starts_the_reply(judge_folder: Path) -> None:
    judge = LLMJudge({"source": "hf", "path": str(judge_folder)}, template=TEMPLATE, reply_prefix=" Score :")
    prompt = judge.prompt_ids("good", {})
    assert prompt[-2:] == [WORDS.index("Score") + 4, WORDS.index(":") + 4]  # word i has id 4 + i
    judge.score_batch(["good"], [{}])
    assert judge.last_replies[0].startswith(" Score :")
