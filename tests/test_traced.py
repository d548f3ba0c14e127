"""mf.traced: the CPU cache write as traces (no GIL between kernels) gives the eager write's bits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mf.conditions import Conditions
from mf.model import _TRACED_WRITES, MFTransformer
from mf.pipeline import generate, warm_up


def _model_and_chunks(n_chunks: int, seed: int = 0):
    torch.manual_seed(seed)
    model = MFTransformer.from_preset("micro").eval()
    c = model.model_config
    g = torch.Generator().manual_seed(seed)
    cond = Conditions(torch.randn(1, c.video_channels, c.latent_size, c.latent_size, generator=g),
                      torch.randn(1, c.attr_dim, generator=g),
                      torch.randint(0, c.n_phonemes, (1, n_chunks * c.mels_per_chunk), generator=g),
                      torch.zeros(1, dtype=torch.bool))
    chunks = [(torch.randn(1, c.frames_per_chunk, c.video_channels, c.latent_size, c.latent_size, generator=g),
               torch.randn(1, c.mels_per_chunk, c.n_mels, generator=g)) for _ in range(n_chunks)]
    return model, cond, chunks


def _fill(model, cond, chunks, traced: bool, grad: bool = False):
    """A cache written chunk by chunk; returns it and the keys each write published, per layer."""
    fc = model.model_config.frames_per_chunk
    model.traced_cache_write = traced
    published = []
    with torch.set_grad_enabled(grad):
        cache = model.new_cache(cond.chunk_slice(0, 1, fc))
        for k, (v, a) in enumerate(chunks):
            published.append([])
            model.write_cache(v, a, cond.chunk_slice(k, 1, fc), cache,
                              on_layer=lambda li, kv, out=published[-1]: out.append((li, kv)))
    return cache, published


def test_a_traced_cache_write_gives_the_eager_writes_keys_bit_for_bit():
    model, cond, chunks = _model_and_chunks(6)
    window = model.model_config.window_chunks
    eager, eager_pub = _fill(model, cond, chunks, traced=False)
    traced, traced_pub = _fill(model, cond, chunks, traced=True)
    tw = _TRACED_WRITES[model]
    # writes after the window has filled ran traced (the first `window` writes meet a shorter history)
    assert tw.calls == len(chunks) - window and tw.traces > 0
    for (ia, kvs_a), (ib, kvs_b) in zip(eager.chunks, traced.chunks):
        assert ia == ib
        for (ka, va), (kb, vb) in zip(kvs_a, kvs_b):
            assert torch.equal(ka, kb) and torch.equal(va, vb)
    # every layer's keys are published once, in order, and they are the keys the cache keeps
    for layers_a, layers_b, (_, kvs) in zip(eager_pub[-2:], traced_pub[-2:], list(traced.chunks)[-2:]):
        assert [li for li, _ in layers_b] == list(range(len(model.blocks))) == [li for li, _ in layers_a]
        for (_, (kb, vb)), (kc, vc) in zip(layers_b, kvs):
            assert torch.equal(kb, kc) and torch.equal(vb, vc)


def test_writes_with_gradients_or_a_filling_window_stay_eager():
    model, cond, chunks = _model_and_chunks(5, seed=1)
    window = model.model_config.window_chunks
    _fill(model, cond, chunks[: window], traced=True)               # the window never fills
    assert model not in _TRACED_WRITES or _TRACED_WRITES[model].calls == 0
    _fill(model, cond, chunks, traced=True, grad=True)               # training: eager, differentiable
    assert _TRACED_WRITES[model].calls == 0 and _TRACED_WRITES[model].traces == 0


def test_streamed_chunks_are_the_same_with_and_without_traced_writes(studio):
    window = studio.config.window_chunks
    runs = {}
    for traced in (False, True):
        studio.model.traced_cache_write = traced
        try:
            runs[traced] = list(generate(studio, steps=2, seed=9, seconds=0.6))
        finally:
            studio.model.traced_cache_write = True
    assert len(runs[True]) > window + 2, "the stream must reach a full window"
    assert _TRACED_WRITES[studio.model].calls > 0
    for x, y in zip(runs[False], runs[True]):
        assert torch.equal(x.video_latents, y.video_latents) and torch.equal(x.audio_latents, y.audio_latents)
        assert np.array_equal(x.frames, y.frames) and np.array_equal(x.audio, y.audio)


def test_warm_up_makes_the_traces_so_a_users_stream_makes_none(studio):
    assert warm_up(studio) > 0
    tw = _TRACED_WRITES[studio.model]
    made = tw.traces
    assert made > 0
    list(generate(studio, steps=2, seed=3, seconds=0.6))
    assert tw.traces == made


def test_without_tracing_the_writes_stay_eager_and_give_the_same_keys(monkeypatch):
    model, cond, chunks = _model_and_chunks(5, seed=2)
    eager, _ = _fill(model, cond, chunks, traced=False)

    def unavailable(*args, **kwargs):
        raise RuntimeError("no tracer in this torch")

    monkeypatch.setattr(torch.jit, "trace", unavailable)
    with pytest.warns(RuntimeWarning, match="cache writes stay eager"):
        fallback, _ = _fill(model, cond, chunks, traced=True)
    tw = _TRACED_WRITES[model]
    assert tw.failed and tw.calls == 0
    for (_, kvs_a), (_, kvs_b) in zip(eager.chunks, fallback.chunks):
        assert all(torch.equal(ka, kb) and torch.equal(va, vb) for (ka, va), (kb, vb) in zip(kvs_a, kvs_b))


def test_a_trace_follows_weights_updated_in_place_and_is_remade_for_replaced_ones():
    model, cond, chunks = _model_and_chunks(5, seed=3)
    _fill(model, cond, chunks, traced=True)
    tw = _TRACED_WRITES[model]
    made = tw.traces
    with torch.no_grad():
        model.blocks[0].video.qkv.weight.mul_(1.5)                      # an optimiser step: same tensor
    eager, _ = _fill(model, cond, chunks, traced=False)
    traced, _ = _fill(model, cond, chunks, traced=True)
    assert tw.traces == made
    block = model.blocks[1].audio.qkv
    block.weight = torch.nn.Parameter(block.weight.detach() * 0.5)       # a new tensor: traced again
    eager2, _ = _fill(model, cond, chunks, traced=False)
    traced2, _ = _fill(model, cond, chunks, traced=True)
    assert tw.traces == 2 * made
    model.video_in = torch.nn.Linear(model.video_in.in_features, model.video_in.out_features)   # the head's module
    eager3, _ = _fill(model, cond, chunks, traced=False)
    traced3, _ = _fill(model, cond, chunks, traced=True)
    assert tw.traces == 3 * made
    for a, b in ((eager, traced), (eager2, traced2), (eager3, traced3)):
        for (_, kvs_a), (_, kvs_b) in zip(a.chunks, b.chunks):
            assert all(torch.equal(ka, kb) and torch.equal(va, vb) for (ka, va), (kb, vb) in zip(kvs_a, kvs_b))


def test_a_traced_write_checks_its_inputs_first_and_stays_available():
    model, cond, chunks = _model_and_chunks(6, seed=4)
    c = model.model_config
    cache, _ = _fill(model, cond, chunks[:5], traced=True)
    tw = _TRACED_WRITES[model]
    bad = cond.chunk_slice(5, 1, c.frames_per_chunk)
    bad = dataclasses.replace(bad, phone_ids=bad.phone_ids.clone())   # a slice is a view of the script
    bad.phone_ids[0, 0] = c.n_phonemes
    with torch.no_grad(), pytest.raises(ValueError, match="phone_ids must lie"):
        model.write_cache(*chunks[5], bad, cache)
    with torch.no_grad(), pytest.raises(ValueError, match="audio must be"):
        model.write_cache(chunks[5][0], chunks[5][1][:, :-1], cond.chunk_slice(5, 1, c.frames_per_chunk), cache)
    assert not tw.failed and cache.next_chunk == 5
    calls = tw.calls
    with torch.no_grad():
        model.write_cache(*chunks[5], cond.chunk_slice(5, 1, c.frames_per_chunk), cache)
    assert tw.calls == calls + 1 and cache.next_chunk == 6
