"""Set-level distribution distances over frames: Fréchet distance and KID, on any features.

What this module owns:

* ``frechet_distance`` (Gaussian statistics or raw features) and ``kernel_distance`` (KID: unbiased
  polynomial-kernel MMD^2 averaged over random subsets), both plain numpy/scipy, seeded.
* Standard FID/KID: torch-fidelity's TF-ported Inception-v3 (pool3, 2048-d) as wrapped by
  torchmetrics (``NoTrainInceptionV3``) with the TF-compatible bilinear resize (``antialias=False``),
  the way published FIDs are computed; FID by ``frechet_distance`` and KID by ``kernel_distance`` on
  those features (``inception_fid_kid``): the estimators of torchmetrics' FrechetInceptionDistance and
  KernelInceptionDistance, verified equal in the tests, computed without their D x D eigvals and with
  the KID kernel computed once rather than per subset. The weights are never bundled: ``eval.weights``
  takes them from an explicit path, ``$MF_INCEPTION_WEIGHTS``, ``$TORCH_HOME/hub/checkpoints`` (torch's
  cache), or downloads them once (size- and sha256-checked) when the machine is online and downloads
  are not turned off. When absent, ``InceptionUnavailable`` says which file to put where, and callers
  report FID/KID as skipped instead of crashing.
* ``corpus_frechet``: the same two distances over the project's own offline extractor
  (``eval.features``), labelled "corpus-FD (not standard FID)": numbers are comparable only with
  other corpus-FD numbers, never with published FIDs.

Fréchet distance between N(mu1, S1) and N(mu2, S2) is |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).
We evaluate tr((S1 S2)^(1/2)) as the sum of square roots of the eigenvalues of the symmetric PSD
matrix S1^(1/2) S2 S1^(1/2) (same eigenvalues as S1 S2), via ``scipy.linalg.eigh``: with few samples
the covariances are singular and the general ``sqrtm(S1 S2)`` goes complex or non-finite, whereas the
symmetric form stays real and exact (tiny negative eigenvalues from rounding are clipped to 0).
"""

from __future__ import annotations

import math
import os

import numpy as np
import scipy.linalg

from eval.weights import WEIGHTS, WeightsUnavailable, ensure_weights, fetching_message, is_fetching

CORPUS_FD_LABEL = "corpus-FD (not standard FID)"
INCEPTION_LABEL = "FID/KID (Inception-v3 pool3, torch-fidelity weights, TF resize)"
# torch-fidelity's cache name (what torch.hub writes) first, then pytorch-fid's name for the same
# bytes, which people often already have in their torch cache.
INCEPTION_FILENAMES = (WEIGHTS["inception"].filename, *WEIGHTS["inception"].aliases)
INCEPTION_ENV = WEIGHTS["inception"].env
# KID as in the KID paper / torchmetrics: subsets of up to 1000 samples, 100 subsets.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


# ----------------------------------------------------------------------------- generic distances
def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of features [N, D] (N >= 2)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    # Eigenvalues within rounding of zero (singular covariances: fewer samples than dims) are zero;
    # left as +-1e-14 their square roots would add up to a visible bias (~1e-5 for 128 dims).
    tol = w.size * np.finfo(np.float64).eps * max(1.0, float(np.max(np.abs(w))) if w.size else 1.0)
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = scipy.linalg.eigh((a + a.T) / 2.0)
    return (v * np.sqrt(_clip_eigenvalues(w))) @ v.T


def _frechet_of_few_samples(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of feature sets with fewer samples than dimensions, without any D x D matrix.

    With centred, scaled samples A [Na, D] and B [Nb, D] (S1 = A^T A, S2 = B^T B), the non-zero
    eigenvalues of S1 S2 are those of (A B^T)(A B^T)^T, so tr sqrt(S1 S2) is the sum of the singular
    values of the small matrix A B^T [Na, Nb]. Same number as the D x D route (tested); for 200
    Inception frames per set it costs milliseconds instead of a minute of 2048 x 2048 eigensolvers.
    """
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca = (a - mu_a) / math.sqrt(a.shape[0] - 1)
    cb = (b - mu_b) / math.sqrt(b.shape[0] - 1)
    tr_a, tr_b = float(np.sum(ca * ca)), float(np.sum(cb * cb))
    sv = scipy.linalg.svdvals(ca @ cb.T)
    diff = mu_a - mu_b
    fd = float(diff @ diff + tr_a + tr_b - 2.0 * float(np.sum(sv)))
    return 0.0 if fd < 0 and fd > -1e-9 * max(1.0, tr_a + tr_b) else fd


def frechet_distance(mu1, sigma1, mu2=None, sigma2=None) -> float:
    """Fréchet distance of two Gaussians, or of two feature sets when called as ``(feat_a, feat_b)``."""
    if mu2 is None and sigma2 is None:
        a, b = np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64)
        if (a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1] and min(len(a), len(b)) >= 2
                and max(len(a), len(b)) <= a.shape[1] and np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            return _frechet_of_few_samples(a, b)
        (mu1, sigma1), (mu2, sigma2) = gaussian_stats(mu1), gaussian_stats(sigma1)
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    if not all(np.all(np.isfinite(x)) for x in (s1, s2, mu1, mu2)):
        raise ValueError("statistics contain NaN or infinity")
    r1 = _psd_sqrt(s1)
    middle = r1 @ s2 @ r1
    eig = scipy.linalg.eigvalsh((middle + middle.T) / 2.0)
    tr_covmean = float(np.sum(np.sqrt(_clip_eigenvalues(eig))))
    diff = mu1 - mu2
    fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    # Rounding can leave -1e-12 for identical sets; a distance is never negative.
    scale = max(1.0, float(np.trace(s1) + np.trace(s2)))
    return 0.0 if fd < 0 and fd > -1e-9 * scale else fd


def _poly_kernel(a: np.ndarray, b: np.ndarray, degree: int, gamma: float, coef: float) -> np.ndarray:
    """k(x, y) = (gamma x.y + coef)^degree for all pairs."""
    base = gamma * (a @ b.T) + coef
    out = base.copy()
    for _ in range(degree - 1):  # repeated products: ~10x faster than np.power on big arrays
        out *= base
    return out


def _mmd2_from_grams(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2 from the three Gram matrices of one subset pair (equal sizes m)."""
    m = kxx.shape[0]
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2.0 * kxy.sum() / (m * m))


# Above this many samples per set the full Gram matrices (n^2 float64 each) are not cached.
_GRAM_CACHE_MAX = 4000


def kernel_distance(feat_a, feat_b, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                    degree: int = 3, gamma: float | None = None, coef: float = 1.0,
                    seed: int = 0) -> tuple[float, float]:
    """KID: (mean, std) of unbiased polynomial-kernel MMD^2 over random equal-size subsets.

    Same estimator as torchmetrics' ``KernelInceptionDistance`` (tests check they agree). The subset
    size is ``min(subset_size, len(a), len(b))`` so small sets still give a number; ``gamma`` defaults
    to 1 / D as in the KID paper. The kernel is evaluated once on the full sets and subsets index into
    it (100 subsets of 2048-d Inception features would otherwise cost ~100x the matrix products).
    """
    a, b = np.asarray(feat_a, np.float64), np.asarray(feat_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need features [N, D] with one D, got {a.shape} and {b.shape}")
    na, nb = a.shape[0], b.shape[0]
    m = min(subset_size, na, nb)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {na} and {nb}")
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    if m == na == nb:
        subsets = 1  # every "subset" is the whole of both sets: repeats would give the same number
    rng = np.random.default_rng(seed)
    cached = max(na, nb) <= _GRAM_CACHE_MAX
    if cached:
        gaa, gbb, gab = (_poly_kernel(a, a, degree, gamma, coef), _poly_kernel(b, b, degree, gamma, coef),
                         _poly_kernel(a, b, degree, gamma, coef))
    scores = []
    for _ in range(subsets):
        ia, ib = rng.choice(na, m, replace=False), rng.choice(nb, m, replace=False)
        if cached:
            scores.append(_mmd2_from_grams(gaa[np.ix_(ia, ia)], gbb[np.ix_(ib, ib)], gab[np.ix_(ia, ib)]))
        else:
            x, y = a[ia], b[ib]
            kxx, kyy = _poly_kernel(x, x, degree, gamma, coef), _poly_kernel(y, y, degree, gamma, coef)
            scores.append(_mmd2_from_grams(kxx, kyy, _poly_kernel(x, y, degree, gamma, coef)))
    return float(np.mean(scores)), float(np.std(scores))


def set_distances(feat_a, feat_b, *, label: str, seed: int = 0) -> dict:
    """FD + KID of two feature sets, with n_frames and the extractor label (NaN when too few)."""
    a, b = np.asarray(feat_a, np.float64), np.asarray(feat_b, np.float64)
    out = {"fd": float("nan"), "kid_mean": float("nan"), "kid_std": float("nan"),
           "n_frames": [int(a.shape[0]), int(b.shape[0])], "feature_extractor": label, "note": ""}
    if a.shape[0] < 2 or b.shape[0] < 2:
        out["note"] = f"too few frames for a distance ({a.shape[0]} and {b.shape[0]}; need >= 2 each)"
        return out
    out["fd"] = frechet_distance(a, b)
    out["kid_mean"], out["kid_std"] = kernel_distance(a, b, seed=seed)
    if min(a.shape[0], b.shape[0]) < a.shape[1]:
        out["note"] = (f"fewer frames ({min(a.shape[0], b.shape[0])}) than feature dims ({a.shape[1]}): "
                       "FD is strongly biased upward; compare only at equal N and read KID beside it")
    return out


# ----------------------------------------------------------------------------- standard Inception FID
class InceptionUnavailable(RuntimeError):
    """The standard Inception weights are not on this machine (and cannot be downloaded)."""


def find_inception_weights(path: str | os.PathLike | None = None) -> str | None:
    """The weights file on this machine (explicit path, $MF_INCEPTION_WEIGHTS, torch hub cache) or None.

    Never downloads. A named path (argument or environment variable) that does not exist raises.
    """
    try:
        return ensure_weights("inception", path, allow_download=False)
    except WeightsUnavailable as exc:
        if exc.reason == "path":
            raise _unavailable(exc) from None
        return None


def missing_weights_message() -> str:
    import torch.hub

    spec = WEIGHTS["inception"]
    if is_fetching(spec):  # the app's background prefetch: say so rather than "not found"
        return f"FID/KID skipped: {fetching_message(spec)}."
    where = os.path.join(torch.hub.get_dir(), "checkpoints")
    return (f"FID/KID skipped: standard Inception weights not found (offline or downloads turned off). Put "
            f"{INCEPTION_FILENAMES[0]} (torch-fidelity v0.2.0 release, {spec.size / 1e6:.1f} MB) in {where} "
            f"(i.e. $TORCH_HOME/hub/checkpoints), or pass its path with --inception-weights / ${INCEPTION_ENV}; "
            "online it is downloaded once by itself unless --no-download or MF_NO_DOWNLOAD=1.")


def _unavailable(exc: WeightsUnavailable) -> InceptionUnavailable:
    """The user-facing reason: today's offline message, or what went wrong (checksum, fetching, path)."""
    if exc.reason in ("offline", "disabled"):
        return InceptionUnavailable(missing_weights_message())
    if exc.reason == "path":
        return InceptionUnavailable(f"Inception weights file not found: {exc.path}")
    return InceptionUnavailable(f"FID/KID skipped: {exc}.")


class InceptionExtractor:
    """torch-fidelity Inception-v3 pool3 (2048-d) through torchmetrics, TF-compatible resize."""

    label = INCEPTION_LABEL
    dim = 2048

    def __init__(self, weights_path: str | os.PathLike | None = None, *, allow_download: bool = True,
                 device: str = "cpu", batch_size: int = 32):
        try:  # path / $MF_INCEPTION_WEIGHTS / torch hub cache / verified download (eval.weights)
            found = ensure_weights("inception", weights_path, allow_download=False if not allow_download else None)
        except WeightsUnavailable as exc:
            raise _unavailable(exc) from None
        # Imported only now: importing torchmetrics costs seconds, wasted when the weights are absent.
        import torch
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=found, antialias=False)
        except (RuntimeError, KeyError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise InceptionUnavailable(
                f"cannot load Inception weights from {os.path.basename(found)}: {first}") from exc
        self.weights_path = found
        self.device = torch.device(device)
        self.net.to(self.device)
        self.batch_size = batch_size

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        import torch

        frames = np.asarray(frames)
        outs = []
        with torch.inference_mode():
            for i in range(0, len(frames), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(frames[i:i + self.batch_size])).permute(0, 3, 1, 2)
                outs.append(self.net(x.to(self.device)).double().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.dim))


def inception_fid_kid(feat_gen: np.ndarray, feat_ref: np.ndarray, *, seed: int = 0) -> dict:
    """Standard FID and KID of Inception features (ref = "real", gen = "fake"): the formulas of torchmetrics'
    FrechetInceptionDistance / KernelInceptionDistance (tests check they agree), computed by our own
    ``frechet_distance`` and ``kernel_distance``."""
    import torch

    g = torch.from_numpy(np.asarray(feat_gen, np.float64))
    r = torch.from_numpy(np.asarray(feat_ref, np.float64))
    out = {"fid": float("nan"), "kid_mean": float("nan"), "kid_std": float("nan"),
           "n_frames": [int(g.shape[0]), int(r.shape[0])], "feature_extractor": INCEPTION_LABEL, "note": ""}
    if g.shape[0] < 2 or r.shape[0] < 2:
        out["note"] = f"too few frames for FID ({g.shape[0]} and {r.shape[0]})"
        return out
    # The FID formula of torchmetrics' FrechetInceptionDistance (a test checks the two agree to 1e-6),
    # evaluated through the Na x Nb route when there are fewer frames than feature dimensions:
    # torchmetrics' 2048 x 2048 non-symmetric eigvals took ~1 min per call on this CPU.
    out["fid"] = frechet_distance(g.numpy(), r.numpy())
    # KID: the same unbiased estimator as torchmetrics' KernelInceptionDistance (a test checks they
    # agree), but with the kernel evaluated once instead of once per subset: on 2048-d features the
    # per-subset version costs minutes of CPU for 100 subsets.
    out["kid_mean"], out["kid_std"] = kernel_distance(g.numpy(), r.numpy(), seed=seed)
    return out


# ----------------------------------------------------------------------------- corpus-FD
def _as_frame_list(frames) -> list[np.ndarray]:
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [N, H, W, 3], got shape {frames.shape}")
        return list(frames)
    out = []
    for f in frames:
        f = np.asarray(f)
        if f.ndim == 4:
            out.extend(list(f))
        elif f.ndim == 3 and f.shape[-1] == 3:
            out.append(f)
        else:
            raise ValueError(f"each frame must be uint8 [H, W, 3] (or a clip [T, H, W, 3]), got shape {f.shape}")
    return out


def corpus_frechet(frames_a, frames_b, *, extractor=None, seed: int = 0) -> dict:
    """corpus-FD and KID of two frame sets with the project's offline extractor.

    ``frames_a``/``frames_b``: uint8 [N, H, W, 3] arrays or lists of frames/clips (any sizes; frames
    are resized by the extractor). Returns dict(fd, kid_mean, kid_std, n_frames=[n_a, n_b],
    feature_extractor="corpus-FD (not standard FID)", note).
    """
    from eval.features import load_extractor

    extractor = extractor or load_extractor()
    fa = extractor(_as_frame_list(frames_a))
    fb = extractor(_as_frame_list(frames_b))
    return set_distances(fa, fb, label=CORPUS_FD_LABEL, seed=seed)
