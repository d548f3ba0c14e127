"""A generated clip measured against its ground truth: the corpus render of the same seed, character and script.

The procedural corpus (``mf.data``) can draw what the model was asked for: ``ground_truth`` renders
the clip with the character the pipeline showed (``mf.pipeline.character_for``) and exactly the timed
script it was conditioned on (``mf.conditions.script_phones``), on the same clock. ``measure`` then
puts numbers beside each generated clip (the app's Compare and Talk tabs show them under each player):

* **sync** — the weight-free estimator (``eval.sync.estimate_sync``) on the clip itself: offset in
  frames and ms (positive = audio leads) and ``sync_uncertain`` when the estimator raises a flag
  (``SyncResult.flag``: too short, low confidence, silent, static). Clips under 2 s are always flagged.
* **frame distance** — ``feature_distance``: the mean, over aligned frames, of the L2 distance between
  the project's corpus features (``eval.features``, the extractor behind corpus-FD) of the generated
  frame and the ground-truth frame. Why this and not PSNR/SSIM as the headline: the network was trained
  to read exactly what the conditioning fixes — the character's look (attribute regression) and the
  mouth shape of the current phoneme (viseme class) — while pixel metrics are dominated by what the
  conditioning leaves free (head sway, blink timing, sub-pixel placement), so a plausible clip that
  sways differently loses to a blurry average. Paired frames (not a Fréchet distance of the two
  sets): one clip has tens of frames, far too few for a 128-d covariance. ``psnr_db`` is reported
  too, for readers who expect it, with that caveat.
* **audio distance** — ``logmel_distance_db``: the log-spectral distance between the two 80-band
  log-mel spectrograms (the representation the audio codec works in), the RMS over bands of the dB
  difference, averaged over 10 ms frames; both are floored 40 dB below the ground truth's peak so
  silence does not dominate. It compares the spectral envelope — which sound, how loud, in which
  voice, when — on the shared clock. PESQ/STOI are intrusive measures of *degradation of one
  recording*; the model's voice is a new rendition, so against a corpus render they sit near their
  floor for every step count and barely discriminate. Measured with the shipped model (2 s clips,
  seeds 3 and 7, 4/8/50 steps): PESQ-wb 1.08/1.08/1.08 and 1.20/1.17/1.17, while this distance gave
  8.5/8.4/8.3 and 7.6/7.6/7.7 dB, and the render of seed + 100 (another character) 19.7 and 9.1 dB.
* ``wall_s`` / ``rtf`` — passed through from the run that made the clip (RTF = wall s per s of output).

Lower is better for every distance; 0 means identical to the ground truth.
"""

from __future__ import annotations

import math

import numpy as np

from mf.constants import FPS, HOP, SAMPLE_RATE

N_FFT = 1024
WIN_LENGTH = 640
N_MELS = 80
FLOOR_DB = 40.0  # dynamic range kept: quieter differences sit under the speech
PSNR_CAP_DB = 100.0  # identical frames: reported as this cap instead of infinity


def ground_truth(seed: int, seconds: float, *, text: str | None = None, character_id: int | None = None,
                 frames_per_chunk: int = 1, size: int = 64):
    """The corpus clip (``mf.data.CorpusClip``) a generation with these arguments should look and sound like.

    ``frames_per_chunk``: the model's chunk length; the pipeline draws the script for whole chunks, so the
    script here is drawn over the same span (then the clip is cut to ``seconds``, as the pipeline cuts).
    """
    from mf.conditions import script_phones
    from mf.data import render_clip
    from mf.pipeline import character_for

    n_frames = max(int(round(seconds * FPS)), 1)
    span = math.ceil(n_frames / frames_per_chunk) * frames_per_chunk / FPS
    phones, _dropped, _note = script_phones(text, span, seed)
    return render_clip(int(seed), n_frames / FPS, text=text, character_id=character_for(seed, character_id),
                       size=size, phones=phones)


def _power_mel(audio: np.ndarray) -> np.ndarray:
    """Mel power spectrogram [frames, N_MELS] (Hann window, 10 ms hop)."""
    from scipy.signal import stft

    from mf.codecs.audio import mel_filterbank

    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    _, _, spec = stft(audio, fs=SAMPLE_RATE, window="hann", nperseg=WIN_LENGTH, noverlap=WIN_LENGTH - HOP,
                      nfft=N_FFT, boundary="even", padded=True)
    power = np.abs(spec) ** 2  # [bins, frames]
    return (mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS).astype(np.float64) @ power).T


def logmel_distance_db(audio: np.ndarray, truth: np.ndarray) -> float:
    """Mean over 10 ms frames of the RMS (over 80 mel bands) dB difference; both floored at truth peak - FLOOR_DB."""
    n = min(len(np.reshape(audio, -1)), len(np.reshape(truth, -1)))
    if n < WIN_LENGTH:
        return float("nan")
    a, t = _power_mel(np.reshape(audio, -1)[:n]), _power_mel(np.reshape(truth, -1)[:n])
    floor = max(float(t.max()), 1e-20) * 10 ** (-FLOOR_DB / 10)
    da, dt = 10 * np.log10(np.maximum(a, floor)), 10 * np.log10(np.maximum(t, floor))
    return float(np.mean(np.sqrt(np.mean((da - dt) ** 2, axis=1))))


def psnr_db(frames: np.ndarray, truth: np.ndarray) -> float:
    """PSNR (dB, peak 255) over all aligned frames; identical frames give ``PSNR_CAP_DB``."""
    mse = float(np.mean((frames.astype(np.float64) - truth.astype(np.float64)) ** 2))
    return PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(255.0 ** 2 / mse))


def feature_distance(frames: np.ndarray, truth: np.ndarray, extractor) -> float:
    """Mean over aligned frames of the L2 distance between corpus features (see the module docstring)."""
    fa, fb = extractor(frames), extractor(truth)
    return float(np.mean(np.linalg.norm(fa - fb, axis=1)))


def sync_numbers(frames: np.ndarray, audio: np.ndarray) -> dict:
    """Offset of one clip by the weight-free estimator; ``sync_uncertain`` when it raised a flag.

    Uses ``SyncResult.flag`` (any flag makes the number uncertain); ``eval.sync`` may grow a dedicated
    ``uncertain`` field, which would then be the one to read.
    """
    from eval.sync import estimate_sync

    res = estimate_sync(frames, FPS, audio, SAMPLE_RATE)
    return {"sync_offset_frames": int(res.offset_frames), "sync_offset_ms": float(res.offset_ms),
            "sync_confidence": float(res.confidence), "sync_flag": res.flag, "sync_uncertain": res.flag is not None}


def measure(frames: np.ndarray, audio: np.ndarray, truth_frames: np.ndarray, truth_audio: np.ndarray, *,
            wall_s: float | None = None, extractor=None) -> dict:
    """Numbers of one generated clip against its ground truth (see the module docstring).

    ``frames`` uint8 [T, H, W, 3] at 25 fps and ``audio`` float [T * 640] at 16 kHz, likewise the truth;
    the two are compared over their common length. ``extractor``: a corpus feature extractor
    (``eval.features.load_extractor()``; loaded here when None). Returns a flat dict of floats,
    ints, bools and the sync flag (str or None).
    """
    frames, truth_frames = np.asarray(frames), np.asarray(truth_frames)
    if frames.ndim != 4 or truth_frames.ndim != 4 or frames.shape[1:] != truth_frames.shape[1:]:
        raise ValueError(f"frames must be [T, H, W, 3] of one size, got {frames.shape} and {truth_frames.shape}")
    if extractor is None:
        from eval.features import load_extractor

        extractor = load_extractor()
    t = min(len(frames), len(truth_frames))
    seconds = t / FPS
    out = sync_numbers(frames, audio)
    out.update(feature_distance=feature_distance(frames[:t], truth_frames[:t], extractor),
               psnr_db=psnr_db(frames[:t], truth_frames[:t]),
               logmel_distance_db=logmel_distance_db(audio, truth_audio), seconds=seconds)
    if wall_s is not None:
        out.update(wall_s=float(wall_s), rtf=float(wall_s) / seconds)
    return out


def markdown(numbers: dict, *, timing: bool = True) -> str:
    """One short block for under a player: sync, frame and audio distance, and (``timing``) wall time and RTF."""
    sync = f"sync **{numbers['sync_offset_ms']:+.0f} ms**"
    if numbers.get("sync_uncertain"):
        sync += f" (uncertain: {numbers.get('sync_flag')})"
    lines = [sync]
    if "feature_distance" in numbers:
        lines.append(f"vs ground truth: feature distance **{numbers['feature_distance']:.2f}** · "
                     f"PSNR {numbers['psnr_db']:.1f} dB · log-mel distance **{numbers['logmel_distance_db']:.1f} dB**")
    if timing and "wall_s" in numbers:
        lines.append(f"wall {numbers['wall_s']:.2f} s · RTF {numbers['rtf']:.2f}")
    return "\n\n".join(lines)
