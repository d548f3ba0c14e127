"""Reference-based speech quality metrics: PESQ (wide- and narrow-band) and STOI/ESTOI.

What this module owns: turning two arbitrary speech signals (any rate, mono or stereo, any length,
possibly offset in time) into the inputs the ``pesq`` and ``pystoi`` packages expect, and turning
every case those packages cannot score into ``NaN`` with a note that says why.

Rules, in order:

1. Downmix to mono (mean of channels) and resample to 16 kHz with the project's polyphase resampler.
2. Align: the lag of the degraded signal against the reference is found by FFT cross-correlation,
   bounded to ``MAX_ALIGN_SECONDS`` either way, and applied by *padding* the earlier signal with
   leading zeros; both are then zero-padded at the end to one length. Speech is never truncated.
3. PESQ wide-band runs at 16 kHz. PESQ narrow-band also runs on the 16 kHz signals: ITU-T P.862
   (and the ``pesq`` package's own reference values) accept narrow-band mode at 16 kHz, and doing it
   there keeps our numbers identical to the package's published ones (resampling to 8 kHz first moves
   the peer pair's nb score from 1.607 to 1.666). Wide band needs content up to 8 kHz: when either
   signal is (or was, before the caller resampled it: ``source_rate``) sampled below 16 kHz, wb is NaN
   with a note; signals at 8 kHz or below are scored nb at 8 kHz.
4. A silent reference, a silent degraded signal, a clip shorter than ``MIN_SECONDS``, or a pair in
   which PESQ finds no utterances gives NaN and a note instead of an exception.

Sign convention of the reported lag: positive = the degraded signal is late (its speech starts
after the reference's), in samples at 16 kHz.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.signal import fftconvolve

from mf.media import resample_audio

PESQ_RATE = 16_000
NB_NATIVE_RATE = 8_000
# Generated audio can be offset from its reference by a sync error (the sync metric measures up to
# +-15 frames = 0.6 s); PESQ/STOI should judge quality, not re-measure that offset, so we align within
# a bound a little larger than that.
MAX_ALIGN_SECONDS = 1.0
# PESQ needs a few hundred ms of speech to find an utterance; STOI needs 30 frames of 25.6 ms.
MIN_SECONDS = 0.5
# Peak amplitude below which a signal counts as silent (-80 dBFS).
SILENCE_PEAK = 1e-4


def _mono(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        # [N, C] (soundfile layout) or [C, N] (torch layout): channels are the short axis.
        x = x.mean(axis=1) if x.shape[0] >= x.shape[1] else x.mean(axis=0)
    if x.ndim != 1:
        raise ValueError(f"{what} audio must be 1-D or [samples, channels], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} audio contains NaN or infinite samples")
    return x


def estimate_lag(ref: np.ndarray, deg: np.ndarray, max_lag: int) -> int:
    """Samples by which ``deg`` is late relative to ``ref`` (negative = early), |lag| <= max_lag."""
    if len(ref) == 0 or len(deg) == 0:
        return 0
    # full cross-correlation c[k] = sum_n deg[n] ref[n - lag]; index len(ref)-1 is lag 0.
    corr = fftconvolve(deg, ref[::-1], mode="full")
    zero = len(ref) - 1
    lo, hi = max(0, zero - max_lag), min(len(corr), zero + max_lag + 1)
    window = corr[lo:hi]
    return int(np.argmax(window)) + lo - zero


def align_pad(ref: np.ndarray, deg: np.ndarray, sample_rate: int, max_align_s: float = MAX_ALIGN_SECONDS):
    """Align ``deg`` to ``ref`` by padding (never truncating); returns (ref, deg, lag_samples)."""
    lag = estimate_lag(ref, deg, int(round(max_align_s * sample_rate)))
    if lag > 0:
        ref = np.concatenate([np.zeros(lag), ref])
    elif lag < 0:
        deg = np.concatenate([np.zeros(-lag), deg])
    n = max(len(ref), len(deg))
    ref = np.pad(ref, (0, n - len(ref)))
    deg = np.pad(deg, (0, n - len(deg)))
    return ref, deg, lag


def _prepare(ref, deg, sample_rate, ref_rate=None):
    """Shared front end: mono, resample, silence/length checks, alignment. Returns (ref, deg, lag, note)."""
    ref_rate = int(ref_rate or sample_rate)
    ref = _mono(ref, "reference")
    deg = _mono(deg, "generated")
    for x, rate, what in ((ref, ref_rate, "reference"), (deg, int(sample_rate), "generated")):
        if len(x) < MIN_SECONDS * rate:
            return None, None, 0, f"{what} audio too short ({len(x) / rate:.2f} s < {MIN_SECONDS} s)"
        if np.max(np.abs(x)) < SILENCE_PEAK:
            return None, None, 0, f"{what} audio is silent (peak below {SILENCE_PEAK:g})"
    ref = resample_audio(ref, ref_rate, PESQ_RATE).astype(np.float64)
    deg = resample_audio(deg, int(sample_rate), PESQ_RATE).astype(np.float64)
    ref, deg, lag = align_pad(ref, deg, PESQ_RATE)
    return ref, deg, lag, ""


def pesq_pair(ref: np.ndarray, deg: np.ndarray, sample_rate: int, *, ref_rate: int | None = None,
              source_rate: int | None = None) -> dict:
    """PESQ of ``deg`` against ``ref``: dict(pesq_wb, pesq_nb, note, lag_ms).

    ``sample_rate`` is the rate of ``deg`` (and of ``ref`` unless ``ref_rate`` is given);
    ``source_rate`` is the lowest rate either signal had before the caller resampled it (a file read
    at 8 kHz and resampled to 16 kHz still has no wide band). Cases PESQ cannot score give NaN with
    ``note`` saying why; ``note`` is "" when both scores are valid.
    """
    from pesq import BufferTooShortError, NoUtterancesError, pesq

    out = {"pesq_wb": math.nan, "pesq_nb": math.nan, "note": "", "lag_ms": math.nan}
    band_rate = min(int(r) for r in (sample_rate, ref_rate or sample_rate, source_rate or sample_rate))
    native_8k = band_rate <= NB_NATIVE_RATE
    r, d, lag, note = _prepare(ref, deg, sample_rate, ref_rate)
    if r is None:
        out["note"] = note
        return out
    out["lag_ms"] = 1000.0 * lag / PESQ_RATE
    notes = []
    modes = [("pesq_wb", PESQ_RATE, "wb"), ("pesq_nb", PESQ_RATE, "nb")]
    if band_rate < PESQ_RATE:
        notes.append(f"{band_rate / 1000:g} kHz input: no wide-band PESQ (needs >= {PESQ_RATE / 1000:g} kHz audio)")
        modes = [("pesq_nb", NB_NATIVE_RATE, "nb")] if native_8k else [("pesq_nb", PESQ_RATE, "nb")]
    if native_8k:
        r, d = resample_audio(r, PESQ_RATE, NB_NATIVE_RATE), resample_audio(d, PESQ_RATE, NB_NATIVE_RATE)
    for key, rate, mode in modes:
        try:
            out[key] = float(pesq(rate, r, d, mode))
        except NoUtterancesError:
            notes.append(f"{mode}: PESQ found no utterances (speech too quiet or absent)")
        except BufferTooShortError:
            notes.append(f"{mode}: too short for PESQ")
        except Exception as exc:  # the C core reports other failures as generic errors
            notes.append(f"{mode}: PESQ failed ({exc.__class__.__name__}: {exc})")
    out["note"] = "; ".join(notes)
    return out


def stoi_pair(ref: np.ndarray, deg: np.ndarray, sample_rate: int, *, ref_rate: int | None = None) -> dict:
    """STOI and extended STOI of ``deg`` against ``ref`` after alignment: dict(stoi, estoi, note)."""
    from pystoi import stoi

    out = {"stoi": math.nan, "estoi": math.nan, "note": ""}
    r, d, _lag, note = _prepare(ref, deg, sample_rate, ref_rate)
    if r is None:
        out["note"] = note
        return out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = float(stoi(r, d, PESQ_RATE, extended=False))
        e = float(stoi(r, d, PESQ_RATE, extended=True))
    # pystoi warns and returns 1e-5 when fewer than 30 non-silent frames remain.
    if any("30 frames" in str(w.message) or "Not enough" in str(w.message) for w in caught):
        out["note"] = "too little speech for STOI (needs >= 30 non-silent 25.6 ms frames)"
        return out
    out["stoi"], out["estoi"] = s, e
    return out
