"""Identity drift: how far the frames of a clip wander from its reference frame, as a number.

Owns ``feature_distances``, ``identity_drift`` and ``drift_ratio``.

The measure, per frame i of a window:  ``|| f(frame_i) - f(reference) ||_2``,  where ``f`` is the
project's offline frame feature extractor (``eval.features``, 128-d, trained to read a character's
look and mouth shape) and ``reference`` is the clip's identity frame (for a generated clip: the frame
the generator was conditioned on; for a real clip of the same seed: the same frame). A window's
value is the mean over its frames.

A real talking character moves (mouth, blinks, head), so its own value is not zero: the number means
something only next to the same number for the real clip of the same seed and window. Smeared hair,
a lost fringe or generic eyes move the features away from the reference and raise the generated
value above the real one; a frozen face lowers it below. Report both and their ratio
(generated / real): 1.0 is "as far from the reference as the real clip", and the drift of a long
stream shows as the ratio growing from window to window.
"""

from __future__ import annotations

import math

import numpy as np


def feature_distances(features, reference) -> np.ndarray:
    """Euclidean distances [N] of feature rows [N, D] to one reference feature vector [D] (or [1, D])."""
    f = np.asarray(features, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64).reshape(-1)
    if f.ndim != 2 or f.shape[1] != r.shape[0]:
        raise ValueError(f"features must be [N, {r.shape[0]}] to match the reference, got shape {f.shape}")
    return np.sqrt(np.sum((f - r[None, :]) ** 2, axis=1))


def identity_drift(frames, reference_frame, *, extractor=None) -> np.ndarray:
    """Per-frame feature distance [N] of uint8 frames [N, H, W, 3] to ``reference_frame`` [H, W, 3].

    ``extractor``: frames -> features [N, D] (default: the shipped ``eval.features`` extractor).
    """
    if extractor is None:
        from eval.features import load_extractor
        extractor = load_extractor()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got shape {frames.shape}")
    ref = np.asarray(reference_frame)
    if ref.ndim != 3 or ref.shape[-1] != 3:
        raise ValueError(f"the reference frame must be uint8 [H, W, 3], got shape {ref.shape}")
    return feature_distances(extractor(frames), extractor(ref[None])[0])


def drift_ratio(generated: float, real: float) -> float:
    """generated / real identity drift; NaN when either is missing or the real value is 0."""
    if not (math.isfinite(generated) and math.isfinite(real)) or real <= 0:
        return math.nan
    return float(generated / real)


__all__ = ["drift_ratio", "feature_distances", "identity_drift"]
