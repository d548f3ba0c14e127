"""Latent codecs of the studio: per-frame video autoencoder and log-mel audio codec + vocoder.

    from mf.codecs import VideoCodec, AudioCodec, load_codecs
    video_codec, audio_codec = load_codecs("assets/codecs")        # trained weights, offline
    VideoCodec.from_preset("tiny"), AudioCodec.from_preset("tiny")  # untrained, same shapes

Token rates (tiny): video 25 latent frames/s of [8, 8, 8]; audio 100 mel frames/s of [80];
video frame i <-> mel frames 4i .. 4i+3. See docs/CODECS.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from mf.codecs.audio import AUDIO_PRESETS, AudioCodec
from mf.codecs.video import VIDEO_PRESETS, VideoCodec

__all__ = ["VideoCodec", "AudioCodec", "load_codecs", "VIDEO_PRESETS", "AUDIO_PRESETS"]


def load_codecs(path: str | os.PathLike = "assets/codecs", device: str = "cpu") -> tuple[VideoCodec, AudioCodec]:
    """Load the trained codecs from `path`/{video,audio} (no network access)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"codec weights folder {str(root)!r} not found; train the codecs with "
                                "`python -m mf.train codecs --preset tiny` (writes assets/codecs)")
    for part in ("video", "audio"):
        if not (root / part).is_dir():
            raise FileNotFoundError(f"codec weights folder {str(root)!r} has no {part}/ subfolder; "
                                    "re-run `python -m mf.train codecs --preset tiny`")
    return VideoCodec.from_pretrained(root / "video").to(device), AudioCodec.from_pretrained(root / "audio").to(device)
