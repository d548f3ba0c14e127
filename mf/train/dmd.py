"""Distribution Matching Distillation (DMD) for the few-step mode.

The generator's few-step sample x (with gradient through its last jump) is re-noised to a random
t'; two score models denoise it without gradient:
  real: the stop-gradient multi-step mode (d = 0) of the SAME network in Mutual Forcing (a frozen
        stage-2 copy in baseline E), with classifier-free guidance
            u_real = u_uncond + scale * (u_cond - u_uncond)   (scale: the guidance scale, dmd_cfg)
  fake: a separate network trained online (flow matching) on the generator's detached samples.
The KL gradient in x0 space is  g = x0_fake(x_t') - x0_real(x_t'),  normalised per sample by the
mean |x - x0_real| (DMD2), and applied through the surrogate  0.5 * ||x - sg(x - g)||^2, whose
gradient w.r.t. x is g. Per modality, so video and audio each get a unit-scale signal.

t' is drawn uniformly from [0.02, 0.98]: the ends carry no usable score difference.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from mf.sampler import guide
from mf.train.flow_matching import Pair, noised_pair, pair_mse, randn_pair

DMD_T_RANGE = (0.02, 0.98)

ScoreFn = Callable[[Pair, torch.Tensor], Pair]   # (x_t chunk, t [B, 1]) -> velocity


def cfg_combine(u_cond: Pair, u_uncond: Pair, scale: float) -> Pair:
    """Classifier-free guidance of the real score, per modality (``mf.sampler.guide``)."""
    return u_uncond.map(lambda un, c: guide(c, un, scale), u_cond)


def dmd_generator_loss(x: Pair, real_score: ScoreFn, fake_score: ScoreFn, gen: torch.Generator, *,
                       frames_per_chunk: int, t_range=DMD_T_RANGE) -> tuple[torch.Tensor, dict]:
    """DMD surrogate loss for a generated chunk `x` (which carries the generator's gradient)."""
    ref = x.video if x.video is not None else x.audio
    B = ref.shape[0]
    t = (t_range[0] + (t_range[1] - t_range[0]) * torch.rand(B, 1, generator=gen)).to(ref.device)
    with torch.no_grad():
        xs = x.detach()
        xt = noised_pair(xs, randn_pair(xs, gen), t, frames_per_chunk)
        # x0 estimates: one jump of the whole remaining time, d = t (the update rule, mf.sampler.flow_step)
        x0_real = xt.step(real_score(xt, t), t, frames_per_chunk)
        x0_fake = xt.step(fake_score(xt, t), t, frames_per_chunk)

        def direction(fake, real, sample):
            norm = (sample - real).abs().flatten(1).mean(1).clamp_min(1e-4)
            g = (fake - real) / norm.view(-1, *([1] * (sample.dim() - 1)))
            return torch.nan_to_num(g)

        grad = Pair(*(None if s is None else direction(f, r, s) for s, f, r in
                      ((xs.video, x0_fake.video, x0_real.video), (xs.audio, x0_fake.audio, x0_real.audio))))
    total, logs = 0.0, {}
    for name in ("video", "audio"):
        xm, g = getattr(x, name), getattr(grad, name)
        if xm is None:
            continue
        loss = 0.5 * F.mse_loss(xm.float(), (xm - g).detach().float())
        total = total + loss
        logs[f"dmd_{name}"] = float(loss.detach())
    return total, logs


def fake_score_loss(fake_score_with_grad: ScoreFn, x: Pair, gen: torch.Generator, *,
                    frames_per_chunk: int) -> tuple[torch.Tensor, dict]:
    """Flow matching of the fake-score model on the generator's detached samples."""
    xs = x.detach()
    ref = xs.video if xs.video is not None else xs.audio
    t = (1e-3 + (1 - 1e-3) * torch.rand(ref.shape[0], 1, generator=gen)).to(ref.device)
    eps = randn_pair(xs, gen)
    xt = noised_pair(xs, eps, t, frames_per_chunk)
    loss, logs = pair_mse(fake_score_with_grad(xt, t), eps.map(lambda e, s: e - s, xs))
    return loss, {"fake_score": float(loss.detach())}
