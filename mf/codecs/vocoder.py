"""Neural vocoder and Griffin-Lim fallback: normalised log-mel frames -> 16 kHz waveform.

Owns the `MelVocoder` network (Vocos-style: a stack of 1-D ConvNeXt blocks over mel frames that
predicts, per frame, the log-magnitude and phase of an STFT whose hop equals the mel hop, followed
by one inverse STFT) and `griffin_lim`, the iterative phase-recovery fallback that needs no weights.

Why this design: the generator emits mel frames chunk by chunk and the decode budget is a few ms per
160 ms chunk on CPU. Running the network at the frame rate (100 frames/s) instead of the sample rate
(16 000 samples/s, as HiFi-GAN-like upsamplers do) makes it ~100x cheaper; the inverse FFT does the
upsampling. The network has no attention and a fixed receptive field of a few frames per block.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class ConvNeXtBlock1d(nn.Module):
    """Depthwise conv (time mixing) -> LayerNorm -> pointwise MLP (channel mixing), residual."""

    def __init__(self, dim: int, hidden: int, kernel_size: int, layer_scale: float):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pw1 = nn.Linear(dim, hidden)
        self.pw2 = nn.Linear(hidden, dim)
        # Small residual scale keeps the initial network close to identity (stable early training).
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, dim, F]
        y = self.dwconv(x).transpose(1, 2)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class MelVocoder(ModelMixin, ConfigMixin):
    """Normalised log-mel [B, n_mels, F] -> waveform [B, F * hop] (Vocos-style STFT head)."""

    @register_to_config
    def __init__(
        self,
        n_mels: int = 80,
        dim: int = 192,
        hidden: int = 576,
        n_blocks: int = 6,
        kernel_size: int = 7,
        n_fft: int = 640,
        hop: int = 160,
        layer_scale: float = 0.1,
    ):
        super().__init__()
        self.embed = nn.Conv1d(n_mels, dim, kernel_size, padding=kernel_size // 2)
        self.norm_in = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(ConvNeXtBlock1d(dim, hidden, kernel_size, layer_scale) for _ in range(n_blocks))
        self.norm_out = nn.LayerNorm(dim, eps=1e-6)
        self.n_bins = n_fft // 2 + 1
        self.head = nn.Linear(dim, 2 * self.n_bins)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        n_frames = mel.shape[-1]
        x = self.embed(mel)
        x = self.norm_in(x.transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        x = self.head(self.norm_out(x.transpose(1, 2)))  # [B, F, 2 * bins]
        log_mag, phase = x.float().chunk(2, dim=-1)
        # exp() of an unbounded output can overflow early in training; 1e2 is far above any real bin.
        magnitude = torch.exp(log_mag).clamp(max=1e2)
        spec = torch.polar(magnitude, phase).transpose(1, 2)  # [B, bins, F]
        config = self.config
        # Frame j of the spectrum is centred on sample j * hop, like mel frame j (center=True).
        return torch.istft(spec, n_fft=config.n_fft, hop_length=config.hop, win_length=config.n_fft,
                           window=self.window, center=True, length=n_frames * config.hop)


def griffin_lim(magnitude: torch.Tensor, *, n_fft: int, hop: int, win_length: int, length: int,
                n_iter: int = 48, momentum: float = 0.99, seed: int = 0) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al. 2013 momentum form) from a linear magnitude [bins, F]."""
    window = torch.hann_window(win_length, dtype=magnitude.dtype)
    gen = torch.Generator().manual_seed(seed)  # fixed initial phase: same mel -> same wave
    angles = torch.exp(2j * math.pi * torch.rand(magnitude.shape, generator=gen, dtype=magnitude.dtype))
    previous = torch.zeros_like(angles)
    wave = torch.zeros(length)
    for _ in range(n_iter):
        wave = torch.istft(magnitude * angles, n_fft=n_fft, hop_length=hop, win_length=win_length,
                           window=window, center=True, length=length)
        rebuilt = torch.stft(wave, n_fft=n_fft, hop_length=hop, win_length=win_length, window=window,
                             center=True, return_complex=True)[:, : magnitude.shape[1]]
        accelerated = rebuilt - (momentum / (1 + momentum)) * previous
        angles = accelerated / accelerated.abs().clamp_min(1e-8)
        previous = rebuilt
    return torch.istft(magnitude * angles, n_fft=n_fft, hop_length=hop, win_length=win_length,
                       window=window, center=True, length=length)
