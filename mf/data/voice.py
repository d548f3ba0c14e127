"""Source-filter speech synthesis at 16 kHz for corpus scripts.

Owns: ``synthesize(phones, prosody, voice, t0, n_samples, rng)``: the waveform of a timed script
for samples at times ``t0 + k / SAMPLE_RATE``.

How it works (all vectorised, one short Python loop over phones to place events):
1. Control tracks every CONTROL_HOP = 128 samples (8 ms): voicing, aspiration and frication
   levels, the noise band of the current consonant, nasality, and formants F1-F3 interpolated
   between per-phone targets (keys at each phone's steady part, linear glides between them, which
   gives coarticulated transitions). Targets come from ``mf.data.phonemes`` and are scaled by the
   character's formant scale.
2. Sources, sample-accurate: a Rosenberg glottal pulse train (its derivative, i.e. with lip
   radiation) whose phase integrates f0 = mean pitch x prosody contour x jitter, with per-period
   shimmer; breath noise gated by the glottal cycle; aspiration noise (h, voiceless-plosive
   release); a separate frication/burst noise whose envelope places each plosive burst at an
   exact sample.
3. Filtering in the STFT domain (n_fft 512, hop 128, Hann, float32): the voiced source is multiplied frame
   by frame by the minimum-phase version of a cascade-formant envelope (5 resonances + a nasal
   pole/zero pair), the noise source by a band-pass of the current consonant's band; overlap-add
   back. This is a time-varying filter with smooth updates and no filter-state clicks.
The synthesis is a pure function of its inputs and ``rng``, so a clip cut from a longer span at
any sample offset is exactly a shifted copy (what ``render_clip(shift_ms=...)`` relies on).
"""

from __future__ import annotations

import numpy as np

from mf.constants import SAMPLE_RATE
from mf.data.characters import Voice
from mf.data.phonemes import AFFRICATES, BURST, FORMANTS, FRICATION, NASALS, PLOSIVES, VOICING_LEVEL, VOWELS
from mf.data.prosody import Prosody
from mf.data.script import Phone

CONTROL_HOP = 128
N_FFT = 512
_BANDWIDTHS = np.array([70.0, 100.0, 140.0, 250.0, 300.0])
_HIGH_FORMANTS = (3300.0, 4300.0)  # F4, F5 reference values (scaled like F1-F3)
_VOICELESS_STOPS = frozenset("p t k ch".split())
# Output gain chosen so typical speech peaks near 0.5 (measured over many characters).
_OUTPUT_GAIN = 0.2

_WINDOW = np.hanning(N_FFT + 1)[:N_FFT].astype(np.float64)  # periodic Hann
_FREQS = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)


def _ola_norm() -> np.ndarray:
    """Sum of squared windows at each sample position within one hop (constant for Hann/8)."""
    w2 = _WINDOW ** 2
    return w2.reshape(-1, CONTROL_HOP).sum(axis=0)


_OLA = _ola_norm()


def _resonance(f: np.ndarray, freq: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """Magnitude of a two-pole resonator at frequencies ``f``, 1 at DC (cascade-formant style)."""
    half = bw / 2.0
    num = freq * freq + half * half
    return num / np.sqrt(((f - freq) ** 2 + half * half) * ((f + freq) ** 2 + half * half))


def _min_phase(mag: np.ndarray) -> np.ndarray:
    """Minimum-phase complex spectra [frames, bins] with the given magnitudes (real cepstrum)."""
    cep = np.fft.irfft(np.log(np.maximum(mag, 1e-6)).astype(np.float32), n=N_FFT, axis=-1)
    fold = np.zeros_like(cep)
    fold[:, 0] = cep[:, 0]
    fold[:, 1:N_FFT // 2] = 2.0 * cep[:, 1:N_FFT // 2]
    fold[:, N_FFT // 2] = cep[:, N_FFT // 2]
    return np.exp(np.fft.rfft(fold, axis=-1))


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return x
    kernel = np.hanning(width + 2)[1:-1]
    kernel /= kernel.sum()
    return np.convolve(x, kernel, mode="same")


def _formant_keys(phones: list[Phone], scale: float) -> tuple[np.ndarray, np.ndarray]:
    times, values = [], []
    for p in phones:
        if p.symbol in ("sil", "unk"):
            continue
        targets = FORMANTS[p.symbol]
        if len(targets) == 2:  # diphthong: glide from first to second target
            times += [p.start + 0.2 * p.duration, p.end - 0.15 * p.duration]
            values += [targets[0], targets[1]]
        elif p.symbol in VOWELS:
            times += [p.start + 0.25 * p.duration, p.end - 0.25 * p.duration]
            values += [targets[0], targets[0]]
        else:  # consonant locus at its middle
            times.append(p.start + 0.5 * p.duration)
            values.append(targets[0])
    if not times:
        return np.array([0.0]), np.array([[500.0, 1500.0, 2500.0]]) * scale
    return np.asarray(times), np.asarray(values, dtype=np.float64) * scale


def synthesize(phones: list[Phone], prosody: Prosody, voice: Voice, t0: float, n_samples: int,
               rng: np.random.Generator) -> np.ndarray:
    """float32 [n_samples] speech for ``phones`` at times ``t0 + k / SAMPLE_RATE``."""
    sr = SAMPLE_RATE
    n_ctrl = -(-n_samples // CONTROL_HOP) + 1
    n_pad = (n_ctrl - 1) * CONTROL_HOP  # samples covered by the control grid (>= n_samples)
    tc = t0 + np.arange(n_ctrl) * (CONTROL_HOP / sr)
    ts = t0 + np.arange(n_pad) / sr

    def ctrl_index(t: float) -> int:
        return int(np.clip(np.ceil((t - t0) * sr / CONTROL_HOP), 0, n_ctrl))

    def sample_index(t: float) -> int:
        return int(np.clip(round((t - t0) * sr), 0, n_pad))

    voicing = np.zeros(n_ctrl)
    aspiration = np.zeros(n_ctrl)
    frication = np.zeros(n_ctrl)
    nasal = np.zeros(n_ctrl)
    band_lo = np.full(n_ctrl, 2000.0)
    band_hi = np.full(n_ctrl, 6000.0)
    burst = np.zeros(n_pad)
    for p in phones:
        a, b = ctrl_index(p.start), ctrl_index(p.end)
        if b <= 0 or a >= n_ctrl:
            continue
        s = p.symbol
        release = p.start + (0.4 if s in AFFRICATES else 0.62) * p.duration
        r = ctrl_index(release)
        voicing[a:b] = VOICING_LEVEL.get(s, 0.0)
        if s in NASALS:
            nasal[a:b] = 1.0
        if s == "hh":
            aspiration[a:b] = 0.55
        if s in FRICATION:
            lo, hi, level = FRICATION[s]
            start = r if s in AFFRICATES else a
            frication[start:b] = level
            band_lo[a:b], band_hi[a:b] = lo, hi
        if s in PLOSIVES or s in AFFRICATES:
            lo, hi, level = BURST[s]
            band_lo[a:r] = lo
            band_hi[a:r] = hi
            if s in PLOSIVES:
                band_lo[r:b], band_hi[r:b] = lo, hi
            if s in _VOICELESS_STOPS:
                voicing[a:b] = 0.0
                aspiration[r:b] = 0.35
            else:
                voicing[r:b] = 0.5  # voiced release: voicing resumes quickly
            k = sample_index(release)
            n = min(int(0.025 * sr), n_pad - k)
            if n > 0:
                burst[k:k + n] += 0.8 * level * np.exp(-np.arange(n) / (0.005 * sr))
    # Short ramps: articulators and the glottis need ~10-20 ms to change state.
    voicing = _smooth(voicing, 3)
    aspiration = _smooth(aspiration, 3)
    frication = _smooth(frication, 3)
    nasal = _smooth(nasal, 3)

    # Formant tracks, with a light smoothing of the linear glides.
    key_t, key_f = _formant_keys(phones, voice.formant_scale)
    formants = np.stack([_smooth(np.interp(tc, key_t, key_f[:, i]), 5) for i in range(3)], axis=1)

    # f0: mean x intonation x slow drift x per-period jitter
    log_f0 = np.log(voice.f0) + prosody.log_f0(tc)
    drift_phase = rng.uniform(0, 2 * np.pi, size=2)
    log_f0 = log_f0 + 0.02 * np.sin(2 * np.pi * 0.7 * tc + drift_phase[0]) \
        + 0.015 * np.sin(2 * np.pi * 2.3 * tc + drift_phase[1])
    log_f0 = log_f0 + voice.jitter * rng.standard_normal(n_ctrl)
    f0 = np.exp(np.interp(ts, tc, log_f0))
    level = np.interp(ts, tc, prosody.level(tc) * voice.loudness)

    phase = np.cumsum(f0 / sr)
    frac = phase - np.floor(phase)
    period = phase.astype(np.int64)
    rise, fall = 0.4, 0.1
    flow = np.where(frac < rise, 0.5 * (1.0 - np.cos(np.pi * frac / rise)),
                    np.where(frac < rise + fall, np.cos(np.pi * (frac - rise) / (2.0 * fall)), 0.0))
    pulses = np.diff(flow, prepend=flow[0]) * (120.0 / f0)  # radiated flow derivative, level-normalised
    shimmer = 1.0 + voice.shimmer * rng.standard_normal(int(period[-1]) + 2)
    v_s = np.interp(ts, tc, voicing)
    open_phase = frac < rise + fall
    noise_a = rng.standard_normal(n_pad)
    noise_b = rng.standard_normal(n_pad)
    breath = noise_a * (0.004 + 0.016 * voice.breathiness) * np.where(open_phase, 1.0, 0.4)
    voiced_src = (pulses * shimmer[period] + breath) * v_s * 10.0
    voiced_src += noise_a * 0.25 * np.interp(ts, tc, aspiration)
    noise_src = noise_b * (0.3 * np.interp(ts, tc, frication) + burst)
    voiced_src *= level
    noise_src *= level

    # Spectral envelopes per control frame.
    f = _FREQS[None, :]
    scale = voice.formant_scale
    bws = _BANDWIDTHS * (1.0 + 0.6 * voice.breathiness)
    tract = np.ones((n_ctrl, _FREQS.size))
    for i in range(3):
        tract *= _resonance(f, formants[:, i:i + 1], bws[i])
    for i, fh in enumerate(_HIGH_FORMANTS):
        tract *= _resonance(f, np.float64(fh * scale), bws[3 + i])
    nasal_shape = _resonance(f, np.float64(260.0), 90.0) / _resonance(f, np.float64(1300.0 * scale), 220.0)
    tract *= np.exp(nasal[:, None] * np.log(nasal_shape * 0.6))
    tract *= 1.0 / np.sqrt(1.0 + (f / 7200.0) ** 12)  # anti-alias roll-off near Nyquist
    fmax = np.maximum(f, 1.0)
    band = (1.0 / np.sqrt(1.0 + (fmax / band_hi[:, None]) ** 8)) \
        * (1.0 / np.sqrt(1.0 + (band_lo[:, None] / fmax) ** 8))

    # STFT-domain filtering, frames centred on control times.
    half = N_FFT // 2
    spec = np.zeros((n_ctrl, _FREQS.size), dtype=np.complex64)
    window = _WINDOW.astype(np.float32)
    for src, response in ((voiced_src, _min_phase(tract)), (noise_src, band.astype(np.float32))):
        padded = np.concatenate([np.zeros(half, np.float32), src.astype(np.float32),
                                 np.zeros(half + CONTROL_HOP, np.float32)])
        frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::CONTROL_HOP][:n_ctrl]
        spec += np.fft.rfft(frames * window, axis=-1) * response
    out_frames = np.fft.irfft(spec, n=N_FFT, axis=-1) * window
    blocks = out_frames.reshape(n_ctrl, N_FFT // CONTROL_HOP, CONTROL_HOP)
    n_blocks = n_ctrl + N_FFT // CONTROL_HOP
    acc = np.zeros((n_blocks, CONTROL_HOP))
    for k in range(N_FFT // CONTROL_HOP):
        acc[k:k + n_ctrl] += blocks[:, k]
    y = acc.reshape(-1)[half:half + n_samples] / np.tile(_OLA, n_blocks)[half:half + n_samples]
    y = y * _OUTPUT_GAIN
    # A faint noise floor: real recordings are never digitally silent (and PESQ needs no
    # special case for exact zeros). Soft limiting keeps rare peaks inside [-1, 1].
    y = y + 3e-4 * noise_b[:n_samples]
    return np.tanh(y).astype(np.float32)
