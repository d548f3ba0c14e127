"""Audio codec: 16 kHz mono wave <-> normalised log-mel frames (the audio tower's latent space).

Owns the mel front end (Slaney mel filterbank, 10 ms hop so 4 mel frames sit under each 25 fps video
frame), the per-bin normalisation (mean/std fitted on training audio, stored in `codec.json`), the
neural vocoder wrapper and the Griffin-Lim fallback decode.

Time alignment: mel frame j is centred on sample j * HOP (STFT with center=True), i.e. at
j * HOP / SAMPLE_RATE seconds, so video frame i covers mel frames 4i .. 4i+3 and decode() of F
frames returns exactly F * HOP samples.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mf.codecs.meta import CODEC_FILE, read_codec_meta, write_codec_meta  # noqa: F401
from mf.codecs.vocoder import MelVocoder, griffin_lim
from mf.constants import HOP, MELS_PER_FRAME, SAMPLE_RATE

LOG_FLOOR = 1e-5  # magnitude floor before the log: about -100 dB, below any audible corpus content

AUDIO_PRESETS: dict[str, dict] = {
    # Tests: a vocoder small enough to train a few steps in well under a second.
    "micro": dict(n_mels=80, n_fft=1024, win_length=640,
                  vocoder=dict(dim=32, hidden=64, n_blocks=2, kernel_size=7, n_fft=640, hop=HOP)),
    # The shipped codec (see docs/CODECS.md for the measured choice of n_mels and the decode cost).
    "tiny": dict(n_mels=80, n_fft=1024, win_length=640,
                 vocoder=dict(dim=192, hidden=576, n_blocks=6, kernel_size=7, n_fft=640, hop=HOP)),
}


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Slaney-style mel filterbank [n_mels, n_fft // 2 + 1] with area (slaney) normalisation."""
    fmax = sample_rate / 2 if fmax is None else fmax

    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        linear = f / (200.0 / 3)
        log_part = 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log_part, linear)

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        linear = m * (200.0 / 3)
        log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
        return np.where(m >= 15.0, log_part, linear)

    bin_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower = (bin_freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - bin_freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return weights.astype(np.float32)


class AudioCodec:
    """Log-mel features + neural vocoder. encode: wave [N] -> [N // hop, n_mels]; decode: back."""

    hop = HOP
    sample_rate = SAMPLE_RATE
    frames_per_video_frame = MELS_PER_FRAME

    def __init__(self, vocoder: MelVocoder, *, n_mels: int, n_fft: int, win_length: int,
                 mel_mean: np.ndarray | None = None, mel_std: np.ndarray | None = None,
                 preset: str = "custom", reference: dict | None = None):
        if vocoder.config.n_mels != n_mels or vocoder.config.hop != self.hop:
            raise ValueError(f"vocoder expects n_mels={vocoder.config.n_mels}, hop={vocoder.config.hop}; "
                             f"codec has n_mels={n_mels}, hop={self.hop}")
        self.vocoder = vocoder.eval()
        self.n_mels, self.n_fft, self.win_length, self.preset = n_mels, n_fft, win_length, preset
        # Before fitting, a global guess of the log-magnitude level keeps features O(1).
        self.mel_mean = torch.as_tensor(np.full(n_mels, -5.0) if mel_mean is None else mel_mean, dtype=torch.float32)
        self.mel_std = torch.as_tensor(np.full(n_mels, 2.5) if mel_std is None else mel_std, dtype=torch.float32)
        self.reference = dict(reference or {})
        self.filterbank = torch.from_numpy(mel_filterbank(self.sample_rate, n_fft, n_mels))
        self.stft_window = torch.hann_window(win_length)

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def from_preset(cls, name: str = "tiny", seed: int = 0) -> "AudioCodec":
        """A fresh, untrained codec (vocoder at its seeded initialisation, default normalisation)."""
        if name not in AUDIO_PRESETS:
            raise ValueError(f"unknown audio codec preset {name!r}; choose one of {sorted(AUDIO_PRESETS)}")
        p = AUDIO_PRESETS[name]
        torch.manual_seed(seed)
        vocoder = MelVocoder(n_mels=p["n_mels"], **p["vocoder"])
        return cls(vocoder, n_mels=p["n_mels"], n_fft=p["n_fft"], win_length=p["win_length"], preset=name)

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.vocoder.save_pretrained(directory, safe_serialization=True)
        meta = dict(kind="audio", preset=self.preset, n_mels=self.n_mels, n_fft=self.n_fft,
                    win_length=self.win_length, hop=self.hop, sample_rate=self.sample_rate,
                    frames_per_video_frame=self.frames_per_video_frame, log_floor=LOG_FLOOR,
                    mel_mean=[round(float(v), 6) for v in self.mel_mean],
                    mel_std=[round(float(v), 6) for v in self.mel_std], reference=self.reference)
        write_codec_meta(directory, meta)
        return str(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "AudioCodec":
        directory = Path(directory)
        meta = read_codec_meta(directory, "audio")
        vocoder = MelVocoder.from_pretrained(directory, local_files_only=True)
        return cls(vocoder, n_mels=meta["n_mels"], n_fft=meta["n_fft"], win_length=meta["win_length"],
                   mel_mean=np.asarray(meta["mel_mean"]), mel_std=np.asarray(meta["mel_std"]),
                   preset=meta.get("preset", "custom"), reference=meta.get("reference"))

    def to(self, device: str | torch.device) -> "AudioCodec":
        self.vocoder.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.vocoder.parameters()).device

    # ----------------------------------------------------------------------------------- features
    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """Un-normalised natural-log mel magnitude, differentiable: [..., N] -> [..., N // hop, n_mels]."""
        n_frames = wave.shape[-1] // self.hop
        spec = torch.stft(wave.reshape(-1, wave.shape[-1]), n_fft=self.n_fft, hop_length=self.hop,
                          win_length=self.win_length, window=self.stft_window.to(wave.device),
                          center=True, pad_mode="reflect", return_complex=True)
        magnitude = spec.abs()[..., :n_frames]  # center=True yields N // hop + 1 frames; keep F
        mel = torch.matmul(self.filterbank.to(wave.device), magnitude)  # [B, n_mels, F]
        out = torch.log(mel.clamp_min(LOG_FLOOR)).transpose(-1, -2)
        return out.reshape(*wave.shape[:-1], n_frames, self.n_mels)

    def normalise(self, log_mel: torch.Tensor) -> torch.Tensor:
        return (log_mel - self.mel_mean.to(log_mel.device)) / self.mel_std.to(log_mel.device)

    def denormalise(self, mel: torch.Tensor) -> torch.Tensor:
        return mel * self.mel_std.to(mel.device) + self.mel_mean.to(mel.device)

    def fit_normalisation(self, waves: list[np.ndarray], min_std: float = 0.5) -> None:
        """Per-bin mean/std of the log-mel over training audio (std floored: near-silent bins)."""
        logs = torch.cat([self.log_mel(torch.as_tensor(w, dtype=torch.float32)) for w in waves])
        self.mel_mean = logs.mean(0)
        self.mel_std = logs.std(0).clamp_min(min_std)

    # ----------------------------------------------------------------------------------- public API
    def encode(self, audio, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """float32 mono wave [N] in [-1, 1] at 16 kHz -> normalised log-mel [N // hop, n_mels]."""
        wave = self._check_wave(audio, sample_rate)
        with torch.inference_mode():
            return self.normalise(self.log_mel(wave.to(self.device))).clone()

    def decode(self, mel, mode: str = "vocoder", griffin_lim_iters: int = 48) -> np.ndarray:
        """Normalised log-mel [F, n_mels] -> float32 wave [F * hop] in [-1, 1].

        mode="vocoder" (default, fast) or "griffinlim" (no network, ~50x slower, for reference).
        """
        mel = self._check_mel(mel)
        with torch.inference_mode():
            if mode == "vocoder":
                wave = self.vocoder(mel.to(self.device).T.unsqueeze(0))[0]
            elif mode == "griffinlim":
                wave = self._griffin_lim(mel.cpu(), griffin_lim_iters)
            else:
                raise ValueError(f"unknown decode mode {mode!r}; use 'vocoder' or 'griffinlim'")
        return wave.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)

    def _griffin_lim(self, mel: torch.Tensor, n_iter: int) -> torch.Tensor:
        mel_mag = torch.exp(self.denormalise(mel)).T  # [n_mels, F]
        # Least-squares inverse of the filterbank, clamped to non-negative magnitudes.
        linear = (torch.linalg.pinv(self.filterbank) @ mel_mag).clamp_min(0.0)
        return griffin_lim(linear, n_fft=self.n_fft, hop=self.hop, win_length=self.win_length,
                           length=mel.shape[0] * self.hop, n_iter=n_iter)

    # ----------------------------------------------------------------------------------- validation
    def _check_wave(self, audio, sample_rate: int) -> torch.Tensor:
        if sample_rate != self.sample_rate:
            raise ValueError(f"audio codec works at {self.sample_rate} Hz, got {sample_rate} Hz; "
                             "resample first with mf.media.resample_audio(audio, rate, 16000)")
        if isinstance(audio, torch.Tensor):
            audio = audio.detach().cpu()
            is_float = audio.is_floating_point()
        elif isinstance(audio, np.ndarray):
            is_float = np.issubdtype(audio.dtype, np.floating)
        else:
            raise TypeError(f"audio must be a numpy array or torch tensor, got {type(audio).__name__}")
        if not is_float:
            raise TypeError(f"audio must be float in [-1, 1], got dtype {audio.dtype}; "
                            "for int16 PCM divide by 32768")
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono 1-D [N], got shape {tuple(audio.shape)}; average the channels first")
        wave = torch.as_tensor(np.asarray(audio, dtype=np.float32) if isinstance(audio, np.ndarray) else audio,
                               dtype=torch.float32)
        if wave.shape[0] < self.hop:
            raise ValueError(f"audio too short: {wave.shape[0]} samples < one hop ({self.hop})")
        if not torch.isfinite(wave).all():
            raise ValueError("audio contains NaN or infinite samples")
        peak = float(wave.abs().max())
        if peak > 1.0 + 1e-3:
            raise ValueError(f"audio must be in [-1, 1], peak is {peak:.3g} (wrong scaling?)")
        return wave

    def _check_mel(self, mel) -> torch.Tensor:
        mel = torch.as_tensor(mel, dtype=torch.float32) if not isinstance(mel, torch.Tensor) else mel.float()
        if mel.ndim != 2 or mel.shape[1] != self.n_mels:
            raise ValueError(f"mel must be [F, {self.n_mels}], got shape {tuple(mel.shape)}")
        if mel.shape[0] == 0:
            raise ValueError("mel has no frames")
        if not torch.isfinite(mel).all():
            raise ValueError("mel contains NaN or infinite values")
        return mel.detach()
