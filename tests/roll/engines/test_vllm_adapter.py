"""vLLM engine adapter on CPU: the pure parts, against fakes of vLLM's output objects (no vllm).

The fakes copy the attributes roll reads from vllm.outputs.RequestOutput / CompletionOutput and
vllm.logprobs.Logprob (vLLM 0.10-0.2x): token_ids, logprobs (per position a dict token id ->
Logprob), finish_reason ("stop" | "length" | "abort" | None) and stop_reason (a stop string, a stop
token id, or None for EOS).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from roll.devices.offload import OffloadState
from roll.engines.base import SamplingParams
from roll.engines.vllm_engine import (
    EngineSleepState,
    VLLMInferEngine,
    build_llm_kwargs,
    build_prompts,
    build_vllm_sampling_kwargs,
    check_logprobs_mode,
    choose_logprobs_mode,
    eos_token_ids,
    extract_outputs,
    hf_to_vllm_weight_items,
    import_vllm,
    model_folder,
)
from roll.engines.weights import state_to_numpy
from roll.errors import ConfigError, ModelSourceError, StateError
from roll.models.config import ModelConfig

EOS, PAD = 2, 0


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


def request(
    rid: str, tokens: list[int], lps: list[float], finish: str | None, stop_reason=None
) -> RequestOutput:
    # Each position also lists a runner-up token, as logprobs=1 would; only the sampled one is read.
    positions = [{t: Logprob(lp, 1), 99: Logprob(-9.0, 2)} for t, lp in zip(tokens, lps, strict=True)]
    completion = CompletionOutput(0, "", tokens, sum(lps), positions, finish, stop_reason)
    return RequestOutput(rid, [5, 6], [completion], finished=finish is not None)


# ---- outputs ------------------------------------------------------------------------------------
def test_extract_outputs_eos_length_and_stop_string_rows() -> None:
    outputs = [
        request("a", [7, 8, EOS], [-0.5, -0.25, -0.125], "stop"),  # EOS: kept, then padding
        request("b", [9, 10, 11, 12], [-1.0, -2.0, -3.0, -4.0], "length"),  # truncated at 4
        request("c", [13, 14], [-0.75, -1.5], "stop", stop_reason="="),  # stop string completed by 14
    ]
    out = extract_outputs(outputs, max_new_tokens=4, pad_id=PAD, eos_ids=[EOS], stop=("=",))
    assert out.response_ids.tolist() == [[7, 8, EOS, PAD], [9, 10, 11, 12], [13, 14, PAD, PAD]]
    assert out.response_mask.tolist() == [
        [True, True, True, False],
        [True, True, True, True],
        [True, True, False, False],
    ]
    expected = torch.tensor([[-0.5, -0.25, -0.125, 0.0], [-1.0, -2.0, -3.0, -4.0], [-0.75, -1.5, 0.0, 0.0]])
    torch.testing.assert_close(out.logprobs, expected, rtol=0, atol=0)
    assert out.logprobs.dtype == torch.float32 and out.response_ids.dtype == torch.long
    assert out.finish_reasons == ["stop", "length", "stop"]


def test_extract_outputs_width_is_the_longest_response_and_eos_ends_a_row() -> None:
    # An EOS inside the tokens (e.g. one of several EOS ids) ends the row there, as in the HF engine.
    outputs = [
        request("a", [4, EOS, 5], [-0.5, -1.0, -2.0], "length"),
        request("b", [6], [-0.25], "stop", EOS),
    ]
    out = extract_outputs(outputs, max_new_tokens=8, pad_id=PAD, eos_ids={EOS, 3})
    assert out.response_ids.tolist() == [[4, EOS], [6, PAD]]
    assert out.response_mask.tolist() == [[True, True], [True, False]]
    assert out.logprobs.tolist() == [[-0.5, -1.0], [-0.25, 0.0]]
    assert out.finish_reasons == ["stop", "stop"]


def test_extract_outputs_aborted_and_unfinished_rows() -> None:
    outputs = [
        request("a", [7, 8], [-0.5, -0.5], None),  # still running when aborted (cumulative output)
        request("b", [], [], "abort"),
    ]
    out = extract_outputs(outputs, max_new_tokens=4, pad_id=PAD, eos_ids=[EOS])
    assert out.response_ids.tolist() == [[7, 8], [PAD, PAD]]
    assert out.response_mask.tolist() == [[True, True], [False, False]]
    assert out.finish_reasons == ["abort", "abort"]


def test_extract_outputs_refuses_missing_logprobs_and_foreign_stop_strings() -> None:
    row = request("a", [7], [-0.5], "length")
    row.outputs[0].logprobs = None
    with pytest.raises(ValueError, match="logprobs=0"):
        extract_outputs([row], max_new_tokens=4, pad_id=PAD, eos_ids=[EOS])
    with pytest.raises(ValueError, match="not a requested stop string"):
        extract_outputs([request("a", [7], [-0.5], "stop", "\n")], 4, PAD, [EOS], stop=("=",))


# ---- requests -----------------------------------------------------------------------------------
def test_sampling_kwargs_greedy() -> None:
    kwargs = build_vllm_sampling_kwargs(SamplingParams(max_new_tokens=5, temperature=0.0, top_k=7), [EOS, 3])
    assert kwargs == {
        "n": 1,
        "max_tokens": 5,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "stop_token_ids": [EOS, 3],
        "stop": [],
        "include_stop_str_in_output": True,
        "skip_special_tokens": True,
        "detokenize": False,
        "logprobs": 0,
    }


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (SamplingParams(temperature=0.7), {"temperature": 0.7, "top_k": 0, "top_p": 1.0}),
        (SamplingParams(temperature=1.0, top_k=20), {"temperature": 1.0, "top_k": 20, "top_p": 1.0}),
        (SamplingParams(temperature=1.0, top_p=0.9), {"temperature": 1.0, "top_k": 0, "top_p": 0.9}),
    ],
)
def test_sampling_kwargs_temperature_top_k_top_p(params: SamplingParams, expected: dict) -> None:
    kwargs = build_vllm_sampling_kwargs(params, {EOS})
    assert {k: kwargs[k] for k in expected} == expected
    assert kwargs["logprobs"] == 0 and kwargs["stop_token_ids"] == [EOS]


def test_sampling_kwargs_stop_strings_need_detokenizing() -> None:
    kwargs = build_vllm_sampling_kwargs(SamplingParams(stop=("=", "\n")), [EOS])
    assert kwargs["stop"] == ["=", "\n"] and kwargs["detokenize"] is True
    assert kwargs["include_stop_str_in_output"] is True


def test_build_prompts() -> None:
    assert build_prompts([[1, 2, 3], [np.int64(4)]]) == [
        {"prompt_token_ids": [1, 2, 3]},
        {"prompt_token_ids": [4]},
    ]
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        build_prompts([[1], []])


def test_logprobs_mode_choice_and_check() -> None:
    assert choose_logprobs_mode(0.7, 0, 1.0) == "processed_logprobs"
    assert choose_logprobs_mode(0.0, 0, 1.0) == "processed_logprobs"
    assert choose_logprobs_mode(1.0, 20, 0.9) == "raw_logprobs"
    with pytest.raises(ConfigError, match="rollout.top_k: 0"):
        choose_logprobs_mode(0.7, 20, 1.0)
    check_logprobs_mode("processed_logprobs", SamplingParams(temperature=0.6))
    check_logprobs_mode("processed_logprobs", SamplingParams(temperature=0.0, top_p=0.5))
    check_logprobs_mode("raw_logprobs", SamplingParams(temperature=1.0, top_p=0.5))
    with pytest.raises(ConfigError, match="logprobs_mode=processed_logprobs"):
        check_logprobs_mode("processed_logprobs", SamplingParams(temperature=1.0, top_p=0.5))
    with pytest.raises(ConfigError, match="logprobs_mode=raw_logprobs"):
        check_logprobs_mode("raw_logprobs", SamplingParams(temperature=0.7))


def test_llm_kwargs(tmp_path: Path) -> None:
    kwargs = build_llm_kwargs(
        tmp_path,
        dtype="bf16",
        seed=3,
        colocated=True,
        gpu_memory_utilization=0.25,
        logprobs_mode="processed_logprobs",
        max_model_len=None,
        enforce_eager=False,
        extra={"enforce_eager": True},
    )
    assert kwargs["model"] == str(tmp_path) and kwargs["dtype"] == "bfloat16"
    assert kwargs["enable_sleep_mode"] is True and kwargs["logprobs_mode"] == "processed_logprobs"
    assert kwargs["generation_config"] == "vllm" and kwargs["enforce_eager"] is True
    assert "max_model_len" not in kwargs
    with pytest.raises(ConfigError, match="logprobs_mode"):
        build_llm_kwargs(
            tmp_path,
            dtype="fp32",
            seed=0,
            colocated=False,
            gpu_memory_utilization=0.5,
            logprobs_mode="raw_logits",
            max_model_len=64,
            enforce_eager=True,
        )


def test_eos_token_ids() -> None:
    assert eos_token_ids([2, 7], 2) == [2, 7]
    assert eos_token_ids(5, None) == [5]
    assert eos_token_ids(None, 3) == [3]


# ---- weights ------------------------------------------------------------------------------------
def test_weight_items_tied_embeddings_drop_lm_head_and_restore_bf16() -> None:
    embed = torch.arange(6, dtype=torch.float32).reshape(3, 2) / 4  # exact in bf16
    layer = torch.tensor([[0.5, -1.25]], dtype=torch.bfloat16)
    state = {
        "model.embed_tokens.weight": embed.numpy(),
        "model.layers.0.mlp.down_proj.weight": layer.view(torch.int16).numpy(),  # bf16 travels as int16
        "lm_head.weight": embed.numpy(),
    }
    items = dict(hf_to_vllm_weight_items(state, torch.bfloat16, tie_word_embeddings=True))
    assert sorted(items) == ["model.embed_tokens.weight", "model.layers.0.mlp.down_proj.weight"]
    assert all(t.dtype == torch.bfloat16 for t in items.values())
    assert items["model.layers.0.mlp.down_proj.weight"].tolist() == [[0.5, -1.25]]
    assert torch.equal(items["model.embed_tokens.weight"], embed.to(torch.bfloat16))


def test_weight_items_tied_lm_head_only_becomes_the_embedding() -> None:
    head = np.ones((3, 2), dtype=np.float32)
    items = dict(
        hf_to_vllm_weight_items({"module.lm_head.weight": head}, torch.float32, tie_word_embeddings=True)
    )
    assert list(items) == ["model.embed_tokens.weight"] and items["model.embed_tokens.weight"].sum() == 6


def test_weight_items_untied_keep_lm_head_and_need_it() -> None:
    state = {
        "model.embed_tokens.weight": np.zeros((3, 2), np.float32),
        "lm_head.weight": np.ones((3, 2), np.float32),
    }
    items = dict(hf_to_vllm_weight_items(state, torch.float32))
    assert sorted(items) == ["lm_head.weight", "model.embed_tokens.weight"]
    embed_only = {"model.embed_tokens.weight": state["model.embed_tokens.weight"]}
    with pytest.raises(KeyError, match="lm_head.weight"):
        list(hf_to_vllm_weight_items(embed_only, torch.float32))


def test_weight_items_from_a_real_tied_model_state() -> None:
    from roll.models import build_tiny_model, build_tokenizer
    from roll.models.config import TinyModelConfig

    tok = build_tokenizer("digits")
    model = build_tiny_model(TinyModelConfig(vocab="digits", arch="llama"), tok).to(torch.bfloat16)
    state = state_to_numpy(model)
    items = dict(hf_to_vllm_weight_items(state, torch.bfloat16, tie_word_embeddings=True))
    names = {n for n, _ in model.named_parameters()}  # tied lm_head is listed once, as the embedding
    assert set(items) == names - {"lm_head.weight"}
    for name, tensor in items.items():
        assert torch.equal(tensor, model.state_dict()[name]), name


# ---- sleep state machine ------------------------------------------------------------------------
def test_sleep_state_transitions_call_sleep_and_wake_and_count_bytes() -> None:
    calls, free = [], [100]

    def sleep() -> None:
        calls.append("sleep")
        free[0] += 40

    def wake() -> None:
        calls.append("wake")
        free[0] -= 40

    machine = EngineSleepState("rollout", sleep, wake, lambda: free[0])
    machine.require_active("generate")
    assert machine.offload() == 40 and machine.state is OffloadState.OFFLOADED
    with pytest.raises(StateError, match="rollout: cannot generate while OFFLOADED; call reload"):
        machine.require_active("generate")
    with pytest.raises(StateError, match="already offloaded"):
        machine.offload()
    assert machine.reload() == 40 and machine.state is OffloadState.ACTIVE
    with pytest.raises(StateError, match="nothing is offloaded"):
        machine.reload()
    assert calls == ["sleep", "wake"]
    stats = machine.stats()
    assert stats["state"] == "active" and stats["total_offloads"] == 1 and stats["total_reloads"] == 1
    assert stats["bytes_moved_total"] == 80 and stats["offloaded_bytes"] == 0
    assert stats["last_offload_s"] is not None and stats["last_reload_s"] is not None


def test_sleep_state_failed_sleep_keeps_active_and_bookkeeping_only_without_hooks() -> None:
    def broken() -> None:
        raise RuntimeError("cuda error")

    machine = EngineSleepState("rollout", broken, None)
    with pytest.raises(RuntimeError):
        machine.offload()
    assert machine.state is OffloadState.ACTIVE and machine.stats()["total_offloads"] == 0
    plain = EngineSleepState("rollout")
    assert plain.offload() == 0 and plain.state is OffloadState.OFFLOADED
    assert plain.reload() == 0 and plain.stats()["total_reloads"] == 1


# ---- lazy import --------------------------------------------------------------------------------
def test_missing_vllm_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    message = (
        "engine: vllm needs the vllm extra on a GPU host: pip install -e '.[vllm]'; use engine: hf on CPU"
    )
    with pytest.raises(ModelSourceError) as err:
        import_vllm()
    assert message in str(err.value)
    with pytest.raises(ModelSourceError, match=r"pip install -e '\.\[vllm\]'"):
        VLLMInferEngine("/nonexistent", tokenizer=None)


def test_model_folder_needs_a_hugging_face_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="model.source 'tiny' has none"):
        model_folder(ModelConfig(source="tiny"))
    with pytest.raises(ModelSourceError, match="no config.json"):
        model_folder(ModelConfig(source="smollm2", cache_dir=str(tmp_path / "missing")))
    (tmp_path / "config.json").write_text("{}")
    assert model_folder(ModelConfig(source="smollm2", cache_dir=str(tmp_path))) == tmp_path.resolve()


# ---- the engine's control flow against a fake vllm module ----------------------------------------
class FakeLLMEngine:
    """vLLM's LLMEngine as the adapter drives it: add_request returns an internal id (external id plus
    a suffix, as vLLM >= 0.11 does), step() gives cumulative outputs, abort_request takes our ids.
    Request r emits tokens 10 + r, 11 + r, ...; an EOS (the last stop token id) as token number
    ``eos_after`` (never when 0)."""

    def __init__(self, output_ids: str, eos_after: int, step_s: float) -> None:
        self.output_ids, self.eos_after, self.step_s = output_ids, eos_after, step_s
        self.running: dict[str, dict] = {}
        self.aborted: list[str] = []

    def add_request(self, request_id: str, prompt: dict, params: FakeSamplingParams) -> str:
        base = 10 + len(self.running)
        self.running[request_id] = {"prompt": prompt, "params": params.kwargs, "base": base, "tokens": []}
        return f"{request_id}-abcd1234"

    def has_unfinished_requests(self) -> bool:
        return bool(self.running)

    def step(self) -> list[RequestOutput]:
        import time

        time.sleep(self.step_s)
        outputs = []
        for rid, req in list(self.running.items()):
            t = len(req["tokens"])
            ends = self.eos_after and t + 1 == self.eos_after
            token = req["params"]["stop_token_ids"][-1] if ends else req["base"] + t
            req["tokens"].append(token)
            finish = None
            if token in req["params"]["stop_token_ids"]:
                finish = "stop"
            elif len(req["tokens"]) == req["params"]["max_tokens"]:
                finish = "length"
            lps = [-0.125 * (i + 1) for i in range(len(req["tokens"]))]
            out_id = rid if self.output_ids == "external" else f"{rid}-abcd1234"
            outputs.append(request(out_id, list(req["tokens"]), lps, finish))
            if finish:
                del self.running[rid]
        return outputs

    def abort_request(self, request_ids: list[str]) -> None:
        self.aborted.extend(request_ids)
        for rid in request_ids:
            self.running.pop(rid, None)


class FakeSamplingParams:
    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs


class FakeLLM:
    instances: list[FakeLLM] = []

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        self.calls: list[str] = []
        self.loaded: list[tuple[str, torch.Tensor]] = []
        self.llm_engine = FakeLLMEngine(FakeLLM.output_ids, FakeLLM.eos_after, FakeLLM.step_s)
        FakeLLM.instances.append(self)

    def collective_rpc(self, method, args=()):  # noqa: ANN001 - vLLM calls method(worker, *args)
        model = type("Model", (), {"load_weights": lambda _, weights: self.loaded.extend(weights)})()
        worker = type("Worker", (), {"model_runner": type("Runner", (), {"model": model})()})()
        return [method(worker, *args)]

    def sleep(self, level: int) -> None:
        self.calls.append(f"sleep({level})")

    def wake_up(self) -> None:
        self.calls.append("wake_up")

    def reset_prefix_cache(self) -> None:
        self.calls.append("reset_prefix_cache")


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import types

    from roll.models import build_tiny_model, build_tokenizer
    from roll.models.config import TinyModelConfig

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances, FakeLLM.output_ids, FakeLLM.eos_after, FakeLLM.step_s = [], "internal", 3, 0.0
    tok = build_tokenizer("digits")
    model = build_tiny_model(TinyModelConfig(vocab="digits", arch="llama"), tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return tmp_path, tok, model


@pytest.mark.parametrize("output_ids", ["internal", "external"])
def test_engine_generates_in_prompt_order(fake_vllm, output_ids: str) -> None:
    folder, tok, _ = fake_vllm
    FakeLLM.output_ids = output_ids
    engine = VLLMInferEngine(folder, tok, dtype="fp32", colocated=True, logprobs_mode="processed_logprobs")
    llm = FakeLLM.instances[0]
    assert llm.kwargs["enable_sleep_mode"] is True and llm.kwargs["dtype"] == "float32"
    assert tok.eos_token_id in engine.eos_ids and engine.tie_word_embeddings
    out = engine.generate([[1, 2], [3], [4, 5, 6]], SamplingParams(max_new_tokens=4, temperature=0.7))
    eos = tok.eos_token_id
    assert out.response_ids.tolist() == [[10, 11, eos], [11, 12, eos], [12, 13, eos]]
    assert out.response_mask.all() and out.finish_reasons == ["stop", "stop", "stop"]
    assert out.logprobs[0].tolist() == [-0.125, -0.25, -0.375]
    sent = llm.llm_engine
    assert sent.running == {} and sent.aborted == []
    with pytest.raises(ConfigError, match="top_p"):  # this engine's mode cannot serve truncation at T=0.7
        engine.generate([[1]], SamplingParams(temperature=0.7, top_p=0.9))


def test_engine_update_weights_and_sleep(fake_vllm) -> None:
    folder, tok, model = fake_vllm
    engine = VLLMInferEngine(folder, tok, dtype="bf16")
    llm = FakeLLM.instances[0]
    nbytes = engine.update_weights(state_to_numpy(model))
    names = [name for name, _ in llm.loaded]
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    assert all(t.dtype == torch.bfloat16 for _, t in llm.loaded)
    assert nbytes == sum(t.numel() * 2 for _, t in llm.loaded)
    assert llm.calls == ["reset_prefix_cache"]
    stats = engine.offload()
    assert stats["state"] == "offloaded" and llm.calls[-1] == "sleep(1)"
    with pytest.raises(StateError, match="cannot generate while OFFLOADED"):
        engine.generate([[1]], SamplingParams())
    with pytest.raises(StateError, match="cannot update_weights while OFFLOADED"):
        engine.update_weights({})
    assert engine.reload()["state"] == "active" and llm.calls[-1] == "wake_up"


def test_engine_abort_all_keeps_partial_responses(fake_vllm) -> None:
    import threading
    import time

    folder, tok, _ = fake_vllm
    FakeLLM.eos_after, FakeLLM.step_s = 0, 0.002  # never ends on its own before max_new_tokens
    engine = VLLMInferEngine(folder, tok, dtype="fp32")
    assert engine.abort_all() == 0  # nothing in flight
    box: list = []
    thread = threading.Thread(
        target=lambda: box.append(engine.generate([[1], [2]], SamplingParams(max_new_tokens=100_000)))
    )
    thread.start()
    while thread.is_alive() and engine.abort_all() == 0:
        time.sleep(0.001)
    thread.join(timeout=30)
    out = box[0]
    assert out.finish_reasons == ["abort", "abort"]
    lengths = out.response_mask.sum(-1)
    assert (lengths >= 1).all() and (lengths < 100_000).all()
    assert sorted(FakeLLM.instances[0].llm_engine.aborted) == ["roll-1-0", "roll-1-1"]
    assert engine.abort(["roll-1-0"]) == 0
