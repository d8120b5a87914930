"""The lean runner: a batched forward for Llama-family models over a slot KV cache.

Owns the fast path of the engine. It is built from the weights of a loaded transformers
model (Llama, Mistral, Qwen2, Qwen3), fuses q/k/v and gate/up into one Linear each,
swaps in the fastest Linear kernel for the quantization mode (see quant.py), and runs
one forward per engine step for every running sequence at once:

* tokens of all sequences are flattened to `[T, hidden]`, so every Linear is one GEMM;
* the KV cache is preallocated slots `[layers, slots, kv_heads, max_len, head_dim]`
  (committed lazily page by page on CPU); a sequence owns one slot from admission to
  finish, new K/V rows are written with one `index_copy_` per layer;
* decode attention is one call over slots `0..hi` with a length mask (SDPA, or two
  batched matmuls on CPU fp32, where they are faster); prefill
  chunks (chunked prefill) get one padded, causal-masked SDPA call per layer;
* logits are computed only for rows that are sampled (decode rows, last prompt rows).

Rotary tables come from the model's own rotary module, so rope scaling variants match
transformers exactly. Models it does not cover go to hf_runner.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from serving.engine import quant
from serving.engine.runner import StepBatch

LEAN_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# fp32 MKL packing keeps a second copy of every Linear weight: only for models whose
# fp32 Linear weights fit in this many bytes.
PACK_LIMIT_BYTES = 2 * 2**30


def _rope_type(config: object) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if isinstance(params, dict):
        return str(params.get("rope_type", params.get("type", "default")))
    return "default"


def lean_unsupported_reason(config: object, max_model_len: int) -> str | None:
    """Why the lean runner cannot serve this config (None when it can)."""
    model_type = getattr(config, "model_type", "?")
    if model_type not in LEAN_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {LEAN_MODEL_TYPES}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} is not silu"
    if _rope_type(config) == "dynamic":
        return "dynamic rope scaling depends on the sequence length"
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", model_type == "mistral")
    if window is not None and uses_window and window < max_model_len:
        return f"sliding_window {window} < max_model_len {max_model_len}"
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return "some layers are not full attention"
    return None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Same math as transformers' RMSNorm (fp32 statistics), written with ops that stay
    # single-threaded on small inputs (mean() spins up a thread team; sum() does not).
    h = x.float()
    var = (h * h).sum(-1, keepdim=True).mul_(1.0 / h.shape[-1]).add_(eps)
    return weight * (h * torch.rsqrt(var)).to(x.dtype)


class _Layer(nn.Module):
    def __init__(
        self,
        hf_layer: nn.Module,
        mode: str,
        device: torch.device,
        dtype: torch.dtype,
        hint: int,
        pack: bool,
    ) -> None:
        super().__init__()
        attn, mlp = hf_layer.self_attn, hf_layer.mlp
        qkv_w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        qkv_b = None
        if attn.q_proj.bias is not None:
            qkv_b = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        self.qkv = quant.make_linear(qkv_w, qkv_b, mode, device, hint, pack)
        self.o = quant.make_linear(attn.o_proj.weight, attn.o_proj.bias, mode, device, hint, pack)
        gu_w = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        gu_b = None
        if mlp.gate_proj.bias is not None:
            gu_b = torch.cat([mlp.gate_proj.bias, mlp.up_proj.bias])
        self.gate_up = quant.make_linear(gu_w, gu_b, mode, device, hint, pack)
        self.down = quant.make_linear(
            mlp.down_proj.weight, mlp.down_proj.bias, mode, device, hint, pack
        )
        self.ln1 = hf_layer.input_layernorm.weight.detach().to(device, dtype)
        self.ln2 = hf_layer.post_attention_layernorm.weight.detach().to(device, dtype)
        self.eps = float(hf_layer.input_layernorm.variance_epsilon)
        q_norm = getattr(attn, "q_norm", None)
        self.q_norm = None if q_norm is None else q_norm.weight.detach().to(device, dtype)
        k_norm = getattr(attn, "k_norm", None)
        self.k_norm = None if k_norm is None else k_norm.weight.detach().to(device, dtype)


class _StepMeta:
    """Index tensors for one step, shared by all layers."""

    __slots__ = (
        "cache_index",
        "cos",
        "dec_bias",
        "dec_dense",
        "dec_hi",
        "dec_len",
        "dec_mask",
        "dec_slots",
        "logit_rows",
        "num_dec",
        "num_tokens",
        "pre_keys",
        "pre_mask",
        "pre_pad",
        "pre_shape",
        "pre_slots",
        "pre_valid",
        "sin",
    )


class LeanCausalLM:
    """Batched decode + chunked prefill for Llama-family models (see module docstring)."""

    name = "lean"
    reuses_slots = True  # a released slot's K/V stay valid until overwritten (prefix reuse)

    def __init__(
        self,
        hf_model: nn.Module,
        mode: str,
        device: torch.device,
        num_slots: int,
        max_model_len: int,
    ) -> None:
        config = hf_model.config
        reason = lean_unsupported_reason(config, max_model_len)
        if reason:
            raise ValueError(f"lean runner: {reason}")
        self.device = device
        self.mode = mode
        self.dtype = quant.activation_dtype(mode, device)
        self.num_slots = num_slots
        self.max_model_len = max_model_len
        self.vocab_size = int(config.vocab_size)
        self.num_heads = int(config.num_attention_heads)
        self.num_kv = int(getattr(config, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        )
        self.group = self.num_heads // self.num_kv
        self.scale = self.head_dim**-0.5
        base = hf_model.model
        with torch.no_grad():
            linear_bytes = 4 * sum(
                p.numel() for n, p in hf_model.named_parameters() if "proj" in n or "lm_head" in n
            )
            pack = linear_bytes <= PACK_LIMIT_BYTES
            self.layers = [
                _Layer(layer, mode, device, self.dtype, num_slots, pack) for layer in base.layers
            ]
            self.embed = base.embed_tokens.weight.detach().to(device, self.dtype)
            self.norm = base.norm.weight.detach().to(device, self.dtype)
            self.norm_eps = float(base.norm.variance_epsilon)
            self.lm_head = quant.make_linear(hf_model.lm_head.weight, None, mode, device, num_slots)
            positions = torch.arange(max_model_len, device=device)[None]
            probe = torch.zeros(1, device=device, dtype=torch.float32)
            cos, sin = base.rotary_emb.to(device)(probe, position_ids=positions)
        half = self.head_dim // 2
        self.cos = cos[0].to(self.dtype).contiguous()
        # rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi]
        self.sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1).to(self.dtype)
        shape = (len(self.layers), num_slots, self.num_kv, max_model_len, self.head_dim)
        self.k_cache = self._alloc_cache(shape)
        self.v_cache = self._alloc_cache(shape)
        self._ar_kv = torch.arange(self.num_kv, device=device)
        # Decode attention as two matmuls on CPU fp32 (see _attention); SDPA elsewhere.
        self.matmul_decode = device.type == "cpu" and self.dtype == torch.float32

    def _alloc_cache(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.device.type == "cpu":
            # numpy.zeros -> calloc: pages are committed on first write, so the slots
            # cost memory only for the positions sequences actually reach.
            np_dtype = np.float32 if self.dtype == torch.float32 else np.uint16
            arr = np.zeros(shape, dtype=np_dtype)
            t = torch.from_numpy(arr)
            return t if self.dtype == torch.float32 else t.view(self.dtype)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def memory_bytes(self) -> dict[str, int]:
        weights = self.embed.numel() * self.embed.element_size()
        for layer in self.layers:
            weights += sum(
                quant.linear_bytes(lin) for lin in (layer.qkv, layer.o, layer.gate_up, layer.down)
            )
        weights += quant.linear_bytes(self.lm_head)
        cache = 2 * self.k_cache.numel() * self.k_cache.element_size()
        return {"weights": int(weights), "kv_cache_reserved": int(cache)}

    def release(self, slot: int) -> None:
        """Nothing to free: a released slot's stale rows are masked until overwritten."""

    # -- per-step metadata -------------------------------------------------------------

    def _prepare(self, batch: StepBatch) -> _StepMeta:
        dev = self.device
        m = _StepMeta()
        dec_slots = batch.decode_slots
        num_dec = len(dec_slots)
        slots = list(dec_slots)
        positions = list(batch.decode_positions)
        rows = list(range(num_dec))
        offset = num_dec
        for chunk in batch.prefill:
            n = len(chunk.tokens)
            slots.extend([chunk.slot] * n)
            positions.extend(range(chunk.start, chunk.start + n))
            offset += n
            if chunk.wants_logits:
                rows.append(offset - 1)
        m.num_dec = num_dec
        m.num_tokens = offset
        pos_t = torch.tensor(positions, dtype=torch.long, device=dev)
        slot_t = torch.tensor(slots, dtype=torch.long, device=dev)
        m.cos = self.cos.index_select(0, pos_t).unsqueeze(1)
        m.sin = self.sin.index_select(0, pos_t).unsqueeze(1)
        m.cache_index = (
            (slot_t[:, None] * self.num_kv + self._ar_kv) * self.max_model_len + pos_t[:, None]
        ).reshape(-1)
        m.logit_rows = None
        if len(rows) != offset and not batch.all_logits:
            m.logit_rows = torch.tensor(rows, dtype=torch.long, device=dev)
        if num_dec:
            hi = max(dec_slots) + 1
            length = max(batch.decode_positions) + 1
            m.dec_hi, m.dec_len = hi, length
            m.dec_dense = hi == num_dec and dec_slots == sorted(dec_slots)
            lens = torch.ones(hi, dtype=torch.long, device=dev)
            dslots = slot_t[:num_dec]
            lens[dslots] = pos_t[:num_dec] + 1
            m.dec_slots = dslots
            ar = torch.arange(length, device=dev)
            m.dec_mask = (ar[None, :] < lens[:, None])[:, None, None, :]
            m.dec_bias = None
            if self.matmul_decode:
                m.dec_bias = torch.zeros(m.dec_mask.shape, dtype=self.dtype, device=dev)
                m.dec_bias.masked_fill_(~m.dec_mask, float("-inf"))
        if batch.prefill:
            self._prepare_prefill(batch, m)
        return m

    def _prepare_prefill(self, batch: StepBatch, m: _StepMeta) -> None:
        dev = self.device
        chunks = batch.prefill
        cmax = max(len(c.tokens) for c in chunks)
        kmax = max(c.start + len(c.tokens) for c in chunks)
        pad, valid, starts, lens = [], [], [], []
        base = m.num_dec
        for i, c in enumerate(chunks):
            n = len(c.tokens)
            pad.extend(range(base, base + n))
            pad.extend([base] * (cmax - n))
            valid.extend(range(i * cmax, i * cmax + n))
            starts.append(c.start)
            lens.append(n)
            base += n
        m.pre_shape = (len(chunks), cmax, kmax)
        m.pre_slots = torch.tensor([c.slot for c in chunks], device=dev)
        m.pre_pad = torch.tensor(pad, device=dev)
        m.pre_valid = torch.tensor(valid, device=dev)
        st = torch.tensor(starts, device=dev)[:, None, None]
        qpos = st + torch.arange(cmax, device=dev)[None, :, None]  # [P, C, 1]
        kpos = torch.arange(kmax, device=dev)[None, None, :]
        m.pre_mask = (kpos <= qpos)[:, None]  # [P, 1, C, K]; padded rows see their prefix

    # -- forward -----------------------------------------------------------------------

    def _attention(self, q: torch.Tensor, li: int, m: _StepMeta) -> torch.Tensor:
        hd, nkv, g = self.head_dim, self.num_kv, self.group
        kc, vc = self.k_cache[li], self.v_cache[li]
        parts = []
        if m.num_dec:
            qd = q[: m.num_dec]
            hi, length = m.dec_hi, m.dec_len
            if not m.dec_dense:
                full = qd.new_zeros(hi, self.num_heads, hd)
                qd = full.index_copy_(0, m.dec_slots, qd)
            qd = qd.view(hi, nkv, g, hd)
            keys, values = kc[:hi, :, :length], vc[:hi, :, :length]
            if m.dec_bias is not None:
                # Two batched matmuls: with one query row per KV head group, CPU SDPA
                # (flash) is 2-2.5x slower than this (batch 16-64, fp32, 2 cores).
                scores = torch.matmul(qd, keys.transpose(-1, -2)).mul_(self.scale)
                probs = torch.softmax(scores.add_(m.dec_bias), dim=-1)
                out = torch.matmul(probs, values).view(hi, self.num_heads * hd)
            else:
                out = F.scaled_dot_product_attention(
                    qd, keys, values, attn_mask=m.dec_mask, scale=self.scale
                ).view(hi, self.num_heads * hd)
            if not m.dec_dense:
                out = out.index_select(0, m.dec_slots)
            parts.append(out)
        if m.num_tokens > m.num_dec:
            p, cmax, kmax = m.pre_shape
            qp = q.index_select(0, m.pre_pad).view(p, cmax, self.num_heads, hd).transpose(1, 2)
            kp = kc[:, :, :kmax].index_select(0, m.pre_slots)
            vp = vc[:, :, :kmax].index_select(0, m.pre_slots)
            out = F.scaled_dot_product_attention(
                qp, kp, vp, attn_mask=m.pre_mask, scale=self.scale, enable_gqa=g > 1
            )
            out = out.transpose(1, 2).reshape(p * cmax, self.num_heads * hd)
            parts.append(out.index_select(0, m.pre_valid))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def forward(self, batch: StepBatch) -> torch.Tensor:
        m = self._prepare(batch)
        tokens = torch.tensor(
            batch.decode_tokens + [t for c in batch.prefill for t in c.tokens],
            dtype=torch.long,
            device=self.device,
        )
        x = F.embedding(tokens, self.embed)
        t = m.num_tokens
        nh, nkv, hd = self.num_heads, self.num_kv, self.head_dim
        half = hd // 2
        for li, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.ln1, layer.eps)
            qkv = layer.qkv(h)
            qk = qkv[:, : (nh + nkv) * hd].view(t, nh + nkv, hd)
            v = qkv[:, (nh + nkv) * hd :].reshape(t * nkv, hd)
            if layer.q_norm is not None:
                qk = torch.cat(
                    [
                        _rms_norm(qk[:, :nh], layer.q_norm, layer.eps),
                        _rms_norm(qk[:, nh:], layer.k_norm, layer.eps),
                    ],
                    dim=1,
                )
            qk = torch.addcmul(qk * m.cos, torch.roll(qk, half, dims=-1), m.sin)
            q = qk[:, :nh].reshape(t, nh, hd)
            k = qk[:, nh:].reshape(t * nkv, hd)
            self.k_cache[li].view(-1, hd).index_copy_(0, m.cache_index, k)
            self.v_cache[li].view(-1, hd).index_copy_(0, m.cache_index, v)
            x = x + layer.o(self._attention(q, li, m))
            h = _rms_norm(x, layer.ln2, layer.eps)
            gu = layer.gate_up(h)
            inter = gu.shape[-1] // 2
            x = x + layer.down(F.silu(gu[:, :inter]) * gu[:, inter:])
        if m.logit_rows is not None:
            x = x.index_select(0, m.logit_rows)
        x = _rms_norm(x, self.norm, self.norm_eps)
        return self.lm_head(x).float()
