"""The lean decoder's per-layer decode loop in C++ (built once, on first use, with torch's
cpp_extension; cached under ``TORCH_EXTENSIONS_DIR``, by default ~/.cache/torch_extensions).

A SmolLM2 decode step is ~40 small ATen ops a layer around the four packed matmuls; from Python
each op costs a few microseconds of binding and dispatch, ~15 ms a step over 30 layers on this
CPU. This runs the very same ATen ops in the same order from C++ (so the same numbers, bitwise,
as :meth:`LeanDecoder._decode_layers`), without the Python in between.

``ROLL_DECODE_EXT=0`` turns it off. Where it cannot be built (no C++ compiler, no headers) the
reason is logged once and the Python loop runs instead.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import ModuleType

log = logging.getLogger(__name__)

NAME = "roll_decode_v1"  # bump when SOURCE changes in a way the build cache would not notice

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/core/dispatch/Dispatcher.h>

using Opt = c10::optional<at::Tensor>;

// torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "") as _linear does it.
static at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& w, const Opt& b) {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  at::Tensor in = x.scalar_type() == w.scalar_type() ? x : x.to(w.scalar_type());
  torch::jit::Stack stack;
  stack.emplace_back(in);
  stack.emplace_back(w);
  stack.emplace_back(b);
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<c10::optional<at::Scalar>>());
  stack.emplace_back(c10::optional<std::string>(std::string("")));
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// fast_decode._rms
static at::Tensor rms(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor h = at::rms_norm(x.to(at::kFloat), {x.size(-1)}, c10::nullopt, eps);
  return w * h.to(x.scalar_type());
}

// LeanDecoder._decode_layers, op for op.
at::Tensor decode_layers(at::Tensor h, int64_t col, const at::Tensor& cos, const at::Tensor& sin,
                         const at::Tensor& mask, int64_t heads, int64_t kv, int64_t d, double scale,
                         const std::vector<at::Tensor>& ln1, const std::vector<double>& eps1,
                         const std::vector<at::Tensor>& ln2, const std::vector<double>& eps2,
                         const std::vector<at::Tensor>& qkv_w, const std::vector<Opt>& qkv_b,
                         const std::vector<at::Tensor>& o_w, const std::vector<Opt>& o_b,
                         const std::vector<at::Tensor>& gu_w, const std::vector<Opt>& gu_b,
                         const std::vector<at::Tensor>& down_w, const std::vector<Opt>& down_b,
                         const std::vector<at::Tensor>& keys_cache,
                         const std::vector<at::Tensor>& values_cache) {
  at::NoGradGuard no_grad;
  const int64_t b = h.size(0), qk_heads = heads + kv, half = d / 2;
  for (size_t i = 0; i < ln1.size(); ++i) {
    at::Tensor qkv = packed_linear(rms(h, ln1[i], eps1[i]), qkv_w[i], qkv_b[i]).view({b, qk_heads + kv, d});
    at::Tensor qk = qkv.slice(1, 0, qk_heads);
    at::Tensor turned = at::cat({-qk.slice(-1, half, d), qk.slice(-1, 0, half)}, -1) * sin;
    qk = turned.add_(qk * cos);
    at::Tensor keys = keys_cache[i], values = values_cache[i];
    keys.select(2, col).copy_(qk.slice(1, heads, qk_heads));
    values.select(2, col).copy_(qkv.slice(1, qk_heads, qk_heads + kv));
    keys = keys.slice(2, 0, col + 1);
    values = values.slice(2, 0, col + 1);
    at::Tensor qg = qk.slice(1, 0, heads).reshape({b, kv, heads / kv, d}).to(keys.scalar_type());
    at::Tensor scores = at::matmul(qg, keys.transpose(-1, -2)).mul_(scale) + mask;
    at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(values.scalar_type());
    at::Tensor attn = at::matmul(probs, values).reshape({b, heads * d}).to(h.scalar_type());
    h = h + packed_linear(attn, o_w[i], o_b[i]);
    auto gate_up = packed_linear(rms(h, ln2[i], eps2[i]), gu_w[i], gu_b[i]).chunk(2, -1);
    h = h + packed_linear(at::silu(gate_up[0]).mul_(gate_up[1]), down_w[i], down_b[i]);
  }
  return h;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_layers", &decode_layers, "LeanDecoder._decode_layers in C++");
}
"""

_lock = threading.Lock()
_state: dict[str, object] = {}


def enabled() -> bool:
    return os.environ.get("ROLL_DECODE_EXT", "1") not in ("0", "false", "no", "off")


def load() -> ModuleType | None:
    """The built extension, building it on the first call (None where it cannot be built; the
    reason is logged once and kept in :func:`failure`)."""
    if not enabled():
        return None
    with _lock:
        if "module" in _state or "error" in _state:
            return _state.get("module")  # type: ignore[return-value]
        try:
            from torch.utils import cpp_extension

            folder = cpp_extension._get_build_directory(NAME, verbose=False)
            if not os.path.exists(os.path.join(folder, f"{NAME}.so")):
                print(
                    "roll: building the C++ decode loop once (~40 s on 2 cores; cached in "
                    f"{os.path.dirname(folder)}; ROLL_DECODE_EXT=0 skips it)",
                    file=sys.stderr,
                    flush=True,
                )
            module = cpp_extension.load_inline(
                name=NAME, cpp_sources=SOURCE, extra_cflags=["-O2"], verbose=False
            )
        except Exception as exc:  # no compiler, no headers, a failed build: keep the Python loop
            _state["error"] = f"{type(exc).__name__}: {exc}"
            log.warning("roll's C++ decode loop is unavailable, decoding in Python: %s", _state["error"])
            return None
        _state["module"] = module
        return module


def failure() -> str | None:
    """Why the extension could not be built (None: it was, or it was not tried)."""
    return _state.get("error")  # type: ignore[return-value]
