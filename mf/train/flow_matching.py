"""Causal flow matching: the base objective of stages 1 and 2, and the adapter every objective
uses to call the generator.

Conventions (docs/ARCHITECTURE.md): x_t = (1 - t) x0 + t eps, t = 1 is noise, v = eps - x0; the
network predicts u(x_t, t, d), the average velocity over the jump t -> t - d (d = 0: the
instantaneous velocity = the multi-step mode). Each chunk of a window has its own t and d.

Teacher forcing: one forward over K chunks where noisy chunk k attends to the clean chunks < k
(block-causal), i.e. the model learns each chunk given the REAL past. Stage 1 (unimodal) trains
one tower at a time: the other modality's tokens are removed from the sequence (video=None or
audio=None), so each tower first learns its own temporal structure; stage 2 couples them.

Text dropout (p = 0.1 by default) sets `text_dropped`, which makes the model replace the phoneme
embeddings by a learned "no script" embedding (the character attributes and the reference frame stay):
this is what classifier-free guidance uses as its unconditional branch at sampling time and what the
DMD "real score" uses in stage 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mf.constants import MELS_PER_FRAME
from mf.sampler import flow_step
from mf.train.latents import LatentBatch

TEXT_DROP_P = 0.1
# t is drawn away from exactly 0 (the clean end has no signal to learn and u is ill-defined there).
T_MIN = 1e-3


# ----------------------------------------------------------------------------- model adapter

def conditions(batch: LatentBatch, text_dropped: torch.Tensor | None = None):
    """The model's Conditions for a latent batch (text_dropped defaults to all False)."""
    from mf.conditions import Conditions

    if text_dropped is None:
        text_dropped = torch.zeros(batch.batch_size, dtype=torch.bool, device=batch.video.device)
    return Conditions(ref_latent=batch.ref_latent, attributes=batch.attributes,
                      phone_ids=batch.phone_ids, text_dropped=text_dropped)


def drop_text(batch_size: int, gen: torch.Generator, p: float = TEXT_DROP_P, device="cpu") -> torch.Tensor:
    return (torch.rand(batch_size, generator=gen) < p).to(device)


def per_frame(t: torch.Tensor, frames_per_chunk: int, like: torch.Tensor, per: int = 1) -> torch.Tensor:
    """Broadcast a per-chunk value [B, K] to a latent tensor `like` [B, K*Fc*per, ...]."""
    out = t.repeat_interleave(frames_per_chunk * per, dim=1)
    return out.view(*out.shape, *([1] * (like.dim() - 2)))


def noised(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, frames_per_chunk: int, per: int = 1):
    tt = per_frame(t, frames_per_chunk, x0, per)
    return (1.0 - tt) * x0 + tt * eps


@dataclass
class Pair:
    """A (video, audio) pair of latent-shaped tensors; either may be None in stage 1."""

    video: torch.Tensor | None
    audio: torch.Tensor | None

    def map(self, fn, other: "Pair | None" = None) -> "Pair":
        if other is None:
            return Pair(*(None if x is None else fn(x) for x in (self.video, self.audio)))
        return Pair(*(None if x is None else fn(x, y) for x, y in
                      ((self.video, other.video), (self.audio, other.audio))))

    def detach(self) -> "Pair":
        return self.map(lambda x: x.detach())

    def step(self, u: "Pair", d: torch.Tensor, frames_per_chunk: int) -> "Pair":
        """The update rule ``mf.sampler.flow_step`` (x_{t-d} = x_t - d u) with a step size per chunk, d [B, K]."""
        fc, v, a = frames_per_chunk, self.video, self.audio
        return Pair(None if v is None else flow_step(v, u.video, per_frame(d, fc, v)),
                    None if a is None else flow_step(a, u.audio, per_frame(d, fc, a, MELS_PER_FRAME)))


def randn_pair(like: Pair, gen: torch.Generator) -> Pair:
    return like.map(lambda x: torch.randn(x.shape, generator=gen).to(x.device, x.dtype))


def noised_pair(x0: Pair, eps: Pair, t: torch.Tensor, frames_per_chunk: int) -> Pair:
    return Pair(
        None if x0.video is None else noised(x0.video, eps.video, t, frames_per_chunk),
        None if x0.audio is None else noised(x0.audio, eps.audio, t, frames_per_chunk, MELS_PER_FRAME),
    )


def teacher_forcing(model, noisy: Pair, clean: Pair, t, d, cond) -> Pair:
    """u for every noisy chunk given the real clean past (block-causal), one forward."""
    uv, ua = model.forward_teacher_forcing(noisy.video, noisy.audio, clean.video, clean.audio, t, d, cond)
    return Pair(uv, ua)


def cached(model, x: Pair, t, d, cond, cache) -> Pair:
    """u for one (or more) chunk(s) given the KV cache of the past: the inference code path."""
    uv, ua = model(x.video, x.audio, t, d, cond, kv_cache=cache)
    return Pair(uv, ua)


def pair_mse(pred: Pair, target: Pair) -> tuple[torch.Tensor, dict]:
    """Sum of the per-modality mean squared errors (each tower's loss has equal say)."""
    total, logs = 0.0, {}
    for name in ("video", "audio"):
        p, q = getattr(pred, name), getattr(target, name)
        if p is None:
            continue
        loss = F.mse_loss(p.float(), q.float())
        logs[name] = float(loss.detach())
        total = total + loss
    return total, logs


# ----------------------------------------------------------------------------- the objective

def sample_t(batch_size: int, n_chunks: int, gen: torch.Generator) -> torch.Tensor:
    """Uniform t per chunk in [T_MIN, 1]: multi-step sampling visits the whole interval evenly."""
    return T_MIN + (1.0 - T_MIN) * torch.rand(batch_size, n_chunks, generator=gen)


def batch_pair(batch: LatentBatch, modalities: tuple[str, ...] = ("video", "audio")) -> Pair:
    return Pair(batch.video if "video" in modalities else None,
                batch.audio if "audio" in modalities else None)


def flow_matching_loss(model, batch: LatentBatch, gen: torch.Generator, *, frames_per_chunk: int,
                       modalities: tuple[str, ...] = ("video", "audio"),
                       text_drop_p: float = TEXT_DROP_P) -> tuple[torch.Tensor, dict]:
    """Teacher-forcing flow matching in the multi-step mode (d = 0): u(x_t, t, 0) -> eps - x0."""
    x0 = batch_pair(batch, modalities)
    B, K = batch.batch_size, batch.n_chunks(frames_per_chunk)
    device = batch.video.device
    t = sample_t(B, K, gen).to(device)
    d = torch.zeros_like(t)
    eps = randn_pair(x0, gen)
    xt = noised_pair(x0, eps, t, frames_per_chunk)
    cond = conditions(batch, drop_text(B, gen, text_drop_p, device))
    pred = teacher_forcing(model, xt, x0, t, d, cond)
    loss, logs = pair_mse(pred, eps.map(lambda e, x: e - x, x0))
    return loss, {f"fm_{k}": v for k, v in logs.items()}


def unimodal_flow_matching_loss(model, batch: LatentBatch, gen: torch.Generator, *, frames_per_chunk: int,
                                text_drop_p: float = TEXT_DROP_P) -> tuple[torch.Tensor, dict]:
    """Stage 1: each tower learns its own modality alone, in one forward for both towers.

    The first half of the batch is video-only, the second half audio-only. The absent modality is
    replaced by zeros in both the clean (history) and the noisy stream, so no information about it
    reaches the other tower, and its loss is not computed. (The model always embeds both streams;
    an all-zero latent is unlike any noised real latent, whose variance is never zero, so the
    network can tell "absent" from "present".) Stage 2 then shows both modalities together.
    """
    B, K = batch.batch_size, batch.n_chunks(frames_per_chunk)
    if B < 2:
        raise ValueError("the unimodal loss needs a batch of at least 2 (one video-only, one audio-only row)")
    device = batch.video.device
    n_video = B // 2
    x0 = batch_pair(batch)
    t = sample_t(B, K, gen).to(device)
    d = torch.zeros_like(t)
    eps = randn_pair(x0, gen)
    xt = noised_pair(x0, eps, t, frames_per_chunk)
    keep_video = (torch.arange(B, device=device) < n_video).float()
    keep_audio = 1.0 - keep_video
    mask_v = keep_video.view(B, 1, 1, 1, 1)
    mask_a = keep_audio.view(B, 1, 1)
    clean = Pair(x0.video * mask_v, x0.audio * mask_a)
    noisy = Pair(xt.video * mask_v, xt.audio * mask_a)
    cond = conditions(batch, drop_text(B, gen, text_drop_p, device))
    pred = teacher_forcing(model, noisy, clean, t, d, cond)
    target = eps.map(lambda e, x: e - x, x0)
    loss_v = F.mse_loss(pred.video[:n_video], target.video[:n_video])
    loss_a = F.mse_loss(pred.audio[n_video:], target.audio[n_video:])
    return loss_v + loss_a, {"uni_video": float(loss_v.detach()), "uni_audio": float(loss_a.detach())}
