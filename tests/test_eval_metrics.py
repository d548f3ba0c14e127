"""Specification of the reference-based and set-level metrics: PESQ/STOI and Fréchet distance/KID."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import soundfile as sf
from shared_data import PESQ_PEER_HOWTO, REAL_AV_HOWTO

from eval.audio_metrics import align_pad, estimate_lag, pesq_pair, stoi_pair
from eval.frechet import (
    CORPUS_FD_LABEL,
    InceptionExtractor,
    InceptionUnavailable,
    corpus_frechet,
    frechet_distance,
    gaussian_stats,
    inception_fid_kid,
    kernel_distance,
    set_distances,
)
from mf.constants import HELDOUT_SEED_START
from mf.media import read_audio, resample_audio

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
PEER = os.path.join(DATA, "pesq_peer")
REAL_AV = os.path.join(DATA, "real_av")
PEER_WB, PEER_NB = 1.0832337141036987, 1.6072081327438354

needs_peer = pytest.mark.skipif(not os.path.isdir(PEER), reason=PESQ_PEER_HOWTO)
needs_real = pytest.mark.skipif(not os.path.isdir(REAL_AV), reason=REAL_AV_HOWTO)


# ----------------------------------------------------------------------------- PESQ / STOI
@needs_peer
def test_pesq_peer_pair_through_16k_wav_loading_is_exact():
    ref, sr = read_audio(os.path.join(PEER, "speech.wav"))
    deg, _ = read_audio(os.path.join(PEER, "speech_bab_0dB.wav"))
    out = pesq_pair(ref, deg, sr)
    assert out["pesq_wb"] == PEER_WB
    assert out["pesq_nb"] == PEER_NB
    assert out["note"] == "" and out["lag_ms"] == 0.0


@needs_peer
@pytest.mark.parametrize("fmt", ["flac", "wav44k_stereo"])
def test_pesq_peer_pair_survives_other_containers_and_rates(tmp_path, fmt):
    paths = []
    for name in ("speech", "speech_bab_0dB"):
        x, sr = sf.read(os.path.join(PEER, f"{name}.wav"), dtype="float32")
        if fmt == "flac":
            p = tmp_path / f"{name}.flac"
            sf.write(p, x, sr)
        else:
            up = resample_audio(x, sr, 44100)
            p = tmp_path / f"{name}.wav"
            sf.write(p, np.stack([up, up], axis=1), 44100, subtype="PCM_16")
        paths.append(p)
    ref, _ = read_audio(paths[0])
    deg, _ = read_audio(paths[1])
    out = pesq_pair(ref, deg, 16000)
    assert abs(out["pesq_wb"] - PEER_WB) < 0.05
    assert abs(out["pesq_nb"] - PEER_NB) < 0.05


@needs_peer
def test_pesq_aligns_a_delayed_signal_by_padding_not_truncating():
    ref, sr = read_audio(os.path.join(PEER, "speech.wav"))
    delayed = np.concatenate([np.zeros(3200, np.float32), ref])  # 200 ms late
    assert estimate_lag(ref.astype(float), delayed.astype(float), 16000) == 3200
    r, d, lag = align_pad(ref.astype(float), delayed.astype(float), sr)
    assert lag == 3200 and len(r) == len(d) == len(delayed)  # nothing cut
    out = pesq_pair(ref, delayed, sr)
    assert out["lag_ms"] == pytest.approx(200.0)
    assert out["pesq_wb"] > 4.0  # identical speech once aligned


def test_pesq_unscorable_inputs_are_nan_with_a_reason():
    rng = np.random.default_rng(0)
    speechlike = (rng.normal(size=32000) * np.sin(np.linspace(0, 40, 32000)) ** 2).astype(np.float32) * 0.3
    silent = pesq_pair(speechlike, np.zeros(32000, np.float32), 16000)
    assert math.isnan(silent["pesq_wb"]) and "generated audio is silent" in silent["note"]
    silent_ref = pesq_pair(np.zeros(32000, np.float32), speechlike, 16000)
    assert math.isnan(silent_ref["pesq_nb"]) and "reference audio is silent" in silent_ref["note"]
    short = pesq_pair(speechlike[:2000], speechlike[:2000], 16000)
    assert math.isnan(short["pesq_wb"]) and "too short" in short["note"]
    st = stoi_pair(speechlike, np.zeros(32000, np.float32), 16000)
    assert math.isnan(st["stoi"]) and "silent" in st["note"]


@needs_peer
def test_stoi_orders_clean_above_babble_and_handles_stereo_rates():
    ref, _ = read_audio(os.path.join(PEER, "speech.wav"))
    deg, _ = read_audio(os.path.join(PEER, "speech_bab_0dB.wav"))
    same = stoi_pair(ref, ref, 16000)
    noisy = stoi_pair(ref, deg, 16000)
    assert same["stoi"] > 0.99 and noisy["stoi"] < same["stoi"] - 0.1
    stereo = np.stack([resample_audio(deg, 16000, 44100)] * 2, axis=1)
    via_44k = stoi_pair(ref, stereo, 44100, ref_rate=16000)
    assert via_44k["stoi"] == pytest.approx(noisy["stoi"], abs=0.02)


# ----------------------------------------------------------------------------- Fréchet / KID
def _tr_sqrt_2x2(m: np.ndarray) -> float:
    # For a 2x2 matrix with positive real eigenvalues: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
    return math.sqrt(np.trace(m) + 2 * math.sqrt(np.linalg.det(m)))


def test_frechet_matches_the_closed_form_for_non_commuting_gaussians():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[1.0, -0.5], [-0.5, 3.0]])
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * _tr_sqrt_2x2(s1 @ s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # From samples (1% bar): the estimator converges to the closed form.
    rng = np.random.default_rng(0)
    a = rng.multivariate_normal(mu1, s1, size=200_000)
    b = rng.multivariate_normal(mu2, s2, size=200_000)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.01)


def test_frechet_high_dimensional_diagonal_closed_form_and_torchmetrics_agree():
    rng = np.random.default_rng(1)
    d = 64
    va, vb = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    mu = rng.normal(size=d)
    expected = float(mu @ mu + np.sum((np.sqrt(va) - np.sqrt(vb)) ** 2))
    assert frechet_distance(np.zeros(d), np.diag(va), mu, np.diag(vb)) == pytest.approx(expected, rel=1e-9)
    a = rng.normal(size=(200, 16))
    b = rng.normal(size=(200, 16)) * 1.3 + 0.2
    tm = inception_fid_kid(a, b)
    assert tm["fid"] == pytest.approx(_torchmetrics_fid(a, b), rel=1e-6)
    assert tm["n_frames"] == [200, 200]


def _precomputed(dim: int):
    """An identity "feature extractor", so torchmetrics' metrics take features we already have."""
    import torch

    class Identity(torch.nn.Module):
        num_features = dim

        def forward(self, x):
            return x

    return Identity()


def _torchmetrics_fid(a, b) -> float:
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance


    fid = FrechetInceptionDistance(feature=_precomputed(a.shape[1]))
    fid.update(torch.from_numpy(b), real=True)
    fid.update(torch.from_numpy(a), real=False)
    return float(fid.compute())


def test_frechet_with_fewer_samples_than_dims_equals_the_covariance_route_and_torchmetrics():
    # The Na x Nb shortcut (used for Inception FID of subsampled frames) is the same number as the
    # D x D eigen route and as torchmetrics' FrechetInceptionDistance.
    rng = np.random.default_rng(7)
    a = rng.normal(size=(40, 96)) @ rng.normal(size=(96, 96)) * 0.3
    b = rng.normal(size=(50, 96)) * 1.2 + 0.3
    direct = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert frechet_distance(a, b) == pytest.approx(direct, rel=1e-7)
    assert frechet_distance(a, b) == pytest.approx(_torchmetrics_fid(a, b), rel=1e-6)
    assert frechet_distance(a, a) == 0.0


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_matches_torchmetrics_kernel_inception_distance():
    import torch
    from torchmetrics.image.kid import KernelInceptionDistance


    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(150, 16)), rng.normal(size=(150, 16)) * 1.2 + 0.1
    kid = KernelInceptionDistance(feature=_precomputed(16), subsets=1, subset_size=150)
    kid.update(torch.from_numpy(b), real=True)
    kid.update(torch.from_numpy(a), real=False)
    assert float(kid.compute()[0]) == pytest.approx(kernel_distance(a, b)[0], rel=1e-6)  # same unbiased MMD^2


def test_frechet_of_a_set_with_itself_is_zero_even_when_singular():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 128))  # fewer samples than dims: singular covariance
    assert frechet_distance(x, x) == 0.0
    assert frechet_distance(x, x + 1.0) == pytest.approx(128.0, rel=1e-6)  # pure mean shift


def test_kid_is_near_zero_for_one_distribution_and_large_for_two():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    c = rng.normal(size=(400, 16)) * 1.5 + 0.5
    same_mean, same_std = kernel_distance(a, b, subsets=30, subset_size=200)
    diff_mean, _ = kernel_distance(a, c, subsets=30, subset_size=200)
    assert same_std > 0  # subsets differ
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert diff_mean > 20 * abs(same_mean) and diff_mean > 0.1
    once = kernel_distance(a, b, subsets=5, subset_size=100, seed=5)
    assert once == kernel_distance(a, b, subsets=5, subset_size=100, seed=5)  # seeded: same numbers


def test_set_distances_reports_counts_and_refuses_too_few_frames():
    rng = np.random.default_rng(4)
    out = set_distances(rng.normal(size=(1, 8)), rng.normal(size=(10, 8)), label="x")
    assert math.isnan(out["fd"]) and out["n_frames"] == [1, 10] and "too few" in out["note"]
    out = set_distances(rng.normal(size=(10, 8)), rng.normal(size=(12, 8)), label="x")
    assert math.isfinite(out["fd"]) and out["n_frames"] == [10, 12]


# ----------------------------------------------------------------------------- pristine vs distorted
def _real_frames():
    import cv2

    from mf.media import read_av

    frames = []
    for name in sorted(os.listdir(REAL_AV)):
        clip = read_av(os.path.join(REAL_AV, name), fps=12.5, need_audio=False)
        frames += [cv2.resize(f, (128, 128), interpolation=cv2.INTER_AREA) for f in clip.frames]
    return np.stack(frames)


def _distort(frames: np.ndarray, kind: str) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(0)
    if kind == "blur":
        return np.stack([cv2.GaussianBlur(f, (0, 0), 2.5) for f in frames])
    if kind == "noise":
        return np.clip(frames + rng.normal(0, 30, frames.shape), 0, 255).astype(np.uint8)
    out = []
    for f in frames:  # JPEG at quality 8
        ok, buf = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 8])
        out.append(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))
    return np.stack(out)


@pytest.fixture(scope="module")
def real_frames():
    """Real talking-face frames when ../shared/data has them, else frames the project renders itself."""
    if not os.path.isdir(REAL_AV):
        from mf.data import render_clip

        return np.concatenate([render_clip(HELDOUT_SEED_START + 500 + i, 1.2, size=128).frames for i in range(4)])
    return _real_frames()


@pytest.mark.parametrize("kind", ["blur", "noise", "jpeg"])
@pytest.mark.parametrize("extractor_name", ["corpus", "image_statistics"])
def test_pristine_frames_are_closer_than_distorted_ones(real_frames, kind, extractor_name):
    from eval.features import FeaturesUnavailable, image_statistics_extractor, load_extractor

    if extractor_name == "corpus":
        try:
            extractor = load_extractor()
        except FeaturesUnavailable as exc:
            pytest.skip(str(exc))
    else:
        extractor = image_statistics_extractor()
    ref, held = real_frames[0::2], real_frames[1::2]
    fa, fclean, fdist = extractor(ref), extractor(held), extractor(_distort(held, kind))
    clean = set_distances(fa, fclean, label="t")
    distorted = set_distances(fa, fdist, label="t")
    assert clean["fd"] < distorted["fd"]
    assert clean["kid_mean"] < distorted["kid_mean"]


def test_corpus_frechet_api_labels_its_numbers(real_frames):
    from eval.features import FeaturesUnavailable

    try:
        out = corpus_frechet(list(real_frames[:12]), real_frames[12:30])
    except FeaturesUnavailable as exc:
        pytest.skip(str(exc))
    assert out["feature_extractor"] == CORPUS_FD_LABEL == "corpus-FD (not standard FID)"
    assert out["n_frames"] == [12, 18] and out["fd"] > 0


# ----------------------------------------------------------------------------- standard Inception
def test_missing_inception_weights_say_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("MF_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(InceptionUnavailable) as err:
        InceptionExtractor(allow_download=False)
    msg = str(err.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in msg and str(tmp_path) in msg
    with pytest.raises(InceptionUnavailable, match="not found"):
        InceptionExtractor(tmp_path / "nope.pth")


def test_inception_pristine_vs_distorted_when_weights_are_installed(real_frames):
    from eval.frechet import find_inception_weights

    if find_inception_weights() is None:
        pytest.skip("standard Inception weights not installed ($TORCH_HOME/hub/checkpoints): "
                    "FID-Inception part skipped")
    ex = InceptionExtractor(allow_download=False)
    ref, held = real_frames[0::4], real_frames[1::4]
    clean = inception_fid_kid(ex(held), ex(ref))
    blurred = inception_fid_kid(ex(_distort(held, "blur")), ex(ref))
    assert clean["fid"] < blurred["fid"]


def test_pesq_of_audio_that_was_below_16_khz_has_no_wide_band_score():
    rng = np.random.default_rng(1)
    speechlike = (rng.normal(size=48000) * np.sin(np.linspace(0, 60, 48000)) ** 2).astype(np.float32) * 0.3
    for source_rate, nb_rate_note in ((8000, "8 kHz input"), (11025, "11.025 kHz input")):
        out = pesq_pair(speechlike, speechlike, 16000, source_rate=source_rate)
        assert math.isnan(out["pesq_wb"]) and out["pesq_nb"] > 3.5
        assert f"{nb_rate_note}: no wide-band PESQ" in out["note"]
    full = pesq_pair(speechlike, speechlike, 16000, source_rate=44100)
    assert full["pesq_wb"] > 4.0 and full["note"] == ""
