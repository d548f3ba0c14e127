"""Score a generated set against a reference set: per-clip rows, set-level summary, per-window metrics.

What this module owns: the scoring of one pair (``score_pair``: read both files through
``mf.media``, check them, run sync from ``eval.sync`` and PESQ/STOI from ``eval.audio_metrics``, sample
frames for the set distances), the loop that streams every pair of a set through crash-isolated
worker processes (``eval.isolation``), and the ``Report`` it builds (``eval.report``; set distances
from ``eval.set_metrics``). Every failure becomes an error row naming the file; the rest go on.

Per clip (one row): sync offset/confidence/flag (generated clip alone, no reference needed),
PESQ wb/nb and STOI/ESTOI (needs the reference), and the same per time window as ``<metric>@a-bs``.
Per set: FID + KID (standard Inception, when its weights are available; otherwise NaN and a
``fid_note`` naming the file and where to put it) and corpus-FD + KID (the project's offline
extractor, always labelled "corpus-FD (not standard FID)"), overall and per window, each with the
number of frames it used.

Isolation and large sets: each pair is scored in a worker process (``workers`` of them, default 1),
so a C library that crashes on one upload (PESQ segfaults on references of ~4 minutes) costs that
file an error row ("the worker process crashed (SIGSEGV)"), and a pair that runs past
``CLIP_TIMEOUT_S`` is stopped the same way. Pairs are streamed: the parent holds the rows, the
sampled frames' features and at most ``workers`` pairs in flight, so memory does not grow with the
number of clips beyond the rows themselves. ``summary["timings_s"]`` sums per-pair stages over all
workers (so with 2 workers they may add up to twice ``total``, the wall time).

No silent wrong scores: the checks of ``eval.checks`` (decode cap on every decoder path, truncated
files, generated/reference length mismatch scored on the overlap only, validated windows) and of
``eval.audio_metrics`` (audio below 16 kHz gets PESQ-wb NaN) each leave a note in the row or make it an
error row; sync, which needs no reference, uses the whole generated clip.

Frame subsampling for the set-level distances: ``frames_per_clip`` evenly spaced frames per clip,
by default ``min(16, max(2, 200 // n_clips))`` (so 50 clips use 4 frames each = 200 frames per set).
Why so few: Inception-v3 costs 0.12 s per frame on an idle 2-core CPU (project brief) and 0.35-1.4 s
measured on the shared, loaded box, and 50 clips x 5 s, all metrics, should fit in 3 minutes. FID at 200
frames is strongly biased upward: compare FIDs only at equal N, read KID beside it, and raise
``frames_per_clip`` (``--frames-per-clip``) when time allows. Windows use the sampled frames that
fall inside them.

Test hook: ``MF_EVAL_TEST_FAULT=<clip name>:<abort|segv>`` makes the worker that scores that clip die
the named way (tests of the isolation; nothing else reads it).
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from eval.audio_metrics import SILENCE_PEAK, pesq_pair, stoi_pair
from eval.checks import MAX_CLIP_SECONDS, MIN_WINDOW_SECONDS, check_windows, length_note, overlap, parse_windows
from eval.isolation import Done, WorkerPool
from eval.report import Report, finite, per_clip_summary, scrub_paths, window_name
from eval.set_metrics import SET_KEYS, SetExtractors, sample_indices
from eval.sets import ClipSet, SetEntry, load_set, pair_sets
from eval.windows import clip_window_frames, summarize_windows, window_samples
from mf.constants import FPS, SAMPLE_RATE
from mf.media import MediaError, read_av

__all__ = ["METRICS", "Report", "ScoreOptions", "parse_windows", "check_windows", "score_sets", "score_pair",
           "window_name"]

METRICS = ("sync", "pesq", "stoi", "fid", "kid")
DEFAULT_WINDOWS = ((0.0, 5.0), (5.0, 15.0), (15.0, 25.0))
MIN_CLIP_SECONDS = 1.0  # shorter clips carry too little for sync (25 frames) or PESQ
CLIP_TIMEOUT_S = 600.0  # one pair, both files, all metrics (a fresh worker's imports included)
MAX_FRAMES_PER_CLIP = 16
WHOLE_CLIP_SLACK = 0.1  # seconds
FRAME_BUDGET_PER_SET = 200
FAULT_ENV = "MF_EVAL_TEST_FAULT"
CLIP_KEYS = ("name", "file", "sync_offset_frames", "sync_offset_ms", "sync_confidence", "sync_prominence",
             "sync_lip_offset_ms", "sync_flag", "sync_uncertain", "pesq_wb", "pesq_nb", "stoi", "estoi", "note",
             "error")
# Per-clip numbers that get per-window versions and medians/means in the summary.
WINDOW_KEYS = ("sync_offset_ms", "sync_confidence", "pesq_wb", "pesq_nb", "stoi", "estoi")


def _nan_row(name: str, file: str, error: str = "") -> dict:
    row = {k: math.nan for k in CLIP_KEYS}
    row.update(name=name, file=file, sync_flag="", note="", error=error)
    return row


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


# Said on every real-face row that carries an offset: what the held-out real clips showed (issue 16).
REAL_FACE_SYNC_NOTE = ("sync on a real face (landmarks): on held-out real clips, imposed shifts read wrong without a "
                       "flag on 1% of lab footage and 43% of web footage, where it reads -40..-280 ms "
                       "(docs/measurements/sync_fresh_split.md); confirm with SyncNet LSE-C/D")


def _sync_fields(estimate_sync, frames, audio, notes: list | None = None):
    """Sync columns of a row. An uncertain estimate (eval.sync: any flag) gives no offset (NaN) and
    sync_uncertain True, with the reason in sync_flag; confidence and prominence are kept as evidence.
    ``notes``: a measured offset on a real face (``localizer == "face-mesh"``) adds REAL_FACE_SYNC_NOTE."""
    res = estimate_sync(frames, FPS, audio, SAMPLE_RATE)
    uncertain = bool(res.uncertain)
    measured = math.isfinite(float(res.confidence)) and not uncertain
    if notes is not None and measured and res.localizer == "face-mesh":
        notes.append(REAL_FACE_SYNC_NOTE)
    return {"sync_offset_frames": int(res.offset_frames) if measured else math.nan,
            "sync_offset_ms": float(res.offset_ms) if measured else math.nan,
            "sync_confidence": float(res.confidence), "sync_prominence": float(res.prominence),
            # evidence, like confidence: the lip-shape model's own lag (real faces only; eval.sync step 6)
            "sync_lip_offset_ms": (res.extras["lip_model_offset_frames"] * 1000.0 / res.fps
                                   if "lip_model_offset_frames" in res.extras else math.nan),
            "sync_flag": res.flag or "", "sync_uncertain": uncertain}


@contextmanager
def _timed(timings: dict, key: str):
    """Adds the wall time of the block to timings[key] (summary["timings_s"]: where the time goes)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] += time.perf_counter() - t0


# ----------------------------------------------------------------------------- one pair (in a worker)
@dataclass(frozen=True)
class PairTask:
    """What a worker needs to score one pair."""

    name: str
    gen: SetEntry
    ref: SetEntry | None  # None: no reference metric requested (or sync-only scoring)
    metrics: tuple[str, ...]
    windows: tuple[tuple[float, float], ...]
    frames_per_clip: int  # frames sampled per clip for the set distances; 0 = none
    fault: str = ""  # the FAULT_ENV value (tests only)


@dataclass
class PairResult:
    row: dict
    samples: dict = field(default_factory=dict)  # "gen"/"ref" -> (frames uint8 [k, H, W, 3], times s)
    timings: dict = field(default_factory=dict)
    windows: dict = field(default_factory=dict)  # window name -> eval.windows.WindowFrames (fid/kid only)


def _inject_fault(task: PairTask) -> None:
    name, _, how = task.fault.partition(":")
    if name != task.name:
        return
    if how == "segv":
        import ctypes

        ctypes.string_at(0)  # a real segmentation fault, as a C library would cause
    os.abort()


def _read(entry: SetEntry, notes: list, *, need_video: bool, need_audio: bool):
    """Read one file; returns (clip, error message) and appends length notes to ``notes``."""
    if entry.kind == "audio" and need_video:
        need_video = False
    try:
        clip = read_av(entry.path, FPS, SAMPLE_RATE, need_video=need_video, need_audio=need_audio,
                       max_seconds=MAX_CLIP_SECONDS)
    except MediaError as exc:
        return None, f"{entry.display}: {exc.kind}: {exc.reason}"
    note = length_note(entry.display, clip)
    if clip.duration < MIN_CLIP_SECONDS:
        return None, f"{entry.display}: too short ({clip.duration:.2f} s < {MIN_CLIP_SECONDS:g} s)" + (
            f"; {note.split(': ', 1)[1]}" if note else "")
    if need_audio and clip.audio is not None and (clip.audio.size == 0 or np.max(np.abs(clip.audio)) < SILENCE_PEAK):
        return None, f"{entry.display}: silent audio (peak below {SILENCE_PEAK:g})"
    if note:
        notes.append(note)
    return clip, ""


def _audio_metrics(metrics, ref, gen, timings, s0=0, s1=None) -> tuple[dict, list[str]]:
    out, notes = {}, []
    ref_audio, gen_audio = ref.audio[s0:s1], gen.audio[s0:s1]
    rates = [r for r in (ref.source_sample_rate, gen.source_sample_rate) if r]
    if "pesq" in metrics:
        with _timed(timings, "pesq"):
            p = pesq_pair(ref_audio, gen_audio, SAMPLE_RATE, source_rate=min(rates) if rates else None)
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


def _span(w, duration: float) -> str:
    """How window ``w`` meets a clip of ``duration`` s: "out" (too little of it), "whole" or "part"."""
    if duration < w[0] + MIN_WINDOW_SECONDS:
        return "out"
    # A window that covers the whole clip (within WHOLE_CLIP_SLACK: AAC padding makes a 5 s clip last
    # 5.02 s) has the clip's numbers; no recomputation.
    return "whole" if w[0] <= 0 and w[1] >= duration - WHOLE_CLIP_SLACK else "part"


def _score_clip(row, notes, gen, pair, metrics, windows, estimate_sync, timings):
    """Fill the per-clip and per-window metrics into ``row``; ``pair`` = (gen, ref) on their overlap."""
    with_sync = "sync" in metrics and estimate_sync is not None
    if with_sync and gen.frames is None:
        notes.append("sync: audio-only file")
        with_sync = False
    if with_sync:
        with _timed(timings, "sync"):
            row.update(_sync_fields(estimate_sync, gen.frames, gen.audio, notes))
    g, r = pair
    with_audio = r is not None and r.audio is not None and g.audio is not None and bool({"pesq", "stoi"} & set(metrics))
    if with_audio:
        vals, n = _audio_metrics(metrics, r, g, timings)
        row.update(vals)
        notes += n
    for w in windows:
        wn = window_name(w)
        spans = {"sync": _span(w, gen.duration) if with_sync else "out",
                 "audio": _span(w, max(g.duration, r.duration)) if with_audio else "out"}
        for key in WINDOW_KEYS:
            family = "sync" if key.startswith("sync") else "audio"
            if spans[family] == "whole" and finite(row.get(key)):
                row[f"{key}@{wn}"] = row[key]
        if spans["sync"] == "part":
            f0, f1 = int(w[0] * FPS), int(w[1] * FPS)
            s0, s1 = int(w[0] * SAMPLE_RATE), int(w[1] * SAMPLE_RATE)
            with _timed(timings, "sync"):
                res = _sync_fields(estimate_sync, gen.frames[f0:f1], gen.audio[s0:s1])
            row[f"sync_offset_ms@{wn}"] = res["sync_offset_ms"]
            row[f"sync_confidence@{wn}"] = res["sync_confidence"]
        if spans["audio"] == "part":
            vals, _ = _audio_metrics(metrics, r, g, timings, int(w[0] * SAMPLE_RATE), int(w[1] * SAMPLE_RATE))
            for key, v in vals.items():
                row[f"{key}@{wn}"] = v


def _samples(clip, k: int):
    idx = sample_indices(clip.n_frames, k)
    return np.ascontiguousarray(clip.frames[idx]), (idx + 0.5) / FPS


def score_pair(task: PairTask) -> PairResult:
    """Score one pair (runs in a worker process): the row, the frames sampled for set distances, timings."""
    if task.fault:
        _inject_fault(task)
    metrics, timings, notes = task.metrics, defaultdict(float), []
    row = _nan_row(task.name, task.gen.display)
    video_metrics = task.frames_per_clip > 0
    ref_audio = bool({"pesq", "stoi"} & set(metrics))
    with _timed(timings, "read"):
        gen, err = _read(task.gen, notes, need_video=("sync" in metrics or video_metrics),
                         need_audio=bool({"sync"} & set(metrics)) or ref_audio)
        ref = None
        if not err and task.ref is not None:
            ref, err = _read(task.ref, notes, need_video=video_metrics, need_audio=ref_audio)
    if err:
        row["error"] = err
        return PairResult(row, {}, dict(timings))
    estimate_sync, sync_note = _sync_fn() if "sync" in metrics else (None, "")
    notes += [sync_note] if sync_note else []
    samples, windows = {}, {}
    try:
        pair = overlap(gen, ref, metrics, notes) if ref is not None else (gen, None)
        _score_clip(row, notes, gen, pair, metrics, task.windows, estimate_sync, timings)
        if video_metrics:
            samples = {side: _samples(clip, task.frames_per_clip) for side, clip in zip(("gen", "ref"), pair)
                       if clip is not None and clip.frames is not None}
            if task.windows and gen.frames is not None:
                windows = clip_window_frames(row, gen, ref, task.windows, per_window=task.frames_per_clip)
    except Exception as exc:  # noqa: BLE001 - one bad clip must not stop the set; the row says what happened
        row["error"] = f"{task.gen.display}: scoring failed ({exc.__class__.__name__}: {exc})"
    row["note"] = "; ".join(n for n in notes if n)
    return PairResult(row, samples, dict(timings), windows)


# ----------------------------------------------------------------------------- the set (in the caller)
@dataclass
class ScoreOptions:
    """Everything ``score_sets`` decides once for a whole set."""

    metrics: tuple[str, ...] = METRICS
    windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS
    frames_per_clip: int | None = None  # None: min(16, max(2, 200 // n_clips))
    inception_weights: str | None = None
    allow_download: bool = True
    seed: int = 0
    workers: int = 1

    def __post_init__(self):
        m = self.metrics
        self.metrics = tuple(x.strip().lower() for x in (m.split(",") if isinstance(m, str) else m) if x.strip())
        unknown = [x for x in self.metrics if x not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
        self.windows = parse_windows(self.windows) if isinstance(self.windows, str) else check_windows(self.windows)
        if int(self.workers) < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    @property
    def reference_metrics(self) -> list[str]:
        return [m for m in self.metrics if m != "sync"]

    @property
    def video_metrics(self) -> bool:
        return bool({"fid", "kid"} & set(self.metrics))


def _as_set(x, workdir) -> tuple[ClipSet | None, bool]:
    if x is None:
        return None, False
    if isinstance(x, ClipSet):
        return x, False
    return load_set(x, workdir=workdir), True


def score_sets(generated, reference=None, metrics=METRICS, windows=DEFAULT_WINDOWS, progress=None, *,
               inception_weights=None, allow_download: bool = True, frames_per_clip: int | None = None,
               seed: int = 0, workers: int = 1, workdir: str | None = None) -> Report:
    """Score ``generated`` (against ``reference`` for pesq/stoi/fid/kid) -> ``Report``.

    ``generated``/``reference``: a zip / folder / file path, a list of them, or a ``ClipSet``.
    ``metrics``: any of "sync", "pesq", "stoi", "fid", "kid". ``windows``: ((start, end) seconds, ...)
    or "0-5,5-15" (validated, see ``check_windows``). ``progress``: tqdm-like object or
    callable(done, total, desc), called as each pair finishes. ``workers``: pairs scored at once, each
    in its own process. ``workdir``: where zips are extracted (removed before returning).
    Raises ``ValueError`` for bad options and ``eval.sets.SetError`` only when a whole set is unusable
    (missing, unsafe zip).
    """
    opts = ScoreOptions(metrics, windows, frames_per_clip, inception_weights, allow_download, seed, int(workers))
    gen_set, own_gen = _as_set(generated, workdir)
    ref_set, own_ref = (None, False)
    try:
        ref_set, own_ref = _as_set(reference, workdir)
        if opts.reference_metrics and ref_set is None:
            raise ValueError(f"metrics {', '.join(opts.reference_metrics)} need a reference set "
                             "(only sync scores a generated set alone)")
        return _score(gen_set, ref_set, opts, progress)
    finally:
        if own_gen:
            gen_set.cleanup()
        if own_ref and ref_set is not None:
            ref_set.cleanup()


def _score(gen_set: ClipSet, ref_set: ClipSet | None, opts: ScoreOptions, progress) -> Report:
    pairs, pair_errors = pair_sets(gen_set, ref_set)
    error_rows = list(gen_set.errors) + (list(ref_set.errors) if ref_set else []) + pair_errors
    timings = defaultdict(float)
    t_start = time.perf_counter()
    with _timed(timings, "setup"):
        ex = SetExtractors.load(opts.inception_weights, opts.allow_download, opts.seed) if opts.video_metrics else None
    k = opts.frames_per_clip or min(MAX_FRAMES_PER_CLIP, max(2, FRAME_BUDGET_PER_SET // max(1, len(pairs))))
    fault = os.environ.get(FAULT_ENV, "")
    tasks = ((i, PairTask(p.name, p.generated, p.reference if opts.reference_metrics else None, opts.metrics,
                          opts.windows, k if opts.video_metrics else 0, fault)) for i, p in enumerate(pairs))
    prog = _Progress(progress, len(pairs))
    rows, per_window = [], []
    with WorkerPool("eval.score:score_pair", min(opts.workers, max(1, len(pairs))), timeout_s=CLIP_TIMEOUT_S) as pool:
        for res in pool.map(tasks):
            pair = pairs[res.key]
            if isinstance(res, Done):
                rows.append(res.value.row)
                for key, v in res.value.timings.items():
                    timings[key] += v
                for side, (frames, times) in res.value.samples.items():
                    with _timed(timings, "features"):
                        ex.add(side, frames, times)
                if res.value.windows and ex.corpus is not None:  # equal-N per-window measures (eval.windows)
                    with _timed(timings, "windows"):
                        per_window.append(window_samples(res.value.windows, ex.corpus, ex.inception))
            else:
                g, r = pair.generated, pair.reference
                who = g.display + (f" (reference {r.display})" if r is not None and opts.reference_metrics else "")
                rows.append(_nan_row(pair.name, g.display, f"{who}: scoring failed: {res.reason}; "
                                                           "the other clips were scored"))
            prog.step(pair.name)
    rows += [_nan_row(e.name, e.file, e.error) for e in error_rows]
    known = {e.path: e.display for s in (gen_set, ref_set) if s is not None for e in s.entries.values()}
    for row in rows:
        row["error"], row["note"] = scrub_paths(row["error"], known), scrub_paths(row["note"], known)
    rows.sort(key=lambda r: (r["name"], r["error"] != ""))

    good = [r for r in rows if not r["error"]]
    summary = {"n_clips": len(good), "n_errors": len(rows) - len(good), "metrics": list(opts.metrics),
               "frames_per_clip": k if opts.video_metrics else 0, "workers": opts.workers}
    summary.update(per_clip_summary(good, WINDOW_KEYS, opts.windows, "sync" in opts.metrics))
    t_set = time.perf_counter()
    if ex is not None:
        summary.update(ex.distances(None))
        for w, entry in zip(opts.windows, summary["windows"]):
            # A window holding every sampled frame (e.g. 5 s clips, window 0-5) has the whole set's numbers;
            # an Inception FID costs a 2048x2048 eigendecomposition, so do not repeat it.
            entry.update({key: summary[key] for key in SET_KEYS} if ex.window_holds_all(w) else ex.distances(w))
        if per_window:  # equal-N corpus-FD / FID, identity drift, sync per window (eval.windows)
            for entry, equal_n in zip(summary["windows"],
                                      summarize_windows(opts.windows, per_window, seed=opts.seed)):
                entry.update(equal_n)
    timings["set_distances"] = time.perf_counter() - t_set
    timings["total"] = time.perf_counter() - t_start
    summary["timings_s"] = {key: round(v, 3) for key, v in timings.items()}
    return Report(rows, summary, CLIP_KEYS)
