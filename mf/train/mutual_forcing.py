"""Mutual Forcing (stage 3) and the two self-distillation baselines that share its machinery.

One network, two modes: d = 0 is the multi-step flow (sampled with many small steps, optionally
with CFG); d > 0 is the few-step shortcut mode (4 or 8 jumps per chunk). One training iteration,
for a batch of real windows of `max_history + 1` chunks:

 (a) ROLLOUT (``stream_history``). The few-step mode generates H chunks autoregressively WITHOUT
     gradient through the streaming cache of ``mf.pipeline.generate``: ``model.new_cache`` (the
     ``mf.kv_cache.KVCache`` of ``window_chunks`` = 8 chunks plus the never-evicted reference-frame
     sink; the oldest chunk is evicted on write) and ``mf.sampler.sample_chunk`` with the cache write
     fused into the next chunk's first pass, as ``generate()`` does. So every cache state that
     streaming meets (filling, full, evicting for ever) is a training state. (Tested: the rollout's
     chunks equal ``generate()``'s for the same noise, past the window.)
 (b) FLOW MATCHING on each LOSS chunk h (the REAL chunk h) given that generated history (multi-step mode, d = 0,
     with text dropout so CFG keeps working): the model keeps learning from real data while
     conditioned on the context it will see at inference.
 (c) SELF-DISTILLATION multi-step -> few-step, both with the multi-step mode under stop-gradient:
     - ShortCut: u(x_t, t, d) must equal the average velocity of the multi-step ODE over
       [t - d, t] (mf.train.shortcut.shortcut_distillation_loss);
     - DMD: the few-step sample of chunk h (4 jumps from noise; gradient through the last jump
       only) is pushed along x0_fake - x0_real, where "real" is the stop-grad multi-step mode with
       CFG and "fake" a separate score network trained online on the few-step samples
       (mf.train.dmd).
     loss = L_fm + 2/3 L_shortcut + 1/3 L_dmd; the fake-score network has its own AdamW step.

Choices the paper leaves open, and ours (also in assets/MODEL_CARD.md):
- Chunk length: 4 video frames (160 ms) = 16 mel frames (the `tiny` preset; mf.configs).
- History length (long horizon): the rollout horizon H ~ U{0 .. max_history} per iteration, with
  max_history = 24 = 3x the cache window for the tiny recipe (same H for the batch so the cache is
  one tensor). Flexible lengths are the point of the method; H = 0 keeps the first chunk (no
  history, only the reference-frame prefix) trained.
- One rollout serves several loss chunks (``loss_depths``): the chunk at depth H plus up to
  ``loss_chunks - 1`` = 2 distinct earlier depths drawn from 0..H-1; at each the losses (b)-(c)
  read the cache as it is at that point of the stream, and the rollout then goes on. Why: the
  rollout is the cost that grows with the horizon (5 chunk passes per history chunk, under
  no_grad), the losses cost the same at any depth; so one rollout of H chunks trains up to 3 cache
  states for one rollout's price (on average H = 12, so ~60 no-grad chunk passes buy 3 loss chunks
  instead of 1), and the depths within one batch are spread over filling and evicting states. The
  losses are averaged over the depths (memory grows with loss_chunks, never with H). The other
  choices were dearer or biased: a fresh rollout per loss chunk triples the dominant cost;
  teacher-forced long windows would not train the generated history; a rollout of fixed length
  24 always costs the maximum.
- History rollout carries no gradient (as the brief reads the paper), and the KV cache is written
  under no_grad: gradients only reach the loss chunks' forward passes. This keeps memory flat
  in H and is what makes long horizons affordable.
- Reference-frame prefix in stage 3: computed under no_grad together with the cache (it is part of
  the context, like the history); the prefix pathway keeps training in stages 1-2, where teacher
  forcing computes it with gradient.
- Rollout step count: 4 (the shipped few-step setting); `--rollout-steps` changes it.
- ShortCut target: Euler integration of the d = 0 mode with ceil(16 d) substeps (4 for d = 1/4),
  step sizes d in {1/4, 1/8} (the 4- and 8-step modes the product uses), t on d's grid.
- DMD: few-step sample with 4 jumps, gradient through the last jump only (Self-Forcing's
  "gradient at the exit step", with the exit fixed at the end because the shortcut mode is only
  trained for the grid's jump sizes); re-noise t' ~ U[0.02, 0.98]; CFG 2.0 on the real score;
  DMD2 per-sample normalisation. The unconditional CFG branch drops the script of the current
  chunk only and shares the conditional branch's history cache (saves h cache writes; at
  inference the unconditional branch also drops the history's script).
- Fake score: initialised from the stage-2 weights (so it starts equal to the real score and DMD
  starts at zero gradient), updated once per generator step with AdamW at the generator's lr,
  its own KV cache written from the same generated history.
- Weights of the three losses: flow matching 1, ShortCut 2/3, DMD 1/3 (reviews of the paper).
- EMA 0.99 of the generator is what ships.

Baselines (same stage-2 initialisation, same budget, same code path):
- C  "ShortCut with teacher forcing": history = the REAL previous chunks written into the cache
     (no rollout), losses FM + ShortCut, no DMD.
- E  "Self-Forcing-style DMD": history = few-step self-rollout, loss = DMD only, real score from
     a FROZEN copy of the stage-2 model (multi-step mode, CFG), i.e. an external teacher.
- B  is the stage-2 model itself sampled at few steps: no training (mf.train.stages).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from mf.constants import MELS_PER_FRAME
from mf.train.dmd import cfg_combine, dmd_generator_loss, fake_score_loss
from mf.train.flow_matching import (
    TEXT_DROP_P,
    Pair,
    cached,
    conditions,
    drop_text,
    noised_pair,
    pair_mse,
    randn_pair,
    sample_t,
)
from mf.train.latents import LatentBatch
from mf.train.shortcut import shortcut_distillation_loss


@dataclass(frozen=True)
class MutualForcingConfig:
    history: str = "generated"        # "generated" (Mutual Forcing, E) or "real" (baseline C)
    max_history: int = 24             # rollout horizon H ~ U{0..max_history} chunks per iteration
    loss_chunks: int = 3              # loss chunks one rollout serves (H and up to loss_chunks - 1 earlier)
    rollout_steps: int = 4            # few-step sampler steps for the history rollout
    dmd_steps: int = 4                # few-step jumps of the DMD sample
    w_fm: float = 1.0
    w_shortcut: float = 2.0 / 3.0
    w_dmd: float = 1.0 / 3.0
    shortcut_step_sizes: tuple = (0.25, 0.125)
    ode_steps: int = 16
    dmd_cfg: float = 2.0
    text_drop_p: float = TEXT_DROP_P
    teacher: str = "online"           # DMD real score: "online" (the model's own d = 0 mode) or "frozen" (E)

    def __post_init__(self):
        if self.history not in ("generated", "real"):
            raise ValueError(f"history must be 'generated' or 'real', got {self.history!r}")
        if self.teacher not in ("online", "frozen"):
            raise ValueError(f"teacher must be 'online' or 'frozen', got {self.teacher!r}")
        if self.max_history < 0 or self.rollout_steps < 1 or self.dmd_steps < 1 or self.loss_chunks < 1:
            raise ValueError("max_history >= 0, rollout_steps >= 1, dmd_steps >= 1 and loss_chunks >= 1 are required")


MUTUAL = MutualForcingConfig()
BASELINE_C = MutualForcingConfig(history="real", w_dmd=0.0)
BASELINE_E = MutualForcingConfig(w_fm=0.0, w_shortcut=0.0, w_dmd=1.0, teacher="frozen")


# ----------------------------------------------------------------------------- streaming history

def _chunk_pair(batch: LatentBatch, k: int, fc: int) -> Pair:
    part = batch.chunks(k, k + 1, fc)
    return Pair(part.video, part.audio)


def draw_horizon(max_history: int, n_chunks: int, gen: torch.Generator) -> int:
    """H ~ U{0 .. min(max_history, n_chunks - 1)}: the history length of one iteration's rollout."""
    return int(torch.randint(0, min(max_history, n_chunks - 1) + 1, (1,), generator=gen))


def loss_depths(horizon: int, n_loss: int, gen: torch.Generator) -> list[int]:
    """The chunk indices one rollout of ``horizon`` history chunks trains: the horizon itself plus
    ``min(n_loss - 1, horizon)`` distinct depths drawn uniformly from 0 .. horizon - 1, ascending."""
    if horizon < 0 or n_loss < 1:
        raise ValueError(f"horizon >= 0 and n_loss >= 1 are required, got {horizon}, {n_loss}")
    extra = min(n_loss - 1, horizon)
    earlier = torch.randperm(horizon, generator=gen)[:extra].tolist() if extra else []
    return sorted(earlier) + [horizon]


@torch.no_grad()
def stream_history(model, batch: LatentBatch, cond_full, depths: list[int], gen: torch.Generator, *, fc: int,
                   mode: str, steps: int, extra_models=(), noise_fn=None):
    """(a) Stream the history through the inference cache; yield ``(h, cache, extra_caches, chunks)`` at
    each depth h of ``depths`` (ascending): the cache then holds what ``generate()`` holds before chunk h,
    ``chunks`` the h history chunks (a list that grows as the stream goes on).

    The cache is the pipeline's: ``model.new_cache`` (a ``KVCache`` of ``model.model_config.window_chunks`` chunks plus
    the never-evicted reference prefix; eviction in ``KVCache.append``), filled by ``sample_chunk`` with
    the write of chunk k fused into chunk k+1's first pass (``write="defer"``, exactly ``generate()``'s
    default) and flushed (``flush_pending``) where a loss reads the cache. "real" mode writes the real
    chunks instead (baseline C). Extra models (fake score, frozen teacher) get their own caches written
    from the same chunks. Everything runs under no_grad, so memory is flat in the horizon; the caller's
    code between yields runs with its own grad mode. The chunks after the last depth are not generated.
    ``noise_fn(k) -> Pair`` replaces the loop generator's noise of chunk k (e.g. generate()'s seeding).
    """
    from mf.sampler import flush_pending, make_schedule, sample_chunk

    schedule = make_schedule(steps, mode="few")
    cache = model.new_cache(cond_full)
    extra_caches = [m.new_cache(cond_full) for m in extra_models]
    pending, chunks = None, []
    targets = sorted({int(h) for h in depths})
    for k in range(targets[-1] + 1):
        if k in targets:
            flush_pending(model, cache, pending)
            pending = None
            yield k, cache, extra_caches, chunks
            if k == targets[-1]:
                return
        cond_k = cond_full.chunk_slice(k, 1, fc)
        if mode == "generated":
            noise = noise_fn(k) if noise_fn is not None else randn_pair(_chunk_pair(batch, k, fc), gen)
            out = sample_chunk(model, cache, cond_k, noise.video, noise.audio, schedule, pending=pending,
                               write="defer")
            pending = out.pending
            x = Pair(out.video, out.audio)
        else:
            x = _chunk_pair(batch, k, fc)
            model.write_cache(x.video, x.audio, cond_k, cache)
        for m, c in zip(extra_models, extra_caches):
            m.write_cache(x.video, x.audio, cond_k, c)
        chunks.append(x)


def build_history(model, batch: LatentBatch, cond_full, h: int, gen: torch.Generator, *, fc: int,
                  mode: str, steps: int, extra_models=()) -> tuple[object, list[object], list[Pair]]:
    """The first h chunks as history (``stream_history`` up to depth h). Returns the model's KV cache,
    one cache per extra model, and the history chunks (those generated, or the real ones)."""
    for _, cache, extra_caches, chunks in stream_history(model, batch, cond_full, [h], gen, fc=fc, mode=mode,
                                                         steps=steps, extra_models=extra_models):
        return cache, extra_caches, list(chunks)


def few_step_sample_with_last_grad(model, cond, cache, gen: torch.Generator, *, like: Pair, fc: int,
                                   steps: int) -> Pair:
    """Few-step sample of one chunk from noise; only the last jump carries gradient. The sampler's
    own loop (mf.sampler.sample_chunk, few-step schedule, grad="last"); the cache is not written."""
    from mf.sampler import make_schedule, sample_chunk

    noise = randn_pair(like, gen)
    out = sample_chunk(model, cache, cond, noise.video, noise.audio, make_schedule(steps, mode="few"),
                       write="never", grad="last")
    return Pair(out.video, out.audio)


# ----------------------------------------------------------------------------- one iteration

def make_fake_score(model):
    """The DMD fake-score network: a trainable copy of the (stage-2) generator."""
    fake = copy.deepcopy(model)
    fake.requires_grad_(True)
    return fake


def make_frozen_teacher(model):
    return copy.deepcopy(model).eval().requires_grad_(False)


def mutual_forcing_losses(model, batch: LatentBatch, gen: torch.Generator, *, fc: int,
                          mf_config: MutualForcingConfig = MUTUAL, fake=None, teacher=None,
                          history: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """One iteration's losses: ONE rollout of H ~ U{0..max_history} history chunks (``history`` fixes H)
    serves the loss chunks at ``loss_depths(H, mf_config.loss_chunks)``; the losses are averaged over them.
    `batch` holds >= H + 1 chunks; returns (generator loss, fake-score loss or None, logs). The caller
    steps the optimisers."""
    n_avail = batch.n_chunks(fc)
    horizon = history if history is not None else draw_horizon(mf_config.max_history, n_avail, gen)
    if horizon + 1 > n_avail:
        raise ValueError(f"history {horizon} needs {horizon + 1} chunks, batch has {n_avail}")
    depths = loss_depths(horizon, mf_config.loss_chunks, gen)
    cond_full = conditions(batch)
    extra = [m for m in (fake, teacher) if m is not None]
    total, fake_total, sums = 0.0, None, {}
    for h, cache, extra_caches, _ in stream_history(model, batch, cond_full, depths, gen, fc=fc, mode=mf_config.history,
                                                    steps=mf_config.rollout_steps, extra_models=extra):
        fake_cache = extra_caches[0] if fake is not None else None
        teacher_cache = extra_caches[-1] if teacher is not None else None
        loss, fake_loss, logs = chunk_losses(model, batch, cond_full, h, cache, gen, fc=fc, mf_config=mf_config,
                                             fake=fake, fake_cache=fake_cache, teacher=teacher,
                                             teacher_cache=teacher_cache)
        total = total + loss / len(depths)
        if fake_loss is not None:
            fake_total = fake_loss / len(depths) + (0.0 if fake_total is None else fake_total)
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + v / len(depths)
    sums.update(history=float(horizon), loss_chunks=float(len(depths)), beyond_window=float(
        sum(h > model.model_config.window_chunks for h in depths)))
    return total, fake_total, sums


def chunk_losses(model, batch: LatentBatch, cond_full, h: int, cache, gen: torch.Generator, *, fc: int,
                 mf_config: MutualForcingConfig, fake=None, fake_cache=None, teacher=None,
                 teacher_cache=None) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """(b) + (c) on the REAL chunk h, given the cache of its history."""
    B = batch.batch_size
    device = batch.video.device
    cond = cond_full.chunk_slice(h, 1, fc)
    x0 = _chunk_pair(batch, h, fc)
    logs: dict = {}
    total = torch.zeros((), device=device)

    if mf_config.w_fm > 0:  # (b) flow matching on the real next chunk, given the history
        t = sample_t(B, 1, gen).to(device)
        eps = randn_pair(x0, gen)
        xt = noised_pair(x0, eps, t, fc)
        cond_fm = type(cond)(cond.ref_latent, cond.attributes, cond.phone_ids,
                             drop_text(B, gen, mf_config.text_drop_p, device))
        pred = cached(model, xt, t, torch.zeros_like(t), cond_fm, cache)
        fm, fm_logs = pair_mse(pred, eps.map(lambda e, x: e - x, x0))
        total = total + mf_config.w_fm * fm
        logs["fm"] = float(fm.detach())

    if mf_config.w_shortcut > 0:  # (c1) stop-grad multi-step ODE -> few-step jump
        sc, sc_logs = shortcut_distillation_loss(model, x0, cond, cache, gen, frames_per_chunk=fc,
                                                 step_sizes=mf_config.shortcut_step_sizes,
                                                 ode_steps=mf_config.ode_steps)
        total = total + mf_config.w_shortcut * sc
        logs.update(sc_logs)

    fake_loss = None
    if mf_config.w_dmd > 0:  # (c2) DMD on the few-step sample of the current chunk
        if fake is None:
            raise ValueError("the DMD loss needs a fake-score model (make_fake_score)")
        x_fake = few_step_sample_with_last_grad(model, cond, cache, gen, like=x0, fc=fc, steps=mf_config.dmd_steps)
        real_net, real_cache = (teacher, teacher_cache) if teacher is not None else (model, cache)
        uncond = cond.with_text_dropped()

        def real_score(xt, t):
            zero = torch.zeros_like(t)
            u_c = cached(real_net, xt, t, zero, cond, real_cache)
            if mf_config.dmd_cfg == 1.0:
                return u_c
            return cfg_combine(u_c, cached(real_net, xt, t, zero, uncond, real_cache), mf_config.dmd_cfg)

        def fake_score(xt, t):
            return cached(fake, xt, t, torch.zeros_like(t), cond, fake_cache)

        dmd, dmd_logs = dmd_generator_loss(x_fake, real_score, fake_score, gen, frames_per_chunk=fc)
        total = total + mf_config.w_dmd * dmd
        logs["dmd"] = float(dmd.detach())
        fake_loss, f_logs = fake_score_loss(fake_score, x_fake, gen, frames_per_chunk=fc)
        logs.update(f_logs)
    logs["loss"] = float(total.detach())
    return total, fake_loss, logs


__all__ = ["MutualForcingConfig", "MUTUAL", "BASELINE_C", "BASELINE_E", "build_history", "stream_history",
           "draw_horizon", "loss_depths", "chunk_losses", "few_step_sample_with_last_grad", "make_fake_score",
           "make_frozen_teacher",
           "mutual_forcing_losses", "MELS_PER_FRAME"]
