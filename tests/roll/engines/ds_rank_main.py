"""One data-parallel rank of the DeepSpeed engine tests, run as its own process.

    python tests/roll/engines/ds_rank_main.py --rank 0 --world 2 --address tcp://127.0.0.1:PORT \
        --stages 2 3 --out DIR --steps 5 (--save-after 3 | --load-from FOLDER)

Joins a gloo group (as ActorWorker.init_distributed does) and, for each ZeRO stage in turn (one
process for several stages saves the ~6 s import per process), trains a fresh engine on its
contiguous share of the batch from ``make_batch``. Writes ``DIR/rank{r}.pt``: per stage, the
per-step stats and the weights after every step. ``--save-after k`` saves a DeepSpeed checkpoint
to DIR/ckpt{stage} after step k and trains on; ``--load-from FOLDER`` starts each stage from
FOLDER/ckpt{stage}. Also imported by the tests for the shared batch, loss and config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROWS, PROMPT_LEN, RESPONSE_LEN = 8, 6, 5
# Response lengths: both halves (the two ranks' shares) hold 10 tokens, so per-rank token-mean
# shares averaged over ranks equal whole-batch token-mean shares.
RESPONSE_LENGTHS = (1, 3, 4, 2, 2, 4, 3, 1)


def tiny_model() -> torch.nn.Module:
    from roll.models import build_tiny_model, build_tokenizer
    from roll.models.config import TinyModelConfig

    return build_tiny_model(TinyModelConfig(vocab="digits"), build_tokenizer("digits"))


def optim_config(**overrides):
    from roll.engines.config import OptimConfig

    fields = dict(lr=1e-2, micro_batch_size=2, mini_batches=1, max_grad_norm=0.5, warmup_steps=1)
    return OptimConfig(**(fields | overrides))


@torch.no_grad()
def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """A fixed GRPO-style batch: prompt + response ids, masks, advantages and old log-probs
    (from the freshly built tiny model, so the first PPO ratio is 1)."""
    from roll.engines.logprobs import response_logprobs

    gen = torch.Generator().manual_seed(seed)
    vocab = tiny_model().config.vocab_size
    ids = torch.randint(3, vocab, (ROWS, PROMPT_LEN + RESPONSE_LEN), generator=gen)
    attention = torch.ones_like(ids)
    response_mask = torch.zeros(ROWS, RESPONSE_LEN)
    for row, length in enumerate(RESPONSE_LENGTHS):
        response_mask[row, :length] = 1
    advantages = torch.randn(ROWS, generator=gen)
    old = response_logprobs(tiny_model().eval(), ids, attention, RESPONSE_LEN)
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "response_mask": response_mask,
        "token_advantages": advantages[:, None] * response_mask,
        "old_logprobs": old * response_mask,
    }


def policy_loss(model, micro: dict[str, torch.Tensor]):
    """Token-mean PPO-clip loss (as the actor's GRPO loss with kl_coef 0)."""
    from roll.engines.logprobs import response_logprobs

    logp = response_logprobs(
        model, micro["input_ids"], micro["attention_mask"], micro["response_mask"].shape[1]
    )
    mask = micro["response_mask"]
    ratio = torch.exp(logp - micro["old_logprobs"])
    adv = micro["token_advantages"]
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
    loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"loss/total": float(loss.detach())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--stages", type=int, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--save-after", type=int)
    parser.add_argument("--load-from", type=Path)
    args = parser.parse_args()

    import torch.distributed as dist

    from roll.engines.deepspeed_engine import DeepSpeedConfig, DeepSpeedTrainEngine

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=args.address, rank=args.rank, world_size=args.world)
    batch = make_batch()
    share = ROWS // args.world
    mine = {k: v[args.rank * share : (args.rank + 1) * share] for k, v in batch.items()}
    records = {}
    for stage in args.stages:
        config = DeepSpeedConfig(zero_stage=stage)
        engine = DeepSpeedTrainEngine(tiny_model(), optim_config(), config, total_steps=8, role="actor")
        if args.load_from:
            engine.load_checkpoint(args.load_from / f"ckpt{stage}")
        record = records[stage] = {"stats": [], "weights": []}
        for step in range(1, args.steps + 1):
            record["stats"].append(engine.train_step(mine, policy_loss, "response_mask"))
            record["weights"].append(engine.state_dict_numpy())
            if step == args.save_after:
                engine.save_checkpoint(args.out / f"ckpt{stage}")
        engine.destroy()
    torch.save(records, args.out / f"rank{args.rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
