"""Specification of long-horizon Mutual Forcing (issue 12) and of the per-window metrics.

- the stage-3 rollout streams through the pipeline's rolling cache and evicts exactly like generate();
- history lengths beyond the cache window are drawn, and the recipes' clips hold them;
- one rollout serves several loss chunks (one sampler call per history chunk, not per loss chunk);
- the model only sees relative time: a chunk at 20 s meets the positions of a chunk trained early;
- identity drift and the per-window summary match hand-computed values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from eval.frechet import frechet_distance
from eval.identity import drift_ratio, feature_distances, identity_drift
from eval.windows import (
    WindowSample,
    summarize_windows,
    window_frame_indices,
    write_windows_csv,
)
from mf.configs import get_preset
from mf.model import MFTransformer
from mf.pipeline import build_conditions, chunk_seed, generate
from mf.train import mutual_forcing as mfl
from mf.train.flow_matching import Pair, conditions
from mf.train.latents import LatentBatch, random_latents
from mf.train.stages import RECIPES

MICRO = get_preset("micro")
FC, W = MICRO.frames_per_chunk, MICRO.window_chunks



def _pipeline_noise(studio, seed):
    config = studio.config

    def noise(k):
        g = torch.Generator().manual_seed(chunk_seed(seed, k))
        size = config.latent_size
        v = torch.randn((1, config.frames_per_chunk, config.video_channels, size, size), generator=g)
        return Pair(v, torch.randn((1, config.mels_per_chunk, config.n_mels), generator=g))
    return noise


def _shape_batch(config, n_chunks):
    f = n_chunks * config.frames_per_chunk
    return LatentBatch(video=torch.zeros(1, f, config.video_channels, config.latent_size, config.latent_size),
                       audio=torch.zeros(1, f * 4, config.n_mels), phone_ids=torch.zeros(1, f * 4, dtype=torch.long),
                       attributes=torch.zeros(1, config.attr_dim), ref_latent=torch.zeros(1, config.video_channels,
                                                                                      config.latent_size,
                                                                                      config.latent_size))


def test_rollout_through_the_pipelines_rolling_cache_evicts_exactly_like_generate(studio):
    n, seed = 2 * W + 2, 7  # past the window: the cache evicts n - 1 - W times
    chunks = list(generate(studio, steps=4, seed=seed, seconds=n * FC / 25, text="hello there"))
    cond, _ = build_conditions(studio, seed=seed, n_chunks=n, text="hello there", character_id=None)
    stream = mfl.stream_history(studio.model, _shape_batch(studio.config, n), cond, [n - 1], None, fc=FC,
                                mode="generated", steps=4, noise_fn=_pipeline_noise(studio, seed))
    h, cache, _, history = next(stream)
    assert h == n - 1 and len(history) == n - 1
    for k, x in enumerate(history):  # every chunk, including those written after evictions
        torch.testing.assert_close(x.video[0], chunks[k].video_latents, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(x.audio[0], chunks[k].audio_latents, atol=2e-5, rtol=1e-4)
    assert cache.window == studio.config.window_chunks
    assert [i for i, _ in cache.chunks] == list(range(n - 1 - W, n - 1))  # the last W chunks, oldest evicted
    # the next chunk from this cache is generate()'s last chunk; a cache that evicts one chunk too many differs
    from mf.sampler import make_schedule, sample_chunk
    noise = _pipeline_noise(studio, seed)(n - 1)
    with torch.no_grad():
        last = sample_chunk(studio.model, cache, cond.chunk_slice(n - 1, 1, FC), noise.video, noise.audio,
                            make_schedule(4), write="never")
        torch.testing.assert_close(last.video[0], chunks[-1].video_latents, atol=2e-5, rtol=1e-4)
        short = studio.model.new_cache(cond)
        short.window = W - 1
        for k, x in enumerate(history):
            studio.model.write_cache(x.video, x.audio, cond.chunk_slice(k, 1, FC), short)
        other = sample_chunk(studio.model, short, cond.chunk_slice(n - 1, 1, FC), noise.video, noise.audio,
                             make_schedule(4), write="never")
    assert not torch.allclose(other.video, last.video, atol=1e-4)


def test_history_lengths_beyond_the_window_are_drawn():
    tiny = get_preset("tiny")
    recipe = RECIPES["tiny"]
    assert recipe.max_history >= 3 * tiny.window_chunks
    assert round(recipe.clip_seconds * 25) >= (recipe.max_history + 1) * tiny.frames_per_chunk
    assert recipe.window_chunks >= tiny.window_chunks  # teacher forcing sees a full cache window
    gen = torch.Generator().manual_seed(0)
    draws = np.array([mfl.draw_horizon(recipe.max_history, recipe.max_history + 1, gen) for _ in range(2000)])
    assert draws.min() == 0 and draws.max() == recipe.max_history
    assert abs(np.mean(draws > tiny.window_chunks) - 16 / 25) < 0.05  # uniform over 0..24
    depths = np.array([d for _ in range(600) for d in mfl.loss_depths(mfl.draw_horizon(24, 25, gen), 3, gen)])
    assert np.mean(depths > tiny.window_chunks) > 0.3  # loss chunks behind an evicting cache (expected 0.40)
    assert depths.max() == 24


def _micro_model():
    torch.manual_seed(0)
    model = MFTransformer.from_preset("micro")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_one_rollout_serves_several_loss_chunks(monkeypatch):
    import mf.sampler

    model = _micro_model()
    latents = random_latents(4, 20, channels=MICRO.video_channels, size=MICRO.latent_size, n_mels=MICRO.n_mels,
                             attr_dim=MICRO.attr_dim, n_phonemes=MICRO.n_phonemes, seed=3)
    batch = latents.sample(2, 3 * W + 1, FC, torch.Generator().manual_seed(1))
    calls = {"sample": 0, "losses": []}
    real_sample, real_losses = mf.sampler.sample_chunk, mfl.chunk_losses

    def counting_sample(*a, **k):
        calls["sample"] += k.get("grad") != "last"  # rollout calls; the DMD sample of each loss chunk has grad="last"
        return real_sample(*a, **k)

    def recording_losses(model_, batch_, cond_, h, cache, *a, **k):
        assert [i for i, _ in cache.chunks] == list(range(max(0, h - W), h))  # the stream's state at depth h
        calls["losses"].append(h)
        return real_losses(model_, batch_, cond_, h, cache, *a, **k)

    monkeypatch.setattr(mf.sampler, "sample_chunk", counting_sample)
    monkeypatch.setattr(mfl, "chunk_losses", recording_losses)
    fake = mfl.make_fake_score(model)
    loss, fake_loss, logs = mfl.mutual_forcing_losses(model, batch, torch.Generator().manual_seed(2), fc=FC,
                                                      fake=fake, history=3 * W)
    assert len(calls["losses"]) == 3 and calls["losses"][-1] == 3 * W and calls["losses"] == sorted(calls["losses"])
    assert calls["sample"] == 3 * W  # one sampler call per history chunk: the rollout ran once
    assert logs["loss_chunks"] == 3 and logs["history"] == 3 * W
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(fake_loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_chunk_at_20_seconds_meets_the_positions_of_a_chunk_trained_early():
    model = _micro_model().eval()
    latents = random_latents(1, 4 * FC, channels=MICRO.video_channels, size=MICRO.latent_size, n_mels=MICRO.n_mels,
                             attr_dim=MICRO.attr_dim, n_phonemes=MICRO.n_phonemes, seed=5)
    batch = latents.sample(1, 4, FC, torch.Generator().manual_seed(0))
    cond = conditions(batch)
    late = 20 * 25 // FC  # chunk index at 20 s
    outs = []
    with torch.no_grad():
        for start in (0, late):
            cache = model.new_cache(cond)
            cache.next_chunk = start
            for k in range(3):
                part = batch.chunks(k, k + 1, FC)
                model.write_cache(part.video, part.audio, cond.chunk_slice(k, 1, FC), cache)
            noisy = batch.chunks(3, 4, FC)
            outs.append(model(noisy.video, noisy.audio, torch.full((1, 1), 0.5), torch.zeros(1, 1),
                              cond.chunk_slice(3, 1, FC), kv_cache=cache))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- identity drift and windows

def test_identity_drift_is_the_feature_distance_to_the_reference_frame():
    np.testing.assert_allclose(feature_distances([[3.0, 4.0], [0.0, 0.0], [1.0, 1.0]], [0.0, 0.0]),
                               [5.0, 0.0, math.sqrt(2.0)])

    def mean_colour(frames):  # a transparent extractor: per-channel mean
        return np.asarray(frames, np.float64).mean(axis=(1, 2))

    ref = np.zeros((4, 4, 3), np.uint8)
    frames = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 3, 10)])
    np.testing.assert_allclose(identity_drift(frames, ref, extractor=mean_colour),
                               [0.0, 3 * math.sqrt(3), 10 * math.sqrt(3)])
    assert drift_ratio(6.0, 4.0) == 1.5 and math.isnan(drift_ratio(1.0, 0.0)) and math.isnan(drift_ratio(math.nan, 1.0))
    with pytest.raises(ValueError):
        feature_distances(np.zeros((2, 3)), np.zeros(2))


def test_window_frame_indices_cover_the_window_and_subsample_evenly():
    assert list(window_frame_indices((0, 1), 100, 25)) == list(range(25))
    assert list(window_frame_indices((1, 2), 100, 25)) == list(range(25, 50))
    assert list(window_frame_indices((3, 5), 90, 25)) == list(range(75, 90))  # the clip ends inside the window
    assert list(window_frame_indices((0, 1), 100, 25, per_window=5)) == [0, 6, 12, 18, 24]


def test_window_summary_uses_equal_frame_counts_and_hand_computed_values(tmp_path):
    rng = np.random.default_rng(0)
    d = 4
    clip_a = {"0-5s": WindowSample(gen_features=rng.normal(size=(6, d)), ref_features=rng.normal(size=(6, d)),
                                   gen_identity=2.0, ref_identity=1.0, sync_offset_ms=0.0),
              "5-10s": WindowSample(gen_features=rng.normal(size=(3, d)) + 5, ref_features=rng.normal(size=(3, d)),
                                    gen_identity=4.0, ref_identity=2.0, sync_offset_ms=-80.0)}
    clip_b = {"0-5s": WindowSample(gen_features=rng.normal(size=(6, d)), ref_features=rng.normal(size=(6, d)),
                                   gen_identity=4.0, ref_identity=3.0, sync_offset_ms=40.0)}  # does not reach 5-10 s
    out = summarize_windows(((0, 5), (5, 10)), [clip_a, clip_b])
    first, second = out
    assert first["frames_per_window"] == second["frames_per_window"] == 3  # the smallest window's count, used by both
    assert first["n_clips"] == 2 and second["n_clips"] == 1
    # the 3-frame window is used whole: its FD is the plain Fréchet distance of those sets
    assert second["corpus_fd"] == pytest.approx(frechet_distance(clip_a["5-10s"].gen_features,
                                                                 clip_a["5-10s"].ref_features))
    assert second["corpus_fd"] > first["corpus_fd"]  # shifted by 5 in every dimension
    assert first["identity_gen_mean"] == 3.0 and first["identity_ref_mean"] == 2.0 and first["identity_ratio"] == 1.5
    assert first["sync_abs_offset_ms_median"] == 20.0 and first["sync_within_40ms_frac"] == 1.0
    assert second["sync_abs_offset_ms_median"] == 80.0 and second["sync_within_40ms_frac"] == 0.0
    assert "2 x the feature size" in first["warning"]
    assert math.isnan(first["fid"])  # no Inception features given
    # the same seed gives the same subsample; an explicit N larger than a window is refused, not faked
    assert summarize_windows(((0, 5), (5, 10)), [clip_a, clip_b])[0]["corpus_fd"] == first["corpus_fd"]
    strict = summarize_windows(((0, 5), (5, 10)), [clip_a, clip_b], frames_per_window=6)
    assert math.isnan(strict[1]["corpus_fd"]) and "fewer than the N = 6" in strict[1]["warning"]
    path = write_windows_csv(out, tmp_path / "w.csv")
    with open(path) as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 3 and lines[0].startswith("window,start,end") and lines[1].startswith("0-5s,")


def test_eval_score_reports_equal_n_identity_and_sync_per_window_in_json_and_csv(tmp_path):
    from eval.__main__ import main as eval_main
    from mf.data import render_clip
    from mf.media import write_mp4

    for side, offset in (("gen", 50), ("ref", 0)):
        (tmp_path / side).mkdir()
        for i in range(2):
            clip = render_clip(1_000_000_000 + offset + i, 3.0)
            write_mp4(str(tmp_path / side / f"c{i}.mp4"), clip.frames, audio=clip.audio)
    out = tmp_path / "s.json"
    assert eval_main(["score", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
                      "--metrics", "sync,fid", "--windows", "0-1.5,1.5-3", "--no-download", "--quiet",
                      "--json", str(out), "--csv", str(tmp_path / "s.csv")]) == 0
    import json
    wins = json.loads(out.read_text())["summary"]["windows"]
    assert [w["window"] for w in wins] == ["0-1.5s", "1.5-3s"]
    assert wins[0]["frames_per_window"] == wins[1]["frames_per_window"] > 0  # equal N in every window
    for w in wins:
        assert w["corpus_fd"] is not None and w["identity_gen_mean"] > 0 and w["identity_ref_mean"] > 0
        assert "sync_within_40ms_frac" in w
    rows = (tmp_path / "s.windows.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1].startswith("0-1.5s,")


def test_long_horizon_floors_are_checked_against_the_baseline_measured_in_the_same_run():
    from eval.long_horizon import check_floors

    def entries(fds, ident, syncs):
        return [{"corpus_fd": f, "identity_ratio": ident, "sync_abs_offset_ms_median": s} for f, s in zip(fds, syncs)]
    base = entries([10.0, 10.0, 10.0], 1.5, [0.0, 0.0, 40.0])
    good = check_floors(base, entries([7.0, 7.5, 7.6], 1.1, [0.0, 40.0, 0.0]))
    assert good["all_met"] and good["fd_vs_baseline"]["ratios"] == pytest.approx([0.7, 0.75, 0.76])
    drift = check_floors(base, entries([7.0, 7.5, 8.0], 1.1, [0.0, 0.0, 0.0]))  # 8 / 7 = 1.14 > 1.1
    assert drift["fd_vs_baseline"]["met"] and not drift["fd_last_over_first"]["met"] and not drift["all_met"]
    frozen = check_floors(base, entries([7.0, 7.0, 7.0], 0.5, [0.0, 0.0, 0.0]))  # far less drift than real: refused
    assert not frozen["identity_ratio_last"]["met"]
    late_sync = check_floors(base, entries([7.0, 7.0, 7.0], 1.0, [0.0, 0.0, 80.0]))
    assert not late_sync["sync_median_ms"]["met"]


@pytest.mark.slow
def test_long_horizon_command_writes_a_table_and_json_for_two_checkpoints(tmp_path):
    import json

    from eval.long_horizon import main

    out = tmp_path / "lh.json"
    assert main(["--checkpoints", "assets/model", "assets/model", "--seeds", "2", "--seconds", "3",
                 "--windows", "0-1.5,1.5-3", "--json", str(out), "--markdown", str(tmp_path / "lh.md")]) == 0
    result = json.loads(out.read_text())
    first, second = (s["windows"] for s in result["systems"])
    assert [w["corpus_fd"] for w in first] == [w["corpus_fd"] for w in second]  # same seeds, same output
    assert result["systems"][1]["floors"]["fd_vs_baseline"]["ratios"] == [1.0, 1.0]
    assert not result["systems"][1]["floors"]["fd_vs_baseline"]["met"]  # equal is not 20% better
    assert "| real vs real (other seeds) | 0-1.5s |" in (tmp_path / "lh.md").read_text()
