"""The two codec trainers: the video autoencoder (``train_video_codec``) and the audio vocoder
(``train_audio_codec``), with the step schedule they share.

Both loops are step-scheduled (cosine LR over a fixed number of steps) so that the same seed gives the
same weights; a wall-clock cap (``max_minutes``) only ends a run early on an overloaded CPU and says so
in the log. The command line around them is ``mf.train.codecs``; their evaluation ``eval.codec_eval``.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mf.codecs.audio import AudioCodec
from mf.codecs.video import VideoCodec
from mf.constants import HOP


# ------------------------------------------------------------------------------------------- schedule
def cosine_lr(step: int, progress: float, peak: float, warmup: int = 50, floor_ratio: float = 0.03) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay over training progress in [0, 1]."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (floor_ratio + (1 - floor_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Progress:
    """Training progress = max(step fraction, wall-clock fraction).

    On a quiet machine the step count binds and the run is deterministic (same seed, same weights);
    on an overloaded shared CPU the wall-clock cap binds and the LR schedule still decays to its floor
    before the cap instead of being cut off mid-schedule.
    """

    def __init__(self, steps: int, max_minutes: float | None):
        self.steps, self.budget_s = steps, None if max_minutes is None else 60.0 * max_minutes
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self, step: int) -> float:
        by_time = 0.0 if self.budget_s is None else self.elapsed / self.budget_s
        return max(step / self.steps, by_time)

    def begin_step(self, step: int, opt: torch.optim.Optimizer, peak_lr: float, tag: str) -> float | None:
        """Progress of ``step`` with the optimizer's LR set for it; None (and a log line) once capped."""
        done = self(step)
        if done >= 1.0:  # only the time budget can get here: step < steps inside the loop
            print(f"[codecs/{tag}] wall-clock cap {self.budget_s / 60.0:g} min reached at step {step}/{self.steps}",
                  flush=True)
            return None
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, done, peak_lr, warmup=min(50, max(1, self.steps // 10)))
        return done


class CsvLog:
    def __init__(self, path: Path | None, fields: list[str]):
        self.path, self.fields = path, fields
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, row: dict) -> None:
        if self.path is not None:
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow([row[k] for k in self.fields])


# ------------------------------------------------------------------------------------------- video
def train_video_codec(codec: VideoCodec, frames: np.ndarray, *, steps: int, batch_size: int, lr: float,
                      seed: int = 0, crop_fraction: float = 0.5, max_minutes: float | None = None,
                      log_path: Path | None = None, log_every: int = 25, decoder_only: bool = False) -> list[float]:
    """Train the autoencoder on uint8 frames [N,H,W,3]; returns the per-step losses.

    decoder_only=True freezes the encoder, so the latent space (and every latent a generator was
    trained on) stays exactly the same while the decoder keeps improving.

    The first `crop_fraction` of the steps see 32x32 crops on the 8-pixel latent grid (4x cheaper per
    sample; the net is convolutional so the crop's latents are the full frame's latents, borders
    aside), the rest full frames so the borders are learnt too. Loss: MSE (what PSNR measures) +
    0.2 L1 (sharper edges early) + a tiny latent L2 that keeps latents inside the decoder's tanh clamp.
    """
    gen = torch.Generator().manual_seed(seed)
    model = codec.autoencoder.train()
    if decoder_only:
        model.encoder.eval().requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    device = codec.device  # the whole uint8 pool moves once (1.3 GB for 100k frames: fine on a GPU)
    pool = torch.from_numpy(frames).to(device)
    size, grid = codec.frame_size, codec.downsample
    log = CsvLog(log_path, ["step", "elapsed_s", "lr", "loss", "psnr_db", "crop"])
    losses, progress = [], Progress(steps, max_minutes)
    for step in range(steps):
        done = progress.begin_step(step, opt, lr, "video")
        if done is None:
            break
        idx = torch.randint(0, pool.shape[0], (batch_size,), generator=gen).to(device)
        pixels = pool[idx].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        crop = done < crop_fraction and size >= 4 * grid
        weight = torch.ones(1, 1, *pixels.shape[2:], device=device)
        if crop:
            half = size // 2
            oy, ox = (torch.randint(0, (size - half) // grid + 1, (2,), generator=gen) * grid).tolist()
            pixels = pixels[:, :, oy : oy + half, ox : ox + half]
            # A crop edge inside the frame is zero-padded like a true frame border; the pixels next
            # to such a fake border are not what the full frame would give, so they carry no loss.
            weight = torch.ones(1, 1, half, half, device=device)
            if oy > 0:
                weight[..., :grid, :] = 0
            if oy + half < size:
                weight[..., -grid:, :] = 0
            if ox > 0:
                weight[..., :, :grid] = 0
            if ox + half < size:
                weight[..., :, -grid:] = 0
        with torch.set_grad_enabled(not decoder_only):
            latents = codec.encode_raw(pixels)
        recon = codec.decode_raw(latents)
        norm = weight.sum() * pixels.shape[0] * pixels.shape[1]
        mse = ((recon - pixels) ** 2 * weight).sum() / norm
        loss = mse + 0.2 * ((recon - pixels).abs() * weight).sum() / norm + 1e-4 * latents.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        elapsed = progress.elapsed
        if step % log_every == 0 or step == steps - 1:
            psnr = 10 * math.log10(4.0 / max(float(mse.detach()), 1e-12))  # pixels span 2.0 in [-1, 1]
            log.write(dict(step=step, elapsed_s=round(elapsed, 1), lr=f"{opt.param_groups[0]['lr']:.2e}",
                           loss=f"{losses[-1]:.5f}", psnr_db=f"{psnr:.2f}", crop=int(crop)))
            if log_path is not None:
                print(f"[codecs/video] step {step}/{steps} loss {losses[-1]:.4f} psnr {psnr:.2f} dB "
                      f"({elapsed:.0f} s)", flush=True)
    codec.autoencoder.eval().requires_grad_(True)
    return losses


def fit_latent_normalisation(codec: VideoCodec, frames: np.ndarray, max_frames: int = 2048, seed: int = 0) -> None:
    """Per-channel mean/std of the raw latents over (a sample of) the training frames."""
    rng = np.random.default_rng(seed)
    sample = frames[np.sort(rng.choice(len(frames), min(max_frames, len(frames)), replace=False))]
    codec.latent_mean = torch.zeros(codec.latent_channels)
    codec.latent_std = torch.ones(codec.latent_channels)
    raw = codec.encode(sample)  # identity normalisation at this point -> raw latents
    codec.latent_mean = raw.mean(dim=(0, 2, 3)).cpu()
    codec.latent_std = raw.std(dim=(0, 2, 3)).clamp_min(1e-3).cpu()


# ------------------------------------------------------------------------------------------- audio


# ------------------------------------------------------------------------------------------- audio
STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256))


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over three STFT resolutions."""
    total = pred.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=pred.device)
        sp = torch.stft(pred, n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-5)
        st = torch.stft(target, n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-5)
        convergence = torch.linalg.norm(st - sp, dim=(1, 2)) / torch.linalg.norm(st, dim=(1, 2)).clamp_min(1e-5)
        total = total + convergence.mean() + F.l1_loss(sp.log(), st.log())
    return total / len(STFT_RESOLUTIONS)


def vocoder_loss(codec: AudioCodec, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mel_l1 = F.l1_loss(codec.log_mel(pred), codec.log_mel(target))
    return mel_l1 + multi_resolution_stft_loss(pred, target)


def train_audio_codec(codec: AudioCodec, waves: list[np.ndarray], *, steps: int, batch_size: int,
                      segment_frames: int, lr: float, seed: int = 0, max_minutes: float | None = None,
                      log_path: Path | None = None, log_every: int = 25) -> list[float]:
    """Train the vocoder on random segments of the training waves; returns per-step losses.

    The input is exactly what encode() produces (normalised log-mel), so the vocoder learns to invert
    the generator's audio latent space. Losses: log-mel L1 + multi-resolution STFT (no adversary:
    it would double the cost per step and the corpus voice is synthetic and clean).
    """
    gen = torch.Generator().manual_seed(seed)
    segment = segment_frames * HOP
    usable = [torch.from_numpy(w).to(codec.device) for w in waves if len(w) >= segment]
    if not usable:
        raise ValueError(f"no training wave is at least {segment} samples long")
    vocoder = codec.vocoder.train()
    opt = torch.optim.AdamW(vocoder.parameters(), lr=lr, betas=(0.8, 0.99), weight_decay=0.0)
    log = CsvLog(log_path, ["step", "elapsed_s", "lr", "loss"])
    losses, progress = [], Progress(steps, max_minutes)
    for step in range(steps):
        done = progress.begin_step(step, opt, lr, "audio")
        if done is None:
            break
        batch = []
        for _ in range(batch_size):
            wave = usable[int(torch.randint(0, len(usable), (1,), generator=gen))]
            start = int(torch.randint(0, (len(wave) - segment) // HOP + 1, (1,), generator=gen)) * HOP
            batch.append(wave[start : start + segment])
        target = torch.stack(batch)
        with torch.no_grad():
            mel = codec.normalise(codec.log_mel(target))  # [B, F, n_mels]
        pred = vocoder(mel.transpose(1, 2))
        loss = vocoder_loss(codec, pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vocoder.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        elapsed = progress.elapsed
        if step % log_every == 0 or step == steps - 1:
            log.write(dict(step=step, elapsed_s=round(elapsed, 1), lr=f"{opt.param_groups[0]['lr']:.2e}",
                           loss=f"{losses[-1]:.5f}"))
            if log_path is not None:
                print(f"[codecs/audio] step {step}/{steps} loss {losses[-1]:.4f} ({elapsed:.0f} s)", flush=True)
    codec.vocoder.eval()
    return losses
