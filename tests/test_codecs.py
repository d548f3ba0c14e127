"""Specification of the latent codecs (mf.codecs) and their training loop (mf.train.codecs).

Fast: everything runs on the `micro` presets and small synthetic inputs, except the check of the
shipped weights in assets/codecs (skipped, with the reason, when they have not been trained yet).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mf.codecs import AudioCodec, VideoCodec, load_codecs
from mf.constants import HOP, MELS_PER_FRAME, SAMPLE_RATE, SAMPLES_PER_FRAME
from mf.train.codec_data import REFERENCE_FILE, psnr_uint8
from mf.train.codec_trainers import train_audio_codec, train_video_codec

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "codecs"


def synthetic_frames(n: int, seed: int = 0, size: int = 64) -> np.ndarray:
    """Flat backgrounds with one coloured disc each: cartoon-like frames without the corpus."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    frames = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        frames[i] = rng.integers(0, 256, 3)
        cy, cx, r = rng.integers(16, 48), rng.integers(16, 48), rng.integers(6, 20)
        frames[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return frames


def synthetic_voice(seconds: float, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A buzzy harmonic tone with a syllable-rate envelope, peak 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.28)) / k for k in range(1, 12))
    wave *= 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) / 2
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


@pytest.fixture
def one_thread():
    """Training tests run single-threaded: on a shared, oversubscribed CPU this is far faster."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def video_micro():
    return VideoCodec.from_preset("micro", seed=0)


@pytest.fixture(scope="module")
def audio_micro():
    return AudioCodec.from_preset("micro", seed=0)


# ----------------------------------------------------------------------------------------- shapes
def test_video_encode_decode_shapes_and_dtypes(video_micro):
    frames = synthetic_frames(5)
    latents = video_micro.encode(frames)
    assert latents.shape == (5, video_micro.latent_channels, video_micro.latent_size, video_micro.latent_size)
    assert (video_micro.latent_size, video_micro.downsample) == (8, 8)
    assert latents.dtype == torch.float32
    pixels = video_micro.decode(latents)
    assert pixels.shape == (5, 3, 64, 64) and pixels.dtype == torch.float32
    assert float(pixels.min()) >= -1.0 and float(pixels.max()) <= 1.0
    decoded = video_micro.decode_uint8(latents)
    assert decoded.shape == (5, 64, 64, 3) and decoded.dtype == np.uint8


def test_video_accepts_uint8_and_float_frames_equivalently(video_micro):
    frames = synthetic_frames(3, seed=1)
    as_float = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    torch.testing.assert_close(video_micro.encode(frames), video_micro.encode(as_float))


def test_upsample_then_conv_equals_its_folded_transposed_conv():
    from mf.codecs.video import NearestUpConv

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 3, padding=1)
    x = torch.randn(2, 5, 6, 9)
    reference = conv(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    with torch.no_grad():
        folded = NearestUpConv(conv)(x)
    assert folded.shape == reference.shape == (2, 7, 12, 18)
    torch.testing.assert_close(folded, reference, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="3x3"):
        NearestUpConv(torch.nn.Conv2d(5, 7, 3, padding=0))


@pytest.mark.parametrize("preset", ["micro", "tiny"])
def test_folded_decode_equals_the_diffusers_decoder(preset):
    """decode() folds each upsample + conv; the pixels are the diffusers decoder's up to float rounding."""
    video = VideoCodec.from_preset(preset, seed=1)
    if preset == "tiny" and (ASSETS / "video").is_dir():
        video = load_codecs(ASSETS)[0]   # the shipped decoder, whose weights are not random
    latents = torch.randn(4, video.latent_channels, video.latent_size, video.latent_size,
                          generator=torch.Generator().manual_seed(2))
    folded = video.decode(latents)
    video.folded_decode = False
    try:
        reference = video.decode(latents)
        reference_u8 = video.decode_uint8(latents)
    finally:
        video.folded_decode = True
    assert any(isinstance(m, torch.nn.Upsample) for m in video.autoencoder.decoder.layers)
    assert not any(isinstance(m, torch.nn.Upsample) for m in video._folded_layers), "nothing was folded"
    torch.testing.assert_close(folded, reference, rtol=0, atol=5e-5)
    differ = video.decode_uint8(latents).astype(int) - reference_u8
    assert np.abs(differ).max() <= 1 and (differ != 0).mean() < 1e-3   # a rounding boundary, rarely


def test_folded_decode_follows_a_decoder_being_trained():
    latents = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(3))
    video = VideoCodec.from_preset("micro", seed=4)
    before = video.decode(latents)
    with torch.no_grad():
        for p in video.autoencoder.decoder.parameters():
            p.mul_(1.5)   # in place, as an optimiser step: the folded kernels must be refolded
    after = video.decode(latents)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, video.decode_raw(video.denormalise(latents)).clamp(-1, 1), rtol=0, atol=1e-5)


def test_audio_encode_decode_shapes_and_rates(audio_micro):
    assert (audio_micro.hop, audio_micro.sample_rate, audio_micro.frames_per_video_frame) == (HOP, 16000, 4)
    wave = synthetic_voice(0.5)
    mel = audio_micro.encode(wave)
    assert mel.shape == (len(wave) // HOP, audio_micro.n_mels) and mel.dtype == torch.float32
    # A length that is not a multiple of the hop drops the incomplete last frame.
    assert audio_micro.encode(wave[:-37]).shape[0] == len(wave) // HOP - 1
    out = audio_micro.decode(mel)
    assert out.shape == (mel.shape[0] * HOP,) and out.dtype == np.float32
    assert np.abs(out).max() <= 1.0
    assert audio_micro.decode(mel[:20], mode="griffinlim").shape == (20 * HOP,)


def test_one_video_frame_covers_four_mel_frames(audio_micro):
    """A tone that starts at video frame 10 starts at mel frame 40 (same time axis)."""
    start_frame = 10
    wave = np.zeros(SAMPLES_PER_FRAME * 20, np.float32)
    t = np.arange(len(wave) - start_frame * SAMPLES_PER_FRAME) / SAMPLE_RATE
    wave[start_frame * SAMPLES_PER_FRAME :] = 0.5 * np.sin(2 * np.pi * 440 * t)
    energy = audio_micro.encode(wave).mean(dim=1).numpy()
    onset = int(np.argmax(energy > (energy.min() + energy.max()) / 2))
    assert abs(onset - start_frame * MELS_PER_FRAME) <= 1


def test_griffin_lim_fallback_recovers_a_tone(audio_micro):
    """Without any trained weights the fallback decode still reproduces the spectrum of a tone."""
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    wave = (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    rebuilt = audio_micro.decode(audio_micro.encode(wave), mode="griffinlim")
    spectrum = np.abs(np.fft.rfft(rebuilt))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(rebuilt)
    assert abs(peak_hz - 300) < 15


# ----------------------------------------------------------------------------------------- training
def test_few_video_training_steps_lower_the_loss(one_thread):
    codec = VideoCodec.from_preset("micro", seed=0)
    losses = train_video_codec(codec, synthetic_frames(64), steps=30, batch_size=8, lr=3e-3, seed=0)
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_few_vocoder_training_steps_lower_the_loss(one_thread):
    codec = AudioCodec.from_preset("micro", seed=0)
    waves = [synthetic_voice(1.0, f0, seed=i) for i, f0 in enumerate((110.0, 150.0, 210.0))]
    codec.fit_normalisation(waves)
    losses = train_audio_codec(codec, waves, steps=30, batch_size=4, segment_frames=32, lr=3e-3, seed=0)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])


def test_fit_normalisation_gives_unit_scale_features():
    codec = AudioCodec.from_preset("micro", seed=0)
    waves = [synthetic_voice(1.0, f0) for f0 in (120.0, 180.0)]
    codec.fit_normalisation(waves, min_std=1e-3)
    mel = torch.cat([codec.encode(w) for w in waves])
    assert abs(float(mel.mean())) < 0.05 and abs(float(mel.std()) - 1.0) < 0.1


def test_fresh_presets_are_deterministic():
    frames = synthetic_frames(2)
    a, b = VideoCodec.from_preset("micro", seed=3), VideoCodec.from_preset("micro", seed=3)
    torch.testing.assert_close(a.encode(frames), b.encode(frames), rtol=0, atol=0)
    wave = synthetic_voice(0.3)
    mel = AudioCodec.from_preset("micro").encode(wave)
    np.testing.assert_array_equal(AudioCodec.from_preset("micro", seed=3).decode(mel),
                                  AudioCodec.from_preset("micro", seed=3).decode(mel))


# ----------------------------------------------------------------------------------------- save / load
def test_save_and_load_round_trip(tmp_path, video_micro, audio_micro):
    video_micro.latent_mean = torch.linspace(-1, 1, video_micro.latent_channels)
    video_micro.latent_std = torch.linspace(0.5, 2, video_micro.latent_channels)
    video_micro.save_pretrained(tmp_path / "video")
    audio_micro.save_pretrained(tmp_path / "audio")
    assert (tmp_path / "video" / "diffusion_pytorch_model.safetensors").is_file()
    video, audio = load_codecs(tmp_path)
    frames, wave = synthetic_frames(2), synthetic_voice(0.3)
    torch.testing.assert_close(video.encode(frames), video_micro.encode(frames), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(audio.decode(audio.encode(wave)), audio_micro.decode(audio_micro.encode(wave)),
                               atol=1e-5)


def test_load_codecs_names_a_missing_folder(tmp_path):
    missing = tmp_path / "no_such_codecs"
    with pytest.raises(FileNotFoundError, match="no_such_codecs"):
        load_codecs(missing)
    (tmp_path / "half" / "video").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="audio"):
        load_codecs(tmp_path / "half")


def test_shipped_weights_reproduce_their_recorded_quality():
    if not (ASSETS / "video").is_dir() or not (ASSETS / REFERENCE_FILE).is_file():
        pytest.skip(f"{ASSETS} not trained yet: run `python -m mf.train codecs --preset tiny`")
    video, audio = load_codecs(ASSETS)
    sample = np.load(ASSETS / REFERENCE_FILE)
    frames, wave = sample["frames"], sample["audio"]
    psnr = psnr_uint8(frames, video.decode_uint8(video.encode(frames)))
    assert psnr == pytest.approx(video.reference["psnr_db"], abs=0.1)
    assert psnr > 20.0, "shipped video codec reconstructs its reference sample badly (untrained: ~10 dB)"
    mel = audio.encode(wave)
    decoded = audio.decode(mel)
    rms = float(np.sqrt(np.mean(decoded.astype(np.float64) ** 2)))
    assert rms == pytest.approx(audio.reference["decoded_rms"], rel=0.02)
    roundtrip = float((audio.encode(decoded) - mel).abs().mean())
    assert roundtrip == pytest.approx(audio.reference["mel_roundtrip_l1"], rel=0.05, abs=1e-3)
    meta = json.loads((ASSETS / "video" / "codec.json").read_text())
    assert len(meta["latent_std"]) == video.latent_channels and min(meta["latent_std"]) > 0


# ----------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("frames, error, message", [
    (np.zeros((2, 32, 32, 3), np.uint8), ValueError, "64x64"),
    (np.zeros((2, 64, 64), np.uint8), ValueError, r"\[T,H,W,3\]"),
    (np.zeros((2, 64, 64, 3), np.float32), TypeError, "uint8"),
    (torch.full((2, 3, 64, 64), 255.0), ValueError, r"\[-1, 1\]"),
    (torch.zeros(2, 64, 64, 3), ValueError, r"\[T,3,H,W\]"),
    ([[0]], TypeError, "numpy array or torch tensor"),
])
def test_video_rejects_bad_frames(video_micro, frames, error, message):
    with pytest.raises(error, match=message):
        video_micro.encode(frames)


def test_video_rejects_bad_latents(video_micro):
    with pytest.raises(ValueError, match=r"\[T, 8, 8, 8\]"):
        video_micro.decode(torch.zeros(2, 4, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        video_micro.decode(torch.full((1, 8, 8, 8), float("nan")))


@pytest.mark.parametrize("audio, kwargs, error, message", [
    (np.zeros(16000, np.int16), {}, TypeError, "int16"),
    (np.zeros((16000, 2), np.float32), {}, ValueError, "mono"),
    (np.zeros(16000, np.float32), {"sample_rate": 44100}, ValueError, "44100 Hz"),
    (np.full(16000, 3000.0, np.float32), {}, ValueError, r"\[-1, 1\]"),
    (np.zeros(100, np.float32), {}, ValueError, "too short"),
    (np.full(1600, np.nan, np.float32), {}, ValueError, "NaN"),
])
def test_audio_rejects_bad_waves(audio_micro, audio, kwargs, error, message):
    with pytest.raises(error, match=message):
        audio_micro.encode(audio, **kwargs)


def test_audio_rejects_bad_mels_and_modes(audio_micro):
    with pytest.raises(ValueError, match=r"\[F, 80\]"):
        audio_micro.decode(torch.zeros(10, 128))
    with pytest.raises(ValueError, match="unknown decode mode"):
        audio_micro.decode(torch.zeros(10, 80), mode="wavenet")


def test_unknown_presets_are_named():
    with pytest.raises(ValueError, match="'huge'"):
        VideoCodec.from_preset("huge")
    with pytest.raises(ValueError, match="'huge'"):
        AudioCodec.from_preset("huge")


def test_parallel_training_passes_every_override_to_both_children(tmp_path, monkeypatch):
    import subprocess

    from mf.train import codecs as codec_training

    commands = []

    class FakeChild:
        def __init__(self, cmd, **kwargs):
            commands.append(cmd)

        def wait(self):
            return 1  # stop right after launching: only the command lines matter here

    monkeypatch.setattr(subprocess, "Popen", FakeChild)
    rc = codec_training.main(["--preset", "micro", "--run-dir", str(tmp_path), "--out", str(tmp_path / "out"),
                              "--train-clips", "5", "--video-batch", "7", "--crop-fraction", "0",
                              "--workers", "3", "--audio-steps", "9"])
    assert rc == 1 and len(commands) == 2
    for cmd in commands:
        for flag, value in (("--train-clips", "5"), ("--video-batch", "7"), ("--crop-fraction", "0.0"),
                            ("--workers", "3"), ("--audio-steps", "9"), ("--device", "cpu")):
            assert cmd[cmd.index(flag) + 1] == value, (flag, cmd)


# ----------------------------------------------------------------------------------------- evaluation (eval)
def test_codec_evaluation_uses_the_shared_pesq_and_held_out_seeds(video_micro, audio_micro, one_thread):
    from eval.codec_eval import evaluate, pesq_wb
    from mf.constants import HELDOUT_SEED_START
    from mf.data import render_clip

    speech = render_clip(HELDOUT_SEED_START + 3, 1.5).audio
    assert pesq_wb(speech, speech) > 4.0          # identical speech scores near the top of the scale
    assert pesq_wb(np.zeros_like(speech), speech) is None   # no speech in the reference: not scored
    report = evaluate(video_micro, audio_micro, n_clips=1, seconds=1.0, griffin_lim_clips=0)
    assert report["heldout_seeds"] == [HELDOUT_SEED_START, HELDOUT_SEED_START]
    assert report["video_clips"] == 1 and np.isfinite(report["video_psnr_db_mean"])
    assert report["audio_clips"] + report["audio_clips_without_speech"] == 1
    assert report["decode"]["ratio"] > 0 and report["bars"]["audio_pesq_wb"] == 3.0
    decode = report["decode"]
    assert decode["video_folded"] is True and video_micro.folded_decode is True   # restored after timing
    assert decode["video_unfolded_s_per_s"] > 0
    assert decode["video_folded_speedup"] == pytest.approx(decode["video_unfolded_s_per_s"] / decode["video_s_per_s"])


def test_codec_evaluation_cli_names_a_missing_folder(tmp_path, capsys):
    from eval.codec_eval import main

    assert main(["--codecs", str(tmp_path / "no_codecs_here"), "--clips", "1"]) == 2
    assert "no_codecs_here" in capsys.readouterr().err
