"""Specification of the CUDA path (skipped where no GPU is visible, e.g. CI; run on a lent GPU).

- the shipped studio generates on CUDA under bf16 autocast: finite, right shapes, same seed twice
  gives the same output, and the result stays close to the float32 CPU run of the same seed;
- CUDA float32 matches CPU float32 chunk for chunk (same noise: it is drawn on the CPU);
- the graphed path (static ring cache + CUDA graphs, the CUDA default) equals the eager path within the
  same tolerances, in float32 and bf16, replays its graphs (3 captures per batch size, then replays only)
  and never moves a buffer across chunks or clips;
- a training stage and the codec trainers run on the GPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")

from mf.pipeline import generate, load_studio  # noqa: E402


def _latents(chunks):
    video = torch.cat([c.video_latents.float().cpu() for c in chunks])
    audio = torch.cat([c.audio_latents.float().cpu() for c in chunks])
    return video, audio


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def cpu_run():
    studio = load_studio(assets="assets", device="cpu")
    return _latents(list(generate(studio, steps=4, seed=3, seconds=0.64, text="hello there")))


def test_bf16_autocast_generation_is_finite_deterministic_and_close_to_cpu(cpu_run):
    studio = load_studio(assets="assets", device="cuda")
    assert studio.dtype == torch.bfloat16
    first = list(generate(studio, steps=4, seed=3, seconds=0.64, text="hello there"))
    second = list(generate(studio, steps=4, seed=3, seconds=0.64, text="hello there"))
    assert len(first) == 4 and all(c.timings["nfe"] == 4 for c in first)
    for c in first:
        assert c.frames.dtype == np.uint8 and c.frames.shape[1:] == (64, 64, 3)
        assert np.isfinite(c.audio).all()
    v1, a1 = _latents(first)
    v2, a2 = _latents(second)
    assert torch.isfinite(v1).all() and torch.isfinite(a1).all()
    assert _rel(v1, v2) < 1e-3 and _rel(a1, a2) < 1e-3, "same seed, same output on CUDA"
    v_cpu, a_cpu = cpu_run
    # bf16 operands: a few 1e-2 of relative error after 4 chunks x (4 steps + a cache write)
    assert _rel(v1, v_cpu) < 0.1 and _rel(a1, a_cpu) < 0.1, (_rel(v1, v_cpu), _rel(a1, a_cpu))


def test_float32_on_cuda_matches_float32_on_cpu(cpu_run):
    studio = load_studio(assets="assets", device="cuda", dtype=torch.float32)
    video, audio = _latents(list(generate(studio, steps=4, seed=3, seconds=0.64, text="hello there")))
    v_cpu, a_cpu = cpu_run
    assert _rel(video, v_cpu) < 1e-3 and _rel(audio, a_cpu) < 1e-3, (_rel(video, v_cpu), _rel(audio, a_cpu))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_graph_mode_equals_eager_mode_on_cuda_and_replays_fixed_buffers(cpu_run, dtype):
    studio = load_studio(assets="assets", device="cuda", dtype=dtype)
    kw = dict(steps=4, seed=3, seconds=0.64, text="hello there")
    eager = _latents(list(generate(studio, graphs=False, **kw)))
    graph = _latents(list(generate(studio, graphs=True, **kw)))
    (runner,) = [r for pool in studio.graph_runners.values() for r in pool]
    assert runner.capture and runner.captures == 3 and runner.replays > 0
    ptrs, replays = runner.cache.data_ptrs(), runner.replays
    again = _latents(list(generate(studio, graphs=True, **kw)))
    assert runner.captures == 3 and runner.replays > replays, "the second clip only replays"
    assert runner.cache.data_ptrs() == ptrs, "static buffers keep their addresses across clips"
    tol = 1e-3 if dtype == torch.float32 else 0.05
    for x, y in zip(graph, eager):
        assert _rel(x, y) < tol, (dtype, _rel(x, y))
    assert _rel(again[0], graph[0]) < 1e-3 and _rel(again[1], graph[1]) < 1e-3, "same seed, same output"
    v_cpu, a_cpu = cpu_run
    cpu_tol = 1e-3 if dtype == torch.float32 else 0.1
    assert _rel(graph[0], v_cpu) < cpu_tol and _rel(graph[1], a_cpu) < cpu_tol


def test_graph_mode_with_guidance_and_a_stream_longer_than_the_window():
    studio = load_studio(assets="assets", device="cuda", dtype=torch.float32)
    kw = dict(steps=8, seed=1, seconds=2.0, cfg_scale=1.5)   # 13 chunks > window 8; batch 2
    graph = _latents(list(generate(studio, graphs=True, **kw)))
    eager = _latents(list(generate(studio, graphs=False, **kw)))
    for x, y in zip(graph, eager):
        assert _rel(x, y) < 1e-3, _rel(x, y)


@pytest.mark.parametrize("stage", ["joint", "mutual"])
def test_a_training_stage_runs_on_the_gpu(tmp_path, stage):
    from mf.model import MFTransformer
    from mf.train import stages

    torch.manual_seed(0)
    MFTransformer.from_preset("micro").save_pretrained(str(tmp_path / "init"))
    assert stages.main([stage, "--preset", "micro", "--synthetic", "--runs", str(tmp_path), "--init",
                        str(tmp_path / "init"), "--steps", "3", "--export", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / stage / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["steps"] == 3
    assert all(np.isfinite(v) for v in summary["final_losses"].values())


def test_codec_trainers_run_on_the_gpu():
    from mf.codecs import AudioCodec, VideoCodec
    from mf.train.codec_trainers import train_audio_codec, train_video_codec

    rng = np.random.default_rng(0)
    video = VideoCodec.from_preset("micro").to("cuda")
    losses = train_video_codec(video, rng.integers(0, 255, (16, 64, 64, 3), dtype=np.uint8), steps=3,
                               batch_size=4, lr=1e-3)
    assert len(losses) == 3 and np.isfinite(losses).all()
    audio = AudioCodec.from_preset("micro").to("cuda")
    losses = train_audio_codec(audio, [rng.standard_normal(16000).astype(np.float32) * 0.1], steps=3,
                               batch_size=2, segment_frames=32, lr=1e-3)
    assert len(losses) == 3 and np.isfinite(losses).all()
