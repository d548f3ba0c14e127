"""Per-window set-level metrics at EQUAL frame counts: the body of ``summary.windows``.

Owns ``WindowSample`` (one clip's measurements inside one time window), ``window_frame_indices``
(which frames of a clip a window samples), ``summarize_windows`` (clips x windows -> one dict per
window) and ``write_windows_csv``. Used by ``eval.score`` (``python -m eval score --windows``) and by
``eval.long_horizon``; it reads no files and generates nothing.

Why equal counts: a Fréchet distance computed from N frames is biased upward by roughly
tr(S) / N-ish terms, so two windows compared at different N (e.g. 16 frames per clip in a short window,
40 in a long one) disagree on "drift" by sampling alone. Here every window's generated and real frame
sets are subsampled (seeded, without replacement) to the SAME N = ``frames_per_window`` or, by
default, the smallest count any window offers. When N < 2 x the feature size the entry carries a
``warning`` (the distance is then dominated by the bias; compare only at equal N, read KID beside it).

Per window (``summarize_windows`` output entry; ``frames_per_window`` = N, ``corpus_n_frames`` = [N, N],
``n_frames`` = the Inception sets' [N, N]):
- ``corpus_fd``, ``corpus_kid_mean``, ``corpus_kid_std``: generated vs real, on the project's offline
  extractor (``eval.features``; "corpus-FD (not standard FID)"), N frames per side;
- ``fid``, ``kid_mean``, ``kid_std``: the same with Inception features when the caller has them
  (``eval.frechet.inception_fid_kid``), else NaN;
- ``identity_gen_mean`` / ``identity_ref_mean`` / ``identity_ratio``: ``eval.identity`` drift (mean
  feature distance of a window's frames to the clip's reference frame), averaged over clips, for the
  generated and the real clips, and generated / real;
- ``sync_abs_offset_ms_median`` and ``sync_within_40ms_frac``: over clips with a measured offset in
  that window (``sync_n`` of them).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import numpy as np

from eval.identity import drift_ratio
from eval.report import window_name

SYNC_TOLERANCE_MS = 40.0
CSV_KEYS = ("window", "start", "end", "n_clips", "frames_per_window", "corpus_fd", "corpus_kid_mean", "corpus_kid_std",
            "fid", "kid_mean", "kid_std", "identity_gen_mean", "identity_ref_mean", "identity_ratio",
            "sync_abs_offset_ms_median", "sync_within_40ms_frac", "sync_n", "warning")


@dataclass
class WindowSample:
    """One clip's measurements inside one window (any field may be missing: None / NaN)."""

    gen_features: np.ndarray | None = None    # corpus features [n, D] of generated frames in the window
    ref_features: np.ndarray | None = None    # the same for the real clip
    gen_inception: np.ndarray | None = None   # Inception features (FID/KID), when available
    ref_inception: np.ndarray | None = None
    gen_identity: float = math.nan            # mean feature distance to the reference frame (eval.identity)
    ref_identity: float = math.nan
    sync_offset_ms: float = math.nan          # sync offset of the generated clip inside the window


def window_frame_indices(window, n_frames: int, fps: float, per_window: int | None = None) -> np.ndarray:
    """Frame indices of a clip of ``n_frames`` that lie in ``[start, end)`` seconds (frame i at i / fps);
    ``per_window`` evenly spaced ones among them when given (all of them otherwise)."""
    first = math.ceil(window[0] * fps - 1e-9)
    stop = min(n_frames, math.ceil(window[1] * fps - 1e-9))
    idx = np.arange(first, max(first, stop))
    if per_window is not None and len(idx) > per_window:
        idx = idx[np.unique(np.round(np.linspace(0, len(idx) - 1, per_window)).astype(int))]
    return idx


@dataclass
class WindowFrames:
    """The frames one clip contributes to one window (picked in the scoring worker; plain arrays, so
    they cross the process boundary): ``per_window`` evenly spaced generated and real frames, the
    clip's anchor frame for identity drift, and the window's sync offset."""

    gen_frames: np.ndarray
    ref_frames: np.ndarray | None
    anchor: np.ndarray
    sync_offset_ms: float = math.nan


def clip_window_frames(row: dict, gen, ref, windows, *, per_window: int = 16, fps: float = 25.0) -> dict:
    """For each window the clip reaches (at least a second of it): ``per_window`` evenly spaced frames
    of the generated clip ``gen`` and of the reference clip ``ref`` (``mf.media.AVClip``; ref may be
    None), the anchor of identity drift (frame 0 of the real clip, or of the generated clip when there
    is no real one) and the window's sync offset already in ``row`` (``sync_offset_ms@<window>``, or
    the clip's own offset when the window covers the whole clip)."""
    anchor = (ref if ref is not None and ref.frames is not None else gen).frames[0]
    out = {}
    for w in windows:
        name = window_name(w)
        if len(window_frame_indices(w, len(gen.frames), fps)) < fps:
            continue
        offset = float(row.get(f"sync_offset_ms@{name}", math.nan))
        if not math.isfinite(offset) and w[0] <= 0 and w[1] * fps >= len(gen.frames):
            offset = float(row.get("sync_offset_ms", math.nan))
        ref_frames = None
        if ref is not None and ref.frames is not None:
            ri = window_frame_indices(w, len(ref.frames), fps, per_window)
            ref_frames = ref.frames[ri] if len(ri) else None
        out[name] = WindowFrames(gen.frames[window_frame_indices(w, len(gen.frames), fps, per_window)], ref_frames,
                                 anchor, offset)
    return out


def window_samples(frames: dict, corpus_extractor, inception_extractor=None) -> dict:
    """``summarize_windows``' per-clip input from ``clip_window_frames``' output: features of each
    window's frames and the identity drift of both sides against the anchor."""
    from eval.identity import feature_distances

    out = {}
    for name, wf in frames.items():
        anchor_feat = corpus_extractor(wf.anchor[None])[0]
        sample = WindowSample(sync_offset_ms=wf.sync_offset_ms)
        sample.gen_features = corpus_extractor(wf.gen_frames)
        sample.gen_identity = float(feature_distances(sample.gen_features, anchor_feat).mean())
        if inception_extractor is not None:
            sample.gen_inception = inception_extractor(wf.gen_frames)
        if wf.ref_frames is not None:
            sample.ref_features = corpus_extractor(wf.ref_frames)
            sample.ref_identity = float(feature_distances(sample.ref_features, anchor_feat).mean())
            if inception_extractor is not None:
                sample.ref_inception = inception_extractor(wf.ref_frames)
        out[name] = sample
    return out


def _pool(samples, name: str, field: str) -> np.ndarray | None:
    parts = [getattr(s[name], field) for s in samples if name in s and getattr(s[name], field) is not None]
    parts = [np.asarray(p, np.float64) for p in parts if len(p)]
    return np.concatenate(parts) if parts else None


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) == n else x[np.sort(rng.choice(len(x), size=n, replace=False))]


def _equal_n(pools: dict, requested: int | None) -> int:
    """N for every window: ``requested``, or the smallest side of any window that has both sides."""
    if requested is not None:
        return int(requested)
    sizes = [min(len(g), len(r)) for g, r in pools.values() if g is not None and r is not None]
    return min(sizes) if sizes else 0


def _distances(pools: dict, name: str, n: int, seed: int, index: int, compute) -> tuple[dict | None, str]:
    gen, ref = pools[name]
    if gen is None or ref is None:
        return None, ""
    if n < 2 or len(gen) < n or len(ref) < n:
        return None, f"{name}: {len(gen)} generated / {len(ref)} real frames, fewer than the N = {n} of every window"
    rng = np.random.default_rng([int(seed), index])
    return compute(_subsample(gen, n, rng), _subsample(ref, n, rng)), ""


def _mean(values) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def summarize_windows(windows, samples: list[dict], *, frames_per_window: int | None = None, seed: int = 0,
                      fid_kid=None) -> list[dict]:
    """One dict per window (see the module docstring), from ``samples``: one dict per clip mapping
    ``window_name(w)`` -> ``WindowSample`` (a clip that does not reach a window leaves it out).

    ``frames_per_window``: N for the corpus-FD of every window (default: the smallest count available).
    ``fid_kid``: callable(gen [N, D], ref [N, D], seed=) -> dict(fid, kid_mean, kid_std) for Inception
    features (default ``eval.frechet.inception_fid_kid``); used only when Inception features exist.
    """
    from eval.frechet import CORPUS_FD_LABEL, set_distances

    names = [window_name(w) for w in windows]
    corpus = {n: (_pool(samples, n, "gen_features"), _pool(samples, n, "ref_features")) for n in names}
    incep = {n: (_pool(samples, n, "gen_inception"), _pool(samples, n, "ref_inception")) for n in names}
    n_corpus = _equal_n(corpus, frames_per_window)
    n_incep = _equal_n(incep, None)
    out = []
    for i, (w, name) in enumerate(zip(windows, names)):
        present = [s[name] for s in samples if name in s]
        entry = {"window": name, "start": float(w[0]), "end": float(w[1]), "n_clips": len(present),
                 "frames_per_window": n_corpus, "corpus_n_frames": [n_corpus, n_corpus], "corpus_fd": math.nan,
                 "corpus_kid_mean": math.nan, "corpus_kid_std": math.nan, "corpus_feature_extractor": CORPUS_FD_LABEL,
                 "fid": math.nan, "kid_mean": math.nan, "kid_std": math.nan, "n_frames": [n_incep, n_incep]}
        notes = []
        r, note = _distances(corpus, name, n_corpus, seed, i,
                             lambda a, b: set_distances(a, b, label=CORPUS_FD_LABEL, seed=seed))
        if r is not None:
            entry.update(corpus_fd=r["fd"], corpus_kid_mean=r["kid_mean"], corpus_kid_std=r["kid_std"])
            dim = corpus[name][0].shape[1]
            if n_corpus < 2 * dim:
                notes.append(f"N = {n_corpus} frames per window < 2 x the feature size ({dim}): FD is biased "
                             "upward; compare windows only at this equal N and read KID beside it")
        notes += [note] if note else []
        if incep[name][0] is not None:
            if fid_kid is None:
                from eval.frechet import inception_fid_kid as fid_kid
            r, note = _distances(incep, name, n_incep, seed, i, lambda a, b: fid_kid(a, b, seed=seed))
            if r is not None:
                entry.update(fid=r["fid"], kid_mean=r["kid_mean"], kid_std=r["kid_std"])
            notes += [note] if note else []
        gen_id = _mean(s.gen_identity for s in present)
        ref_id = _mean(s.ref_identity for s in present)
        entry.update(identity_gen_mean=gen_id, identity_ref_mean=ref_id, identity_ratio=drift_ratio(gen_id, ref_id))
        offsets = np.array([abs(float(s.sync_offset_ms)) for s in present if math.isfinite(float(s.sync_offset_ms))])
        entry.update(sync_abs_offset_ms_median=float(np.median(offsets)) if offsets.size else math.nan,
                     sync_within_40ms_frac=float(np.mean(offsets <= SYNC_TOLERANCE_MS)) if offsets.size else math.nan,
                     sync_n=int(offsets.size))
        entry["warning"] = "; ".join(notes)
        out.append(entry)
    return out


def write_windows_csv(entries: list[dict], path: str | os.PathLike) -> str:
    """One row per window (the ``CSV_KEYS`` columns; empty where a value is missing)."""
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CSV_KEYS), extrasaction="ignore")
        w.writeheader()
        for e in entries:
            w.writerow({k: ("" if e.get(k) is None or (isinstance(e.get(k), float) and math.isnan(e[k])) else e[k])
                        for k in CSV_KEYS})
    return os.fspath(path)


__all__ = [
    "SYNC_TOLERANCE_MS",
    "WindowSample",
    "clip_window_frames",
    "window_samples",
    "WindowFrames",
    "summarize_windows",
    "window_frame_indices",
    "window_name",
    "write_windows_csv",
]
