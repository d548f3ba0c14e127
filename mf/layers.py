"""Building blocks of ``mf.model.MFTransformer``: scalar embeddings, rotary helpers, the per-pass token
layout and one modality tower of a joint-attention block.

Owns nothing stateful; the model composes these (two ``_Tower``s per ``_Block``, one joint softmax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


def _sinusoid_freqs(dim: int) -> torch.Tensor:
    half = dim // 2
    return torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)


class _ScalarEmbed(nn.Module):
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


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_pairs(x) * sin


@dataclass
class _Layout:
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


class _Tower(nn.Module):
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


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.video = _Tower(dim, heads, mlp_ratio)
        self.audio = _Tower(dim, heads, mlp_ratio)
        self.heads = heads
