"""Specification of the GPU path's logic, checked on the CPU: the static ring-buffer cache and the graphed passes.

- the ring-buffer cache gives the rolling ``KVCache``'s outputs over a stream longer than the window
  (separate and fused cache writes), and never reallocates a buffer;
- ``GraphedModel`` (capture off: the same fill / frozen pass / record protocol a CUDA graph replays)
  drives ``sample_chunk`` to the eager results, shapes and addresses fixed across chunks;
- the passes a CUDA graph captures make no host sync (no ``.item()``, ``nonzero``, tensors from host data);
- ``generate(graphs=True)`` equals the default path and reuses its runner across calls.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mf.conditions import Conditions
from mf.graphs import GraphedModel, new_static_cache
from mf.model import MFTransformer
from mf.pipeline import generate
from mf.sampler import make_schedule, sample_chunk
from mf.static_cache import EMPTY_CHUNK

TIGHT = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MFTransformer.from_preset("micro").eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-initialised heads would give zero velocities
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return m


def _stream(model, n_chunks: int, seed: int = 0):
    """(cond of the clip, per-chunk noise) for a batch-1 stream of ``n_chunks`` chunks."""
    config = model.model_config
    fc = config.frames_per_chunk
    gen = torch.Generator().manual_seed(seed)
    cond = Conditions(ref_latent=torch.randn(1, config.video_channels, config.latent_size, config.latent_size,
                                             generator=gen),
                      attributes=torch.randn(1, config.attr_dim, generator=gen),
                      phone_ids=torch.randint(0, config.n_phonemes, (1, n_chunks * config.mels_per_chunk),
                                              generator=gen),
                      text_dropped=torch.zeros(1, dtype=torch.bool))
    noise = [(torch.randn(1, fc, config.video_channels, config.latent_size, config.latent_size, generator=gen),
              torch.randn(1, config.mels_per_chunk, config.n_mels, generator=gen)) for _ in range(n_chunks)]
    return cond, noise


@pytest.mark.parametrize("fused", [False, True], ids=["write_cache", "step_and_write"])
def test_static_ring_buffer_cache_gives_the_rolling_cache_outputs_over_a_stream_longer_than_the_window(model, fused):
    config = model.model_config
    n = 3 * config.window_chunks + 2
    cond, noise = _stream(model, n)
    fc = config.frames_per_chunk
    t, d = torch.full((1, 1), 0.7), torch.full((1, 1), 0.3)
    with torch.inference_mode():
        rolling, ring = model.new_cache(cond), new_static_cache(model, cond)
        ptrs = ring.data_ptrs()
        base = [(k.data_ptr(), v.data_ptr()) for k, v in ring.history]
        previous = None
        for k in range(n):
            nv, na = noise[k]
            ck = cond.chunk_slice(k, 1, fc)
            if fused and previous is not None:
                pv, pa, pc = previous
                outs = [model.step_and_write(nv, na, t, d, pv, pa, ck, pc, cache) for cache in (rolling, ring)]
            else:
                outs = [model(nv, na, t, d, ck, kv_cache=cache) for cache in (rolling, ring)]
            for x, y in zip(*outs):
                torch.testing.assert_close(y, x, **TIGHT)
            clean = (nv * 0.5, na * 0.5, ck)  # any finished chunk will do
            if fused:
                previous = clean
            else:
                for cache in (rolling, ring):
                    model.write_cache(clean[0], clean[1], ck, cache)
            assert rolling.n_cached_chunks == ring.n_cached_chunks <= config.window_chunks
        assert ring.next_chunk == rolling.next_chunk
        assert [(k.data_ptr(), v.data_ptr()) for k, v in ring.history] == base, "the ring never reallocates"
        assert ring.data_ptrs()[: len(ptrs)] == ptrs
        assert (ring.ids != EMPTY_CHUNK).all(), "every slot written after more than a window of chunks"


def test_graphed_passes_drive_sample_chunk_to_the_eager_results_with_fixed_buffers(model):
    config = model.model_config
    n = 2 * config.window_chunks + 3
    cond, noise = _stream(model, n, seed=3)
    fc = config.frames_per_chunk
    schedule = make_schedule(3)
    with torch.inference_mode():
        rolling = model.new_cache(cond)
        runner = GraphedModel(model, new_static_cache(model, cond), capture=False)
        pending = {"eager": None, "static": None}
        ptrs = None
        for k in range(n):
            ck = cond.chunk_slice(k, 1, fc)
            eager = sample_chunk(model, rolling, ck, *noise[k], schedule, pending=pending["eager"], write="defer")
            static = sample_chunk(runner, runner.cache, ck, *noise[k], schedule, pending=pending["static"],
                                  write="defer")
            torch.testing.assert_close(static.video, eager.video, **TIGHT)
            torch.testing.assert_close(static.audio, eager.audio, **TIGHT)
            assert static.nfe == eager.nfe == 3 and static.cache_writes == eager.cache_writes
            pending = {"eager": eager.pending, "static": static.pending}
            shapes = [tuple(t.shape) for p in runner._passes.values() for t in p.tensors]
            if ptrs is None and k > 0:
                ptrs, first_shapes = runner.cache.data_ptrs(), shapes
            elif ptrs is not None:
                assert runner.cache.data_ptrs() == ptrs and shapes == first_shapes
        assert set(runner._passes) == {"denoise", "fused"} and runner.captures == 0


def test_pass_buffers_are_refilled_once_per_chunk_not_once_per_step(model, monkeypatch):
    cond, noise = _stream(model, 4, seed=5)
    fc = model.model_config.frames_per_chunk
    calls = []
    rule = model._visibility_matrix
    monkeypatch.setattr(model, "_visibility_matrix", lambda *a: calls.append(1) or rule(*a))
    with torch.inference_mode():
        runner = GraphedModel(model, new_static_cache(model, cond), capture=False)
        pending = None
        for k in range(4):
            out = sample_chunk(runner, runner.cache, cond.chunk_slice(k, 1, fc), *noise[k], make_schedule(6),
                               pending=pending, write="defer")
            pending = out.pending
    # chunk 0: its denoising pass; chunks 1-3: the fused pass, then the denoising pass after the write
    assert len(calls) == 1 + 2 * 3


def test_graphed_model_rejects_another_cache_and_another_batch(model):
    cond, noise = _stream(model, 2)
    fc = model.model_config.frames_per_chunk
    with torch.inference_mode():
        runner = GraphedModel(model, new_static_cache(model, cond), capture=False)
        t = torch.full((1, 1), 0.5)
        with pytest.raises(ValueError, match="its own StaticKVCache"):
            runner(*noise[0], t, t, cond.chunk_slice(0, 1, fc), kv_cache=model.new_cache(cond))
        runner(*noise[0], t, t, cond.chunk_slice(0, 1, fc), kv_cache=runner.cache)
        two = cond.chunk_slice(0, 1, fc).repeat_for_cfg()
        with pytest.raises(ValueError, match="do not match"):
            runner(*(x.repeat(2, *[1] * (x.dim() - 1)) for x in noise[0]), t.repeat(2, 1), t.repeat(2, 1), two,
                   kv_cache=runner.cache)
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedModel(model, runner.cache, capture=True)


class _HostSyncs(TorchDispatchMode):
    """Records ops that need the host to wait for the device or copy host data in (illegal in a capture)."""

    FORBIDDEN = ("_local_scalar_dense", "nonzero", "is_nonzero", "item", "lift_fresh", "masked_select", "unique")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if any(name.startswith(f) for f in self.FORBIDDEN):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_the_passes_a_cuda_graph_captures_make_no_host_sync(model, monkeypatch):
    import mf.model as mf_model

    cond, noise = _stream(model, 3)
    fc = model.model_config.frames_per_chunk
    with torch.inference_mode():
        runner = GraphedModel(model, new_static_cache(model, cond), capture=False)
        runner.warm_up(cond.chunk_slice(0, 1, fc))     # fills every pass kind's buffers
        assert set(runner._passes) == {"denoise", "write", "fused"}
        monkeypatch.setattr(mf_model, "_capturing", lambda: True)  # as inside torch.cuda.graph
        runner.cache.frozen = True
        for kind, p in runner._passes.items():
            with _HostSyncs() as mode:
                out = runner._body(p)
            assert mode.seen == [], (kind, mode.seen)
            assert all(torch.isfinite(x).all() for x in out)
        runner.cache.frozen = False



@pytest.mark.parametrize("kw", [dict(steps=3), dict(steps=2, cfg_scale=1.5), dict(steps=2, fuse_cache_write=False)],
                         ids=["few", "cfg", "separate_writes"])
def test_generate_with_static_graphed_passes_equals_the_default_path(studio, kw):
    seconds = 0.6  # 15 frames: 8 micro chunks, more than the micro window of 2
    default = list(generate(studio, seed=2, seconds=seconds, text="hello", **kw))
    static = list(generate(studio, seed=2, seconds=seconds, text="hello", graphs=True, **kw))
    again = list(generate(studio, seed=2, seconds=seconds, text="hello", graphs=True, **kw))
    assert len(default) == len(static) == 8
    for x, y, z in zip(default, static, again):
        torch.testing.assert_close(y.video_latents, x.video_latents, **TIGHT)
        torch.testing.assert_close(y.audio_latents, x.audio_latents, **TIGHT)
        assert torch.equal(y.video_latents, z.video_latents), "same seed, same output on the static path"
    runners = [r for pool in studio.graph_runners.values() for r in pool]
    assert runners and all(not r.lock.locked() for r in runners), "every stream gives its runner back"


def test_continuing_from_history_on_the_static_path_equals_straight_through(studio):
    straight = list(generate(studio, seed=4, seconds=0.4, steps=2, graphs=True))
    continued = list(generate(studio, seed=4, seconds=0.4, steps=2, graphs=True, history=straight[:3]))
    for x, y in zip(straight[3:], continued):
        torch.testing.assert_close(y.video_latents, x.video_latents, **TIGHT)


@pytest.mark.parametrize("lookahead", [False, "handoff"])
def test_every_lookahead_schedule_gives_the_same_bits(studio, lookahead):
    ref = list(generate(studio, seed=6, seconds=0.4, steps=2))
    other = list(generate(studio, seed=6, seconds=0.4, steps=2, lookahead=lookahead))
    for x, y in zip(ref, other):
        assert torch.equal(x.video_latents, y.video_latents) and torch.equal(x.audio_latents, y.audio_latents)


def test_a_consumer_that_stops_early_releases_the_sampler_thread(studio):
    import threading

    before = {t.name for t in threading.enumerate()}
    stream = generate(studio, seed=1, seconds=2.0, steps=2)
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "mf-sampler" and t.name not in before]
    with pytest.raises(ValueError, match="lookahead must be"):
        next(generate(studio, lookahead="sometimes"))
