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


class VideoCodec:
    """encode: frames [T,H,W,3] uint8 (or [T,3,H,W] float in [-1,1]) -> latents [T,C,h,w]; decode back."""

    def __init__(self, autoencoder: AutoencoderTiny, *, frame_size: int, latent_mean=None, latent_std=None,
                 preset: str = "custom", reference: dict | None = None):
        # channels_last: ~1.5-2x faster CPU convolutions at these small sizes (measured, docs/CODECS.md).
        self.autoencoder = autoencoder.eval().to(memory_format=torch.channels_last)
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
            pixels = self.decode_raw(self.denormalise(latents.to(self.device)))
        return pixels.clamp(-1.0, 1.0).contiguous()

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
