"""Building blocks of ``mf.model.MFTransformer``: scalar embeddings, rotary helpers, the per-pass token
layout, the pass plan, joint attention and the block.

Owns nothing stateful; the model composes these: ``depth`` ``Block``s, each two ``Tower``s (video,
audio) with one joint softmax over [video tokens; audio tokens] (MM-DiT style). One pass of the model
runs every block over the tokens of S segments (chunks) with a ``Layout`` (positions, segment ids) and
a ``PassPlan`` (what the pass must produce).

Shapes: B batch, S segments, Vt / At video / audio tokens per segment, D width, H heads, hd = D / H,
N = S * (Vt + At) tokens of the pass, Nctx context keys (prefix + cached history).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def _sinusoid_freqs(dim: int) -> torch.Tensor:
    half = dim // 2
    return torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)


class ScalarEmbed(nn.Module):
    """Sinusoidal features of a scalar in [0, 1] (flow time or step size, x1000) -> MLP -> [..., dim]."""

    def __init__(self, dim: int, freq_dim: int = 128):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.register_buffer("freqs", _sinusoid_freqs(freq_dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ang = (x.float() * 1000.0)[..., None] * self.freqs
        feats = torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): multiplication by i on interleaved pairs."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [..., N, hd] with interleaved tables cos, sin [N, hd]."""
    return x * cos + _rotate_pairs(x) * sin


@dataclass
class Layout:
    """Per-token bookkeeping of one pass: segments (chunks) in order, video tokens first then audio."""

    chunks: list[int]           # absolute chunk index of each segment
    groups: list[int]           # GROUP_* of each segment
    cos: torch.Tensor           # [N, hd] rotary cos (time + space)
    sin: torch.Tensor
    cos_sp: torch.Tensor        # [N, hd] rotary cos (space only; time rotation zero)
    sin_sp: torch.Tensor
    token_chunk: torch.Tensor   # [N] chunk id per token
    token_group: torch.Tensor   # [N] group per token
    token_seg: torch.Tensor     # [N] segment index per token


class Tower(nn.Module):
    """One modality's half of a block: norms, qkv/out projections, qk-norm and MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        # Per-block offset added to the shared adaLN modulation (zero: the block starts as identity).
        self.mod_table = nn.Parameter(torch.zeros(6, dim))

    def qkv_heads(self, x: torch.Tensor, mod: torch.Tensor):
        """x [B, S, T, D], mod [B, S, 6, D] -> q, k, v each [B, S*T, H, hd]."""
        shift, scale = mod[:, :, 0:1], mod[:, :, 1:2]
        h = self.norm1(x) * (1 + scale) + shift
        b, s, t, d = h.shape
        q, k, v = self.qkv(h).view(b, s * t, 3, self.heads, d // self.heads).unbind(2)
        return self.q_norm(q), self.k_norm(k), v

    def finish(self, x: torch.Tensor, attn: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """Residual attention output and MLP. x [B, S, T, D], attn [B, S*T, D]."""
        gate1, shift2, scale2, gate2 = mod[:, :, 2:3], mod[:, :, 3:4], mod[:, :, 4:5], mod[:, :, 5:6]
        x = x + gate1 * self.out(attn).view_as(x)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)




@dataclass(frozen=True)
class PassPlan:
    """What one pass through the blocks must produce (``MFTransformer`` has one plan per path)."""

    prefix: bool = False      # the reference-frame prefix: no time rotation, attends only to itself
    keys_only: bool = False   # the last block stops after its keys/values (cache writes, the prefix)
    outputs_from: int = 0     # segments before this one need only keys (clean chunks of a fused or
    #                           teacher-forcing pass): the last block answers the others' queries only


DENOISE = PassPlan()                              # forward(): velocities of every segment
WRITE = PassPlan(keys_only=True)                  # write_cache(): keys/values of one clean chunk
PREFIX = PassPlan(prefix=True, keys_only=True)    # prefix_kv(): keys/values of the reference frame


# On CPU, up to this many query tokens attention runs as explicit matmuls (faster than SDPA for one
# tiny-preset chunk, 72 queries: 14 vs 15 ms a step); longer passes (the fused write + step, 144 queries:
# 26 vs 34 ms, whose score matrix no longer fits in L2; teacher forcing in training) and all GPU passes
# use the fused SDPA kernel (measured on the 2-core CPU, 1 thread).
MANUAL_ATTENTION_MAX_QUERIES = 100


def attend(q: torch.Tensor, q_sp: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: tuple,
           mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax attention of queries over [prefix keys; history keys; this pass's keys].

    q, q_sp [B, H, Nq, hd] (full and spatial-only rotation), k, v [B, H, N, hd], ctx = (prefix_k,
    prefix_v, history_k | None, history_v | None), mask [Nq, Nctx + N] or None -> [B, H, Nq, hd].
    Prefix keys are scored against the queries' spatial-only rotation ``q_sp``, all other keys
    against the full rotation ``q``. Streaming-sized passes (a chunk or two of queries) compute the
    score blocks separately (cheapest at this size); long training passes run one fused SDPA kernel
    on zero-padded products [q, q_sp] . [k, 0] and [q, q_sp] . [0, k_prefix], which are the same sums.
    """
    pk, pv, hk, hv = ctx
    pk, pv = pk.to(q.dtype), pv.to(q.dtype)
    head_dim = q.shape[-1]
    scale = head_dim ** -0.5
    if q.device.type == "cpu" and q.shape[2] <= MANUAL_ATTENTION_MAX_QUERIES:
        # two score blocks: prefix (spatial-only queries) and [history; this pass] (full queries)
        if hk is not None:
            k = torch.cat([hk.to(q.dtype), k], dim=2)
            v = torch.cat([hv.to(q.dtype), v], dim=2)
        n_prefix = pk.shape[2]
        # Scale the queries, not the [Nq, Nk] scores: 15x fewer multiplications at a chunk's size.
        scores = torch.cat([torch.matmul(q_sp * scale, pk.transpose(-1, -2)),
                            torch.matmul(q * scale, k.transpose(-1, -2))], dim=-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        return torch.matmul(probs[..., :n_prefix], pv) + torch.matmul(probs[..., n_prefix:], v)
    keys = [torch.cat([torch.zeros_like(pk), pk], dim=-1)]
    vals = [pv]
    if hk is not None:
        keys.append(torch.cat([hk.to(q.dtype), torch.zeros_like(hk, dtype=q.dtype)], dim=-1))
        vals.append(hv.to(q.dtype))
    keys.append(torch.cat([k, torch.zeros_like(k)], dim=-1))
    vals.append(v)
    values = torch.cat(vals, dim=2)
    # Equal q/k/v widths let PyTorch pick its fused (flash) CPU kernel: pad v too, slice after.
    values = torch.cat([values, torch.zeros_like(values)], dim=-1)
    out = F.scaled_dot_product_attention(torch.cat([q, q_sp], dim=-1), torch.cat(keys, dim=2), values,
                                         attn_mask=mask, scale=scale)
    return out[..., :head_dim]


class Block(nn.Module):
    """One joint-attention block: per-tower adaLN, qkv and MLP, one softmax over both towers' tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.video = Tower(dim, heads, mlp_ratio)
        self.audio = Tower(dim, heads, mlp_ratio)
        self.heads = heads

    def forward(self, xv: torch.Tensor, xa: torch.Tensor, mod_v: torch.Tensor | None, mod_a: torch.Tensor | None,
                rope: tuple, ctx, mask: torch.Tensor | None, layout: Layout, plan: PassPlan,
                last: bool, on_kv=None) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """xv [B, S, Vt, D], xa [B, S, At, D] (either may have 0 tokens) -> (xv, xa, (k, v)).

        mod_v / mod_a [B, S, 6, D]: the pass's shared adaLN modulation (None for a tower without
        tokens); this block adds its own table. rope = (cos, sin, cos_sp, sin_sp) [N, hd] in the
        tokens' dtype. ctx: this layer's context (see ``attend``), None in the prefix pass, or a function
        returning it (called after this pass's keys exist, just before attention: a context that another
        thread is still writing). ``on_kv((k, v))``: called as soon as this pass's keys/values exist. Returns
        the rotated keys/values of this pass's tokens, k, v [B, H, N, hd]. On the ``last`` block the
        plan may stop after the keys (xv, xa come back unchanged) or keep only segments
        ``plan.outputs_from..`` (xv, xa come back with S - outputs_from segments).
        """
        b, s, vt, d = xv.shape
        at = xa.shape[2]
        cos, sin, cos_sp, sin_sp = rope
        q, k, v, mod_v, mod_a = self.qkv(xv, xa, mod_v, mod_a)
        if plan.prefix:  # the prefix has no time: spatial rotation only, attends to itself
            k = apply_rope(k, cos_sp, sin_sp)
            if on_kv is not None:
                on_kv((k, v))
            if plan.keys_only and last:
                return xv, xa, (k, v)
            out = F.scaled_dot_product_attention(apply_rope(q, cos_sp, sin_sp), k, v)
        else:
            k = apply_rope(k, cos, sin)
            if on_kv is not None:
                on_kv((k, v))
            if plan.keys_only and last:
                return xv, xa, (k, v)
            q_full, q_sp, rows = apply_rope(q, cos, sin), apply_rope(q, cos_sp, sin_sp), mask
            j = plan.outputs_from
            if j and last:  # only segments j.. need outputs: answer their queries only
                # rows of segments j..: [video of j..; audio of j..] (slices: no host sync, graph-capturable)
                keep = (slice(j * vt, s * vt), slice(s * vt + j * at, s * (vt + at)))
                q_full, q_sp = (torch.cat([x[:, :, keep[0]], x[:, :, keep[1]]], 2) for x in (q_full, q_sp))
                rows = None if mask is None else torch.cat([mask[keep[0]], mask[keep[1]]], 0)
                xv, xa = xv[:, j:], xa[:, j:]
                mod_v = mod_v[:, j:] if vt else None
                mod_a = mod_a[:, j:] if at else None
                s = s - j
            out = attend(q_full, q_sp, k, v, ctx() if callable(ctx) else ctx, rows)
        xv, xa = self.finish(xv, xa, out, mod_v, mod_a)
        return xv, xa, (k, v)

    def qkv(self, xv, xa, mod_v, mod_a):
        """The towers' queries, keys, values [B, H, N, hd] (video tokens, then audio), not rotated, and
        the towers' modulations with this block's table added (None for a tower without tokens)."""
        parts = []
        if xv.shape[2]:
            mod_v = mod_v + self.video.mod_table
            parts.append(self.video.qkv_heads(xv, mod_v))
        if xa.shape[2]:
            mod_a = mod_a + self.audio.mod_table
            parts.append(self.audio.qkv_heads(xa, mod_a))
        if len(parts) == 2:
            q, k, v = (torch.cat([pv_, pa_], 1) for pv_, pa_ in zip(*parts))
        else:
            q, k, v = parts[0]
        # [B, N, H, hd] -> [B, H, N, hd]
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mod_v, mod_a

    def finish(self, xv, xa, out, mod_v, mod_a):
        """Attention output out [B, H, N', hd] (video tokens of all segments, then audio) -> the towers'
        residual and MLP: (xv, xa)."""
        b, s, vt, d = xv.shape
        out = out.transpose(1, 2).reshape(b, -1, d)   # [B, N', D]
        if vt:
            xv = self.video.finish(xv, out[:, : s * vt], mod_v)
        if xa.shape[2]:
            xa = self.audio.finish(xa, out[:, s * vt:], mod_a)
        return xv, xa
