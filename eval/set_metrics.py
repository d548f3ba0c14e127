"""Set-level distances (FID/KID, corpus-FD/KID) from frames sampled per clip, overall and per window.

What this module owns: which frames of a clip feed the set distances (``sample_indices``: ``k``
evenly spaced frames), the per-set feature store with frame times (``FrameFeatures``), the two
extractors and why one may be missing (``SetExtractors``), and the distances of one time window
(``SetExtractors.distances``). Features are extracted as each clip's frames arrive, so a set of any
size holds ``k`` frames' features per clip (2048 floats each), never the frames themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Summary keys that set distances fill (copied as a block into a window that holds every frame).
SET_KEYS = ("fid", "kid_mean", "kid_std", "n_frames", "feature_extractor", "fid_note", "corpus_fd", "corpus_kid_mean",
            "corpus_kid_std", "corpus_n_frames", "corpus_feature_extractor", "corpus_note")


def sample_indices(n_frames: int, k: int) -> np.ndarray:
    """``k`` evenly spaced frame indices of ``n_frames`` (all of them when there are fewer)."""
    if n_frames <= k:
        return np.arange(n_frames)
    return np.unique(np.round(np.linspace(0, n_frames - 1, k)).astype(int))


class FrameFeatures:
    """Features of sampled frames with their times, for one set and one extractor."""

    def __init__(self):
        self.feats, self.times = [], []

    def add(self, feats: np.ndarray, times: np.ndarray):
        self.feats.append(feats)
        self.times.append(times)

    def select(self, window=None) -> np.ndarray:
        if not self.feats:
            return np.zeros((0, 1))
        f, t = np.concatenate(self.feats), np.concatenate(self.times)
        if window is not None:
            f = f[(t >= window[0]) & (t < window[1])]
        return f


@dataclass
class SetExtractors:
    """The Inception (standard FID/KID) and corpus extractors; ``None`` with a note when unavailable."""

    inception: object | None = None
    inception_note: str = ""
    corpus: object | None = None
    corpus_note: str = ""
    seed: int = 0
    feats: dict = field(default_factory=lambda: {(ex, side): FrameFeatures() for ex in ("inception", "corpus")
                                                  for side in ("gen", "ref")})

    @classmethod
    def load(cls, inception_weights=None, allow_download: bool = True, seed: int = 0) -> "SetExtractors":
        from eval.features import FeaturesUnavailable, load_extractor
        from eval.frechet import InceptionExtractor, InceptionUnavailable

        out = cls(seed=seed)
        try:
            out.inception = InceptionExtractor(inception_weights, allow_download=allow_download)
        except InceptionUnavailable as exc:
            out.inception_note = str(exc)
        try:
            out.corpus = load_extractor()
        except FeaturesUnavailable as exc:
            out.corpus_note = str(exc)
        return out

    def add(self, side: str, frames: np.ndarray, times: np.ndarray) -> None:
        """Extract and keep the features of one clip's sampled ``frames`` (``side``: "gen" or "ref")."""
        for name, ex in (("inception", self.inception), ("corpus", self.corpus)):
            if ex is not None and len(frames):
                self.feats[(name, side)].add(ex(frames), times)

    def window_holds_all(self, window) -> bool:
        return all(len(f.select(window)) == len(f.select(None)) for f in self.feats.values())

    def distances(self, window=None) -> dict:
        """FID/KID and corpus-FD/KID between the generated and reference features inside ``window``."""
        from eval.frechet import CORPUS_FD_LABEL, INCEPTION_LABEL, inception_fid_kid, set_distances

        out = {"fid": math.nan, "kid_mean": math.nan, "kid_std": math.nan, "n_frames": [0, 0],
               "feature_extractor": INCEPTION_LABEL if self.inception is not None else None,
               "fid_note": self.inception_note, "corpus_fd": math.nan, "corpus_kid_mean": math.nan,
               "corpus_kid_std": math.nan, "corpus_n_frames": [0, 0], "corpus_feature_extractor": CORPUS_FD_LABEL,
               "corpus_note": self.corpus_note}
        f = self.feats
        if self.inception is not None:
            r = inception_fid_kid(f[("inception", "gen")].select(window), f[("inception", "ref")].select(window),
                                     seed=self.seed)
            out.update(fid=r["fid"], kid_mean=r["kid_mean"], kid_std=r["kid_std"], n_frames=r["n_frames"],
                       fid_note=r["note"])
        if self.corpus is not None:
            r = set_distances(f[("corpus", "gen")].select(window), f[("corpus", "ref")].select(window),
                              label=CORPUS_FD_LABEL, seed=self.seed)
            out.update(corpus_fd=r["fd"], corpus_kid_mean=r["kid_mean"], corpus_kid_std=r["kid_std"],
                       corpus_n_frames=r["n_frames"], corpus_note=r["note"])
        return out
