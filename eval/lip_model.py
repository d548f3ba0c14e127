"""The sync estimator's second opinion on real faces: a linear audio <-> lip-shape model (canonical correlation).

Owns ``LipModel`` (the fitted weights), ``fit_lip_model`` (from aligned, in-sync examples), ``project`` (a
clip's audio and lips onto the model's canonical directions), ``load_lip_model`` / ``save_lip_model`` and
``LIP_MODEL_PATH`` (the shipped fit, ``assets/eval/sync/lip_model.npz``, with its provenance in
``lip_model.json`` beside it). The fitting command is ``python -m eval.lip_fit``.

Why a second model. The first estimator (``eval.sync``, step 5) relates ONE visual number, the inner-lip gap,
to the audio, and fits its spectral part on the clip itself, so on a 3-5 s clip a chance peak can win with
nothing to contradict it. This model looks at the whole lip shape (``eval.landmarks.lip_geometry``: ten lip
gaps, two widths, the jaw drop, three lip heights) and is fitted ONCE, across many speakers, so it does not
adapt to a clip's noise. The two read a lag from different evidence; when their peaks are more than
``eval.sync.LIP_AGREE_FRAMES`` apart, the clip's offset is flagged ``models_disagree``.

Maths. Per frame n, the audio vector a_n stacks the clip's band-passed, standardised log-mel bands
(``eval.sync.spectral_bands``, B = 24) at frames n - K .. n + K (K = ``context``), so A = 24 x (2K + 1)
numbers; the lip vector l_n is the lip geometry band-passed like the opening and standardised over the
clip's voting frames (L = 16 numbers). Over the voting frames of all training clips, at lag 0,

    C_aa = A^T A / N + r I,   C_ll = L^T L / N + r I,   C_al = A^T L / N,
    M = C_aa^(-1/2) C_al C_ll^(-1/2) = U S V^T,
    audio_weights = C_aa^(-1/2) U[:, :c],  lip_weights = C_ll^(-1/2) V[:, :c]

(ridge-regularised CCA: the first c pairs of directions along which audio and lips correlate most, S their
canonical correlations). For a clip, ``project`` gives c audio signals and c lip signals; ``eval.sync``
correlates each pair at every lag and averages the c curves. The model has no notion of lag: the context
window is symmetric, and the fit sees only in-sync frames, so a systematic lead of the lips over the sound
(they open before the voice starts) is learned from the data rather than assumed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

LIP_MODEL_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "assets", "eval", "sync", "lip_model.npz")
CONTEXT = 3  # audio frames either side of the lip frame (+-120 ms at 25 fps)
N_COMPONENTS = 2  # canonical pairs whose lag curves are averaged
RIDGE = 0.1  # added to the diagonal of both (standardised) covariance matrices


class LipModelError(RuntimeError):
    """The lip model asset is absent or unreadable (the message names the file, never a server path)."""


@dataclass(frozen=True)
class LipModel:
    audio_weights: np.ndarray  # float [n_bands * (2 * context + 1), n_components]
    lip_weights: np.ndarray  # float [n_lip_features, n_components]
    canonical_corr: np.ndarray  # float [n_components], on the training frames
    context: int
    n_frames: int  # voting frames the fit saw

    @property
    def n_bands(self) -> int:
        return self.audio_weights.shape[0] // (2 * self.context + 1)


def stack_context(bands: np.ndarray, context: int) -> np.ndarray:
    """float [T, B] -> [T, B * (2 context + 1)]: frame n's row holds frames n - context .. n + context
    (zeros beyond the clip's ends)."""
    t = len(bands)
    padded = np.pad(bands, ((context, context), (0, 0)))
    return np.concatenate([padded[i: i + t] for i in range(2 * context + 1)], axis=1)


def standardise(lips: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Each lip feature minus its mean over the voting frames, divided by its standard deviation there."""
    ref = lips[votes] if votes.any() else lips
    return (lips - ref.mean(axis=0)) / (ref.std(axis=0) + 1e-9)


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    w, u = np.linalg.eigh(c)
    return (u / np.sqrt(np.maximum(w, 1e-12))) @ u.T


def fit_lip_model(examples, context: int = CONTEXT, n_components: int = N_COMPONENTS,
                  ridge: float = RIDGE) -> LipModel:
    """Ridge-regularised CCA over in-sync examples (see the module docstring).

    ``examples``: iterable of (bands_bp float [T, B], lips_bp float [T, L], votes bool [T]) per clip, the
    audio and lip signals of the SAME frames (offset 0). Only voting frames enter the covariances.
    """
    a_rows, l_rows = [], []
    for bands, lips, votes in examples:
        votes = np.asarray(votes, bool)
        a_rows.append(stack_context(np.asarray(bands, np.float64), context)[votes])
        l_rows.append(standardise(np.asarray(lips, np.float64), votes)[votes])
    if not a_rows or sum(len(a) for a in a_rows) < 10 * n_components:
        raise ValueError("too few voting frames to fit the lip model")
    a, lip = np.concatenate(a_rows), np.concatenate(l_rows)
    n = len(a)
    c_aa = a.T @ a / n + ridge * np.eye(a.shape[1])
    c_ll = lip.T @ lip / n + ridge * np.eye(lip.shape[1])
    k_a, k_l = _inv_sqrt(c_aa), _inv_sqrt(c_ll)
    u, s, vt = np.linalg.svd(k_a @ (a.T @ lip / n) @ k_l)
    return LipModel(k_a @ u[:, :n_components], k_l @ vt.T[:, :n_components], s[:n_components].copy(),
                    int(context), int(n))


def project(model: LipModel, bands_bp: np.ndarray, lips_bp: np.ndarray,
            votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(audio signals, lip signals), each float [T, n_components]: the clip on the model's canonical directions."""
    if bands_bp.shape[1] != model.n_bands or lips_bp.shape[1] != model.lip_weights.shape[0]:
        raise ValueError(f"lip model expects {model.n_bands} bands and {model.lip_weights.shape[0]} lip features, "
                         f"got {bands_bp.shape[1]} and {lips_bp.shape[1]}")
    return (stack_context(bands_bp, model.context) @ model.audio_weights,
            standardise(lips_bp, np.asarray(votes, bool)) @ model.lip_weights)


def save_lip_model(model: LipModel, path: str | os.PathLike, provenance: dict) -> None:
    """Write ``path`` (.npz, the weights) and ``path`` with .json (``provenance`` plus the fit's numbers)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, audio_weights=model.audio_weights.astype(np.float32),
             lip_weights=model.lip_weights.astype(np.float32),
             canonical_corr=model.canonical_corr.astype(np.float32),
             context=np.int64(model.context), n_frames=np.int64(model.n_frames))
    info = {**provenance, "context": model.context, "n_components": int(model.canonical_corr.size),
            "n_frames": model.n_frames, "canonical_corr": [round(float(c), 4) for c in model.canonical_corr]}
    with open(os.path.splitext(path)[0] + ".json", "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")


@lru_cache(maxsize=4)
def load_lip_model(path: str = LIP_MODEL_PATH) -> LipModel:
    """The fitted model at ``path`` (default: the shipped one), loaded once per path. LipModelError when the
    file is absent or is not a lip model."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise LipModelError(f"sync lip model missing: assets/eval/sync/{name} (refit: python -m eval.lip_fit)")
    try:
        with np.load(path) as z:
            return LipModel(z["audio_weights"].astype(np.float64), z["lip_weights"].astype(np.float64),
                            z["canonical_corr"].astype(np.float64), int(z["context"]), int(z["n_frames"]))
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise LipModelError(f"sync lip model unreadable: {name} ({type(exc).__name__})") from None
