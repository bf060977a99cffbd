"""How close roll runs to this machine's limits (a benchmark, not a test).

Four numbers, each printed with its target and PASS or BELOW:

  decode    rollout decode tokens/s of roll's HF engine on SmolLM2-135M, against the memory-bound
            limit: each decode step reads every weight once, so at batch B the limit is
            B * copy bandwidth / model bytes. Copy bandwidth counts bytes read + written by a
            large tensor copy (the generous reading, so the limit is high and the share honest).
            Target: >= 50 % at batch >= 8. Also printed: the compute-bound limit (matmul FLOPs
            per token, 2 * params, at the measured matmul peak) and the share of the roofline,
            the lower of the two limits: at larger batches a CPU is compute-bound first.
  train     training tokens/s of roll's torch engine (the actor's loss: log-probs, entropy,
            backward, AdamW step) on SmolLM2-135M, as achieved FLOP/s against the measured
            matmul peak of the same dtype. FLOPs count what is computed: 6 * non-embedding
            params per token (forward + backward) + 6 * hidden * vocab per scored token; with
            prompts shared within a group, a prompt counts once per group (attention scores and
            the element-wise ops are left out, which understates the share a little).
            Target: >= 40 % of the matmul peak.
  dispatch  driver-side overhead of one call through a WorkerGroup (a no-op method, one and
            two ranks) on a local Ray. Target: < 5 ms.
  sync      weight sync through the object store as roll does it (numpy state dict: ray.put on
            the publisher, ray.get + copy into the model on the receiver), SmolLM2 fp32.
            Target: >= 1 GB/s.

Medians after warm-up runs (warm-up excluded). Timings on a shared machine are noisy: note the
load average printed at the start and the end.

    python bench/roofline.py                      # everything, fp32 and bf16 (~5 min on 2 cores)
    python bench/roofline.py --parts decode train --dtypes bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

TARGETS = {"decode": 0.50, "train": 0.40, "dispatch_ms": 5.0, "sync_gbs": 1.0}
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "BELOW"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---- machine ceilings --------------------------------------------------------------------------
def copy_bandwidth_gbs(mbytes: int = 256) -> float:
    """Bytes read + written per second by a large float32 tensor copy."""
    src = torch.randn(mbytes * 2**20 // 4)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), repeats=7, warmup=2)
    return 2 * src.numel() * 4 / seconds / 1e9


def matmul_peak_gflops(dtype: torch.dtype) -> float:
    """Best median GFLOP/s of square matmuls (n = 1024, 2048)."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        seconds = median_time(lambda a=a, b=b: a @ b, repeats=5, warmup=2)
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


# ---- model pieces ------------------------------------------------------------------------------
def load_smol(dtype: str):
    from roll.models import load_model_and_tokenizer
    from roll.models.config import ModelConfig
    from roll.models.sources import prepare_model_source

    cfg = ModelConfig(source="smollm2", dtype=dtype)
    prepare_model_source(cfg)
    return load_model_and_tokenizer(cfg)


def chat_prompts(tokenizer, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        messages = [
            {"role": "user", "content": f"What is {i % 10} + {(3 * i) % 10}? Reply with only the number."}
        ]
        out.append(
            list(
                tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
        )
    return out


def bench_decode(
    dtype: str, batches: list[int], bandwidth_gbs: float, peak_gflops: float
) -> list[tuple[str, float, bool]]:
    """Decode tokens/s = batch * decode steps / (time(33 new tokens) - time(1 new token))."""
    from roll.engines.base import SamplingParams
    from roll.engines.hf_engine import HFInferEngine

    model, tokenizer = load_smol(dtype)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # matmul FLOPs a token: every weight but the embedding lookup's (lm_head counted, tied or not)
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    flops_per_token = 2 * sum(p.numel() for p in model.parameters() if p is not embed or p is head)
    engine = HFInferEngine(model, tokenizer)
    engine.eos_ids = []  # no row may finish early: every step decodes the whole batch
    model.generation_config.eos_token_id = None
    rows = []
    for batch in batches:
        prompts = chat_prompts(tokenizer, batch)
        widths: dict[int, int] = {}

        def run(n: int, prompts=prompts, widths=widths) -> None:
            out = engine.generate(prompts, SamplingParams(max_new_tokens=n))
            widths[n] = min(widths.get(n, n), out.response_ids.shape[1])

        t_long = median_time(lambda: run(33), repeats=3)
        t_short = median_time(lambda: run(1), repeats=3)
        steps = widths[33] - 1  # decode steps after the first token (33 unless all rows stopped)
        achieved = batch * steps / (t_long - t_short)
        limit = batch * bandwidth_gbs * 1e9 / model_bytes
        compute = peak_gflops * 1e9 / flops_per_token
        share = achieved / limit
        ok = share >= TARGETS["decode"]
        print(
            f"decode {dtype} batch {batch}: {achieved:.0f} tok/s, memory-bound limit {limit:.0f} tok/s "
            f"({model_bytes / 1e6:.0f} MB/step at {bandwidth_gbs:.1f} GB/s) = {share:.0%} "
            f"[target >= {TARGETS['decode']:.0%}] {verdict(ok)}; compute-bound limit {compute:.0f} "
            f"tok/s ({flops_per_token / 1e6:.0f} MFLOP/token at {peak_gflops:.0f} GFLOP/s): "
            f"{achieved / min(limit, compute):.0%} of the roofline",
            flush=True,
        )
        rows.append((f"decode {dtype} b{batch}", share, ok))
    return rows


def bench_train(dtype: str, peak_gflops: float, prompts: int = 4, group: int = 8, response: int = 32):
    """One optimizer step of the actor loss over ``prompts x group`` rows (full-length responses)."""
    from roll.engines.config import OptimConfig
    from roll.engines.logprobs import response_logprobs
    from roll.engines.torch_engine import TorchTrainEngine

    model, tokenizer = load_smol("fp32")  # fp32 master weights; bf16 = autocast (train.dtype)
    cfg = model.config
    engine = TorchTrainEngine(
        model, OptimConfig(lr=1e-7, micro_batch_size=prompts * group, dtype=dtype), 100, "actor"
    )
    ids_list = chat_prompts(tokenizer, prompts)
    width = max(len(p) for p in ids_list)
    gen = torch.Generator().manual_seed(0)
    rows = prompts * group
    input_ids = torch.full((rows, width + response), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for i, ids in enumerate(ids_list):
        for k in range(group):
            r = i * group + k
            input_ids[r, width - len(ids) : width] = torch.tensor(ids)
            attention[r, width - len(ids) :] = 1
            input_ids[r, width:] = torch.randint(100, cfg.vocab_size, (response,), generator=gen)
    tensors = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "response_mask": torch.ones(rows, response, dtype=torch.bool),
        "advantages": torch.randn(rows, generator=gen),
    }

    def loss_fn(net, micro):
        logp, entropy = response_logprobs(
            net, micro["input_ids"], micro["attention_mask"], response, with_entropy=True
        )
        mask = micro["response_mask"].float()
        loss = -(logp * micro["advantages"][:, None] * mask).sum() / mask.sum()
        return loss, {"entropy": float((entropy.detach() * mask).sum() / mask.sum())}

    seconds = median_time(lambda: engine.train_step(tensors, loss_fn, "response_mask"), repeats=3)
    embed = cfg.vocab_size * cfg.hidden_size
    body = sum(p.numel() for p in model.parameters()) - embed
    computed_tokens = prompts * width + rows * (response - 1)  # shared prompts run once per group
    scored = rows * response
    flops = 6 * body * computed_tokens + 6 * embed * scored
    achieved = flops / seconds / 1e9
    share = achieved / peak_gflops
    ok = share >= TARGETS["train"]
    print(
        f"train {dtype}: {rows * (width + response) / seconds:.0f} tok/s of rows "
        f"({computed_tokens} tokens computed, {seconds:.2f} s/step), {achieved:.0f} GFLOP/s vs matmul peak "
        f"{peak_gflops:.0f} GFLOP/s = {share:.0%} [target >= {TARGETS['train']:.0%}] {verdict(ok)}",
        flush=True,
    )
    return [(f"train {dtype}", share, ok)]


# ---- controller and object store -----------------------------------------------------------------
def bench_ray(parts: list[str]) -> list[tuple[str, float, bool]]:
    import ray

    from roll.controller import Dispatch, Worker, WorkerGroup, register
    from roll.engines.weights import load_numpy_state, tensors_to_numpy

    class Noop(Worker):
        @register(Dispatch.ONE_TO_ALL)
        def noop(self) -> None:
            return None

    class Weights(Worker):
        def __init__(self, rank: int, world_size: int, role: str) -> None:
            super().__init__(rank, world_size, role)
            torch.set_num_threads(1)
            self.model, _ = load_smol("fp32")

        @register(Dispatch.ONE_TO_ALL, collect=lambda refs: refs[0])
        def publish(self) -> list:
            return [ray.put(tensors_to_numpy(self.model.state_dict()))]

        @register(Dispatch.ONE_TO_ALL, collect=lambda results: results[0])
        def receive(self, refs: list) -> int:
            return load_numpy_state(self.model, ray.get(refs[0]))

    rows = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        if "dispatch" in parts:
            for ranks in (1, 2):
                group = WorkerGroup(Noop, role="noop", actor_options=[{"num_cpus": 0.25}] * ranks)
                ms = median_time(group.noop, repeats=200, warmup=20) * 1e3
                ok = ms < TARGETS["dispatch_ms"]
                print(
                    f"dispatch {ranks} rank(s): {ms:.2f} ms per call "
                    f"[target < {TARGETS['dispatch_ms']} ms] {verdict(ok)}",
                    flush=True,
                )
                rows.append((f"dispatch {ranks} ranks ms", ms, ok))
                group.kill()
        if "sync" in parts:
            load_smol("fp32")  # the cache folder exists before the workers load it
            publisher = WorkerGroup(Weights, role="publisher", actor_options=[{"num_cpus": 0.5}])
            receiver = WorkerGroup(Weights, role="receiver", actor_options=[{"num_cpus": 0.5}])
            copied = receiver.receive(publisher.publish())
            seconds = median_time(lambda: receiver.receive(publisher.publish()), repeats=5)
            gbs = copied / seconds / 1e9
            ok = gbs >= TARGETS["sync_gbs"]
            print(
                f"weight sync: {copied / 1e6:.0f} MB in {seconds:.2f} s = {gbs:.2f} GB/s "
                f"[target >= {TARGETS['sync_gbs']} GB/s] {verdict(ok)}",
                flush=True,
            )
            rows.append(("sync GB/s", gbs, ok))
            publisher.kill()
            receiver.kill()
    finally:
        ray.shutdown()
    return rows


def run_as_in_workers() -> None:
    """Re-run this process with the environment roll's Ray workers get (OpenMP spin, malloc
    thresholds; roll.jobs.local): glibc reads its malloc settings only at start. Without them
    the packed decode weights and per-step logits are fresh mmaps, page-faulted on every use
    (SmolLM2 fp32, 8 rows: 145 -> 182 tok/s here)."""
    from roll.jobs.local import worker_env_defaults

    wanted = worker_env_defaults()
    if all(os.environ.get(k) == v for k, v in wanted.items()):
        return
    print("re-running with roll's worker environment: " + " ".join(f"{k}={v}" for k, v in wanted.items()))
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", nargs="+", default=["decode", "train", "dispatch", "sync"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 32], help="decode batch sizes")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    run_as_in_workers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    print(f"load average at start: {load_average()}; torch threads {args.threads}", flush=True)
    rows = []
    peaks: dict[str, float] = {}

    def peak(dtype: str) -> float:
        if dtype not in peaks:
            peaks[dtype] = matmul_peak_gflops(TORCH_DTYPES[dtype])
            print(f"matmul peak {dtype}: {peaks[dtype]:.0f} GFLOP/s", flush=True)
        return peaks[dtype]

    if "decode" in args.parts:
        bandwidth = copy_bandwidth_gbs()
        print(f"copy bandwidth (read + write): {bandwidth:.1f} GB/s", flush=True)
        for dtype in args.dtypes:
            rows += bench_decode(dtype, args.batches, bandwidth, peak(dtype))
    if "train" in args.parts:
        for dtype in args.dtypes:
            rows += bench_train(dtype, peak(dtype))
    if {"dispatch", "sync"} & set(args.parts):
        rows += bench_ray(args.parts)
    print(f"load average at end: {load_average()}")
    print("summary: " + "; ".join(f"{name} {value:.2f} {verdict(ok)}" for name, value, ok in rows))


if __name__ == "__main__":
    main()
