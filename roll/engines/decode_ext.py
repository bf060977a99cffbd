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

VERSION = "roll_decode_v5"  # bump when SOURCE changes in a way the build cache would not notice
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

// ---- bf16 linear on AMX tiles ----------------------------------------------------------------
// oneDNN's bf16 matmul at decode sizes (8 rows) reads weights at 13-21 GB/s here, much of it
// per-call cost; these tiles stream them at 26-39 GB/s, with the same sums in the same order
// (tdpbf16ps over 32-wide k steps, float32 accumulators, bias added in float32, rounded once to
// bf16 nearest-even): up to 16 rows the result is bitwise oneDNN's; above, where oneDNN blocks
// k differently, equal to bf16 rounding (tests/roll/engines/test_decode_ext.py).
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

bool amx_available() {  // the kernel asks Linux for the tile state once (ARCH_REQ_XCOMP_PERM)
  static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
}

// W [N, K] -> bf16 [N' / 16, K' / 2, 16, 2], N and K padded with zeros to multiples of 16 and
// 32: for each block of 16 output columns, k pairs of the 16 columns side by side (the B-tile
// layout, 1 KB a tile)
at::Tensor pack_amx(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "pack_amx: a [N, K] weight");
  at::Tensor w = weight.to(at::kBFloat16);
  const int64_t pad_n = (16 - w.size(0) % 16) % 16, pad_k = (32 - w.size(1) % 32) % 32;
  if (pad_n || pad_k) w = at::constant_pad_nd(w, {0, pad_k, 0, pad_n});
  w = w.contiguous();
  const int64_t N = w.size(0), K = w.size(1);
  at::Tensor out = at::empty({N / 16, K / 2, 16, 2}, w.options());
  const uint16_t* s = reinterpret_cast<const uint16_t*>(w.data_ptr());
  uint16_t* d = reinterpret_cast<uint16_t*>(out.data_ptr());
  at::parallel_for(0, N / 16, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t c = 0; c < 16; ++c) {
        const uint16_t* row = s + (b * 16 + c) * K;
        uint16_t* col = d + b * 16 * K + c * 2;
        for (int64_t kp = 0; kp < K / 2; ++kp) {
          col[kp * 32] = row[2 * kp];
          col[kp * 32 + 1] = row[2 * kp + 1];
        }
      }
  });
  return out;
}

struct alignas(64) TileConfig {
  uint8_t palette, start;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// rows r0 .. r0 + valid of out, columns of blocks b .. b + nb, from a float accumulator block
// (`stride` floats a row): bias added in float32, rounded once to bf16, padding columns masked
static inline void amx_store(const float* acc, int64_t valid, int64_t r0, int64_t b, int64_t nb,
                             const float* bias, uint16_t* out, int64_t N, int64_t stride) {
  for (int64_t j = 0; j < nb; ++j) {
    const int64_t col = (b + j) * 16, lanes = std::min<int64_t>(16, N - col);
    const __mmask16 keep = __mmask16((1u << lanes) - 1u);
    const __m512 add = bias != nullptr ? _mm512_maskz_loadu_ps(keep, bias + col) : _mm512_setzero_ps();
    for (int64_t r = 0; r < valid; ++r) {
      const __m512 v = _mm512_add_ps(_mm512_load_ps(acc + r * stride + j * 16), add);
      _mm256_mask_storeu_epi16(out + (r0 + r) * N + col, keep, (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

// up to 16 rows: out[:, 16b .. 16(b+nb)) for blocks b0..b1 (N: the output's true width, the
// last block may be partly padding); tiles 0-3 accumulate four column blocks, 4 holds x's k
// step, 5-7 the weights' B tiles
static void amx_blocks(const uint16_t* x, int64_t m, int64_t K, const uint16_t* w, int64_t b0, int64_t b1,
                       const float* bias, uint16_t* out, int64_t N) {
  TileConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 5; ++t) cfg.rows[t] = uint8_t(m), cfg.colsb[t] = 64;
  for (int t = 5; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  _tile_loadconfig(&cfg);
  alignas(64) float acc[16 * 64];
  const int64_t block = 16 * K;  // uint16 values per packed column block
  for (int64_t b = b0; b < b1; b += 4) {
    const int64_t nb = std::min<int64_t>(4, b1 - b);
    const uint16_t* wb = w + b * block;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k = 0; k < K; k += 32) {
      _tile_loadd(4, x + k, K * 2);
      const uint16_t* wk = wb + k * 16;
      _tile_loadd(5, wk, 64);
      _tile_dpbf16ps(0, 4, 5);
      if (nb > 1) { _tile_loadd(6, wk + block, 64); _tile_dpbf16ps(1, 4, 6); }
      if (nb > 2) { _tile_loadd(7, wk + 2 * block, 64); _tile_dpbf16ps(2, 4, 7); }
      if (nb > 3) { _tile_loadd(5, wk + 3 * block, 64); _tile_dpbf16ps(3, 4, 5); }
    }
    _tile_stored(0, acc, 256);
    if (nb > 1) _tile_stored(1, acc + 16, 256);
    if (nb > 2) _tile_stored(2, acc + 32, 256);
    if (nb > 3) _tile_stored(3, acc + 48, 256);
    amx_store(acc, m, 0, b, nb, bias, out, N, 64);
  }
  _tile_release();
}

// more than 16 rows (x padded to whole 32-row pairs of chunks): a 2 x 2 block of accumulator
// tiles (two 16-row chunks x two column blocks), so each weight tile loaded serves both chunks
static void amx_blocks_2x2(const uint16_t* x, int64_t m, int64_t K, const uint16_t* w, int64_t b0,
                           int64_t b1, const float* bias, uint16_t* out, int64_t N) {
  TileConfig cfg{};
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  _tile_loadconfig(&cfg);
  alignas(64) float acc[16 * 32];
  const int64_t block = 16 * K;
  for (int64_t b = b0; b < b1; b += 2) {
    const bool two = b + 1 < b1;
    const uint16_t* wb = w + b * block;
    for (int64_t r0 = 0; r0 < m; r0 += 32) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      const uint16_t* xr = x + r0 * K;
      for (int64_t k = 0; k < K; k += 32) {
        _tile_loadd(4, xr + k, K * 2);
        _tile_loadd(5, xr + 16 * K + k, K * 2);
        _tile_loadd(6, wb + k * 16, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
        if (two) {
          _tile_loadd(7, wb + block + k * 16, 64);
          _tile_dpbf16ps(1, 4, 7);
          _tile_dpbf16ps(3, 5, 7);
        }
      }
      for (int half = 0; half < 2; ++half) {
        const int64_t start = r0 + 16 * half, valid = std::min<int64_t>(16, m - start);
        if (valid <= 0) break;
        if (half == 0) {
          _tile_stored(0, acc, 128);
          if (two) _tile_stored(1, acc + 16, 128);
        } else {
          _tile_stored(2, acc, 128);
          if (two) _tile_stored(3, acc + 16, 128);
        }
        amx_store(acc, valid, start, b, two ? 2 : 1, bias, out, N, 32);
      }
    }
  }
  _tile_release();
}

// x [..., K] (any float dtype, computed in bf16) @ W^T + b over pack_amx(W): [..., n] bf16
// (n: W's own output count; -1: the packed width)
at::Tensor linear_amx(const at::Tensor& x_in, const at::Tensor& packed, const Opt& b, int64_t n) {
  TORCH_CHECK(amx_available(), "linear_amx: no AMX tile state on this CPU / kernel");
  at::Tensor x = x_in.reshape({-1, x_in.size(-1)}).to(at::kBFloat16);
  const int64_t K = packed.size(1) * 2, blocks = packed.size(0), N = n < 0 ? blocks * 16 : n;
  TORCH_CHECK(x.size(1) <= K && K - x.size(1) < 32 && N <= blocks * 16 && N > blocks * 16 - 16,
              "linear_amx: x has ", x.size(1), " features and ", N, " outputs; the packed weight ", K,
              " and ", blocks * 16, " (padded)");
  if (x.size(1) < K) x = at::constant_pad_nd(x, {0, K - x.size(1)});
  x = x.contiguous();
  const int64_t M = x.size(0);
  if (M > 16 && M % 32 != 0) x = at::constant_pad_nd(x, {0, 0, 0, 32 - M % 32});  // chunk pairs
  at::Tensor out = at::empty({M, N}, x.options());
  at::Tensor bias;
  if (b.has_value() && b->defined()) bias = b->to(at::kFloat).contiguous();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(packed.data_ptr());
  uint16_t* op = reinterpret_cast<uint16_t*>(out.data_ptr());
  if (M == 0) return out;
  if (M <= 16) {
    at::parallel_for(0, (blocks + 3) / 4, 1, [&](int64_t g0, int64_t g1) {
      amx_blocks(xp, M, K, wp, g0 * 4, std::min(blocks, g1 * 4), bp, op, N);
    });
  } else {
    at::parallel_for(0, (blocks + 1) / 2, 1, [&](int64_t g0, int64_t g1) {
      amx_blocks_2x2(xp, M, K, wp, g0 * 2, std::min(blocks, g1 * 2), bp, op, N);
    });
  }
  auto shape = x_in.sizes().vec();
  shape.back() = N;
  return out.view(shape);
}
#else
bool amx_available() { return false; }
at::Tensor pack_amx(const at::Tensor&) { TORCH_CHECK(false, "built without AMX"); }
at::Tensor linear_amx(const at::Tensor&, const at::Tensor&, const Opt&, int64_t) {
  TORCH_CHECK(false, "built without AMX");
}
#endif

// fast_decode._linear: mode 0 a plain weight, 1 one reordered for oneDNN, 2 one packed for AMX
static at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const Opt& b, int64_t mode) {
  if (mode == 1) return packed_linear(x, w, b);
  if (mode == 2) return linear_amx(x, w, b, -1);
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
                      int64_t mode, const std::vector<at::Tensor>& ln1, const std::vector<double>& eps1,
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
    at::Tensor qkv = linear(x, qkv_w[i], qkv_b[i], mode);
    rope_cache<X, H, C>(ptr<X>(qkv), ptr<H>(cos), ptr<H>(sin), ptr<float>(q), ptr<C>(keys),
                        ptr<C>(values), b, heads, kv, d, cap, col);
    auto attend = d == 64    ? attention<64, C, X>
                  : d == 128 ? attention<128, C, X>
                  : d == 32  ? attention<32, C, X>
                  : d == 16  ? attention<16, C, X>
                             : attention<0, C, X>;
    attend(ptr<float>(q), ptr<C>(keys), ptr<C>(values), ptr<float>(mask), ptr<X>(attn), b, heads, kv, d,
           cap, t, float(scale));
    at::Tensor o = linear(attn, o_w[i], o_b[i], mode);
    rms_residual<H, X>(ptr<H>(h), ptr<X>(o), ptr<H>(ln2[i]), float(eps2[i]), ptr<X>(x), b, n);
    at::Tensor gu = linear(x, gu_w[i], gu_b[i], mode);
    at::Tensor act = at::empty({b, gu.size(1) / 2}, xopt);
    silu_mul<X>(ptr<X>(gu), ptr<X>(act), b, gu.size(1) / 2);
    delta = linear(act, down_w[i], down_b[i], mode);
  }
  if (delta.defined()) h.add_(delta);
  return h;
}

at::Tensor decode_layers(at::Tensor h, int64_t col, const at::Tensor& cos, const at::Tensor& sin,
                         const at::Tensor& mask, int64_t heads, int64_t kv, int64_t d, double scale,
                         int64_t mode, const std::vector<at::Tensor>& ln1, const std::vector<double>& eps1,
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
  return run<HT, XT, CT>(h, col, c, s, m, heads, kv, d, scale, mode, ln1, eps1, ln2, eps2, qkv_w, qkv_b, \
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
  m.def("amx_available", &amx_available, "bf16 linears can run on AMX tiles here");
  m.def("pack_amx", &pack_amx, "a [N, K] weight in the B-tile layout of linear_amx");
  m.def("linear_amx", &linear_amx, "x @ W^T + b over pack_amx(W), in bf16 on AMX tiles", py::arg("x"),
        py::arg("packed"), py::arg("bias"), py::arg("n") = -1);
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
