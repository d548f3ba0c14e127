"""Video codec: per-frame diffusers AutoencoderTiny, 64x64 RGB <-> normalised 8x8xC latents.

Owns the autoencoder configuration presets, input validation, and the latent normalisation: each
latent channel is shifted/scaled by its mean/std over training frames (stored in `codec.json` next to
the diffusers weights), so the generator sees roughly unit-variance latents.

Why AutoencoderTiny (TAESD architecture): plain 3x3 convs + ReLU, no GroupNorm and no attention, so
the decoder is cheap on CPU; the generator decodes 4 frames per 160 ms chunk and the decode must stay
a small fraction of the network cost. Frames are encoded independently (no temporal compression):
one latent frame per video frame keeps chunk boundaries and audio alignment trivial.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderTiny
from diffusers.utils import logging as diffusers_logging

from mf.codecs.meta import CODEC_FILE, read_codec_meta, write_codec_meta  # noqa: F401

VIDEO_PRESETS: dict[str, dict] = {
    # Tests only: trains a few steps in well under a second.
    "micro": dict(frame_size=64, autoencoder=dict(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(0, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 0), latent_channels=8)),
    # Shipped: the decoder is width 32 at every level (AutoencoderTiny needs equal widths inside
    # each half), capacity concentrated at low resolution where it is cheap, no residual block at
    # 64x64 (the costliest resolution): it runs once per generated frame, on the product's CPU.
    # The encoder runs once per training frame and once per reference frame, so it can afford
    # width 48 and one more block per level (better latents at no inference cost).
    "tiny": dict(frame_size=64, autoencoder=dict(
        encoder_block_out_channels=(48, 48, 48, 48), decoder_block_out_channels=(32, 32, 32, 32),
        num_encoder_blocks=(0, 2, 3, 3), num_decoder_blocks=(2, 2, 1, 0), latent_channels=8)),
}


# Per axis, which taps d of the 3-tap conv land on kernel index k of the stride-2, 4-tap transposed conv
# (NearestUpConv's docstring): rows k = 0..3, columns d = 0..2.
_UP_TAPS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


class NearestUpConv(nn.Module):
    """Inference stand-in for ``Upsample(scale_factor=2, mode="nearest")`` then ``conv`` (3x3, stride 1,
    padding 1): the same sums with 4 instead of 9 multiply-adds per output pixel and channel pair.

    Per axis, with u = up(x) (u[2i + p] = x[i], p in {0, 1}) and y[o] = sum_{d=0..2} w[d] u[o + d - 1]:
    output o = 2i + p reads u[2i + p + d - 1] = x[i + floor((p + d - 1) / 2)], so
    phase 0 is  w[0] x[i-1] + (w[1] + w[2]) x[i]   and   phase 1 is  (w[0] + w[1]) x[i] + w[2] x[i+1]
    (the zero padding of u is the zero padding of x: u[-1] = u[2H] = 0 <-> x[-1] = x[H] = 0).
    A transposed conv with stride 2, kernel 4, padding 1 computes y[o] = sum_{o = 2i + k - 1} W[k] x[i],
    i.e. x[i + r] reaches phase p through k = p - 2r + 1: W[3] = w[0], W[1] = w[1] + w[2], W[2] = w[0] + w[1],
    W[0] = w[2] (``_UP_TAPS``), and in 2-D the kernel is that map on both axes. Same result up to float
    summation order (max |diff| 7e-6 on the shipped decoder, tests/test_codecs.py).
    The folded kernel is recomputed whenever ``conv``'s weight changes (its version counter), so the
    stand-in follows a codec that is being trained; it is never used for gradients (``VideoCodec.decode``).
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if not NearestUpConv.fits(conv):
            raise ValueError(f"NearestUpConv needs a 3x3, stride-1, padding-1, ungrouped Conv2d, got {conv}")
        self.conv = conv
        self._folded, self._key = None, None

    @staticmethod
    def fits(conv) -> bool:
        return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                and conv.padding_mode == "zeros")

    def folded_weight(self) -> torch.Tensor:
        w = self.conv.weight  # [Cout, Cin, 3, 3]
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        if key != self._key:
            with torch.no_grad():
                taps = _UP_TAPS.to(device=w.device, dtype=w.dtype)
                # [Cin, Cout, 4, 4], the layout conv_transpose2d takes
                self._folded = torch.einsum("kd,le,oide->iokl", taps, taps, w.detach()).contiguous()
            self._key = key
        return self._folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, Cin, H, W] -> [B, Cout, 2H, 2W]
        return F.conv_transpose2d(x, self.folded_weight(), self.conv.bias, stride=2, padding=1)


def fold_upsampling(layers) -> nn.Sequential:
    """The same layer objects, each nearest x2 ``Upsample`` + fitting ``Conv2d`` pair replaced by a
    ``NearestUpConv`` (the tiny preset's decoder has three such pairs: 50 of its 99 M multiply-adds per
    frame, 22 M after folding)."""
    layers, out, i = list(layers), [], 0
    while i < len(layers):
        up = layers[i]
        if (isinstance(up, nn.Upsample) and up.mode == "nearest" and up.size is None
                and float(up.scale_factor) == 2.0 and i + 1 < len(layers) and NearestUpConv.fits(layers[i + 1])):
            out.append(NearestUpConv(layers[i + 1]))
            i += 2
        else:
            out.append(up)
            i += 1
    return nn.Sequential(*out)


class VideoCodec:
    """encode: frames [T,H,W,3] uint8 (or [T,3,H,W] float in [-1,1]) -> latents [T,C,h,w]; decode back."""

    def __init__(self, autoencoder: AutoencoderTiny, *, frame_size: int, latent_mean=None, latent_std=None,
                 preset: str = "custom", reference: dict | None = None, folded_decode: bool = True):
        # channels_last: ~1.5-2x faster CPU convolutions at these small sizes (measured, docs/CODECS.md).
        self.autoencoder = autoencoder.eval().to(memory_format=torch.channels_last)
        # decode()/decode_uint8() (inference) run the decoder with each upsample + conv folded into one
        # transposed conv (NearestUpConv: same sums, float rounding apart; 16.8 -> 12.0 ms per 4-frame chunk on
        # one CPU thread, eval.codec_eval, docs/CODECS.md). False: the diffusers decoder as it is (decode_raw,
        # which training differentiates).
        self.folded_decode = bool(folded_decode)
        self._folded_layers = None
        self.frame_size = int(frame_size)
        n_levels = len(autoencoder.config.encoder_block_out_channels)
        self.downsample = 2 ** (n_levels - 1)
        if self.frame_size % self.downsample:
            raise ValueError(f"frame_size {frame_size} is not a multiple of the downsample factor {self.downsample}")
        self.latent_channels = int(autoencoder.config.latent_channels)
        self.latent_size = self.frame_size // self.downsample
        c = self.latent_channels
        self.latent_mean = torch.as_tensor(np.zeros(c) if latent_mean is None else latent_mean, dtype=torch.float32)
        self.latent_std = torch.as_tensor(np.ones(c) if latent_std is None else latent_std, dtype=torch.float32)
        self.preset = preset
        self.reference = dict(reference or {})

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def from_preset(cls, name: str = "tiny", seed: int = 0) -> "VideoCodec":
        """A fresh, untrained codec (seeded initialisation, identity normalisation)."""
        if name not in VIDEO_PRESETS:
            raise ValueError(f"unknown video codec preset {name!r}; choose one of {sorted(VIDEO_PRESETS)}")
        p = VIDEO_PRESETS[name]
        torch.manual_seed(seed)
        return cls(AutoencoderTiny(in_channels=3, out_channels=3, **p["autoencoder"]),
                   frame_size=p["frame_size"], preset=name)

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.autoencoder.save_pretrained(directory, safe_serialization=True)
        meta = dict(kind="video", preset=self.preset, frame_size=self.frame_size, downsample=self.downsample,
                    latent_channels=self.latent_channels, latent_size=self.latent_size,
                    latent_mean=[round(float(v), 6) for v in self.latent_mean],
                    latent_std=[round(float(v), 6) for v in self.latent_std], reference=self.reference)
        write_codec_meta(directory, meta)
        return str(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "VideoCodec":
        directory = Path(directory)
        meta = read_codec_meta(directory, "video")
        # AutoencoderTiny saves a `block_out_channels` alias it then warns about on load: silence it.
        previous = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            autoencoder = AutoencoderTiny.from_pretrained(directory, local_files_only=True)
        finally:
            diffusers_logging.set_verbosity(previous)
        return cls(autoencoder, frame_size=meta["frame_size"], latent_mean=np.asarray(meta["latent_mean"]),
                   latent_std=np.asarray(meta["latent_std"]), preset=meta.get("preset", "custom"),
                   reference=meta.get("reference"))

    def to(self, device: str | torch.device) -> "VideoCodec":
        self.autoencoder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    # ----------------------------------------------------------------------------------- raw (trainable)
    def encode_raw(self, pixels: torch.Tensor) -> torch.Tensor:
        """Differentiable: float [B,3,H,W] in [-1,1] -> un-normalised latents [B,C,h,w]."""
        return self.autoencoder.encode(pixels.contiguous(memory_format=torch.channels_last)).latents

    def decode_raw(self, latents: torch.Tensor) -> torch.Tensor:
        """Differentiable: un-normalised latents -> float [B,3,H,W] (not clamped)."""
        return self.autoencoder.decode(latents.contiguous(memory_format=torch.channels_last)).sample

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        return (raw - self.latent_mean.to(raw.device).view(shape)) / self.latent_std.to(raw.device).view(shape)

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        std, mean = self.latent_std.to(latents.device).view(shape), self.latent_mean.to(latents.device).view(shape)
        return latents * std + mean

    # ----------------------------------------------------------------------------------- public API
    def encode(self, frames, batch_size: int = 64) -> torch.Tensor:
        """uint8 [T,H,W,3] (numpy or torch) or float tensor [T,3,H,W] in [-1,1] -> latents [T,C,h,w]."""
        pixels = self.frames_to_pixels(frames)
        with torch.inference_mode():
            out = [self.normalise(self.encode_raw(pixels[i : i + batch_size].to(self.device)))
                   for i in range(0, pixels.shape[0], batch_size)]
        return torch.cat(out).clone()

    def decode(self, latents) -> torch.Tensor:
        """Normalised latents [T,C,h,w] -> float [T,3,H,W] in [-1,1]."""
        latents = self._check_latents(latents)
        with torch.inference_mode():
            raw = self.denormalise(latents.to(self.device))
            pixels = self._decode_folded(raw) if self.folded_decode else self.decode_raw(raw)
        return pixels.clamp(-1.0, 1.0).contiguous()

    def _decode_folded(self, raw: torch.Tensor) -> torch.Tensor:
        """``decode_raw`` with the decoder's upsample + conv pairs folded (``fold_upsampling``); inference only.

        The steps of diffusers' ``DecoderTiny.forward`` around its layers: soft clamp ``tanh(x / 3) * 3``
        before, [0, 1] -> [-1, 1] after (tests/test_codecs.py checks the two paths agree)."""
        if self._folded_layers is None:
            self._folded_layers = fold_upsampling(self.autoencoder.decoder.layers)
        x = torch.tanh(raw.contiguous(memory_format=torch.channels_last) / 3) * 3
        return self._folded_layers(x).mul(2).sub(1)

    def decode_uint8(self, latents) -> np.ndarray:
        """Normalised latents [T,C,h,w] -> uint8 frames [T,H,W,3]."""
        pixels = self.decode(latents)
        return ((pixels + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    # ----------------------------------------------------------------------------------- validation
    def frames_to_pixels(self, frames) -> torch.Tensor:
        """Validate frames and convert to float [T,3,H,W] in [-1,1] (CPU)."""
        s = self.frame_size
        if isinstance(frames, np.ndarray):
            if frames.dtype != np.uint8:
                raise TypeError(f"numpy frames must be uint8 [T,H,W,3], got dtype {frames.dtype}; "
                                "float frames go in as a torch tensor [T,3,H,W] in [-1,1]")
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if not isinstance(frames, torch.Tensor):
            raise TypeError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
        if frames.dtype == torch.uint8:
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"uint8 frames must be [T,H,W,3], got shape {tuple(frames.shape)}")
            if tuple(frames.shape[1:3]) != (s, s):
                raise ValueError(f"frames must be {s}x{s}, got {frames.shape[1]}x{frames.shape[2]}; "
                                 "resize them first (this codec was built for that size)")
            return frames.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        if not frames.is_floating_point():
            raise TypeError(f"frames must be uint8 or float, got dtype {frames.dtype}")
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"float frames must be [T,3,H,W], got shape {tuple(frames.shape)}")
        if tuple(frames.shape[2:]) != (s, s):
            raise ValueError(f"frames must be {s}x{s}, got {frames.shape[2]}x{frames.shape[3]}")
        if frames.shape[0] == 0:
            raise ValueError("no frames to encode")
        lo, hi = float(frames.min()), float(frames.max())
        if lo < -1.001 or hi > 1.001 or not np.isfinite([lo, hi]).all():
            raise ValueError(f"float frames must be in [-1, 1], got range [{lo:.3g}, {hi:.3g}] "
                             "(uint8 frames map with x / 127.5 - 1)")
        return frames.detach().float().cpu()

    def _check_latents(self, latents) -> torch.Tensor:
        latents = torch.as_tensor(latents) if not isinstance(latents, torch.Tensor) else latents
        expected = (self.latent_channels, self.latent_size, self.latent_size)
        if latents.ndim != 4 or tuple(latents.shape[1:]) != expected:
            raise ValueError(f"video latents must be [T, {expected[0]}, {expected[1]}, {expected[2]}], "
                             f"got shape {tuple(latents.shape)}")
        if not latents.is_floating_point():
            raise TypeError(f"video latents must be float, got dtype {latents.dtype}")
        if not torch.isfinite(latents).all():
            raise ValueError("video latents contain NaN or infinite values")
        return latents.detach().float()
