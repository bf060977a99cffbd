"""llm_judge: a language model reads the completion through a prompt template and writes a score.

Where the judge runs (a design choice): each reward worker builds its own HF inference engine
(``roll.engines.hf_engine.HFInferEngine``, the rollout role's engine) from a ``model:`` section
given in the term's params, on the worker's CPU slot, the first time it scores. That keeps the
reward worker's contract (batch in, rewards out) and needs no extra role in the pipeline; a judge
too big for a CPU slot would instead be a rollout-style worker group whose handle the reward
worker calls. Decoding is greedy, so the same completion always gets the same score.

The reply is parsed by :func:`parse_score`: "Score: 7/10" → 0.7, "**Rating:** 8 out of 10" → 0.8,
"Score = 3" → 0.3 (out of ``scale``), "I'd give it 9/10" → 0.9, a bare "6" → 0.6. A reply with no
score, or one outside [0, max], raises :class:`ScoreParseError`: the sample scores 0 and the reward
worker records the error (with the start of the reply).

Example YAML::

    reward:
      functions:
        - name: llm_judge
          params:
            model: {source: smollm2}
            template: "Question: {prompt}\\nAnswer: {response}\\nRate the answer. Score: N/10\\n"
            chat_template: true
            reply_prefix: "Score:"    # the reply starts here; the model writes the number

Measured here with SmolLM2-135M-Instruct as the judge (greedy, the template above, reply_prefix
"Score:"): the mechanics work (about 1 s per completion on 2 CPUs after a 20 s load), but the
model is no judge: it gave "Paris." and "Berlin." for the capital of France both 9/10. Use a
stronger model for real judging; the tiny models serve the tests.
"""

from __future__ import annotations

import re
import string
from typing import Any

from roll.errors import ConfigError
from roll.rewards.registry import register_reward

DEFAULT_TEMPLATE = (
    "Rate how well the answer solves the task, from 0 to 10.\n"
    "Task: {prompt}\nAnswer: {response}\n"
    "Reply with 'Score: N/10'.\n"
)
_NUM = r"(-?\d+(?:\.\d+)?)"
_OUT_OF = r"\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?)"
_LABELLED = re.compile(
    r"\b(?:score|rating|grade)\b\s*(?:is|of|=|:)?\s*" + _NUM + f"(?:{_OUT_OF})?", re.IGNORECASE
)
_FRACTION = re.compile(_NUM + _OUT_OF, re.IGNORECASE)
_BARE = re.compile(r"^\s*" + _NUM + r"\s*\.?\s*$")


class ScoreParseError(ValueError):
    """The judge's reply holds no score in range."""


def parse_score(reply: str, scale: float = 10.0) -> float:
    """The score in a judge's reply, in [0, 1] (see the module doc for the accepted forms).

    The last labelled score wins ("Score: 7/10"); else the last fraction ("7/10", "7 out of 10");
    else a reply that is only a number, read out of ``scale``.

    Raises:
        ScoreParseError: no score found, a zero denominator, or a score outside [0, max].
    """
    text = reply.replace("*", "").replace("_", " ")
    found: tuple[str, str | None] | None = None
    for pattern in (_LABELLED, _FRACTION, _BARE):
        matches = list(pattern.finditer(text))
        if matches:
            groups = matches[-1].groups()
            found = (groups[0], groups[1] if len(groups) > 1 else None)
            break
    if found is None:
        raise ScoreParseError(f"no score in the judge's reply {reply[:120]!r}")
    value, top = float(found[0]), float(found[1]) if found[1] is not None else scale
    if top <= 0 or not 0 <= value <= top:
        raise ScoreParseError(f"score {found[0]}/{top:g} is out of range in the reply {reply[:120]!r}")
    return value / top


def template_fields(template: str) -> list[str]:
    """Field names a ``str.format`` template uses (``{response}``, ``{prompt}`` ...)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


@register_reward("llm_judge")
class LLMJudge:
    """Scores completions with a judge model (built on first use) and :func:`parse_score`.

    Args:
        model: a ``model:`` section (roll.models.ModelConfig) naming the judge, e.g.
            ``{source: smollm2}`` or ``{source: hf, path: /models/judge}``.
        template: ``str.format`` text with ``{response}`` and any row fields (``{prompt}``).
        scale: the maximum of a score written without "/max".
        max_new_tokens: the longest reply read.
        batch_size: completions judged per generate call.
        chat_template: wrap the prompt in the tokenizer's chat template (instruct models).
        max_response_chars: a completion is cut to this many characters before it is shown.
        reply_prefix: text that starts the judge's reply (after the chat wrapping), e.g.
            "Score:", so a small model continues with a number; appended as is (mind the space)
            and parsed together with the reply.
    """

    def __init__(
        self,
        model: dict[str, Any],
        template: str = DEFAULT_TEMPLATE,
        scale: float = 10.0,
        max_new_tokens: int = 16,
        batch_size: int = 8,
        chat_template: bool = False,
        max_response_chars: int = 4000,
        reply_prefix: str = "",
    ) -> None:
        from pydantic import ValidationError

        from roll.models.config import ModelConfig

        try:
            self.model_cfg = ModelConfig.model_validate(model)
        except ValidationError as exc:
            raise ConfigError(f"llm_judge: params.model is not a valid model section: {exc}") from exc
        if "response" not in template_fields(template):
            raise ConfigError("llm_judge: params.template must contain {response}")
        if scale <= 0 or max_new_tokens < 1 or batch_size < 1:
            raise ConfigError("llm_judge: scale must be > 0, max_new_tokens and batch_size >= 1")
        self.template, self.scale = template, scale
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.chat_template, self.max_response_chars = chat_template, max_response_chars
        self.reply_prefix = reply_prefix
        self._engine: Any = None
        self.last_replies: list[str] = []

    @classmethod
    def check_params(cls, **params: Any) -> None:
        """Raise ConfigError for bad params at config time (building the judge loads no model)."""
        cls(**params)

    def _ensure_engine(self) -> Any:
        if self._engine is None:
            from roll.engines.hf_engine import HFInferEngine
            from roll.models import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(self.model_cfg)
            self._engine = HFInferEngine(model, tokenizer, role="judge")
        return self._engine

    def prompt_text(self, response: str, row: dict[str, Any]) -> str:
        """The judge prompt for one completion (KeyError names a row field the template lacks)."""
        fields = {**row, "response": response[: self.max_response_chars]}
        missing = [f for f in template_fields(self.template) if f not in fields]
        if missing:
            raise KeyError(f"llm_judge: the template needs row field(s) {missing}; the row has {sorted(row)}")
        return self.template.format_map(fields)

    def prompt_ids(self, response: str, row: dict[str, Any]) -> list[int]:
        """Token ids of the judge prompt (chat-wrapped when ``chat_template``)."""
        tokenizer = self._ensure_engine().tokenizer
        text = self.prompt_text(response, row)
        if self.chat_template:  # render, then tokenise: the template already holds the specials
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
            return list(tokenizer(text + self.reply_prefix, add_special_tokens=False)["input_ids"])
        return list(tokenizer(text + self.reply_prefix)["input_ids"])

    def score_batch(self, responses: list[str], rows: list[dict[str, Any]]) -> list[float | Exception]:
        """One score in [0, 1] or one exception per completion, in order."""
        from roll.engines.base import SamplingParams

        engine = self._ensure_engine()
        results: list[float | Exception] = [0.0] * len(responses)
        prompts: dict[int, list[int]] = {}
        for i, (response, row) in enumerate(zip(responses, rows, strict=True)):
            try:
                prompts[i] = self.prompt_ids(response, row)
            except KeyError as exc:
                results[i] = exc
        order = list(prompts)
        params = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0)
        self.last_replies = [""] * len(responses)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out = engine.generate([prompts[i] for i in chunk], params)
            for row_index, ids, mask in zip(chunk, out.response_ids, out.response_mask, strict=True):
                reply = self.reply_prefix + engine.tokenizer.decode(
                    ids[mask].tolist(), skip_special_tokens=True
                )
                self.last_replies[row_index] = reply
                try:
                    results[row_index] = parse_score(reply, self.scale)
                except ScoreParseError as exc:
                    results[row_index] = exc
        return results
