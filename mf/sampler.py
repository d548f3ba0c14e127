"""One sampler for every step count: schedules are data, a chunk is sampled by one loop.

Owns ``Schedule`` / ``make_schedule``, ``sample_chunk``, THE update rule ``flow_step`` and the guidance
rule ``guide``.

Flow conventions (docs/ARCHITECTURE.md): ``x_t = (1 - t) x0 + t eps``; the network predicts the average
velocity ``u(x_t, t, d)`` over the jump ``t -> t - d``; one update is ``x_{t-d} = x_t - d u``
(``flow_step``; ``Schedule.step`` applies it with the schedule's step size). The sampler and every
training objective (``mf.train``: rollouts, ShortCut targets, the DMD sample and its x0 estimate)
move latents with this one function.

A schedule is the list of times ``1 = t_0 > t_1 > ... > t_n = 0`` (a uniform grid warped by ``shift``,
``t -> shift t / (1 + (shift - 1) t)``), the step sizes ``t_i - t_{i+1}`` it moves by and the step sizes
it tells the network. The two modes of Mutual Forcing differ only in the last list:
- few-step mode (default for steps <= 16): the network is told the jump it makes (d_i = t_i - t_{i+1},
  1/steps on the unshifted grid) and predicts the average velocity of that jump;
- multi-step mode (default for steps > 16): the network is told d = 0 (instantaneous velocity) and the
  sampler integrates with Euler steps of its own size; optional classifier-free guidance with the
  script dropped as the unconditional branch, both branches in one batched forward.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable

import torch

from mf.conditions import Conditions
from mf.kv_cache import KVCache
from mf.model import MFTransformer

FEW_STEP_MAX = 16  # steps <= this use the few-step (shortcut) mode unless mode= says otherwise
MODES = ("few", "multi")


def flow_step(x: torch.Tensor, u: torch.Tensor, d: float | torch.Tensor) -> torch.Tensor:
    """The update rule of every sampler and objective: ``x_{t-d} = x_t - d u``.

    ``d`` is a step size (a float) or a tensor broadcastable to ``x`` (a step size per chunk, see
    ``mf.train.flow_matching.per_frame``); ``d = t`` jumps straight to the clean estimate ``x0``.
    """
    return x - d * u


def guide(u_cond: torch.Tensor, u_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``u_uncond + scale (u_cond - u_uncond)`` (scale 1 = the conditional u)."""
    return u_uncond + scale * (u_cond - u_uncond)


@dataclass(frozen=True)
class Schedule:
    steps: int
    mode: str                   # "few" | "multi"
    shift: float
    times: tuple[float, ...]    # steps + 1 values from 1 down to 0
    model_d: tuple[float, ...]  # step size told to the network at each step

    @property
    def step_sizes(self) -> tuple[float, ...]:
        return tuple(a - b for a, b in zip(self.times[:-1], self.times[1:]))

    def step(self, i: int, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Step ``i`` of the schedule: ``x_{t_(i+1)} = x_{t_i} - (t_i - t_(i+1)) u`` (``flow_step``)."""
        return flow_step(x, u, self.times[i] - self.times[i + 1])


def make_schedule(steps: int, mode: str | None = None, shift: float = 1.0) -> Schedule:
    """The schedule for ``steps`` denoising steps (see the module docstring for the modes)."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"steps must be an integer, got {steps!r}")
    if steps <= 0:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if mode is None:
        mode = "few" if steps <= FEW_STEP_MAX else "multi"
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    grid = [1.0 - i / steps for i in range(steps + 1)]
    times = tuple(shift * u / (1.0 + (shift - 1.0) * u) for u in grid)
    sizes = [a - b for a, b in zip(times[:-1], times[1:])]
    model_d = tuple(sizes) if mode == "few" else tuple(0.0 for _ in sizes)
    return Schedule(steps=steps, mode=mode, shift=float(shift), times=times, model_d=model_d)


@dataclass
class PendingWrite:
    """A finished chunk whose cache write is folded into the next chunk's first network pass."""

    video: torch.Tensor     # [B', Fc, C, h, w] (B' = 2B with CFG)
    audio: torch.Tensor     # [B', Fc*4, M]
    cond: Conditions        # conditions of that chunk, batch B'


@dataclass
class ChunkSample:
    video: torch.Tensor                     # [B, Fc, C, h, w] clean latents (t = 0)
    audio: torch.Tensor                     # [B, Fc*4, M]
    step_latents: list | None               # [(video, audio)] after each step, when asked for
    nfe: int                                # denoising network evaluations (CFG counts both branches)
    cache_writes: int                       # t = 0 passes run for the cache (0 or 1)
    pending: PendingWrite | None            # this chunk, to be written by the next call (fused mode)


def sample_chunk(model: MFTransformer, cache: KVCache, cond: Conditions, noise_video: torch.Tensor,
                 noise_audio: torch.Tensor, schedule: Schedule, *, cfg_scale: float = 1.0,
                 keep_step_latents: bool = False, pending: PendingWrite | None = None,
                 write: str = "now", on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                 grad: str = "all", write_beside: Executor | None = None) -> ChunkSample:
    """Denoise one chunk from noise, attending to ``cache`` (which the call may append to).

    cond: conditions of THIS chunk (phone_ids cover its Fc*4 mel frames), batch B. With
    ``cfg_scale != 1`` the cache must have been built from ``cond.repeat_for_cfg()`` (batch 2B).
    pending: the previous chunk, not yet written; its write is fused into this chunk's first pass.
    write: "now" runs ``write_cache`` for this chunk before returning; "defer" returns it as
    ``pending`` (the caller passes it to the next call, or calls ``flush_pending`` at the end);
    "never" leaves the cache untouched (e.g. the last chunk of a clip).
    on_step(i, x_video, x_audio): optional callback after each denoising step (previews, progress).
    grad: "all" keeps the caller's grad mode for every step; "last" runs all steps but the last under
    ``torch.no_grad`` (DMD's few-step sample: gradient through the last jump only).
    write_beside: an executor with a free thread (e.g. ``ThreadPoolExecutor(1)``): ``pending``'s write runs
    there, layer by layer, beside the first pass instead of inside it (``write_cache`` then ``forward`` on
    ``KVCache.incoming``: the same bits as writing first, on two cores in the time of about one pass).
    """
    if write not in ("now", "defer", "never"):
        raise ValueError(f"write must be 'now', 'defer' or 'never', got {write!r}")
    if grad not in ("all", "last"):
        raise ValueError(f"grad must be 'all' or 'last', got {grad!r}")
    use_cfg = cfg_scale != 1.0
    branches = 2 if use_cfg else 1
    b = noise_video.shape[0]
    cond_in = cond.repeat_for_cfg() if use_cfg else cond
    cache_batch = cache.prefix[0][0].shape[0]
    if cache_batch != b * branches:
        raise ValueError(f"cache batch {cache_batch} does not match {b} x {branches} branch(es) "
                         f"(build it from cond.repeat_for_cfg() when cfg_scale != 1)")
    x_v, x_a = noise_video, noise_audio
    steps_out = [] if keep_step_latents else None
    nfe, writes = 0, 0
    grad_enabled = torch.is_grad_enabled()
    for i in range(schedule.steps):
        with torch.set_grad_enabled(grad_enabled and (grad == "all" or i == schedule.steps - 1)):
            u_v, u_a = _velocity(model, cache, cond_in, x_v, x_a, schedule, i, cfg_scale, pending, write_beside)
            x_v = schedule.step(i, x_v, u_v.to(x_v.dtype))
            x_a = schedule.step(i, x_a, u_a.to(x_a.dtype))
        writes += int(pending is not None)
        pending = None
        nfe += branches
        if steps_out is not None:
            steps_out.append((x_v.detach().clone(), x_a.detach().clone()))
        if on_step is not None:
            on_step(i, x_v, x_a)
    clean_v = torch.cat([x_v, x_v]) if use_cfg else x_v
    clean_a = torch.cat([x_a, x_a]) if use_cfg else x_a
    new_pending = None
    if write == "now":
        model.write_cache(clean_v, clean_a, cond_in, cache)
        writes += 1
    elif write == "defer":
        new_pending = PendingWrite(clean_v, clean_a, cond_in)
    return ChunkSample(x_v, x_a, steps_out, nfe, writes, new_pending)


def _velocity(model: MFTransformer, cache: KVCache, cond_in: Conditions, x_v: torch.Tensor, x_a: torch.Tensor,
              schedule: Schedule, i: int, cfg_scale: float, pending: PendingWrite | None,
              write_beside: Executor | None = None):
    """The (guided) velocity of step ``i``; runs ``pending``'s cache write in the same pass when given
    (or beside it, in ``write_beside``'s thread).

    With guidance (``cfg_scale != 1``) both branches run in one batch [cond; uncond] and combine as
    ``u = u_uncond + cfg_scale (u_cond - u_uncond)``.
    """
    use_cfg = cfg_scale != 1.0
    in_v = torch.cat([x_v, x_v]) if use_cfg else x_v   # [B', Fc, C, h, w], B' = 2B with guidance
    in_a = torch.cat([x_a, x_a]) if use_cfg else x_a   # [B', Fc*4, M]
    t = in_v.new_full((in_v.shape[0], 1), schedule.times[i])
    d = in_v.new_full((in_v.shape[0], 1), schedule.model_d[i])
    if pending is not None and write_beside is not None:
        u_v, u_a = _step_beside_write(model, cache, pending, write_beside, in_v, in_a, t, d, cond_in)
    elif pending is not None:
        u_v, u_a = model.step_and_write(in_v, in_a, t, d, pending.video, pending.audio, cond_in,
                                        pending.cond, cache)
    else:
        u_v, u_a = model(in_v, in_a, t, d, cond_in, kv_cache=cache)
    if use_cfg:
        (c_v, n_v), (c_a, n_a) = u_v.chunk(2), u_a.chunk(2)
        u_v, u_a = guide(c_v, n_v, cfg_scale), guide(c_a, n_a, cfg_scale)
    return u_v, u_a


def _step_beside_write(model: MFTransformer, cache: KVCache, pending: PendingWrite, executor: Executor,
                       in_v: torch.Tensor, in_a: torch.Tensor, t: torch.Tensor, d: torch.Tensor, cond_in: Conditions):
    """``write_cache(pending)`` in the executor's thread while this thread runs the pass on
    ``cache.incoming(...)``: its layer l waits for the write's layer l only. Returns the pass's velocity."""
    view = cache.incoming(cache.next_chunk, model.model_config.tokens_per_chunk)
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()  # thread-local modes

    def write():
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                model.write_cache(pending.video, pending.audio, pending.cond, cache, on_layer=view.publish)
        except BaseException as exc:
            view.fail(exc)
            raise

    job = executor.submit(write)
    try:
        return model(in_v, in_a, t, d, cond_in, kv_cache=view)
    finally:
        job.result()  # the cache holds the write before anyone reads it; a failed write raises here


def flush_pending(model: MFTransformer, cache: KVCache, pending: PendingWrite | None) -> int:
    """Write a deferred chunk now (e.g. before handing the cache to someone else). Returns writes run."""
    if pending is None:
        return 0
    model.write_cache(pending.video, pending.audio, pending.cond, cache)
    return 1
