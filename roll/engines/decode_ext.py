"""The lean decoder's per-layer decode loop in C++, with fused kernels (built once, on first use,
with torch's cpp_extension; cached under ``TORCH_EXTENSIONS_DIR``, by default
~/.cache/torch_extensions).

A SmolLM2 decode step is four packed matmuls a layer and, around them, ~40 small ATen ops (norms,
rotary, the cache write, a batched-matmul attention, softmax, SiLU), each a few microseconds of
dispatch and allocation whatever its size: ~10 ms a step over 30 layers on this CPU even when
called from C++. Here those ops are five loops a layer, compiled for this CPU
(``-march=native``): RMSNorm with the residual add, rotary with the cache write, single-query
grouped attention, SiLU-and-multiply. The matmuls stay oneDNN's.

The math is :meth:`LeanDecoder._decode_layers`' in float32, rounding to bf16 where that loop
stores a bf16 tensor the next matmul reads; it is not bitwise that loop (sums run in a different
order, and in bf16 it rounds less often), which tests/roll/engines/test_decode_ext.py bounds.

``ROLL_DECODE_EXT=0`` turns it off. Where it cannot be built (no C++ compiler, no headers) the
reason is logged once and the Python loop runs instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
from types import ModuleType

log = logging.getLogger(__name__)

VERSION = "roll_decode_v3"  # bump when SOURCE changes in a way the build cache would not notice
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-trapping-math"]

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/BFloat16.h>
#include <cmath>
#include <cstring>
#include <vector>

using Opt = c10::optional<at::Tensor>;
using bf16 = c10::BFloat16;

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

// fast_decode._linear: over a weight reordered for oneDNN, or a plain one
static at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const Opt& b, bool onednn) {
  if (onednn) return packed_linear(x, w, b);
  return at::linear(x.scalar_type() == w.scalar_type() ? x : x.to(w.scalar_type()), w, b);
}

// ---- element access: float math over float or bf16 storage ----------------------------------
static inline float ld(const float* p, int64_t i) { return p[i]; }
static inline float ld(const bf16* p, int64_t i) {
  uint32_t u = uint32_t(reinterpret_cast<const uint16_t*>(p)[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static inline void st(float* p, int64_t i, float v) { p[i] = v; }
static inline void st(bf16* p, int64_t i, float v) { p[i] = bf16(v); }  // round to nearest even
template <typename T> static inline float rnd(float v) { return v; }  // v as stored in T
template <> inline float rnd<bf16>(float v) { return static_cast<float>(bf16(v)); }

// exp(x) to ~2 ulp (Cephes' expf polynomial), vectorisable; 0 below -87.3
static inline float vexp(float x) {
  const float lo = x < -87.3f ? -87.3f : x, c = lo > 88.3f ? 88.3f : lo;
  const float k = std::floor(c * 1.44269504088896341f + 0.5f);
  const float r = c - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t bits = uint32_t(int32_t(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return x < -87.3f ? 0.0f : p * scale;
}

// h += delta (when given, rounded as h's dtype); x = X(w * H(rms_norm(h)))  (fast_decode._rms)
template <typename H, typename X>
static void rms_residual(H* h, const X* delta, const H* w, float eps, X* x, int64_t rows, int64_t n) {
  at::parallel_for(0, rows, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      H* hr = h + r * n;
      X* xr = x + r * n;
      float ss = 0.f;
      if (delta != nullptr) {
        const X* dr = delta + r * n;
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < n; ++i) {
          const float v = rnd<H>(ld(hr, i) + ld(dr, i));
          st(hr, i, v);
          ss += v * v;
        }
      } else {
#pragma omp simd reduction(+ : ss)
        for (int64_t i = 0; i < n; ++i) {
          const float v = ld(hr, i);
          ss += v * v;
        }
      }
      const float inv = 1.0f / std::sqrt(ss / float(n) + eps);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) st(xr, i, rnd<H>(ld(w, i) * rnd<H>(ld(hr, i) * inv)));
    }
  });
}

// rotary over the q and k heads of qkv [b, heads + 2 kv, d]; q (float, rounded as the cache's
// dtype) into q [b, heads, d]; k and v into cache column col of keys/values [b, kv, cap, d]
template <typename X, typename R, typename C>
static void rope_cache(const X* qkv, const R* cos, const R* sin, float* q, C* keys, C* values,
                       int64_t b, int64_t heads, int64_t kv, int64_t d, int64_t cap, int64_t col) {
  const int64_t half = d / 2, width = (heads + 2 * kv) * d;
  at::parallel_for(0, b, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const X* row = qkv + r * width;
      const R* cr = cos + r * d;
      const R* sr = sin + r * d;
      for (int64_t hh = 0; hh < heads; ++hh) {
        const X* x = row + hh * d;
        float* qo = q + (r * heads + hh) * d;
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) {
          const float turned = j < half ? -ld(x, j + half) : ld(x, j - half);
          qo[j] = rnd<C>(ld(x, j) * ld(cr, j) + turned * ld(sr, j));
        }
      }
      for (int64_t g = 0; g < kv; ++g) {
        const X* x = row + (heads + g) * d;
        C* ko = keys + ((r * kv + g) * cap + col) * d;
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) {
          const float turned = j < half ? -ld(x, j + half) : ld(x, j - half);
          st(ko, j, ld(x, j) * ld(cr, j) + turned * ld(sr, j));
        }
      }
      for (int64_t g = 0; g < kv; ++g) {
        const X* x = row + (heads + kv + g) * d;
        C* vo = values + ((r * kv + g) * cap + col) * d;
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) st(vo, j, ld(x, j));
      }
    }
  });
}

// one query per head over cache columns 0..t-1: softmax(q k^T * scale + mask) v, in float;
// out [b, heads * d]. D: the head size when known at compile time (0: d), so that a row of
// keys or values and the output accumulator stay in vector registers
template <int64_t D, typename C, typename O>
static void attention(const float* q, const C* keys, const C* values, const float* mask, O* out,
                      int64_t b, int64_t heads, int64_t kv, int64_t d_, int64_t cap, int64_t t,
                      float scale) {
  const int64_t d = D > 0 ? D : d_, group = heads / kv;
  at::parallel_for(0, b * heads, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> scores(t), accum(d);
    float* sc = scores.data();
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = i / heads, hh = i % heads, g = hh / group;
      const float* qh = q + i * d;
      const C* kr = keys + (r * kv + g) * cap * d;
      const C* vr = values + (r * kv + g) * cap * d;
      const float* mr = mask + r * t;
      float top = -INFINITY;
      for (int64_t c = 0; c < t; ++c) {
        const C* k = kr + c * d;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t e = 0; e < d; ++e) s += qh[e] * ld(k, e);
        s = s * scale + mr[c];
        sc[c] = s;
        top = s > top ? s : top;
      }
      float total = 0.f;
#pragma omp simd reduction(+ : total)
      for (int64_t c = 0; c < t; ++c) {
        const float p = sc[c] == -INFINITY ? 0.f : vexp(sc[c] - top);
        sc[c] = p;
        total += p;
      }
      const float inv = 1.0f / total;
      float* acc = accum.data();
#pragma omp simd
      for (int64_t e = 0; e < d; ++e) acc[e] = 0.f;
      for (int64_t c = 0; c < t; ++c) {
        const float p = sc[c] * inv;
        const C* v = vr + c * d;
#pragma omp simd
        for (int64_t e = 0; e < d; ++e) acc[e] += p * ld(v, e);
      }
      O* o = out + i * d;
#pragma omp simd
      for (int64_t e = 0; e < d; ++e) st(o, e, acc[e]);
    }
  });
}

// out [b, n] = silu(gate) * up over gu [b, 2n] (gate first)
template <typename X>
static void silu_mul(const X* gu, X* out, int64_t b, int64_t n) {
  at::parallel_for(0, b, 2, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const X* g = gu + r * 2 * n;
      const X* u = g + n;
      X* o = out + r * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float x = ld(g, i);
        st(o, i, rnd<X>(x / (1.0f + vexp(-x))) * ld(u, i));
      }
    }
  });
}

template <typename T> static T* ptr(const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

// LeanDecoder._decode_layers for one (h, packed weights, cache) dtype combination
template <typename H, typename X, typename C>
static at::Tensor run(at::Tensor h, int64_t col, const at::Tensor& cos, const at::Tensor& sin,
                      const at::Tensor& mask, int64_t heads, int64_t kv, int64_t d, double scale,
                      bool onednn, const std::vector<at::Tensor>& ln1, const std::vector<double>& eps1,
                      const std::vector<at::Tensor>& ln2, const std::vector<double>& eps2,
                      const std::vector<at::Tensor>& qkv_w, const std::vector<Opt>& qkv_b,
                      const std::vector<at::Tensor>& o_w, const std::vector<Opt>& o_b,
                      const std::vector<at::Tensor>& gu_w, const std::vector<Opt>& gu_b,
                      const std::vector<at::Tensor>& down_w, const std::vector<Opt>& down_b,
                      const std::vector<at::Tensor>& keys_cache,
                      const std::vector<at::Tensor>& values_cache, at::ScalarType xtype) {
  const int64_t b = h.size(0), n = h.size(1), t = col + 1;
  const auto xopt = h.options().dtype(xtype);
  at::Tensor x = at::empty({b, n}, xopt);
  at::Tensor q = at::empty({b, heads, d}, h.options().dtype(at::kFloat));
  at::Tensor attn = at::empty({b, heads * d}, xopt);
  at::Tensor delta;
  for (size_t i = 0; i < ln1.size(); ++i) {
    const at::Tensor& keys = keys_cache[i];
    const at::Tensor& values = values_cache[i];
    TORCH_CHECK(keys.is_contiguous() && values.is_contiguous(), "KV cache must be contiguous");
    const int64_t cap = keys.size(2);
    rms_residual<H, X>(ptr<H>(h), delta.defined() ? ptr<X>(delta) : nullptr, ptr<H>(ln1[i]),
                       float(eps1[i]), ptr<X>(x), b, n);
    at::Tensor qkv = linear(x, qkv_w[i], qkv_b[i], onednn);
    rope_cache<X, H, C>(ptr<X>(qkv), ptr<H>(cos), ptr<H>(sin), ptr<float>(q), ptr<C>(keys),
                        ptr<C>(values), b, heads, kv, d, cap, col);
    auto attend = d == 64    ? attention<64, C, X>
                  : d == 128 ? attention<128, C, X>
                  : d == 32  ? attention<32, C, X>
                  : d == 16  ? attention<16, C, X>
                             : attention<0, C, X>;
    attend(ptr<float>(q), ptr<C>(keys), ptr<C>(values), ptr<float>(mask), ptr<X>(attn), b, heads, kv, d,
           cap, t, float(scale));
    at::Tensor o = linear(attn, o_w[i], o_b[i], onednn);
    rms_residual<H, X>(ptr<H>(h), ptr<X>(o), ptr<H>(ln2[i]), float(eps2[i]), ptr<X>(x), b, n);
    at::Tensor gu = linear(x, gu_w[i], gu_b[i], onednn);
    at::Tensor act = at::empty({b, gu.size(1) / 2}, xopt);
    silu_mul<X>(ptr<X>(gu), ptr<X>(act), b, gu.size(1) / 2);
    delta = linear(act, down_w[i], down_b[i], onednn);
  }
  if (delta.defined()) h.add_(delta);
  return h;
}

at::Tensor decode_layers(at::Tensor h, int64_t col, const at::Tensor& cos, const at::Tensor& sin,
                         const at::Tensor& mask, int64_t heads, int64_t kv, int64_t d, double scale,
                         bool onednn, const std::vector<at::Tensor>& ln1, const std::vector<double>& eps1,
                         const std::vector<at::Tensor>& ln2, const std::vector<double>& eps2,
                         const std::vector<at::Tensor>& qkv_w, const std::vector<Opt>& qkv_b,
                         const std::vector<at::Tensor>& o_w, const std::vector<Opt>& o_b,
                         const std::vector<at::Tensor>& gu_w, const std::vector<Opt>& gu_b,
                         const std::vector<at::Tensor>& down_w, const std::vector<Opt>& down_b,
                         const std::vector<at::Tensor>& keys_cache,
                         const std::vector<at::Tensor>& values_cache) {
  at::NoGradGuard no_grad;
  h = h.contiguous().clone();
  at::Tensor c = cos.to(h.scalar_type()).contiguous(), s = sin.to(h.scalar_type()).contiguous();
  at::Tensor m = mask.to(at::kFloat).contiguous();
  const auto H = h.scalar_type(), X = qkv_w[0].scalar_type(), C = keys_cache[0].scalar_type();
  auto ok = [](at::ScalarType s) { return s == at::kFloat || s == at::kBFloat16; };
  TORCH_CHECK(ok(H) && ok(X) && ok(C), "decode_layers: float32 or bfloat16 tensors only");
  const int64_t b = h.size(0);
  TORCH_CHECK(h.dim() == 2 && m.numel() == b * (col + 1) && c.numel() == b * d && s.numel() == b * d,
              "decode_layers: h [B, hidden], mask [B, 1, 1, col + 1], cos and sin [B, 1, head_dim]");
  TORCH_CHECK(heads % kv == 0 && d % 2 == 0, "decode_layers: heads must be a multiple of kv heads");
  for (size_t i = 0; i < ln1.size(); ++i)
    TORCH_CHECK(ln1[i].scalar_type() == H && ln2[i].scalar_type() == H && ln1[i].is_contiguous() &&
                    ln2[i].is_contiguous() && keys_cache[i].size(0) == b && keys_cache[i].size(3) == d,
                "decode_layers: layer ", i, ": norm weights in h's dtype, a [B, kv, T, head_dim] cache");
#define ROLL_RUN(HT, XT, CT)                                                                        \
  return run<HT, XT, CT>(h, col, c, s, m, heads, kv, d, scale, onednn, ln1, eps1, ln2, eps2, qkv_w, qkv_b, \
                         o_w, o_b, gu_w, gu_b, down_w, down_b, keys_cache, values_cache, X)
  const bool hf = H == at::kFloat, xf = X == at::kFloat, cf = C == at::kFloat;
  if (hf && xf && cf) ROLL_RUN(float, float, float);
  if (hf && !xf && !cf) ROLL_RUN(float, bf16, bf16);  // autocast: float32 master weights
  if (!hf && !xf && cf) ROLL_RUN(bf16, bf16, float);  // bf16 weights, float32 attention
  if (!hf && !xf && !cf) ROLL_RUN(bf16, bf16, bf16);
#undef ROLL_RUN
  TORCH_CHECK(false, "decode_layers: unsupported dtype mix");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode_layers", &decode_layers, "LeanDecoder._decode_layers, fused, in C++");
}
"""


def _cpu_tag() -> str:
    """A short tag of this CPU's model and instruction sets: the build is for this CPU only
    (``-march=native``), so a cache shared across machines keeps one build per kind of CPU."""
    flags = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("flags", "model name"))][:2]
        flags += "".join(lines)
    except OSError:
        pass
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


NAME = f"{VERSION}_{_cpu_tag()}"

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
                name=NAME,
                cpp_sources=SOURCE,
                extra_cflags=FLAGS,
                extra_ldflags=["-fopenmp"],
                verbose=False,
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
