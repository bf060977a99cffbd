"""Token-level multi-turn trajectories: what the policy generated, what the environment said.

A multi-turn episode is one growing token sequence. The first observation is the prompt; then each
turn appends the tokens the policy generated (its action) and the tokens of the environment's next
observation::

    [bos o1 o1 o1] [a1 a1] [o2 o2 o2] [a2] [o3 o3 o3] [a3 a3]
     prompt         ----------------- response ----------------
     loss mask:      1  1   0  0  0    1    0  0  0    1  1

Only the generated tokens are trained on (loss mask 1); observation tokens are context (attention
mask 1, loss mask 0). Token ids are kept exactly as generated and as encoded, never re-tokenised
from text, so the teacher-forced log-probs of the training forward match the behaviour log-probs
recorded at generation (the left-padded context gives the same positions in both).

:func:`pack_trajectories` turns a list of :class:`TokenTrajectory` into the tensors the actor's
``train_step`` and the reference's ``compute_ref_log_probs`` take: prompts left-padded, the rest
right-padded, ``response_mask`` = the loss mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenTrajectory:
    """One trajectory's tokens.

    Attributes:
        prompt_ids: the first observation, encoded (context only, never trained on).
        ids: every token after the prompt, actions and observations, in order.
        loss_mask: 1 where ``ids`` holds a generated token, 0 on observation tokens.
        logprobs: the behaviour log-prob of each generated token, 0 on observation tokens.
    """

    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("a trajectory needs a non-empty first observation (prompt_ids)")

    @property
    def context(self) -> list[int]:
        """The whole sequence so far: what the policy conditions its next action on."""
        return self.prompt_ids + self.ids

    @property
    def last_action(self) -> list[int]:
        """The tokens of the latest action (the trailing run of generated tokens)."""
        n = len(self.loss_mask)
        start = n
        while start > 0 and self.loss_mask[start - 1] == 1:
            start -= 1
        return self.ids[start:n]

    @property
    def generated_tokens(self) -> int:
        return sum(self.loss_mask)

    def add_action(self, token_ids: list[int], logprobs: list[float]) -> None:
        """Append the policy's generated tokens with their behaviour log-probs (loss mask 1)."""
        if len(token_ids) != len(logprobs):
            raise ValueError(f"add_action got {len(token_ids)} tokens but {len(logprobs)} log-probs")
        self.ids += token_ids
        self.loss_mask += [1] * len(token_ids)
        self.logprobs += [float(x) for x in logprobs]

    def add_observation(self, token_ids: list[int]) -> None:
        """Append environment tokens (loss mask 0: context, not trained on)."""
        self.ids += token_ids
        self.loss_mask += [0] * len(token_ids)
        self.logprobs += [0.0] * len(token_ids)


def pack_trajectories(trajectories: list[TokenTrajectory], pad_id: int) -> dict[str, torch.Tensor]:
    """Train tensors of a batch of trajectories.

    Args:
        trajectories: B trajectories (any lengths; one with no tokens after its prompt trains on
            nothing: its row of ``response_mask`` is all 0).
        pad_id: the tokenizer's pad id.

    Returns:
        ``input_ids`` [B, P + R] int64 (prompts left-padded to P, the rest right-padded to R),
        ``attention_mask`` [B, P + R] int64 (1 on every real token, observations included),
        ``response_mask`` [B, R] bool (1 on generated tokens only) and ``old_logprobs`` [B, R]
        float32 (behaviour log-probs, 0 off the mask). R is at least 1.
    """
    if not trajectories:
        raise ValueError("pack_trajectories needs at least one trajectory")
    rows = len(trajectories)
    width = max(len(t.prompt_ids) for t in trajectories)
    resp = max(1, max(len(t.ids) for t in trajectories))
    prompt = torch.full((rows, width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((rows, width), dtype=torch.long)
    response = torch.full((rows, resp), pad_id, dtype=torch.long)
    response_attention = torch.zeros((rows, resp), dtype=torch.long)
    loss_mask = torch.zeros((rows, resp), dtype=torch.bool)
    logprobs = torch.zeros((rows, resp), dtype=torch.float32)
    for i, traj in enumerate(trajectories):
        p, n = len(traj.prompt_ids), len(traj.ids)
        prompt[i, width - p :] = torch.tensor(traj.prompt_ids, dtype=torch.long)
        prompt_mask[i, width - p :] = 1
        if n:
            response[i, :n] = torch.tensor(traj.ids, dtype=torch.long)
            response_attention[i, :n] = 1
            loss_mask[i, :n] = torch.tensor(traj.loss_mask, dtype=torch.bool)
            logprobs[i, :n] = torch.tensor(traj.logprobs, dtype=torch.float32)
    return {
        "input_ids": torch.cat([prompt, response], dim=1),
        "attention_mask": torch.cat([prompt_mask, response_attention], dim=1),
        "response_mask": loss_mask,
        "old_logprobs": logprobs,
    }
