"""The Evaluate tab's work: uploaded sets in, eval.score report out as table, charts and files.

The eval package (``eval.score.score_sets``) does the scoring and owns the metric definitions;
this module only enforces the clip-count limit, hands the uploads to ``eval`` (which opens zips
safely inside this request's own folder and removes them after scoring), forwards progress to
``gr.Progress``, and turns the ``Report`` into what the UI shows: a per-clip table (errors are rows,
not crashes), a summary, plotly charts and CSV/JSON downloads. When the standard FID weights are
absent, the report says so and this module puts that sentence above the table.

The app accepts exactly what ``python -m eval score`` accepts: any uploaded file goes to
``eval.sets``, which turns an unsupported type (a .png, a .txt) into that file's error row; only a
set that is unusable as a whole (an unreadable or unsafe zip, too many clips) refuses the request.
Rows name uploaded files by their own names, never by where the server keeps them.
"""

from __future__ import annotations

import logging
import math
import os

import pandas as pd

from app import limits
from app.runs import InputError
from eval.sets import SetError, count_media

log = logging.getLogger("mf.app")


def _paths(files) -> list[str]:
    if not files:
        return []
    if not isinstance(files, (list, tuple)):
        files = [files]
    out = []
    for f in files:
        p = getattr(f, "name", None) or getattr(f, "path", None) or (f.get("path") if isinstance(f, dict) else f)
        out.append(str(p))
    return out


def count_clips(paths: list[str], what: str) -> int:
    """Media files in the upload (inside zips too), refusing sets over the limit before decoding."""
    for p in paths:
        if not os.path.isfile(p):
            raise InputError(f"{what}: uploaded file {os.path.basename(p)} is missing on the server.")
    try:
        n = count_media(paths)
    except SetError as exc:
        raise InputError(f"{what}: {exc}") from None
    if n > limits.MAX_EVAL_CLIPS:
        raise InputError(f"{what}: {n} clips uploaded; the limit is {limits.MAX_EVAL_CLIPS} per set.")
    return n


def _rows(clips: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame([dict(c) for c in clips])
    for col in list(frame.columns):
        values = frame[col]
        # Arrays (sync curves and the like) belong in the JSON; all-empty columns are noise on screen.
        if values.map(lambda v: hasattr(v, "__len__") and not isinstance(v, str)).any():
            frame = frame.drop(columns=col)
        elif values.map(lambda v: v is None or v == "" or (isinstance(v, float) and math.isnan(v))).all():
            frame = frame.drop(columns=col)
    return frame.round(3)


def _notes(report) -> list[str]:
    """The summary's notes (e.g. why FID was skipped), one line each."""
    return [f"{k}: {v}" for k, v in report.summary.items() if "note" in k and v]


PLOT_FUNCTIONS = ("offset_histogram", "pesq_distribution", "window_metrics")


def _figures(eval_plots, report) -> list:
    """eval.plots' figures in a fixed order (None where a plot does not apply or failed)."""
    figs = []
    for name in PLOT_FUNCTIONS:
        fn = getattr(eval_plots, name, None) if eval_plots is not None else None
        try:
            figs.append(fn(report) if callable(fn) else None)
        except Exception as exc:  # noqa: BLE001 - one chart failing must not hide the table
            log.warning("eval.plots.%s failed: %s", name, exc)
            figs.append(None)
    return figs


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _grouped(summary: dict) -> tuple[dict, dict]:
    """Split "<metric>_median/_mean/_n" keys into per-metric rows; everything else stays scalar."""
    rows: dict = {}
    scalars: dict = {}
    for key, value in summary.items():
        for suffix in ("_median", "_mean", "_n"):
            if key.endswith(suffix) and not key.startswith("n_"):
                rows.setdefault(key[: -len(suffix)], {})[suffix[1:]] = value
                break
        else:
            scalars[key] = value
    # A metric nobody could score (n == 0) would only fill the table with nan.
    rows = {k: v for k, v in rows.items() if v.get("n", 1) and any(_finite(x) for x in v.values())}
    return rows, scalars


def summary_markdown(summary, n_gen: int, n_ref: int) -> str:
    """The set-level numbers a reader needs first: counts, per-metric median/mean (n), FID/KID, windows."""
    lines = [f"**{n_gen} generated** vs **{n_ref} reference** clips"]
    if not isinstance(summary, dict):
        return "\n\n".join(lines + [str(summary)]) if summary is not None else lines[0]
    rows, scalars = _grouped({k: v for k, v in summary.items() if k != "windows"})
    counts = [f"{k.replace('_', ' ')}: **{_fmt(scalars[k])}**" for k in ("n_clips", "n_errors") if k in scalars]
    if counts:
        lines[0] += " · " + " · ".join(counts)
    sets = [f"{k}: **{_fmt(v)}**" for k, v in scalars.items()
            if k not in ("n_clips", "n_errors", "frames_per_clip") and "note" not in k and _finite(v)]
    if sets:
        lines.append("Set-level: " + " · ".join(sets))
    if rows:
        table = ["| metric | median | mean | n |", "|---|---|---|---|"]
        table += [f"| {name} | {_fmt(r.get('median', ''))} | {_fmt(r.get('mean', ''))} | {_fmt(r.get('n', ''))} |"
                  for name, r in rows.items()]
        lines.append("\n".join(table))
    windows = [w for w in (summary.get("windows") or []) if isinstance(w, dict)]
    if windows:
        name_key = next((k for k in ("window", "name") if k in windows[0]), None)
        set_keys = ("fid", "kid_mean", "corpus_fd", "corpus_kid_mean")
        cols = [k for k in windows[0] if (k.endswith("_median") or k in set_keys)
                and any(_finite(w.get(k)) for w in windows)]
        table = ["**Per time window** (per-clip medians; set distances where scored)", "",
                 "| window | clips | " + " | ".join(c.removesuffix("_median") for c in cols) + " |",
                 "|---|---|" + "---|" * len(cols)]
        for w in windows:
            label = w.get(name_key) if name_key else f"{w.get('start')}-{w.get('end')}s"
            cells = " | ".join(_fmt(w.get(c)) for c in cols)
            table.append(f"| {label} | {_fmt(w.get('n_clips', ''))} | {cells} |")
        lines.append("\n".join(table))
    return "\n\n".join(lines)


def run_evaluation(score_sets, eval_plots, generated_files, reference_files, metrics, windows, out_dir, progress):
    gen, ref = _paths(generated_files), _paths(reference_files)
    if not gen:
        raise InputError("Upload the generated set first (a zip or several mp4 files).")
    metrics = list(metrics or [])
    if not metrics:
        raise InputError("Choose at least one metric.")
    n_gen = count_clips(gen, "Generated set")
    n_ref = count_clips(ref, "Reference set") if ref else 0
    needs_ref = [m for m in metrics if m != "sync"]
    if not ref and needs_ref:
        raise InputError(f"Metrics {', '.join(needs_ref)} compare against references: upload a reference set "
                         "too, or choose only sync.")

    def report_progress(done, total, desc):
        progress(float(done) / max(float(total), 1.0), desc=f"scored {done}/{total} clips ({desc})")

    progress(0.0, desc="reading uploads")
    try:
        # Weights are never fetched at request time (the report says when they are absent); zips are
        # extracted inside this request's folder and removed when scoring ends.
        report = score_sets(gen, ref or None, metrics=metrics, windows=str(windows or "").strip(),
                            progress=report_progress, allow_download=False, workers=limits.EVAL_WORKERS,
                            workdir=out_dir)
    except (SetError, ValueError) as exc:
        raise InputError(str(exc)) from None
    table = _rows(report.clips)
    csv_path = report.to_csv(os.path.join(out_dir, "eval-report.csv"))
    json_path = report.to_json(os.path.join(out_dir, "eval-report.json"))
    figures = _figures(eval_plots, report)
    notes = _notes(report)
    return (summary_markdown(report.summary, n_gen, n_ref), table, *figures, [csv_path, json_path],
            "\n\n".join(f"⚠ {n}" for n in notes) if notes else "")
