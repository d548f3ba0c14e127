"""Score a generated set against a reference set: per-clip rows, set-level summary, per-window metrics.

What this module owns: the loop that reads every pair once (through ``mf.media``), runs the per-clip
metrics (sync from ``eval.sync``, PESQ/STOI from ``eval.audio_metrics``), extracts frame features for
the set-level distances (``eval.frechet``), turns every failure into an error row naming the file,
and aggregates it all into a ``Report`` (JSON / CSV).

Per clip (one row): sync offset/confidence/flag (generated clip alone, no reference needed),
PESQ wb/nb and STOI/ESTOI (needs the reference), and the same per time window as ``<metric>@a-bs``.
Per set: FID + KID (standard Inception, when its weights are available; otherwise NaN and a
``fid_note`` naming the file and where to put it) and corpus-FD + KID (the project's offline
extractor, always labelled "corpus-FD (not standard FID)"), overall and per window, each with the
number of frames it used.

Frame subsampling for the set-level distances: ``frames_per_clip`` evenly spaced frames per clip,
by default ``min(16, max(2, 200 // n_clips))`` (so 50 clips use 4 frames each = 200 frames per set).
Why so few: Inception-v3 costs 0.12 s per frame on an idle 2-core CPU (project brief) and 0.35-1.4 s
measured on the shared, loaded box, and 50 clips x 5 s, all metrics, should fit in 3 minutes. FID at 200 frames is
strongly biased upward: compare FIDs only at equal N, read KID beside it, and raise
``frames_per_clip`` (``--frames-per-clip``) when time allows. Windows use the sampled frames that
fall inside them.

Bad inputs become error rows and the rest go on: unpaired names, unreadable/corrupt files, a video
without a sound track (when an audio metric is requested), silent audio, clips shorter than
``MIN_CLIP_SECONDS``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from eval.audio_metrics import SILENCE_PEAK, pesq_pair, stoi_pair
from eval.sets import ClipSet, ErrorRow, load_set, pair_sets
from eval.windows import clip_window_samples, summarize_windows
from mf.constants import FPS, SAMPLE_RATE
from mf.media import MediaError, read_av

METRICS = ("sync", "pesq", "stoi", "fid", "kid")
DEFAULT_WINDOWS = ((0.0, 5.0), (5.0, 15.0), (15.0, 25.0))
MIN_CLIP_SECONDS = 1.0  # shorter clips carry too little for sync (25 frames) or PESQ
MIN_WINDOW_SECONDS = 1.0  # a window needs at least this much of the clip to be scored
MAX_CLIP_SECONDS = 60.0  # decode cap per file (memory: frames are held at full resolution)
MAX_FRAMES_PER_CLIP = 16
WHOLE_CLIP_SLACK = 0.1  # seconds
FRAME_BUDGET_PER_SET = 200
CLIP_KEYS = ("name", "file", "sync_offset_frames", "sync_offset_ms", "sync_confidence", "sync_prominence",
             "sync_flag", "sync_uncertain", "pesq_wb", "pesq_nb", "stoi", "estoi", "note", "error")
# Per-clip numbers that get per-window versions and medians/means in the summary.
WINDOW_KEYS = ("sync_offset_ms", "sync_confidence", "pesq_wb", "pesq_nb", "stoi", "estoi")


def parse_windows(text: str) -> tuple[tuple[float, float], ...]:
    """'0-5,5-15,15-25' -> ((0, 5), (5, 15), (15, 25)); '' -> no windows."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            a, b = (float(x) for x in part.split("-"))
        except ValueError:
            raise ValueError(f"bad window '{part}': expected start-end in seconds, e.g. 0-5") from None
        if not (0 <= a < b):
            raise ValueError(f"bad window '{part}': need 0 <= start < end")
        out.append((a, b))
    return tuple(out)


def window_name(w) -> str:
    return f"{w[0]:g}-{w[1]:g}s"


def _nan_row(name: str, file: str, error: str = "") -> dict:
    row = {k: math.nan for k in CLIP_KEYS}
    row.update(name=name, file=file, sync_flag="", note="", error=error)
    return row


def _clean(x):
    """JSON-safe: NaN/inf -> None, numpy scalars -> python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


@dataclass
class Report:
    clips: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def error_rows(self) -> list[dict]:
        return [r for r in self.clips if r.get("error")]

    def to_dict(self) -> dict:
        return _clean({"clips": self.clips, "summary": self.summary})

    def to_json(self, path: str | os.PathLike) -> str:
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)
        return os.fspath(path)

    def to_csv(self, path: str | os.PathLike) -> str:
        """One row per clip (errors included); window columns after the main ones."""
        keys = list(CLIP_KEYS)
        for row in self.clips:
            keys += [k for k in row if k not in keys]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            for row in self.clips:
                w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                            for k, v in ((k, row.get(k)) for k in keys)})
        return os.fspath(path)


class _Progress:
    """Accepts a tqdm-like object (has .update) or a callable(done, total, desc) or None."""

    def __init__(self, progress, total: int):
        self.p, self.total, self.done = progress, total, 0
        if self.p is not None and hasattr(self.p, "update") and hasattr(self.p, "total"):
            self.p.total = total
            if hasattr(self.p, "refresh"):
                self.p.refresh()

    def step(self, desc: str) -> None:
        self.done += 1
        if self.p is None:
            return
        if hasattr(self.p, "update") and hasattr(self.p, "total"):
            if hasattr(self.p, "set_description"):
                self.p.set_description(desc)
            self.p.update(1)
        else:
            self.p(self.done, self.total, desc)


def _sync_fn():
    try:
        from eval.sync import estimate_sync
    except ImportError as exc:
        return None, f"sync unavailable: eval.sync cannot be imported ({exc})"
    return estimate_sync, ""


def _sync_fields(estimate_sync, frames, audio):
    """Sync columns of a row. An uncertain estimate (eval.sync: any flag) gives no offset (NaN) and
    sync_uncertain True, with the reason in sync_flag; confidence and prominence are kept as evidence."""
    res = estimate_sync(frames, FPS, audio, SAMPLE_RATE)
    uncertain = bool(res.uncertain)
    measured = math.isfinite(float(res.confidence)) and not uncertain
    return {"sync_offset_frames": int(res.offset_frames) if measured else math.nan,
            "sync_offset_ms": float(res.offset_ms) if measured else math.nan,
            "sync_confidence": float(res.confidence), "sync_prominence": float(res.prominence),
            "sync_flag": res.flag or "", "sync_uncertain": uncertain}


@contextmanager
def _timed(timings: dict, key: str):
    """Adds the wall time of the block to timings[key] (summary["timings_s"]: where the time goes)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] += time.perf_counter() - t0


def _sample_indices(n_frames: int, k: int) -> np.ndarray:
    if n_frames <= k:
        return np.arange(n_frames)
    return np.unique(np.round(np.linspace(0, n_frames - 1, k)).astype(int))


class _FrameFeatures:
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


def _read(entry, *, need_video: bool, need_audio: bool):
    """Read one file; returns (clip, error message)."""
    if entry.kind == "audio" and need_video:
        need_video = False
    try:
        clip = read_av(entry.path, FPS, SAMPLE_RATE, need_video=need_video, need_audio=need_audio,
                       max_seconds=MAX_CLIP_SECONDS)
    except MediaError as exc:
        return None, f"{entry.display}: {exc.kind}: {exc.reason}"
    if clip.duration < MIN_CLIP_SECONDS:
        return None, f"{entry.display}: too short ({clip.duration:.2f} s < {MIN_CLIP_SECONDS:g} s)"
    if need_audio and clip.audio is not None and (clip.audio.size == 0 or np.max(np.abs(clip.audio)) < SILENCE_PEAK):
        return None, f"{entry.display}: silent audio (peak below {SILENCE_PEAK:g})"
    return clip, ""


def _audio_metrics(metrics, ref_audio, gen_audio, timings) -> tuple[dict, list[str]]:
    out, notes = {}, []
    if "pesq" in metrics:
        with _timed(timings, "pesq"):
            p = pesq_pair(ref_audio, gen_audio, SAMPLE_RATE)
        out.update(pesq_wb=p["pesq_wb"], pesq_nb=p["pesq_nb"])
        if p["note"]:
            notes.append(f"pesq: {p['note']}")
    if "stoi" in metrics:
        with _timed(timings, "stoi"):
            s = stoi_pair(ref_audio, gen_audio, SAMPLE_RATE)
        out.update(stoi=s["stoi"], estoi=s["estoi"])
        if s["note"]:
            notes.append(f"stoi: {s['note']}")
    return out, notes


def _load_extractors(metrics, inception_weights, allow_download):
    """(inception extractor | None, its note, corpus extractor | None, its note)."""
    from eval.features import FeaturesUnavailable, load_extractor
    from eval.frechet import InceptionExtractor, InceptionUnavailable

    if not ({"fid", "kid"} & set(metrics)):
        return None, "", None, ""
    inc, inc_note, corp, corp_note = None, "", None, ""
    try:
        inc = InceptionExtractor(inception_weights, allow_download=allow_download)
    except InceptionUnavailable as exc:
        inc_note = str(exc)
    try:
        corp = load_extractor()
    except FeaturesUnavailable as exc:
        corp_note = str(exc)
    return inc, inc_note, corp, corp_note


def _as_set(x) -> tuple[ClipSet | None, bool]:
    if x is None:
        return None, False
    if isinstance(x, ClipSet):
        return x, False
    return load_set(x), True


def score_sets(generated, reference=None, metrics=METRICS, windows=DEFAULT_WINDOWS, progress=None, *,
               inception_weights=None, allow_download: bool = True, frames_per_clip: int | None = None,
               seed: int = 0) -> Report:
    """Score ``generated`` (against ``reference`` for pesq/stoi/fid/kid) -> ``Report``.

    ``generated``/``reference``: a zip / folder / file path, a list of them, or a ``ClipSet``.
    ``metrics``: any of "sync", "pesq", "stoi", "fid", "kid". ``windows``: ((start, end) seconds, ...)
    or "0-5,5-15". ``progress``: tqdm-like object or callable(done, total, desc).
    Raises ``eval.sets.SetError`` only when a whole set is unusable (missing, unsafe zip).
    """
    metrics = tuple(m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    windows = parse_windows(windows) if isinstance(windows, str) else tuple((float(a), float(b)) for a, b in windows)
    needs_ref = [m for m in metrics if m != "sync"]
    gen_set, own_gen = _as_set(generated)
    ref_set, own_ref = (None, False)
    try:
        ref_set, own_ref = _as_set(reference)
        if needs_ref and ref_set is None:
            raise ValueError(f"metrics {', '.join(needs_ref)} need a reference set (only sync scores a generated set alone)")
        return _score(gen_set, ref_set, metrics, windows, progress, inception_weights, allow_download, frames_per_clip, seed)
    finally:
        if own_gen:
            gen_set.cleanup()
        if own_ref and ref_set is not None:
            ref_set.cleanup()


def _score(gen_set, ref_set, metrics, windows, progress, inception_weights, allow_download, frames_per_clip, seed):
    from eval.frechet import CORPUS_FD_LABEL, INCEPTION_LABEL, set_distances, torchmetrics_fid_kid

    pairs, pair_errors = pair_sets(gen_set, ref_set)
    error_rows: list[ErrorRow] = list(gen_set.errors) + (list(ref_set.errors) if ref_set else []) + pair_errors
    audio_needed = bool({"sync", "pesq", "stoi"} & set(metrics))
    video_metrics = bool({"fid", "kid"} & set(metrics))
    timings = defaultdict(float)
    t_start = time.perf_counter()
    with _timed(timings, "setup"):
        estimate_sync, sync_note = _sync_fn() if "sync" in metrics else (None, "")
        inc, inc_note, corp, corp_note = _load_extractors(metrics, inception_weights, allow_download)
    k = frames_per_clip or min(MAX_FRAMES_PER_CLIP, max(2, FRAME_BUDGET_PER_SET // max(1, len(pairs))))
    feats = {(ex, side): _FrameFeatures() for ex in ("inception", "corpus") for side in ("gen", "ref")}
    prog = _Progress(progress, len(pairs))
    rows, window_samples = [], []
    for pair in pairs:
        g = pair.generated
        row = _nan_row(pair.name, g.display)
        notes = [sync_note] if sync_note else []
        with _timed(timings, "read"):
            gen, err = _read(g, need_video=("sync" in metrics or video_metrics), need_audio=audio_needed)
        ref = None
        if not err and pair.reference is not None and (needs := [m for m in metrics if m != "sync"]):
            with _timed(timings, "read"):
                ref, err = _read(pair.reference, need_video=video_metrics, need_audio=bool({"pesq", "stoi"} & set(needs)))
        if err:
            row["error"] = err
            rows.append(row)
            prog.step(pair.name)
            continue
        try:
            _score_clip(row, notes, gen, ref, metrics, windows, estimate_sync, timings)
            for side, clip in (("gen", gen), ("ref", ref)):
                if clip is None or clip.frames is None or not video_metrics:
                    continue
                idx = _sample_indices(clip.n_frames, k)
                times = (idx + 0.5) / FPS
                for name, ex in (("inception", inc), ("corpus", corp)):
                    if ex is not None:
                        with _timed(timings, f"features_{name}"):
                            feats[(name, side)].add(ex(clip.frames[idx]), times)
            if windows and video_metrics and corp is not None and gen.frames is not None:  # eval.windows (issue 12)
                with _timed(timings, "windows"):
                    window_samples.append(clip_window_samples(row, gen, ref, windows, corp, inc, per_window=k))
        except Exception as exc:  # one bad clip must not stop the set; the row says what happened
            row["error"] = f"{g.display}: scoring failed ({exc.__class__.__name__}: {exc})"
        row["note"] = "; ".join(n for n in notes if n)
        rows.append(row)
        prog.step(pair.name)
    rows += [_nan_row(e.name, e.file, e.error) for e in error_rows]
    rows.sort(key=lambda r: (r["name"], r["error"] != ""))

    good = [r for r in rows if not r["error"]]
    summary = {"n_clips": len(good), "n_errors": len(rows) - len(good), "metrics": list(metrics),
               "frames_per_clip": k if video_metrics else 0}
    for key in WINDOW_KEYS:
        summary.update(_agg(key, good))
    if "sync" in metrics:
        summary["sync_abs_offset_ms_mean"] = _mean([abs(r["sync_offset_ms"]) for r in good])
    t_set = time.perf_counter()
    if video_metrics:
        summary.update(_set_metrics(feats, None, inc, inc_note, corp, corp_note, seed,
                                    set_distances, torchmetrics_fid_kid, INCEPTION_LABEL, CORPUS_FD_LABEL))
    summary["windows"] = []
    for w in windows:
        wn = window_name(w)
        entry = {"window": wn, "start": w[0], "end": w[1],
                 "n_clips": sum(1 for r in good if _finite(r.get(f"sync_offset_ms@{wn}")) or _finite(r.get(f"pesq_wb@{wn}"))
                                or _finite(r.get(f"stoi@{wn}")))}
        for key in WINDOW_KEYS:
            entry.update(_agg(key, good, suffix=f"@{wn}", out_key=key))
        if video_metrics:
            if all(len(f.select(w)) == len(f.select(None)) for f in feats.values()):
                # The window holds every sampled frame (e.g. 5 s clips, window 0-5): same numbers as the
                # whole set; an Inception FID costs a 2048x2048 eigendecomposition, so do not repeat it.
                entry.update({k: summary[k] for k in _SET_KEYS if k in summary})
            else:
                entry.update(_set_metrics(feats, w, inc, inc_note, corp, corp_note, seed,
                                          set_distances, torchmetrics_fid_kid, INCEPTION_LABEL, CORPUS_FD_LABEL))
        summary["windows"].append(entry)
    if window_samples:  # equal-N corpus-FD / FID, identity drift, sync per window (eval.windows)
        for entry, equal_n in zip(summary["windows"], summarize_windows(windows, window_samples, seed=seed)):
            entry.update(equal_n)
    timings["set_distances"] = time.perf_counter() - t_set
    timings["total"] = time.perf_counter() - t_start
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return Report(rows, summary)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _mean(vals) -> float:
    vals = [v for v in vals if _finite(v)]
    return float(np.mean(vals)) if vals else math.nan


def _agg(key, rows, suffix="", out_key=None) -> dict:
    vals = [r.get(key + suffix) for r in rows]
    vals = [v for v in vals if _finite(v)]
    out_key = out_key or key
    return {f"{out_key}_median": float(np.median(vals)) if vals else math.nan,
            f"{out_key}_mean": float(np.mean(vals)) if vals else math.nan, f"{out_key}_n": len(vals)}


_SET_KEYS = ("fid", "kid_mean", "kid_std", "n_frames", "feature_extractor", "fid_note", "corpus_fd", "corpus_kid_mean",
             "corpus_kid_std", "corpus_n_frames", "corpus_feature_extractor", "corpus_note")


def _set_metrics(feats, window, inc, inc_note, corp, corp_note, seed, set_distances, fid_kid, inc_label, corp_label):
    out = {"fid": math.nan, "kid_mean": math.nan, "kid_std": math.nan, "n_frames": [0, 0],
           "feature_extractor": inc_label if inc is not None else None, "fid_note": inc_note,
           "corpus_fd": math.nan, "corpus_kid_mean": math.nan, "corpus_kid_std": math.nan,
           "corpus_n_frames": [0, 0], "corpus_feature_extractor": corp_label, "corpus_note": corp_note}
    if inc is not None:
        r = fid_kid(feats[("inception", "gen")].select(window), feats[("inception", "ref")].select(window), seed=seed)
        out.update(fid=r["fid"], kid_mean=r["kid_mean"], kid_std=r["kid_std"], n_frames=r["n_frames"], fid_note=r["note"])
    if corp is not None:
        r = set_distances(feats[("corpus", "gen")].select(window), feats[("corpus", "ref")].select(window),
                          label=corp_label, seed=seed)
        out.update(corpus_fd=r["fd"], corpus_kid_mean=r["kid_mean"], corpus_kid_std=r["kid_std"],
                   corpus_n_frames=r["n_frames"], corpus_note=r["note"])
    return out


def _score_clip(row, notes, gen, ref, metrics, windows, estimate_sync, timings):
    """Fill the per-clip and per-window metrics of one pair into ``row``."""
    if "sync" in metrics and estimate_sync is not None:
        if gen.frames is None:
            notes.append("sync: audio-only file")
        else:
            with _timed(timings, "sync"):
                row.update(_sync_fields(estimate_sync, gen.frames, gen.audio))
    if ref is not None and ref.audio is not None and gen.audio is not None:
        vals, n = _audio_metrics(metrics, ref.audio, gen.audio, timings)
        row.update(vals)
        notes += n
    for w in windows:
        wn = window_name(w)
        if gen.duration < w[0] + MIN_WINDOW_SECONDS:
            continue  # the clip does not reach this window: its window columns stay empty
        # A window that covers the whole clip (within WHOLE_CLIP_SLACK: AAC padding makes a 5 s clip
        # last 5.02 s) has the clip's numbers; no recomputation.
        whole = w[0] <= 0 and w[1] >= gen.duration - WHOLE_CLIP_SLACK and (ref is None or w[1] >= ref.duration - WHOLE_CLIP_SLACK)
        if whole:
            for key in WINDOW_KEYS:
                if _finite(row.get(key)):
                    row[f"{key}@{wn}"] = row[key]
            continue
        if "sync" in metrics and estimate_sync is not None and gen.frames is not None:
            f0, f1 = int(w[0] * FPS), int(w[1] * FPS)
            s0, s1 = int(w[0] * SAMPLE_RATE), int(w[1] * SAMPLE_RATE)
            with _timed(timings, "sync"):
                res = _sync_fields(estimate_sync, gen.frames[f0:f1], gen.audio[s0:s1])
            row[f"sync_offset_ms@{wn}"] = res["sync_offset_ms"]
            row[f"sync_confidence@{wn}"] = res["sync_confidence"]
        if ref is not None and ref.audio is not None and gen.audio is not None:
            s0, s1 = int(w[0] * SAMPLE_RATE), int(w[1] * SAMPLE_RATE)
            vals, _ = _audio_metrics(metrics, ref.audio[s0:s1], gen.audio[s0:s1], timings)
            for key, v in vals.items():
                row[f"{key}@{wn}"] = v
