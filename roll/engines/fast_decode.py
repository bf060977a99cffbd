"""A lean decode path for Llama-family models (Llama, Qwen2, Mistral without sliding window).

The HF model's forward costs ~0.7 ms of Python per decoder layer and step on this CPU (module
hooks, mask building, cache bookkeeping, output dataclasses): for a 2-layer model that is most of
a decode step, and for SmolLM2's 30 layers ~20 ms a step. This module runs the same arithmetic
with plain torch ops over the model's own parameters (no copies, so in-place weight updates,
optimizer steps and offload are seen at once) and a preallocated KV cache:

    decoder = LeanDecoder.build(model)           # None when the model is not supported
    state, logits = decoder.prefill(ids, mask, positions, max_new_tokens)   # [U, V] last logits
    state.expand(inverse)                        # one prefill per distinct prompt
    logits = decoder.step(state, tokens, positions)                          # [B, V]
    state.select(keep)                           # drop finished rows

The op sequence follows transformers' modeling_llama / modeling_qwen2 (RMSNorm in float32,
rotary embedding from the model's ``inv_freq``, grouped-query attention through
``scaled_dot_product_attention``), so its logits match the HF forward to float rounding
(tests/roll/engines/test_fast_decode.py). Anything it does not reproduce (other rope types,
sliding windows, q/k norms, LoRA-wrapped layers, other activations) makes :meth:`build` return
None and the engine keeps the HF forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from roll.engines import decode_ext

SUPPORTED_TYPES = ("llama", "qwen2", "mistral")
STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # inv_freq does not depend on the length


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why :class:`LeanDecoder` cannot run ``model`` (None: it can)."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED_TYPES:
        return f"model_type {kind!r} (supported: {', '.join(SUPPORTED_TYPES)})"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in STATIC_ROPE:
        return f"rope_type {rope_type!r}"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", kind == "mistral"):
        return "sliding-window attention"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "no model.layers / model.rotary_emb"
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
        linears += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if any(type(m) is not torch.nn.Linear for m in linears):  # LoRA (peft) or quantised layers
            return "decoder layers that are not plain nn.Linear (LoRA adapters?)"
        if hasattr(attn, "q_norm"):
            return "q/k norms"
    if type(model.lm_head) is not torch.nn.Linear:
        return "lm_head is not a plain nn.Linear"
    return None


@dataclass
class DecodeState:
    """The KV cache of the rows still decoding: per layer [B, H_kv, T_max, D] keys and values,
    the key-validity mask [B, T_max] and how many cache columns are filled."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor
    length: int

    def expand(self, index: torch.Tensor) -> None:
        """Rows ``index`` of the current rows (a prompt's cache repeated for each of its samples)."""
        self.select(index)

    def select(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (the others finished), copying only the filled columns."""
        n = self.length
        for i in range(len(self.keys)):
            k, v = self.keys[i], self.values[i]
            nk, nv = k.new_empty((len(index), *k.shape[1:])), v.new_empty((len(index), *v.shape[1:]))
            nk[:, :, :n] = k[index, :, :n]
            nv[:, :, :n] = v[index, :, :n]
            self.keys[i], self.values[i] = nk, nv
        self.valid = self.valid[index]


class _Layer:
    """One decoder layer's parameters (the Parameter objects, so updates in place are seen)."""

    def __init__(self, layer: torch.nn.Module) -> None:
        a, m = layer.self_attn, layer.mlp
        self.ln1, self.eps1 = layer.input_layernorm.weight, _eps(layer.input_layernorm)
        self.ln2, self.eps2 = layer.post_attention_layernorm.weight, _eps(layer.post_attention_layernorm)
        self.q_w, self.q_b = a.q_proj.weight, a.q_proj.bias
        self.k_w, self.k_b = a.k_proj.weight, a.k_proj.bias
        self.v_w, self.v_b = a.v_proj.weight, a.v_proj.bias
        self.o_w, self.o_b = a.o_proj.weight, a.o_proj.bias
        self.gate, self.up, self.down = m.gate_proj.weight, m.up_proj.weight, m.down_proj.weight
        self.gate_b, self.up_b, self.down_b = m.gate_proj.bias, m.up_proj.bias, m.down_proj.bias
        # oneDNN-packed copies (see LeanDecoder.pack): "qkv" and "gate_up" fused along the output
        # dimension (one call instead of three / two), "o", "down"; with their fused biases
        self.packed: dict[str, torch.Tensor] = {}
        self.packed_bias: dict[str, torch.Tensor | None] = {}

    def fused(self) -> dict[str, tuple[list[torch.Tensor], list[torch.Tensor | None]]]:
        """Weights (and biases) of each packed projection, in output order."""
        return {
            "qkv": ([self.q_w, self.k_w, self.v_w], [self.q_b, self.k_b, self.v_b]),
            "o": ([self.o_w], [self.o_b]),
            "gate_up": ([self.gate, self.up], [self.gate_b, self.up_b]),
            "down": ([self.down], [self.down_b]),
        }


def _eps(norm: torch.nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's Llama RMSNorm (normalise in float32, cast back, scale) as one fused normalisation."""
    h = F.rms_norm(x.to(torch.float32), (x.shape[-1],), None, eps)
    return weight * h.to(x.dtype)


def _fuse_bias(weights: list[torch.Tensor], biases: list[torch.Tensor | None]) -> torch.Tensor | None:
    if all(b is None for b in biases):
        return None
    parts = [
        b.detach() if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases, strict=True)
    ]
    return torch.cat(parts)


PLAIN, ONEDNN, AMX = 0, 1, 2  # how the packed copies are laid out (LeanDecoder._mode)


def _linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    packed: torch.Tensor | None,
    mode: int = ONEDNN,
):
    """F.linear, or the linear over a packed weight: reordered for oneDNN (bf16: bitwise
    F.linear's result; float32: the same to float rounding, as oneDNN and MKL sum in different
    orders), in AMX tiles (bf16; bitwise oneDNN's up to 16 rows; :mod:`roll.engines.decode_ext`),
    else a plain fused copy."""
    if packed is None:
        return F.linear(x, weight, bias)
    if mode == AMX:
        return decode_ext.load().linear_amx(x, packed, bias, -1 if weight is None else weight.shape[0])
    if x.dtype != packed.dtype:  # under autocast: the weights were packed in autocast's dtype
        x = x.to(packed.dtype)
    if mode == PLAIN:
        return F.linear(x, packed, bias)
    out = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed, bias, "none", [], "")
    return out.view(*x.shape[:-1], out.shape[-1])


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LeanDecoder:
    """Prefill and decode steps of a supported model; see the module docstring."""

    # Reordering the packed weights for oneDNN pays from about this hidden size: below it
    # oneDNN's per-call cost and the reorder at each prefill outweigh the faster matmuls (tiny
    # Qwen2, hidden 64, 64 rows x 16 tokens, float32: 20 ms plain vs 30 ms reordered); smaller
    # models decode on plain fused copies.
    pack_min_hidden = 256
    use_ext = True  # decode steps on packed weights through roll.engines.decode_ext when it builds
    use_amx = True  # bf16 packed weights in AMX tiles where the CPU has them (see amx())

    def __init__(self, model: torch.nn.Module) -> None:
        cfg, inner = model.config, model.model
        self.model = model
        self.embed = inner.embed_tokens.weight
        self.layers = [_Layer(layer) for layer in inner.layers]
        self.norm, self.norm_eps = inner.norm.weight, _eps(inner.norm)
        self.lm_head, self.lm_bias = model.lm_head.weight, model.lm_head.bias
        self.rotary = inner.rotary_emb
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.scale = self.head_dim**-0.5
        self._table: tuple[torch.Tensor, torch.Tensor] | None = None  # rotary cos/sin by position
        self._head_packed: torch.Tensor | None = None
        self._head_bias: torch.Tensor | None = None
        self._mode = PLAIN  # how the packed copies are laid out (set by pack())
        self._ext_args: tuple = ()  # set by pack()

    @classmethod
    def build(cls, model: torch.nn.Module) -> LeanDecoder | None:
        return None if unsupported_reason(model) is not None else cls(model)

    # ------------------------------------------------------------------ the forward pieces
    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, 1, S, D] for positions [B, S] (the model's rotary module's formula, over a
        table of every position so far: the same float ops, computed once)."""
        need = int(positions.max()) + 1
        inv = self.rotary.inv_freq
        if self._table is None or self._table[0].shape[0] < need or self._table[0].device != inv.device:
            size = max(need, 2 * self._table[0].shape[0] if self._table else 64)
            span = torch.arange(size, device=inv.device)
            freqs = span[:, None].to(torch.float32) * inv.to(torch.float32)
            emb = torch.cat((freqs, freqs), dim=-1)
            scaling = float(getattr(self.rotary, "attention_scaling", 1.0))
            cos, sin = emb.cos(), emb.sin()
            if scaling != 1.0:
                cos, sin = cos * scaling, sin * scaling
            self._table = (cos, sin)
        cos, sin = self._table
        return cos[positions].to(dtype)[:, None], sin[positions].to(dtype)[:, None]

    def _layers(
        self,
        h: torch.Tensor,
        state: DecodeState,
        start: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Run every layer over h [B, S, hidden] whose tokens fill cache columns start..start+S."""
        b, s, _ = h.shape
        if s == 1 and self._head_packed is not None:
            return self._decode_layers(h[:, 0], state, start, cos[:, 0], sin[:, 0], mask)[:, None]
        stop = start + s
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i, p in enumerate(self.layers):
            pk, pb = p.packed, p.packed_bias
            x = _rms(h, p.ln1, p.eps1)
            if pk:
                qkv = _linear(x, None, pb["qkv"], pk["qkv"], self._mode)
                q, k, v = qkv.split((q_width, kv_width, kv_width), dim=-1)
            else:
                q, k, v = (
                    _linear(x, p.q_w, p.q_b, None),
                    _linear(x, p.k_w, p.k_b, None),
                    _linear(x, p.v_w, p.v_b, None),
                )
            q = q.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)
            k = k.reshape(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            v = v.reshape(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            state.keys[i][:, :, start:stop] = k
            state.values[i][:, :, start:stop] = v
            keys, values = state.keys[i][:, :, :stop], state.values[i][:, :, :stop]
            if s == 1:  # one query per row: grouped heads as a batched matmul (sdpa's dispatch
                # costs more than the math at decode sizes); mask is the additive [B, 1, 1, T]
                qg = q.reshape(b, self.kv_heads, -1, self.head_dim).to(keys.dtype)
                scores = torch.matmul(qg, keys.transpose(-1, -2)).mul_(self.scale) + mask
                probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
                attn = torch.matmul(probs, values).reshape(b, 1, -1).to(h.dtype)
            else:
                gqa = self.kv_heads != self.heads
                attn = F.scaled_dot_product_attention(
                    q.to(keys.dtype), keys, values, attn_mask=mask, scale=self.scale, enable_gqa=gqa
                )
                attn = attn.transpose(1, 2).reshape(b, s, -1).to(h.dtype)
            h = h + _linear(attn, p.o_w, pb.get("o", p.o_b), pk.get("o"), self._mode)
            x = _rms(h, p.ln2, p.eps2)
            if pk:
                gate, up = _linear(x, None, pb["gate_up"], pk["gate_up"], self._mode).chunk(2, dim=-1)
            else:
                gate, up = _linear(x, p.gate, p.gate_b, None), _linear(x, p.up, p.up_b, None)
            down_b = pb.get("down", p.down_b)
            h = h + _linear(F.silu(gate) * up, p.down, down_b, pk.get("down"), self._mode)
        return h

    def _decode_layers(
        self,
        h: torch.Tensor,
        state: DecodeState,
        col: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`_layers` for one token per row on packed weights, with fewer and in-place ops
        (a decode step is ~35 small ops a layer, each a few microseconds): h [B, hidden], cos and
        sin [B, 1, D], mask the additive [B, 1, 1, T]. Rotary runs once over the q and k heads
        together (element-wise, so the same numbers as one at a time). Runs in C++ where
        :mod:`roll.engines.decode_ext` builds (the same math in five fused loops a layer around
        the matmuls; float32 to rounding, bf16 rounded less often)."""
        if self.use_ext:
            ext = decode_ext.load()
            if ext is not None:
                return ext.decode_layers(
                    h, col, cos, sin, mask, self.heads, self.kv_heads, self.head_dim, self.scale,
                    self._mode, *self._ext_args, state.keys, state.values,
                )  # fmt: skip
        b, mode = h.shape[0], self._mode
        heads, kv, d = self.heads, self.kv_heads, self.head_dim
        qk_heads, half = heads + kv, d // 2
        for i, p in enumerate(self.layers):
            pk, pb = p.packed, p.packed_bias
            qkv = _linear(_rms(h, p.ln1, p.eps1), None, pb["qkv"], pk["qkv"], mode).view(b, qk_heads + kv, d)
            qk = qkv[:, :qk_heads]
            # q * cos + rotate_half(q) * sin (out of place where dtypes promote, as under autocast)
            turned = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            qk = turned.add_(qk * cos)
            keys, values = state.keys[i], state.values[i]
            keys[:, :, col] = qk[:, heads:]
            values[:, :, col] = qkv[:, qk_heads:]
            keys, values = keys[:, :, : col + 1], values[:, :, : col + 1]
            qg = qk[:, :heads].reshape(b, kv, heads // kv, d).to(keys.dtype)
            scores = torch.matmul(qg, keys.transpose(-1, -2)).mul_(self.scale) + mask
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
            attn = torch.matmul(probs, values).reshape(b, heads * d).to(h.dtype)
            h = h + _linear(attn, None, pb["o"], pk["o"], mode)
            x = _rms(h, p.ln2, p.eps2)
            gate, up = _linear(x, None, pb["gate_up"], pk["gate_up"], mode).chunk(2, dim=-1)
            h = h + _linear(F.silu(gate).mul_(up), None, pb["down"], pk["down"], mode)
        return h

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        bias = self.lm_bias if self._head_packed is None else self._head_bias
        x = _rms(h, self.norm, self.norm_eps)
        return _linear(x, self.lm_head, bias, self._head_packed, self._mode)

    def pack_dtype(self) -> torch.dtype | None:
        """The dtype to pack the weights in now (None: keep the plain matmuls). Under CPU autocast
        it is autocast's bf16, as F.linear would compute (float32 master weights of a fused
        actor + rollout); otherwise the weights' own float32 or bf16."""
        if not self.can_pack():
            return None
        if torch.is_autocast_enabled("cpu"):
            return torch.bfloat16 if torch.get_autocast_dtype("cpu") == torch.bfloat16 else None
        return self.lm_head.dtype

    def can_pack(self) -> bool:
        """float32 or bf16 weights on CPU: prefill and decode run on packed copies of the weights,
        q/k/v and gate/up fused, and decode steps through :meth:`_decode_layers`."""
        w = self.lm_head
        return w.dtype in (torch.float32, torch.bfloat16) and w.device.type == "cpu"

    @property
    def _onednn(self) -> bool:
        """The packed copies are reordered for oneDNN (set by :meth:`pack`)."""
        return self._mode == ONEDNN

    def onednn(self) -> bool:
        """The packed copies are also reordered for oneDNN's kernels (from ``pack_min_hidden``, on
        a torch with oneDNN). SmolLM2, 8 rows, 2-core EPYC: a float32 decode step 88 -> ~45 ms,
        where MKL's skinny float32 matmuls read weights at ~8 GB/s; bf16 1.6x the plain matmul."""
        return (
            self.can_pack()
            and self.lm_head.shape[1] >= self.pack_min_hidden
            and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        )

    def amx(self, dtype: torch.dtype) -> bool:
        """bf16 packed copies go in AMX tiles (``linear_amx`` of :mod:`roll.engines.decode_ext`)
        where the C++ loop runs, the CPU and kernel give AMX and the decoder layers' output
        widths are multiples of 16 (other widths, such as the vocabulary, are padded). At decode
        row counts the results are bitwise oneDNN's, with weights read at 26-39 GB/s against
        oneDNN's 13-21 (SmolLM2 bf16, 8 rows, AMX Xeon: a decode step 20.8 -> 15.5 ms)."""
        if not (self.use_amx and self.use_ext and dtype == torch.bfloat16 and self.can_pack()):
            return False
        weights = [w for layer in self.layers for ws, _ in layer.fused().values() for w in ws]
        if any(w.shape[0] % 16 for w in weights):
            return False
        ext = decode_ext.load()
        return ext is not None and ext.amx_available()

    def pack(self, rows: int, dtype: torch.dtype | None = None) -> None:
        """Pack every weight for ``rows``-row decode steps. Done again at each prefill (a read of
        the weights, ~5% of a 32-token generate): weights may have changed in place since, and
        not every in-place write (``param.data.copy_``) is visible to a version check."""
        dtype = dtype or self.lm_head.dtype
        self._mode = AMX if self.amx(dtype) else ONEDNN if self.onednn() else PLAIN
        ext = decode_ext.load() if self._mode == AMX else None

        def packed(weights: list[torch.Tensor]) -> torch.Tensor:
            w = weights[0].detach() if len(weights) == 1 else torch.cat([x.detach() for x in weights])
            w = w.to(dtype)
            if ext is not None:
                return ext.pack_amx(w)
            return torch.ops.mkldnn._reorder_linear_weight(w, rows) if self._onednn else w.contiguous()

        with torch.no_grad():
            for layer in self.layers:
                layer.packed, layer.packed_bias = {}, {}
                for name, (weights, bias) in layer.fused().items():
                    layer.packed[name] = packed(weights)
                    fused = _fuse_bias(weights, bias)
                    layer.packed_bias[name] = None if fused is None else fused.to(dtype)
            self._head_packed = packed([self.lm_head])
            self._head_bias = None if self.lm_bias is None else self.lm_bias.detach().to(dtype)
        # the C++ loop's per-layer arguments, gathered once per pack rather than every step
        L = self.layers
        self._ext_args = (
            [p.ln1 for p in L], [p.eps1 for p in L], [p.ln2 for p in L], [p.eps2 for p in L],
            *(
                part
                for name in ("qkv", "o", "gate_up", "down")
                for part in ([p.packed[name] for p in L], [p.packed_bias[name] for p in L])
            ),
        )  # fmt: skip

    def unpack(self) -> None:
        """Drop the packed copies (the next prefill makes new ones where :meth:`can_pack`)."""
        for layer in self.layers:
            layer.packed, layer.packed_bias = {}, {}
        self._head_packed = self._head_bias = None
        self._mode, self._ext_args = PLAIN, ()

    # ------------------------------------------------------------------ public
    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        max_new_tokens: int,
        decode_rows: int | None = None,
    ) -> tuple[DecodeState, torch.Tensor]:
        """Run the left-padded prompts [B, P]; returns the cache (room for max_new_tokens more
        columns) and the [B, V] logits of each row's last position. ``decode_rows``: how many
        rows the decode steps will have (after :meth:`DecodeState.expand`), for packed weights."""
        b, p = input_ids.shape
        pack_dtype = self.pack_dtype()
        if pack_dtype is not None:
            self.pack(decode_rows or b, pack_dtype)
        else:
            self.unpack()
        h = F.embedding(input_ids, self.embed)
        dtype, dev = h.dtype, h.device
        if torch.is_autocast_enabled(dev.type):
            # the projections come out in autocast's dtype: a cache in it is never cast whole
            cache_dtype = torch.get_autocast_dtype(dev.type)
        elif dtype in (torch.bfloat16, torch.float16):
            # attention in float32 over a float32 cache: decode-size bf16 batched matmuls cost ~4x
            # their float32 twins here (SmolLM2 bf16, 8 rows: 36 -> 32 ms a step), and float32
            # is the more exact; the projections around it stay in the model's dtype
            cache_dtype = torch.float32
        else:
            cache_dtype = dtype
        total = p + max_new_tokens
        shape = (b, self.kv_heads, total, self.head_dim)
        state = DecodeState(
            keys=[torch.empty(shape, dtype=cache_dtype, device=dev) for _ in self.layers],
            values=[torch.empty(shape, dtype=cache_dtype, device=dev) for _ in self.layers],
            valid=torch.zeros((b, total), dtype=torch.bool, device=dev),
            length=p,
        )
        state.valid[:, :p] = attention_mask.bool()
        causal = torch.ones((p, p), dtype=torch.bool, device=dev).tril()
        # a query may always see itself: a padding position with no valid key would give NaN
        mask = (causal & state.valid[:, None, :p]) | torch.eye(p, dtype=torch.bool, device=dev)
        cos, sin = self._rope(positions, dtype)
        h = self._layers(h, state, 0, cos, sin, mask[:, None])
        return state, self._logits(h[:, -1])

    def step(self, state: DecodeState, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token per row ([B] ids at [B] positions); returns the next [B, V] logits."""
        col = state.length
        state.valid[:, col] = True
        h = F.embedding(tokens[:, None], self.embed)
        cos, sin = self._rope(positions[:, None], h.dtype)
        valid = state.valid[:, None, None, : col + 1]
        mask = torch.zeros(valid.shape, dtype=torch.float32, device=h.device)
        mask.masked_fill_(~valid, float("-inf"))
        h = self._layers(h, state, col, cos, sin, mask)
        state.length = col + 1
        return self._logits(h[:, 0])
