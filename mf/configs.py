"""Model presets for the Mutual Forcing generator: a registry of frozen configs.

Owns the shape of the network (width, depth, heads), the chunking of time (video frames per chunk,
rolling-window length of the KV cache) and the latent shapes the network expects from the codecs.
``MFTransformer.from_preset(name, **overrides)`` builds a model from a preset; the fields are stored in
the diffusers config of a saved checkpoint, so a checkpoint always knows its own shape.

Presets:
- ``micro``: a few thousand parameters' worth of work per forward; for unit tests only.
- ``tiny``:  the shipped CPU model (64x64 frames). Sized so that 4-step streaming runs faster than real
  time on 2 CPU cores and stage training fits in about an hour there.
- ``small`` / ``base``: the same structure for GPUs (128x128 frames and wider towers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from mf.constants import FPS, MELS_PER_FRAME
from mf.data.characters import CHARACTER_ATTR_DIM
from mf.data.phonemes import N_PHONEMES

# Longest clip the pipeline generates in one call (seconds). The rolling cache keeps memory constant,
# so the cap only bounds the wall time of a single request.
MAX_SECONDS = 120.0


@dataclass(frozen=True)
class ModelConfig:
    # --- latent shapes (must match the codecs; the pipeline checks) ---
    video_channels: int = 8          # C of the video latent [C, h, w] (the tiny VideoCodec's)
    latent_size: int = 8             # h == w of the video latent
    patch_size: int = 2              # video patch -> (latent_size / patch)^2 tokens per frame
    n_mels: int = 80                 # mel bins of the audio latent
    mels_per_audio_token: int = 2    # 1, 2 or 4 mel frames grouped into one audio token
    # --- conditioning vocabularies ---
    n_phonemes: int = N_PHONEMES
    attr_dim: int = CHARACTER_ATTR_DIM  # length of Character.attributes()
    # --- transformer ---
    dim: int = 192
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 3.0
    # --- time chunking ---
    frames_per_chunk: int = 4        # video frames per autoregressive chunk (4 = 160 ms)
    window_chunks: int = 8           # past chunks kept in the rolling KV cache (plus the prefix sink)
    rope_theta: float = 10_000.0

    def __post_init__(self):
        if self.latent_size % self.patch_size:
            raise ValueError(f"latent_size {self.latent_size} is not divisible by patch_size {self.patch_size}")
        if MELS_PER_FRAME % self.mels_per_audio_token:
            raise ValueError(f"mels_per_audio_token must divide {MELS_PER_FRAME}, got {self.mels_per_audio_token}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if (self.dim // self.heads) % 8:
            raise ValueError("head dim must be a multiple of 8 (4 rotary quarters: time pair + y pair + x pair)")
        if self.frames_per_chunk < 1 or self.window_chunks < 1:
            raise ValueError("frames_per_chunk and window_chunks must be >= 1")

    # --- derived sizes ---
    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch_size) ** 2

    @property
    def video_tokens_per_chunk(self) -> int:
        return self.frames_per_chunk * self.tokens_per_frame

    @property
    def mels_per_chunk(self) -> int:
        return self.frames_per_chunk * MELS_PER_FRAME

    @property
    def audio_tokens_per_chunk(self) -> int:
        return self.mels_per_chunk // self.mels_per_audio_token

    @property
    def tokens_per_chunk(self) -> int:
        return self.video_tokens_per_chunk + self.audio_tokens_per_chunk

    @property
    def chunk_seconds(self) -> float:
        return self.frames_per_chunk / FPS

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **overrides) -> "ModelConfig":
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {sorted(unknown)}")
        return replace(self, **overrides)


PRESETS: dict[str, ModelConfig] = {
    "micro": ModelConfig(dim=32, depth=2, heads=2, mlp_ratio=2.0, frames_per_chunk=2, window_chunks=2,
                         n_mels=16, video_channels=4),
    # The shipped CPU model: the training run on the shared 2-core machine uses width 192 x 4 blocks
    # (3.8M parameters), so the preset is that too; a checkpoint's config.json is authoritative anyway.
    "tiny": ModelConfig(dim=192, depth=4, heads=4, mlp_ratio=3.0, frames_per_chunk=4, window_chunks=8),
    "small": ModelConfig(dim=512, depth=12, heads=8, mlp_ratio=4.0, latent_size=16, video_channels=8,
                         mels_per_audio_token=1, n_mels=128, window_chunks=16),
    "base": ModelConfig(dim=1024, depth=24, heads=16, mlp_ratio=4.0, latent_size=16, video_channels=16,
                        mels_per_audio_token=1, n_mels=128, window_chunks=32),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
