"""ShortCut objectives: teaching the few-step mode u(x_t, t, d > 0) to jump.

Two targets, both stop-gradient:

1. Self-consistency (stage 2 and baseline C, shortcut-models style): one jump of size d equals two
   jumps of size d/2 taken by the same network,
       u*(x_t, t, d) = (u(x_t, t, d/2) + u(x_t - d/2 u(x_t, t, d/2), t - d/2, d/2)) / 2,
   and the smallest jump's halves use the multi-step mode (d = 0, Euler). Trained jointly with
   flow matching on the rest of the batch, so both modes are learned from the start.

2. Multi-step -> few-step distillation (stage 3, Mutual Forcing): the few-step jump over [t - d, t]
   must equal the stop-gradient multi-step ODE integrated over the same interval with n Euler
   substeps of the d = 0 mode,
       u*(x_t, t, d) = (x_t - ODE_{t -> t-d}(x_t)) / d.
   This is our reading of the paper's ShortCut loss; the substep count n = ceil(d * ode_steps)
   (ode_steps = 16 by default, i.e. the multi-step grid of a 16-step sampler) bounds its cost.

Few-step times lie on the grid of their step size (t in {d, 2d, ..., 1}), exactly the times the
sampler visits at inference with `steps = 1/d`.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

import torch

from mf.constants import MELS_PER_FRAME
from mf.train.flow_matching import (
    TEXT_DROP_P,
    Pair,
    batch_pair,
    cached,
    conditions,
    drop_text,
    noised_pair,
    pair_mse,
    per_frame,
    randn_pair,
    sample_t,
    teacher_forcing,
)
from mf.train.latents import LatentBatch

# Step sizes of the few-step mode: 1, 2, 4, 8 and 16 steps per chunk.
SHORTCUT_STEP_SIZES = (1.0, 0.5, 0.25, 0.125, 0.0625)
# Fraction of each stage-2 batch that trains the few-step mode (shortcut-models use 1/4).
SHORTCUT_FRACTION = 0.25


def sample_d_on_grid(shape, gen: torch.Generator, step_sizes=SHORTCUT_STEP_SIZES) -> tuple[torch.Tensor, torch.Tensor]:
    """d from step_sizes uniformly, and t on d's grid: t = d * j, j in 1 .. 1/d."""
    sizes = torch.tensor(step_sizes, dtype=torch.float32)
    d = sizes[torch.randint(len(step_sizes), shape, generator=gen)]
    n = torch.round(1.0 / d)
    j = torch.floor(torch.rand(shape, generator=gen) * n) + 1.0
    return d, d * j


def shortcut_model_loss(model, batch: LatentBatch, gen: torch.Generator, *, frames_per_chunk: int,
                        shortcut_fraction: float = SHORTCUT_FRACTION, step_sizes=SHORTCUT_STEP_SIZES,
                        text_drop_p: float = TEXT_DROP_P) -> tuple[torch.Tensor, dict]:
    """Stage-2 loss: flow matching (d = 0) on most rows + self-consistency (d > 0) on the rest,
    one gradient forward for the whole batch (teacher forcing)."""
    B, K = batch.batch_size, batch.n_chunks(frames_per_chunk)
    device = batch.video.device
    n_sc = int(round(B * shortcut_fraction))
    x0 = batch_pair(batch)
    t = sample_t(B, K, gen)
    d = torch.zeros(B, K)
    if n_sc:
        d_sc, t_sc = sample_d_on_grid((n_sc, K), gen, step_sizes)
        t[B - n_sc:], d[B - n_sc:] = t_sc, d_sc
    t, d = t.to(device), d.to(device)
    eps = randn_pair(x0, gen)
    xt = noised_pair(x0, eps, t, frames_per_chunk)
    cond = conditions(batch, drop_text(B, gen, text_drop_p, device))
    target = eps.map(lambda e, x: e - x, x0)
    if n_sc:
        rows = slice(B - n_sc, B)
        sc_target = self_consistency_target(
            model, xt.map(lambda x: x[rows]), x0.map(lambda x: x[rows]), t[rows], d[rows],
            _select_cond(cond, rows), frames_per_chunk, min(step_sizes))
        target = Pair(*(torch.cat([full[: B - n_sc], sc], 0) for full, sc in
                        ((target.video, sc_target.video), (target.audio, sc_target.audio))))
    pred = teacher_forcing(model, xt, x0, t, d, cond)
    loss, logs = pair_mse(pred, target)
    out = {f"fm_{k}": v for k, v in logs.items()}
    if n_sc:  # the self-consistency part alone, for the log
        sc_loss, _ = pair_mse(pred.map(lambda x: x[rows].detach()), target.map(lambda x: x[rows]))
        out["sc_self"] = float(sc_loss)
    return loss, out


@torch.no_grad()
def self_consistency_target(model, xt: Pair, clean: Pair, t, d, cond, frames_per_chunk: int,
                            min_step: float) -> Pair:
    """Two half jumps of the same network (stop-grad); halves below min_step use d = 0."""
    half = d / 2
    half_net = torch.where(half < min_step - 1e-9, torch.zeros_like(half), half)
    u1 = teacher_forcing(model, xt, clean, t, half_net, cond)
    x_mid = xt.step(u1, half, frames_per_chunk)
    u2 = teacher_forcing(model, x_mid, clean, t - half, half_net, cond)
    return u1.map(lambda a, b: 0.5 * (a + b), u2)


@torch.no_grad()
def multistep_ode_target(model, xt: Pair, t: torch.Tensor, d: torch.Tensor, cond, cache,
                         frames_per_chunk: int, ode_steps: int = 16) -> tuple[Pair, int]:
    """Average velocity of the stop-grad multi-step ODE over [t - d, t] (Euler, d = 0 mode)."""
    n = max(1, math.ceil(float(d.max()) * ode_steps - 1e-6))
    h = d / n
    x, tau = xt, t
    zeros = torch.zeros_like(t)
    for _ in range(n):
        u = cached(model, x, tau, zeros, cond, cache)
        x = x.step(u, h, frames_per_chunk)
        tau = tau - h
    # the inverse of the update rule over the whole interval: u* = (x_t - x_{t-d}) / d
    return Pair(*(None if a is None else (a - b) / per_frame(d, frames_per_chunk, a, per)
                  for a, b, per in ((xt.video, x.video, 1), (xt.audio, x.audio, MELS_PER_FRAME)))), n


def shortcut_distillation_loss(model, x0: Pair, cond, cache, gen: torch.Generator, *, frames_per_chunk: int,
                               step_sizes=(0.25, 0.125), ode_steps: int = 16) -> tuple[torch.Tensor, dict]:
    """Stage-3 ShortCut loss on one next chunk given the cache of its (generated) history."""
    B = x0.video.shape[0] if x0.video is not None else x0.audio.shape[0]
    device = (x0.video if x0.video is not None else x0.audio).device
    d, t = sample_d_on_grid((B, 1), gen, step_sizes)
    d, t = d.to(device), t.to(device)
    eps = randn_pair(x0, gen)
    xt = noised_pair(x0, eps, t, frames_per_chunk)
    target, n = multistep_ode_target(model, xt, t, d, cond, cache, frames_per_chunk, ode_steps)
    pred = cached(model, xt, t, d, cond, cache)
    loss, logs = pair_mse(pred, target)
    return loss, {"shortcut": float(loss.detach()), "shortcut_substeps": n}


def _select_cond(cond, rows):
    """The conditions of the batch rows ``rows`` (every tensor field sliced)."""
    return replace(cond, **{f.name: getattr(cond, f.name)[rows] for f in fields(cond)
                            if isinstance(getattr(cond, f.name), torch.Tensor)})
