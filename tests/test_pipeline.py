"""Specification of the sampler schedules and the streaming pipeline (micro model, micro codecs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mf.configs import MAX_SECONDS
from mf.constants import FPS, SAMPLES_PER_FRAME
from mf.pipeline import generate
from mf.sampler import make_schedule


def run(studio, **kw):
    kw.setdefault("steps", 2)
    kw.setdefault("seconds", 0.28)  # 7 frames = 4 micro chunks of 2 frames, the last one cut to 1 frame
    kw.setdefault("text", "hello there")
    return list(generate(studio, **kw))


# ------------------------------------------------------------------ schedules
def test_few_step_schedule_tells_the_network_its_jump():
    s = make_schedule(4)
    assert s.mode == "few" and s.steps == 4
    assert s.times == pytest.approx((1.0, 0.75, 0.5, 0.25, 0.0))
    assert s.model_d == pytest.approx((0.25,) * 4)
    assert make_schedule(16).mode == "few"


def test_multi_step_schedule_uses_instantaneous_velocity_and_its_own_step():
    s = make_schedule(50)
    assert s.mode == "multi" and s.model_d == (0.0,) * 50
    assert sum(s.step_sizes) == pytest.approx(1.0)
    assert s.step_sizes == pytest.approx((0.02,) * 50)
    assert make_schedule(8, mode="multi").model_d == (0.0,) * 8
    assert make_schedule(50, mode="few").model_d == pytest.approx(s.step_sizes)


def test_shift_warps_the_grid_but_keeps_the_end_points():
    s = make_schedule(4, shift=3.0)
    assert s.times[0] == pytest.approx(1.0) and s.times[-1] == pytest.approx(0.0)
    assert s.times[2] == pytest.approx(0.75)  # 3 * 0.5 / (1 + 2 * 0.5)
    assert s.model_d == pytest.approx(s.step_sizes)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_step_counts_are_rejected(steps):
    with pytest.raises(ValueError, match="steps must be"):
        make_schedule(steps)


def test_bad_mode_and_shift_are_rejected():
    with pytest.raises(ValueError, match="mode must be"):
        make_schedule(4, mode="fast")
    with pytest.raises(ValueError, match="shift must be"):
        make_schedule(4, shift=0.0)


class PointMassFlow:
    """An exact flow model for data concentrated at one point x0 (per branch): on the straight path
    x_t = (1 - t) x0 + t eps the average velocity over any jump is (x_t - x0) / t."""

    def __init__(self, x0_video, x0_audio):
        self.x0_video, self.x0_audio = x0_video, x0_audio
        self.writes = 0

    def __call__(self, video, audio, t, d, cond, kv_cache=None):
        tv = t.view(-1, 1, 1, 1, 1)
        return (video - self.x0_video) / tv, (audio - self.x0_audio) / t.view(-1, 1, 1)

    def write_cache(self, video, audio, cond, cache):
        self.writes += 1


class FakeCache:
    def __init__(self, batch):
        self.prefix = [(torch.zeros(batch, 1, 1, 1), None)]


@pytest.mark.parametrize("steps, mode", [(1, None), (4, None), (8, None), (50, None), (4, "multi"), (50, "few")])
def test_an_exact_velocity_field_reaches_the_data_in_any_number_of_steps(steps, mode):
    from mf.conditions import Conditions
    from mf.sampler import sample_chunk

    g = torch.Generator().manual_seed(0)
    x0_v, x0_a = torch.randn(1, 2, 4, 8, 8, generator=g), torch.randn(1, 8, 16, generator=g)
    cond = Conditions(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3), torch.zeros(1, 8, dtype=torch.long),
                      torch.tensor([False]))
    model = PointMassFlow(x0_v, x0_a)
    out = sample_chunk(model, FakeCache(1), cond, torch.randn(1, 2, 4, 8, 8, generator=g),
                       torch.randn(1, 8, 16, generator=g), make_schedule(steps, mode=mode, shift=2.0))
    torch.testing.assert_close(out.video, x0_v, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.audio, x0_a, rtol=1e-4, atol=1e-4)
    assert out.nfe == steps and out.cache_writes == 1 and model.writes == 1


def test_guidance_extrapolates_from_the_unconditional_towards_the_conditional_branch():
    from mf.conditions import Conditions
    from mf.sampler import sample_chunk

    g = torch.Generator().manual_seed(1)
    cond_v, uncond_v = torch.randn(1, 2, 4, 8, 8, generator=g), torch.randn(1, 2, 4, 8, 8, generator=g)
    cond_a, uncond_a = torch.randn(1, 8, 16, generator=g), torch.randn(1, 8, 16, generator=g)
    model = PointMassFlow(torch.cat([cond_v, uncond_v]), torch.cat([cond_a, uncond_a]))  # batch = [cond; uncond]
    cond = Conditions(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3), torch.zeros(1, 8, dtype=torch.long),
                      torch.tensor([False]))
    out = sample_chunk(model, FakeCache(2), cond, torch.randn(1, 2, 4, 8, 8, generator=g),
                       torch.randn(1, 8, 16, generator=g), make_schedule(50), cfg_scale=3.0)
    torch.testing.assert_close(out.video, uncond_v + 3.0 * (cond_v - uncond_v), rtol=1e-4, atol=1e-4)
    assert out.nfe == 100
    with pytest.raises(ValueError, match="cache batch"):
        sample_chunk(model, FakeCache(1), cond, cond_v, cond_a, make_schedule(4), cfg_scale=3.0)


# ------------------------------------------------------------------ pipeline
def test_studio_without_assets_reports_initial_weights(studio):
    assert studio.trained is False and studio.checkpoint is None
    assert "initial weights" in studio.message
    assert studio.max_seconds == MAX_SECONDS


def test_chunks_cover_the_requested_length_with_matching_audio(studio):
    chunks = run(studio)
    fc = studio.config.frames_per_chunk
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert [c.frames.shape[0] for c in chunks] == [fc, fc, fc, 1]
    assert sum(c.frames.shape[0] for c in chunks) == round(0.28 * FPS)
    for c in chunks:
        assert c.frames.dtype == np.uint8 and c.frames.shape[1:] == (64, 64, 3)
        assert c.audio.dtype == np.float32 and c.audio.shape == (c.frames.shape[0] * SAMPLES_PER_FRAME,)
        assert c.video_latents.shape == (fc, studio.config.video_channels, 8, 8)
        assert c.audio_latents.shape == (studio.config.mels_per_chunk, studio.config.n_mels)
        assert c.start_frame == c.index * fc and set(c.timings) >= {"model_s", "decode_s", "nfe", "cache_writes"}
        assert np.isfinite(c.audio).all()


class CallCounter:
    def __init__(self, model, monkeypatch):
        self.calls = {"forward": 0, "write_cache": 0, "step_and_write": 0}
        for name in self.calls:
            original = getattr(model, name)

            def wrapped(*args, _name=name, _original=original, **kwargs):
                self.calls[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(model, name, wrapped)


@pytest.mark.parametrize("steps", [1, 4, 20])  # 20 > 16: the multi-step mode
def test_steps_n_runs_exactly_n_network_evaluations_per_chunk_plus_the_cache_write(studio, monkeypatch, steps):
    counter = CallCounter(studio.model, monkeypatch)
    # separate cache writes: N denoising forwards per chunk, one write per chunk except the last
    chunks = run(studio, steps=steps, seconds=0.16, fuse_cache_write=False, lookahead=False)
    n = len(chunks)
    assert counter.calls == {"forward": steps * n, "write_cache": n - 1, "step_and_write": 0}
    assert [c.timings["nfe"] for c in chunks] == [steps] * n
    assert [c.timings["cache_writes"] for c in chunks] == [1] * (n - 1) + [0]


def test_each_chunk_times_every_step_and_a_write_after_the_steps_falls_outside_them(studio, monkeypatch):
    import time

    original = studio.model.write_cache

    def slow_write(*args, **kwargs):   # a write that takes a known time (it runs after the chunk's steps)
        time.sleep(0.05)
        return original(*args, **kwargs)

    monkeypatch.setattr(studio.model, "write_cache", slow_write)
    chunks = run(studio, steps=3, seconds=0.16, write_beside=False, fuse_cache_write=False, lookahead=False)
    assert len(chunks) >= 2
    for i, c in enumerate(chunks):
        t = c.timings
        assert len(t["steps_s"]) == len(t["steps_cpu_s"]) == 3 and all(x > 0 for x in t["steps_s"])
        outside = t["model_s"] - sum(t["steps_s"])
        if i < len(chunks) - 1:
            assert outside >= 0.05          # the sleep is in the chunk's time, in none of its steps
            assert max(t["steps_s"]) < t["model_s"] - 0.05 + 1e-6
        else:
            assert 0 <= outside < 0.05      # the last chunk writes nothing


def test_fused_cache_write_replaces_one_forward_per_chunk(studio, monkeypatch):
    counter = CallCounter(studio.model, monkeypatch)
    chunks = run(studio, steps=4, seconds=0.16, fuse_cache_write=True)
    n = len(chunks)
    assert counter.calls == {"forward": 4 * n - (n - 1), "write_cache": 0, "step_and_write": n - 1}
    assert sum(c.timings["nfe"] for c in chunks) == 4 * n


def test_guidance_evaluates_both_branches_in_one_batched_forward(studio, monkeypatch):
    counter = CallCounter(studio.model, monkeypatch)
    chunks = run(studio, steps=3, seconds=0.08, cfg_scale=2.0, fuse_cache_write=False)
    assert counter.calls["forward"] == 3 * len(chunks)
    assert [c.timings["nfe"] for c in chunks] == [6] * len(chunks)
    plain = run(studio, steps=3, seconds=0.08)
    assert not torch.equal(chunks[0].video_latents, plain[0].video_latents)


def test_same_seed_is_bitwise_identical_and_another_seed_differs(studio):
    a, b, c = run(studio, seed=5), run(studio, seed=5), run(studio, seed=6)
    for x, y in zip(a, b):
        assert np.array_equal(x.frames, y.frames) and np.array_equal(x.audio, y.audio)
        assert torch.equal(x.video_latents, y.video_latents) and torch.equal(x.audio_latents, y.audio_latents)
    assert not torch.equal(a[0].video_latents, c[0].video_latents)


def test_speed_options_do_not_change_the_output(studio):
    fast = run(studio, seed=2, steps=3)
    plain = run(studio, seed=2, steps=3, fuse_cache_write=False, lookahead=False)
    for x, y in zip(fast, plain):
        torch.testing.assert_close(x.video_latents, y.video_latents, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x.audio_latents, y.audio_latents, rtol=1e-5, atol=1e-5)


def test_streaming_a_longer_clip_starts_exactly_like_a_shorter_one(studio):
    short, long = run(studio, seed=3, seconds=0.16), run(studio, seed=3, seconds=0.4)
    assert len(long) > len(short)
    for x, y in zip(short, long):
        assert torch.equal(x.video_latents, y.video_latents) and torch.equal(x.audio_latents, y.audio_latents)


def test_continuing_from_history_equals_generating_straight_through(studio):
    straight = run(studio, seed=4, seconds=0.4)
    continued = run(studio, seed=4, seconds=0.4, history=straight[:2])
    assert [c.index for c in continued] == list(range(2, len(straight)))
    for x, y in zip(straight[2:], continued):
        torch.testing.assert_close(x.video_latents, y.video_latents, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x.audio_latents, y.audio_latents, rtol=1e-4, atol=1e-4)


def test_step_latents_are_kept_per_denoising_step(studio):
    chunks = run(studio, steps=3, seconds=0.08, keep_step_latents=True)
    for c in chunks:
        assert len(c.step_latents) == 3
        assert torch.equal(c.step_latents[-1][0], c.video_latents)
        assert torch.equal(c.step_latents[-1][1], c.audio_latents)
        assert not torch.equal(c.step_latents[0][0], c.step_latents[-1][0])
    assert run(studio, steps=2, seconds=0.08)[0].step_latents is None


def test_text_modes_give_a_script_babble_or_no_script(studio):
    from mf.conditions import script_phone_ids

    ids, dropped, _ = script_phone_ids("hello there", 200, seed=0)
    assert not dropped and (ids > 0).any() and ids[0] == 0  # lead-in silence, then speech
    babble, dropped, note = script_phone_ids(None, 200, seed=0)
    assert not dropped and (babble > 0).sum() > 50 and "babble" in note
    assert not np.array_equal(babble, script_phone_ids(None, 200, seed=1)[0])
    none, dropped, _ = script_phone_ids("", 200, seed=0)
    assert dropped and not none.any()
    silent = run(studio, seconds=0.08, text="")
    spoken = run(studio, seconds=0.08, text="hello there")
    assert not torch.equal(silent[0].audio_latents, spoken[0].audio_latents)
    long_text = run(studio, seconds=0.08, text="this sentence is much too long for eighty milliseconds")
    assert "cut" in long_text[0].note


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps must be"),
    (dict(steps=-2), "steps must be"),
    (dict(steps=2.5), "steps must be"),
    (dict(seconds=0), "seconds must be a positive"),
    (dict(seconds=-1.0), "seconds must be a positive"),
    (dict(seconds=math.nan), "seconds must be a positive"),
    (dict(seconds=MAX_SECONDS + 1), "at most"),
    (dict(character_id=-1), "unknown character id"),
    (dict(character_id="7"), "unknown character id"),
    (dict(seed=-1), "seed must be"),
    (dict(cfg_scale=-1.0), "cfg_scale"),
    (dict(text=42), "text must be a string"),
])
def test_bad_arguments_raise_clear_errors(studio, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(studio, **kwargs)


def test_history_longer_than_the_clip_is_rejected(studio):
    chunks = run(studio, seconds=0.08)
    with pytest.raises(ValueError, match="history has"):
        run(studio, seconds=0.08, history=chunks)


def test_the_write_beside_the_first_pass_gives_the_separate_write_bit_for_bit(studio, monkeypatch):
    counter = CallCounter(studio.model, monkeypatch)
    beside = run(studio, seed=4, steps=3, seconds=0.6, write_beside=True)   # 0.6 s > the micro window
    n = len(beside)
    # every write but the last chunk's runs in the writer thread while the next chunk's first pass reads it
    assert counter.calls == {"forward": 3 * n, "write_cache": n - 1, "step_and_write": 0}
    separate = run(studio, seed=4, steps=3, seconds=0.6, fuse_cache_write=False, lookahead=False)
    fused = run(studio, seed=4, steps=3, seconds=0.6, fuse_cache_write=True, write_beside=False)
    assert n > studio.config.window_chunks + 1, "the stream must evict from the cache"
    for x, y, z in zip(beside, separate, fused):
        assert torch.equal(x.video_latents, y.video_latents) and torch.equal(x.audio_latents, y.audio_latents)
        assert np.array_equal(x.frames, y.frames) and np.array_equal(x.audio, y.audio)
        torch.testing.assert_close(x.video_latents, z.video_latents, rtol=1e-5, atol=1e-5)


def test_the_cpu_output_does_not_depend_on_whether_a_core_is_spare(studio, monkeypatch):
    import mf.pipeline as pipeline

    monkeypatch.setattr(pipeline, "_oversubscribed", lambda: False)
    idle = run(studio, seed=6, steps=2)
    monkeypatch.setattr(pipeline, "_oversubscribed", lambda: True)   # no spare core: a separate write pass
    busy = run(studio, seed=6, steps=2)
    for x, y in zip(idle, busy):
        assert torch.equal(x.video_latents, y.video_latents) and torch.equal(x.audio_latents, y.audio_latents)


def test_a_failing_write_beside_the_pass_raises_its_error_instead_of_hanging(studio, monkeypatch):
    original = studio.model.write_cache
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return original(*args, **kwargs)

    monkeypatch.setattr(studio.model, "write_cache", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(studio, seed=1, steps=2, seconds=0.28, write_beside=True)


def test_widening_the_cache_write_across_cores_does_not_change_the_output(studio):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # room to widen on any machine with two cores or more
    try:
        wide = run(studio, seed=4, steps=2, wide_cache_write=True)
        narrow = run(studio, seed=4, steps=2, wide_cache_write=False, fuse_cache_write=True)
        assert torch.get_num_threads() == 1, "the sampler restores the caller's thread count"
    finally:
        torch.set_num_threads(before)
    for x, y in zip(wide, narrow):  # GEMMs split rows/columns across threads, not the reduction
        assert torch.equal(x.video_latents, y.video_latents) and torch.equal(x.audio_latents, y.audio_latents)
