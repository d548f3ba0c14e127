"""Prosody of a script: intonation (log-f0 contour) and loudness over time, shared by voice and face.

Owns: ``Prosody`` and ``make_prosody``. Both the voice synthesiser (f0, level) and the face
renderer (mouth opening scaled by loudness, eyebrows raised on pitch accents, small nods) read
the same curves, so what is heard and what is seen agree.

Model (per phrase = run of speech between silences of >= 120 ms):
* declination: log-f0 falls linearly across the phrase;
* pitch accents: Gaussian bumps on the phrase's first vowel (usually) and on about a third of
  the other vowels, each also a loudness bump;
* phrase end: a fall for statements, a rise for questions;
* loudness: a random level per phrase that decays towards its end.
Curves are keypoints plus Gaussian bumps, evaluated vectorised at any times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mf.data.phonemes import VOWELS
from mf.data.script import Phone

PHRASE_BREAK_S = 0.12


@dataclass
class Prosody:
    phrase_times: np.ndarray   # [K] keypoint times of the declination / level curves
    phrase_logf0: np.ndarray   # [K] log-f0 offset at those times
    phrase_level: np.ndarray   # [K] loudness level at those times
    accent_time: np.ndarray    # [A] centres of pitch accents
    accent_width: np.ndarray   # [A] Gaussian sigma (s)
    accent_height: np.ndarray  # [A] log-f0 height; also drives loudness and eyebrows

    def _accents(self, t: np.ndarray) -> np.ndarray:
        if self.accent_time.size == 0:
            return np.zeros_like(t)
        z = (t[:, None] - self.accent_time[None, :]) / self.accent_width[None, :]
        return np.exp(-0.5 * z * z) @ self.accent_height

    def log_f0(self, t: np.ndarray) -> np.ndarray:
        """Log-f0 offset (natural log; 0 = the character's mean pitch) at times ``t``."""
        t = np.asarray(t, dtype=np.float64)
        return np.interp(t, self.phrase_times, self.phrase_logf0) + self._accents(t)

    def level(self, t: np.ndarray) -> np.ndarray:
        """Loudness multiplier (about 0.5 .. 1.3) at times ``t``."""
        t = np.asarray(t, dtype=np.float64)
        return np.interp(t, self.phrase_times, self.phrase_level) * (1.0 + 1.5 * self._accents(t))

    def accent(self, t: np.ndarray) -> np.ndarray:
        """Accent strength (0 .. ~0.3) at times ``t``: raised eyebrows, a small nod."""
        return self._accents(np.asarray(t, dtype=np.float64))


def phrases(phones: list[Phone]) -> list[tuple[int, int]]:
    """Index ranges [i, j) of speech phones between silences of at least PHRASE_BREAK_S."""
    out = []
    start = None
    for i, p in enumerate(phones):
        is_break = p.symbol == "sil" and p.duration >= PHRASE_BREAK_S
        if p.symbol != "sil" and start is None:
            start = i
        if is_break and start is not None:
            out.append((start, i))
            start = None
    if start is not None:
        out.append((start, len(phones)))
    return out


def make_prosody(phones: list[Phone], rng: np.random.Generator, *, pitch_range: float = 1.0,
                 question: bool = False) -> Prosody:
    """Intonation and loudness for a script. ``question`` makes the last phrase end rising."""
    times, logf0, level = [], [], []
    acc_t, acc_w, acc_h = [], [], []
    groups = phrases(phones)
    for g, (i, j) in enumerate(groups):
        ps, pe = phones[i].start, phones[j - 1].end
        decl = 0.09 * pitch_range * float(rng.uniform(0.6, 1.4))
        lvl = float(rng.uniform(0.7, 1.0))
        is_question = question and g == len(groups) - 1
        times += [ps, pe]
        logf0 += [decl, -decl]
        level += [lvl, lvl * 0.8]
        vowels = [k for k in range(i, j) if phones[k].symbol in VOWELS]
        for n, k in enumerate(vowels):
            p = phones[k]
            last = n == len(vowels) - 1
            if last:
                # phrase-final contour: a rise for questions, else a fall
                height = (0.28 if is_question else -0.14) * pitch_range
                acc_t.append(p.end)
                acc_w.append(max(p.duration * 0.6, 0.04))
                acc_h.append(height)
            elif (n == 0 and rng.uniform() < 0.8) or rng.uniform() < 0.33:
                acc_t.append(0.5 * (p.start + p.end))
                acc_w.append(max(p.duration * 0.55, 0.03))
                acc_h.append(float(rng.uniform(0.07, 0.2)) * pitch_range)
    if not times:  # a script of pure silence
        times, logf0, level = [0.0, 1.0], [0.0, 0.0], [0.8, 0.8]
    order = np.argsort(times, kind="stable")
    return Prosody(
        phrase_times=np.asarray(times, dtype=np.float64)[order],
        phrase_logf0=np.asarray(logf0, dtype=np.float64)[order],
        phrase_level=np.asarray(level, dtype=np.float64)[order],
        accent_time=np.asarray(acc_t, dtype=np.float64),
        accent_width=np.asarray(acc_w, dtype=np.float64),
        accent_height=np.asarray(acc_h, dtype=np.float64),
    )
