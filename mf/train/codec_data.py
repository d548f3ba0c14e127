"""Data of codec training: the procedural corpus clips, the reference sample stored next to the
weights, and the PSNR both the video trainer and that reference use.

The reference sample (``assets/codecs/reference.npz``: 4 frames and 64 mel frames of audio of the
first held-out seed) and its reconstruction numbers, recorded in the codecs' configs, let the tests
check offline that shipped weights reproduce their recorded quality.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from mf.constants import HELDOUT_SEED_START, HOP

REFERENCE_FILE = "reference.npz"


def render_clips(seeds, seconds: float, size: int, progress: str | None = None, workers: int = 1):
    """Render corpus clips; returns (frames uint8 [sum T, H, W, 3], list of float32 waves)."""
    from mf.data import render_clips as render_many

    started = time.perf_counter()
    clips = render_many(seeds, seconds, size=size, workers=workers)
    if progress:
        print(f"[codecs] rendered {len(clips)} {progress} clips with {workers} worker(s) "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return np.concatenate([c.frames for c in clips]), [np.asarray(c.audio, dtype=np.float32) for c in clips]


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def write_reference(video, audio, out: Path) -> None:
    """Store a small fixed held-out sample and its reconstruction metrics next to the weights."""
    from mf.data import render_clip

    clip = render_clip(HELDOUT_SEED_START, 0.64, size=video.frame_size)
    frames, wave = clip.frames[:4], clip.audio[: 64 * HOP].astype(np.float32)
    np.savez_compressed(out / REFERENCE_FILE, frames=frames, audio=wave)
    mel = audio.encode(wave)
    decoded = audio.decode(mel)
    psnr = psnr_uint8(frames, video.decode_uint8(video.encode(frames)))
    video.reference = dict(file=f"../{REFERENCE_FILE}", psnr_db=round(psnr, 4))
    audio.reference = dict(file=f"../{REFERENCE_FILE}",
                           decoded_rms=round(float(np.sqrt(np.mean(decoded.astype(np.float64) ** 2))), 6),
                           mel_roundtrip_l1=round(float((audio.encode(decoded) - mel).abs().mean()), 6))
