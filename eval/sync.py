"""Audio-video sync of a talking-head clip: a weight-free offset estimator, plus SyncNet when supplied.

Owns: ``estimate_sync`` (arrays in, ``SyncResult`` out), ``sync_file`` (any media file through
``mf.media.read_av``), ``av_signals`` (the two per-frame signals, for debugging and plots) and
``syncnet_scores`` (re-exported from ``eval.syncnet``: SyncNet offset / LSE-D / LSE-C when the user
supplies ``syncnet_v2.model``).

Sign convention (as SyncNet and the whole project): a POSITIVE offset means the AUDIO LEADS the video
(the sound of a mouth movement comes before the picture of it). ``offset_ms = offset_frames * 1000 / fps``.

Method of the weight-free estimator
1. Audio: downmix, resample to 16 kHz, band-pass to the speech band (300-3000 Hz; 1500-4000 Hz when
   the mouth opening comes from landmarks: on the tuning clips the in-sync readings moved from
   +1/+13/+2/+5/-1 to +1/+13/+1/-1/-1 frames; 4th-order Butterworth, zero phase), and take the log
   energy of each video frame's span of samples, floored at 1e-3 x the median frame energy so silences
   and zero padding do not dominate: a loudness envelope at the video frame rate.
   Each frame's window is centred on the frame's instant i / fps: [(i - 0.5) / fps, (i + 0.5) / fps).
2. Video: a mouth per frame from ``eval.mouth.locate_mouth`` (``localizer`` says which way):
   "face-mesh" (a real face: Haar face box, then MediaPipe's 468 facial landmarks, ``eval.landmarks``):
   the mouth signal is the mouth OPENING, inner-lip gap / outer-eye-corner distance.
   Otherwise ("haar-face" when the landmarks fail, "motion-fallback"/"centre-fallback" for cartoon
   characters, whose faces the Haar cascade does not find) the 32x24 grayscale mouth patches are
   reduced to their first principal component over time, signed to grow as the region darkens (an
   open mouth shows the dark oral cavity), so "mouth open" and "loud" correlate positively.
3. Both signals are band-passed (2nd-order Butterworth, zero phase, so neither is delayed): to the
   syllable rate 1-8 Hz, or 0.5-6 Hz for the landmark opening (measured on the tuning clips: 48 vs 33
   of 105 imposed shifts within 1 frame). The Pearson correlation is computed for every lag k in
   [-max_shift, max_shift]: curve[k] = corr(audio[n], mouth[n + k]); a peak at k > 0 means the audio at
   frame n matches the mouth at the later frame n + k, i.e. audio leads.
   Voice-activity gate: only audio frames that are voiced vote (pairs whose audio frame n is silent
   are left out of every lag's correlation). Voiced = log envelope above p10 + VAD_FRACTION x
   (p97 - p10) of the clip, widened by VAD_SPREAD frames either side (lips move before the sound
   starts); a clip whose envelope spans less than VAD_MIN_RANGE has no pauses and every frame votes.
   With landmarks, the first and last MESH_EDGE frames do not vote either (filter edge transients
   gave confident wrong peaks on the tuning clips: 48 -> 56 of 105 within 1 frame without them).
   Onset term: when the mouth was found by motion (rendered characters, whose mouth signal has no
   tracking jitter), the curve is (1 - ONSET_WEIGHT) x that correlation + ONSET_WEIGHT x the same
   correlation of the frame-to-frame differences of both signals, which pins syllable onsets to the
   frame (over 30 held-out corpus seeds x 21 shifts it took exact recovery from 96.2% to 100%). Real
   faces do not get it: there frame differences are dominated by tracking jitter and compression noise.
4. offset = argmax of the curve (positive correlation only: an anti-correlated peak is not sync).
   confidence = peak - median of the curve, in correlation units (the analogue of SyncNet's LSE-C).
   prominence = peak - the highest curve value more than PROMINENCE_GUARD frames from the peak
   (floored at 0): how much the chosen lag stands out from every other candidate (audio of another
   speaker still correlates with a talking mouth at some lag, but with several similar peaks).
   Chance level: the same search with the audio envelope (and its gate) rolled circularly by
   N_SURROGATES lags of at least 2 * max_shift + 1 frames (audio that is in sync at no searched lag,
   with the clip's own rhythm, length and gate); if any of those peaks reaches the clip's own peak,
   the peak is not above chance (a permutation test at p = 1 / (N_SURROGATES + 1) = 0.05).
   Consistency (rendered characters): the search is repeated on the first and on the last SPLIT_FRACTION
   of the clip; a real offset is the same throughout a clip, a chance peak usually is not.
5. Faces with landmarks: a second, spectral audio model joins the envelope. Per lag k, a ridge
   regression predicts the mouth opening at n + k from SPECTRAL_MELS log-mel bands at n (band-passed
   like the opening, standardised; SPECTRAL_RIDGE per row), fitted on the clip itself; its curve is the
   cross-validated correlation of the predictions (SPECTRAL_FOLDS contiguous folds, so no prediction
   sees its neighbours). It learns which bands follow this speaker's mouth instead of assuming loudness
   does. The clip's curve is the MEAN of the envelope curve and this spectral curve (offset, confidence
   and peak_corr are read from it), and the permutation test rolls the envelope, the bands and the
   votes together. The two audio models rarely share a chance peak, so a true lag stands out more: on
   the tuning clips this took in-sync readings flagged from 80% to 40% and shifted copies recovered but
   flagged from 42% to 20%, with 0% wrong-and-unflagged before and after, and on the validation clips
   (seen for this choice) shifts recovered from 29% to 50% (``python -m eval.sync_validate``, numbers
   in docs/ARCHITECTURE.md). With landmarks the prominence ("weak_peak"), split ("inconsistent") and
   LOW_CONFIDENCE checks are not applied: on 5 s real clips they declined correct readings and caught
   no wrong one that the permutation test missed.
   Two more views of the mouth join it, each as a mean curve of per-clip principal components (nothing
   fitted beforehand; ``principal_components``: every column band-passed like the opening, the components
   of the voting frames, each scaled to unit variance), fed to the same per-clip, cross-validated ridge
   regression from the bands as the opening (``spectral_curves``: one solve per fold serves every target):
   - the PICTURE of the mouth: face-aligned grayscale patches (``eval.landmarks.mouth_patches``, 48 x 32
     pixels in the face's own axes), PATCH_COMPONENTS components of the pixels (``patch_components``).
     They carry what three landmark pairs do not: teeth, tongue, the dark mouth cavity, lip rounding;
   - the lip SHAPE: the 16 face-aligned lip-geometry numbers of step 6, each standardised, LIP_COMPONENTS
     components (``lip_components``). Unlike step 6's model, fitted across speakers, this one is per clip.
   The clip's curve is the mean of four: envelope, opening, pictures, lip shape (the permutation test rolls
   the audio under all four). Measured on the 35 lab clips, lip model of step 6 held out by source
   (``python -m eval.sync_validate FOLDER --loso``, docs/measurements/sync_fresh_split.md), two curves ->
   + pictures -> + lip shape: shifts within +-1 frame 76.3% -> 79.0% -> 79.4%, shifted copies wrong without a
   flag 3.6% -> 2.1% -> 1.0%, in-sync clips read 0 +- 40 ms or flagged 97.1% -> 94.3% -> 97.1%, in-sync clips
   flagged 54.3% -> 37.1% -> 40.0%. The equal weights and the two additions were chosen on these lab
   clips (on cached signals, against weight 1/2 for the pictures and against 5 picture components), so
   the lab numbers are not fully held out; 3 components per view was not varied further.
6. Faces with landmarks: a second opinion from the whole lip SHAPE (``eval.lip_model``). The lip geometry
   (``eval.landmarks.lip_geometry``: 16 face-aligned lip gaps, widths, jaw drop and lip heights) and the
   log-mel bands at +-3 frames are projected on the two canonical directions of a CCA fitted once, on
   real clips published in sync (``assets/eval/sync/lip_model.npz``, ``python -m eval.lip_fit``; the
   clips and command are in ``lip_model.json``); each pair is correlated at every lag and the two curves
   averaged (``lip_curve``). It does not move the offset (which stays the argmax of step 5's curve): its
   own reading is reported as ``lip_model_offset_frames``, and when it is more than LIP_AGREE_FRAMES from
   the offset the clip is flagged "models_disagree". The two models read the lag differently (step 5
   fits its regressions on the clip itself, with loudness, the opening and the pictures besides the lip
   shape; step 6 is one fixed model fitted across speakers), so a chance peak of one is often not the
   other's. Measured on 35 lab/broadcast clips published in sync, with the lip model fitted without each
   clip's source (``python -m eval.sync_validate FOLDER --loso``), when step 5 had two curves: shifted
   copies wrong without a flag 7.9% -> 3.6%, in-sync clips read 0 +- 40 ms or flagged 91.4% -> 97.1%,
   in-sync clips flagged 40.0% -> 54.3% (docs/measurements/sync_fresh_split.md).
   Agreement is NOT evidence of sync: both models hear the same audio bands, and another speaker's audio
   on a real face made both peak at the same chance lag (talk2's audio on talk3: -3 and -3 frames, peak
   correlation 0.05), so exact agreement never overrides the permutation test.

Flags (one string or None, most serious first; ``uncertain`` is True whenever a flag is set, and callers
must then not report the offset as a measurement): "too_short" (under MIN_SECONDS, or fewer than
2 * max_shift + MIN_OVERLAP frames, in which case no offset is computed), "silent_audio" (no audio
energy), "static_video" (the mouth never changes), "too_little_speech" (under MIN_SPEECH_SECONDS
voiced), "low_confidence" (confidence < LOW_CONFIDENCE), "peak_at_edge" (the peak is at
+-max_shift, so the maximum may lie beyond the search), "weak_peak" (prominence < MIN_PROMINENCE; not
for faces with landmarks), "not_significant" (a rolled-audio peak reaches the clip's own peak),
"models_disagree" (faces with landmarks: the lip model's peak is more than LIP_AGREE_FRAMES from the
offset, step 6), "inconsistent" (either part's peak is more than 1 frame from the whole clip's; not for faces with
landmarks). "low_confidence" is not applied to faces with landmarks either (step 5).
Limits, measured (``python -m eval.sync_validate``, numbers in docs/ARCHITECTURE.md): on 5-15 s real
clips the landmark opening correlates with loudness at only ~0.2-0.4; the flags pass all 3 real_av
clips and decline 2 of the 5 tuning clips (one of them correct); on the validation clips two
LivePortrait clips read confident offsets of +80 / -320 ms on every copy (clips not verified to be in
sync; the pauses of d20 show an audio lag of about that size, docs/ARCHITECTURE.md).
SyncNet (user-supplied weights) is the reference for real faces.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import binary_dilation
from scipy.signal import butter, sosfiltfilt

from eval.lip_model import LipModel, load_lip_model, project
from eval.mouth import MouthTrack, locate_mouth, mouth_crops
from eval.syncnet import syncnet_scores  # noqa: F401  (part of this module's API, see docstring)
from mf.constants import FPS, SAMPLE_RATE
from mf.media import read_av, resample_audio

MAX_SHIFT = 15  # frames searched either side (+-600 ms at 25 fps), as SyncNet
MIN_SECONDS = 2.0  # shorter clips get the "too_short" flag
MIN_OVERLAP = 8  # frames of overlap needed at the largest lag before a curve is computed at all
PROMINENCE_GUARD = 3  # frames either side of the peak that do not count as competing lags
LOW_CONFIDENCE = 0.15  # below this peak-minus-median the offset is flagged "low_confidence"
SPEECH_BAND_HZ = (300.0, 3000.0)
MESH_SPEECH_BAND_HZ = (1500.0, 4000.0)  # audio band of the envelope when the mouth opening comes from landmarks
SYLLABLE_BAND_HZ = (1.0, 8.0)
ONSET_WEIGHT = 0.3  # share of the frame-difference correlation for motion-located mouths (step 3)
MESH_BAND_HZ = (0.5, 6.0)  # band of both signals when the mouth opening comes from landmarks
MESH_EDGE = 12  # frames at either end of the clip that do not vote when the mouth comes from landmarks
VAD_FRACTION = 0.2  # voiced: log energy above p10 + VAD_FRACTION x (p90 - p10) of the clip's envelope
VAD_SPREAD = 5  # voiced frames are widened by this many frames either side (mouths move before sound)
VAD_MIN_RANGE = 1.0  # p90 - p10 of the log envelope below this (4.3 dB): no silences to remove
MIN_SPEECH_SECONDS = 1.5  # fewer voiced seconds than this: "too_little_speech"
MIN_PROMINENCE = 0.08  # peak minus best rival lag below this: "weak_peak"
N_SURROGATES = 19  # circularly rolled audio envelopes: the chance level of the curve's peak for this clip
SPLIT_FRACTION = 0.7  # the consistency check re-runs the search on the first and last 70% of the clip
SPECTRAL_MELS = 24  # log-mel bands (80-7600 Hz) of the second, spectral estimator (faces with landmarks)
SPECTRAL_RIDGE = 1.0  # ridge penalty per row on the standardised bands (the same on every lag)
SPECTRAL_FOLDS = 5  # contiguous cross-validation folds of the spectral estimator
PATCH_COMPONENTS = 3  # principal components of the face-aligned mouth patches in the spectral estimator (step 5)
LIP_COMPONENTS = 3  # principal components of the lip geometry in the spectral estimator (step 5)
LIP_AGREE_FRAMES = 1  # the lip model's peak (step 6) may be this far from the offset without "models_disagree"
FLAGS = ("too_short", "silent_audio", "static_video", "too_little_speech", "low_confidence", "peak_at_edge",
         "weak_peak", "not_significant", "models_disagree", "inconsistent")


@dataclass
class SyncResult:
    """What the weight-free estimator found for one clip (see the module docstring for the method)."""

    offset_frames: int  # positive = audio leads video
    offset_ms: float
    confidence: float  # peak - median of the correlation curve; NaN when not computed
    flag: str | None  # one of FLAGS or None
    curve: np.ndarray  # float [2 * max_shift + 1], correlation at lags -max_shift .. +max_shift
    mouth_box: tuple[int, int, int, int] | None  # typical mouth box (x0, y0, x1, y1)
    localizer: str  # which localizer found the mouth (eval.mouth.LOCALIZERS)
    fps: float = float(FPS)
    max_shift: int = MAX_SHIFT
    peak_corr: float = float("nan")  # curve value at the chosen lag (faces with landmarks: mean of 2 curves)
    n_frames: int = 0
    prominence: float = float("nan")  # peak minus the best lag more than PROMINENCE_GUARD frames away
    extras: dict = field(default_factory=dict)  # e.g. SyncNet scores added by callers
    voiced_seconds: float = float("nan")  # speech that voted (voice-activity gate, step 3)

    @property
    def uncertain(self) -> bool:
        """True when the offset should not be trusted: any flag is set (the reason is ``flag``)."""
        return self.flag is not None

    @property
    def lags(self) -> np.ndarray:
        return np.arange(-self.max_shift, self.max_shift + 1)

    def to_dict(self) -> dict:
        """Plain JSON types only (NaN becomes None)."""

        def num(x):
            x = float(x)
            return None if math.isnan(x) else x

        return {
            "offset_frames": int(self.offset_frames),
            "offset_ms": num(self.offset_ms),
            "confidence": num(self.confidence),
            "flag": self.flag,
            "uncertain": bool(self.uncertain),
            "voiced_seconds": num(self.voiced_seconds),
            "curve": [num(c) for c in np.asarray(self.curve, dtype=np.float64)],
            "lags": [int(k) for k in self.lags],
            "mouth_box": None if self.mouth_box is None else [int(v) for v in self.mouth_box],
            "localizer": self.localizer,
            "fps": float(self.fps),
            "max_shift": int(self.max_shift),
            "peak_corr": num(self.peak_corr),
            "n_frames": int(self.n_frames),
            "prominence": num(self.prominence),
            **{k: v for k, v in self.extras.items()},
        }


def _mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:  # [N, C] (or [C, N] with few channels) -> mono
        audio = audio.mean(axis=1) if audio.shape[1] <= 8 else audio.mean(axis=0)
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D float array (or [N, channels]), got shape {audio.shape}")
    return audio


def audio_envelope(audio: np.ndarray, sample_rate: int, n_frames: int, fps: float,
                   band: tuple[float, float] = SPEECH_BAND_HZ) -> np.ndarray:
    """Speech-band log energy per video frame, float64 [n_frames] (audio padded with silence if short)."""
    audio = resample_audio(_mono(audio), int(sample_rate), SAMPLE_RATE).astype(np.float64)
    sos = butter(4, band, btype="band", fs=SAMPLE_RATE, output="sos")
    band = sosfiltfilt(sos, audio) if len(audio) > 64 else np.zeros_like(audio)
    # Frame i shows the face at the instant i / fps, so its audio window is centred there:
    # [(i - 0.5) / fps, (i + 0.5) / fps). (A window starting at i / fps would make the audio look half a
    # frame late; on corpus clips that turned exact offsets into off-by-one.) Half a frame of silence
    # before the first sample covers the first window's left half.
    half = int(round(0.5 * SAMPLE_RATE / fps))
    edges = np.round(np.arange(n_frames + 1) * SAMPLE_RATE / fps).astype(int)
    band = np.pad(band, (half, max(0, edges[-1] - len(band) - half)))
    power = np.add.reduceat(band[: edges[-1]] ** 2, edges[:-1]) / np.maximum(np.diff(edges), 1)
    floor = 1e-3 * float(np.median(power)) + 1e-12
    return np.log(power + floor)


def mouth_signal(crops: np.ndarray, track: MouthTrack | None = None) -> np.ndarray:
    """Mouth signal: the landmark mouth opening when ``track`` has one, else the first principal component
    of the mouth patches over time, signed to grow as the region darkens."""
    if track is not None and track.opening is not None:
        return np.asarray(track.opening, dtype=np.float64)
    x = crops.reshape(len(crops), -1).astype(np.float64)
    x = x - x.mean(axis=0)
    if not np.any(x):
        return np.zeros(len(crops))
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    pc = u[:, 0] * s[0]
    darkness = -x.mean(axis=1)
    if np.dot(pc, darkness) < 0:
        pc = -pc
    return pc


def _band_sos(fps: float, band: tuple[float, float]) -> np.ndarray:
    """2nd-order Butterworth band-pass (run forward and back: zero phase), its top kept under 0.45 x fps."""
    lo, hi = band
    return butter(2, [lo, min(hi, 0.45 * fps)], btype="band", fs=fps, output="sos")


def _bandpass(x: np.ndarray, fps: float, band: tuple[float, float] = SYLLABLE_BAND_HZ) -> np.ndarray:
    return sosfiltfilt(_band_sos(fps, band), x - x.mean())


def bandpass_columns(x: np.ndarray, fps: float, band: tuple[float, float] = MESH_BAND_HZ) -> np.ndarray:
    """``_bandpass`` of every column of ``x`` (float [T, k] -> [T, k]): log-mel bands, lip geometry."""
    return np.stack([_bandpass(c, fps, band) for c in np.asarray(x, np.float64).T], axis=1)


def lagged_correlation(audio_sig: np.ndarray, mouth_sig: np.ndarray, max_shift: int,
                       votes: np.ndarray | None = None) -> np.ndarray:
    """curve[j] = Pearson corr(audio[n], mouth[n + k]) over the overlap, k = j - max_shift.

    ``votes`` (bool [T], optional): only audio frames n with votes[n] take part (voice-activity gate).
    """
    n = len(audio_sig)
    curve = np.zeros(2 * max_shift + 1)
    for j, k in enumerate(range(-max_shift, max_shift + 1)):
        idx = np.arange(max(0, -k), n - max(0, k))
        if votes is not None:
            idx = idx[votes[idx]]
        a, v = audio_sig[idx], mouth_sig[idx + k]
        if len(idx) < 2:
            continue
        a, v = a - a.mean(), v - v.mean()
        denom = math.sqrt(float(np.dot(a, a)) * float(np.dot(v, v)))
        curve[j] = float(np.dot(a, v)) / denom if denom > 0 else 0.0
    return curve


def voiced_frames(env: np.ndarray) -> np.ndarray:
    """Voice-activity gate on the log envelope, bool [T] (see the module docstring, step 3)."""
    lo, hi = np.percentile(env, [10, 97])
    if hi - lo < VAD_MIN_RANGE:  # no pauses to remove (continuous speech, or no speech at all)
        return np.ones(len(env), bool)
    return binary_dilation(env > lo + VAD_FRACTION * (hi - lo), iterations=VAD_SPREAD)


def _curve(env_bp: np.ndarray, mouth_bp: np.ndarray, votes: np.ndarray, max_shift: int, onset: bool) -> np.ndarray:
    curve = lagged_correlation(env_bp, mouth_bp, max_shift, votes)
    if onset:
        # Onset term (see the module docstring, step 3): motion-located mouths of rendered characters.
        onsets = lagged_correlation(np.diff(env_bp), np.diff(mouth_bp), max_shift, votes[1:])
        curve = (1.0 - ONSET_WEIGHT) * curve + ONSET_WEIGHT * onsets
    return curve


def chance_peaks(env_bp, mouth_bp, votes, max_shift, onset, n: int = N_SURROGATES) -> np.ndarray:
    """Curve peaks with the audio envelope (and its votes) rolled circularly by n lags spread over
    [2 * max_shift + 1, T - 2 * max_shift - 1]: audio that cannot be in sync with the mouth at any
    searched lag, with the same rhythm, length and gate as the clip's own."""
    return np.array([_curve(np.roll(env_bp, r), mouth_bp, np.roll(votes, r), max_shift, onset).max()
                     for r in _rolls(len(env_bp), max_shift, n)])


def _rolls(t: int, max_shift: int, n: int) -> np.ndarray:
    """n circular shifts in [2 * max_shift + 1, t - 2 * max_shift - 1] (none when the clip is too short)."""
    lo, hi = 2 * max_shift + 1, t - 2 * max_shift - 1
    if hi < lo:
        return np.zeros(0, int)
    return np.unique(np.linspace(lo, hi, n).round().astype(int))


def _consistent(env_bp, mouth_bp, votes, max_shift, onset, offset) -> bool:
    """The peak of the first and of the last SPLIT_FRACTION of the clip each within 1 frame of ``offset``."""
    t = len(votes)
    span = int(SPLIT_FRACTION * t)
    for part in (slice(0, span), slice(t - span, t)):
        sub = np.zeros(t, bool)
        sub[part] = votes[part]
        if abs(int(np.argmax(_curve(env_bp, mouth_bp, sub, max_shift, onset))) - max_shift - offset) > 1:
            return False
    return True


def log_mel_frames(audio: np.ndarray, sample_rate: int, n_frames: int, fps: float,
                   n_mels: int = SPECTRAL_MELS) -> np.ndarray:
    """Log mel-band energies per video frame, float64 [n_frames, n_mels]: a Hann window one frame long,
    centred on the frame's instant i / fps as in ``audio_envelope``, triangular bands 80-7600 Hz."""
    audio = resample_audio(_mono(audio), int(sample_rate), SAMPLE_RATE).astype(np.float64)
    spf = int(round(SAMPLE_RATE / fps))
    starts = np.round(np.arange(n_frames) * SAMPLE_RATE / fps).astype(int)  # window start = centre - spf / 2
    audio = np.pad(audio, (spf // 2, max(0, int(starts[-1]) + spf - len(audio))))
    windows = audio[starts[:, None] + np.arange(spf)[None]] * np.hanning(spf)
    n_fft = 1 << int(math.ceil(math.log2(spf)))
    power = np.abs(np.fft.rfft(windows, n=n_fft, axis=1)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE)

    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    edges = 700.0 * (10.0 ** (np.linspace(mel(80.0), mel(7600.0), n_mels + 2) / 2595.0) - 1.0)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0.0, None)
    energy = power @ bank.T
    return np.log(energy + 1e-3 * float(np.median(energy)) + 1e-12)


def spectral_curves(bands_bp: np.ndarray, targets: np.ndarray, votes: np.ndarray, max_shift: int,
                    ridge: float = SPECTRAL_RIDGE, folds: int = SPECTRAL_FOLDS) -> np.ndarray:
    """The spectral estimator's curves, float [k, 2 * max_shift + 1], for k mouth signals at once (``targets``
    float [T, k]): for every lag, the cross-validated correlation between each signal at n + k and its
    ridge-regression prediction from the log-mel bands at n (voting frames only; contiguous folds, so a
    prediction never sees its neighbours). Fitted per clip, so it learns which bands follow this speaker's
    mouth (open vowels raise the low-mid bands) instead of assuming one. The k regressions share their
    bands, hence one solve per fold."""
    t, n_bands = bands_bp.shape
    targets = np.asarray(targets, dtype=np.float64).reshape(t, -1)
    curves = np.zeros((targets.shape[1], 2 * max_shift + 1))
    for j, k in enumerate(range(-max_shift, max_shift + 1)):
        idx = np.arange(max(0, -k), t - max(0, k))
        idx = idx[votes[idx]]
        if len(idx) < 2 * folds:
            continue
        x, y = bands_bp[idx], targets[idx + k]
        pred = np.zeros_like(y)
        bounds = np.linspace(0, len(idx), folds + 1).astype(int)
        for f in range(folds):
            test = np.zeros(len(idx), bool)
            test[bounds[f]: bounds[f + 1]] = True
            xm, ym = x[~test].mean(axis=0), y[~test].mean(axis=0)
            xt = x[~test] - xm
            w = np.linalg.solve(xt.T @ xt + ridge * len(xt) * np.eye(n_bands), xt.T @ (y[~test] - ym))
            pred[test] = (x[test] - xm) @ w + ym
        pc, yc = pred - pred.mean(axis=0), y - y.mean(axis=0)
        denom = np.sqrt((pc * pc).sum(axis=0) * (yc * yc).sum(axis=0))
        ok = denom > 0
        curves[ok, j] = (pc * yc).sum(axis=0)[ok] / denom[ok]
    return curves


def spectral_curve(bands_bp: np.ndarray, mouth_bp: np.ndarray, votes: np.ndarray, max_shift: int,
                   ridge: float = SPECTRAL_RIDGE, folds: int = SPECTRAL_FOLDS) -> np.ndarray:
    """``spectral_curves`` of one mouth signal (float [T]), float [2 * max_shift + 1]."""
    return spectral_curves(bands_bp, mouth_bp[:, None], votes, max_shift, ridge, folds)[0]


def principal_components(x: np.ndarray, votes: np.ndarray, fps: float, n: int,
                         standardise: bool = False) -> np.ndarray:
    """The first ``n`` principal components of a clip's per-frame features (float [T, D] -> [T, n]) over its
    voting frames: every column band-passed like the opening (and, with ``standardise``, scaled to unit
    variance over the voting frames first), the components of the voting frames (what moves most while the
    person speaks), each scaled to unit variance over the voting frames. Per clip; nothing is fitted beforehand.
    Fewer voting frames than the spectral regression needs (2 x SPECTRAL_FOLDS) give no components ([T, 0])."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    if int(np.count_nonzero(votes)) < 2 * SPECTRAL_FOLDS:
        return np.zeros((len(x), 0))
    x = sosfiltfilt(_band_sos(fps, MESH_BAND_HZ), x - x.mean(axis=0), axis=0)  # all columns at once
    if standardise:
        sd = x[votes].std(axis=0)
        x = x / np.where(sd > 0, sd, 1.0)
    xv = x[votes] - x[votes].mean(axis=0)
    _, _, vt = np.linalg.svd(xv, full_matrices=False)
    comps = x @ vt[:n].T
    scale = comps[votes].std(axis=0)
    return comps / np.where(scale > 0, scale, 1.0)


def patch_components(patches: np.ndarray, votes: np.ndarray, fps: float, n: int = PATCH_COMPONENTS) -> np.ndarray:
    """``principal_components`` of the mouth patches' pixels (uint8 [T, H, W] -> float [T, n]), step 5."""
    return principal_components(np.asarray(patches).reshape(len(patches), -1), votes, fps, n)


def lip_components(lips: np.ndarray, votes: np.ndarray, fps: float, n: int = LIP_COMPONENTS) -> np.ndarray:
    """``principal_components`` of the lip geometry, each feature standardised (float [T, L] -> [T, n]), step 5."""
    return principal_components(lips, votes, fps, n, standardise=True)


def spectral_bands(audio: np.ndarray, sample_rate: int, n_frames: int, fps: float) -> np.ndarray:
    """The spectral estimator's input: log-mel bands per frame, band-passed like the landmark opening and
    standardised, float64 [n_frames, SPECTRAL_MELS]."""
    bands = log_mel_frames(audio, sample_rate, n_frames, fps)
    bands_bp = bandpass_columns(bands, fps)
    return bands_bp / (bands_bp.std(axis=0) + 1e-9)


def _mesh_curve(env_bp, bands_bp, mouth_bp, votes, max_shift, groups=()) -> np.ndarray:
    """Faces with landmarks (step 5): the mean of the envelope curve, the spectral curve of the opening and,
    for each array of ``groups`` (float [T, n]: the patch components, the lip-shape components), the mean
    spectral curve of its columns."""
    envelope = lagged_correlation(env_bp, mouth_bp, max_shift, votes)
    spectral = spectral_curves(bands_bp, np.column_stack([mouth_bp, *groups]), votes, max_shift)
    parts, start = [envelope, spectral[0]], 1
    for g in groups:
        if g.shape[1]:  # a group without components (too few voting frames) adds no curve
            parts.append(spectral[start:start + g.shape[1]].mean(axis=0))
        start += g.shape[1]
    return np.mean(parts, axis=0)


def mesh_chance_peaks(env_bp, bands_bp, mouth_bp, votes, max_shift, n: int = N_SURROGATES, groups=()) -> np.ndarray:
    """``chance_peaks`` of the combined curve: envelope, bands and votes rolled together (the mouth stays)."""
    return np.array([_mesh_curve(np.roll(env_bp, r), np.roll(bands_bp, r, axis=0), mouth_bp, np.roll(votes, r),
                                 max_shift, groups).max() for r in _rolls(len(env_bp), max_shift, n)])


def lip_curve(model: LipModel, bands_bp: np.ndarray, lips: np.ndarray, votes: np.ndarray, max_shift: int,
              fps: float) -> np.ndarray:
    """The second opinion's curve (step 6): the lip geometry ``lips`` (raw, float [T, L]) band-passed like the
    opening, both sides projected on the lip model's canonical directions, each pair correlated at every lag
    (voting frames only), the curves averaged."""
    a, v = project(model, bands_bp, bandpass_columns(lips, fps), votes)
    return np.mean([lagged_correlation(a[:, i], v[:, i], max_shift, votes) for i in range(a.shape[1])], axis=0)


def av_signals(frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int,
               track: MouthTrack | None = None) -> tuple[np.ndarray, np.ndarray, MouthTrack]:
    """The raw (not band-passed) per-frame signals: (audio envelope, mouth signal, mouth track)."""
    frames = np.asarray(frames)
    if track is None:
        track = locate_mouth(frames, fps)
    band = MESH_SPEECH_BAND_HZ if track.localizer == "face-mesh" else SPEECH_BAND_HZ
    env = audio_envelope(audio, sample_rate, len(frames), fps, band)
    mouth = mouth_signal(mouth_crops(frames, track), track)
    return env, mouth, track


def _check_inputs(frames, fps, audio, sample_rate):
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a non-empty uint8 array [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if not (isinstance(fps, (int, float, np.floating, np.integer)) and fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    audio = _mono(audio)
    if not np.all(np.isfinite(audio)):
        raise ValueError("audio contains NaN or infinite samples")
    return frames, float(fps), audio, int(sample_rate)


def estimate_sync(frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int, *,
                  max_shift: int = MAX_SHIFT, track: MouthTrack | None = None,
                  lip_model: LipModel | None = None) -> SyncResult:
    """Weight-free audio-video offset of a talking-head clip (see the module docstring).

    ``frames`` uint8 [T, H, W, 3] at ``fps``; ``audio`` float [N] (or [N, C]) at ``sample_rate``,
    starting at the same instant as the first frame. ``track`` reuses a mouth track already computed;
    ``lip_model`` replaces the shipped lip model of step 6 (``eval.sync_validate --loso`` fits its own).
    """
    frames, fps, audio, sample_rate = _check_inputs(frames, fps, audio, sample_rate)
    if int(max_shift) != max_shift or max_shift < 1:
        raise ValueError(f"max_shift must be a positive integer, got {max_shift!r}")
    max_shift = int(max_shift)
    t = len(frames)
    nan_curve = np.full(2 * max_shift + 1, np.nan)
    if t < 2 * max_shift + MIN_OVERLAP:
        # Not enough frames for the lag search: report nothing rather than a number from noise.
        return SyncResult(0, 0.0, float("nan"), "too_short", nan_curve, None, "none", fps, max_shift,
                          float("nan"), t)
    env, mouth, track = av_signals(frames, fps, audio, sample_rate, track)
    base = dict(mouth_box=track.median_box(), localizer=track.localizer, fps=fps, max_shift=max_shift, n_frames=t)
    silent = float(np.max(np.abs(audio))) < 1e-4 if audio.size else True
    static = float(np.ptp(mouth)) < 1e-6
    if silent or static:
        flag = "too_short" if t / fps < MIN_SECONDS else ("silent_audio" if silent else "static_video")
        return SyncResult(0, 0.0, float("nan"), flag, nan_curve, **base, peak_corr=float("nan"))
    mesh = track.localizer == "face-mesh"
    band = MESH_BAND_HZ if mesh else SYLLABLE_BAND_HZ
    env_bp, mouth_bp = _bandpass(env, fps, band), _bandpass(mouth, fps, band)
    votes = voiced_frames(env)
    voiced_seconds = float(votes.sum()) / fps
    if mesh:
        votes[:MESH_EDGE] = votes[t - MESH_EDGE:] = False
    onset = track.localizer in ("motion-fallback", "centre-fallback")
    lip_offset = None  # the lip model's reading (step 6), faces with landmarks only
    groups = []  # the mouth pictures' and the lip shape's components (step 5), faces with landmarks only
    if mesh:
        bands_bp = spectral_bands(audio, sample_rate, t, fps)
        if track.patches is not None:
            groups.append(patch_components(track.patches, votes, fps))
        if track.lips is not None:
            groups.append(lip_components(track.lips, votes, fps))
        curve = _mesh_curve(env_bp, bands_bp, mouth_bp, votes, max_shift, groups)
        if track.lips is not None:
            lips = lip_curve(lip_model or load_lip_model(), bands_bp, track.lips, votes, max_shift, fps)
            lip_offset = int(np.argmax(lips)) - max_shift
    else:
        curve = _curve(env_bp, mouth_bp, votes, max_shift, onset)
    best = int(np.argmax(curve))
    offset = best - max_shift
    confidence = float(curve[best] - np.median(curve))
    prominence = peak_prominence(curve)
    flag = None
    if t / fps < MIN_SECONDS:
        flag = "too_short"
    elif voiced_seconds < MIN_SPEECH_SECONDS:
        flag = "too_little_speech"
    elif not mesh and confidence < LOW_CONFIDENCE:
        flag = "low_confidence"
    elif abs(offset) == max_shift:  # a maximum at the end of the search range may lie beyond it
        flag = "peak_at_edge"
    elif not mesh and prominence < MIN_PROMINENCE:
        flag = "weak_peak"
    elif np.any((mesh_chance_peaks(env_bp, bands_bp, mouth_bp, votes, max_shift, groups=groups) if mesh
                 else chance_peaks(env_bp, mouth_bp, votes, max_shift, onset)) >= curve[best]):
        flag = "not_significant"
    elif lip_offset is not None and abs(lip_offset - offset) > LIP_AGREE_FRAMES:
        flag = "models_disagree"
    elif not mesh and not _consistent(env_bp, mouth_bp, votes, max_shift, onset, offset):
        flag = "inconsistent"
    extras = {} if lip_offset is None else {"lip_model_offset_frames": lip_offset}
    return SyncResult(offset, offset * 1000.0 / fps, confidence, flag, curve, **base, peak_corr=float(curve[best]),
                      prominence=prominence, voiced_seconds=voiced_seconds, extras=extras)


def peak_prominence(curve: np.ndarray, guard: int = PROMINENCE_GUARD) -> float:
    """Peak of ``curve`` minus its highest value more than ``guard`` lags away (>= 0)."""
    curve = np.asarray(curve, dtype=np.float64)
    best = int(np.argmax(curve))
    others = np.r_[curve[: max(0, best - guard)], curve[best + guard + 1:]]
    rival = float(others.max()) if others.size else 0.0
    return max(0.0, float(curve[best]) - max(rival, 0.0))


def sync_file(path: str | os.PathLike, *, fps: float = FPS, max_shift: int = MAX_SHIFT,
              max_seconds: float | None = None) -> SyncResult:
    """``estimate_sync`` on a media file (any container, frame rate, sample rate, mono or stereo).

    The video is resampled to ``fps`` (25 by default, so offsets are in SyncNet's 40 ms frames) and the
    audio to 16 kHz mono by ``mf.media.read_av``. Unreadable files, files without a video or audio
    stream, and empty streams raise ``mf.media.MediaError`` subclasses naming the file.
    """
    clip = read_av(path, fps=fps, sample_rate=SAMPLE_RATE, need_video=True, need_audio=True, max_seconds=max_seconds)
    return estimate_sync(clip.frames, clip.fps, clip.audio, clip.sample_rate, max_shift=max_shift)
