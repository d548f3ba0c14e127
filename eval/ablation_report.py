"""The ablation's numbers from per-clip measurements: bootstrap intervals, the markdown table, the figure.

Owns ``bootstrap``, ``system_metrics``, ``markdown_table`` and ``figure``; reads no files and generates
nothing (``eval.ablation`` does both). The set metrics per window come from ``eval.windows.summarize_windows``
(equal-N corpus-FD / KID, sync median |offset| and fraction within 40 ms, identity ratio); this module adds
the audio Fréchet distance and model seconds per chunk and puts an interval on every number.

Intervals: B bootstrap replicates resample the CLIPS with replacement (a clip's generated and real
frames travel together) and recompute every metric on the replicate. A number is
``{"mean": bootstrap mean, "lo": 2.5th, "hi": 97.5th percentile, "point": value on all clips once, "n": clips}``.
"mean" is the replicates' mean (it lies inside its own interval; for a Fréchet distance it sits a little
above "point", because a resample with repeated clips is less diverse than the set): compare arms by
"mean" and the intervals, which carry the same bias for every arm at equal N.

Audio FD: Fréchet distance between the per-frame normalised log-mel vectors (``mf.codecs.AudioCodec.encode``,
the project's own audio features) of the generated and of the real clips in the window; the "real" row
(corpus vs corpus of other seeds) is its floor.
"""

from __future__ import annotations

import math

import numpy as np

from eval.windows import WindowSample, summarize_windows, window_name

METRICS = (  # json key, label, summarize_windows key (None: computed here)
    ("corpus_fd", "corpus-FD", "corpus_fd"),
    ("kid", "KID", "corpus_kid_mean"),
    ("sync_abs_ms", "sync median |offset| (ms)", "sync_abs_offset_ms_median"),
    ("sync_within_40ms", "sync within 40 ms", "sync_within_40ms_frac"),
    ("identity_ratio", "identity ratio", "identity_ratio"),
    ("audio_fd", "audio FD (log-mel)", None),
    ("model_s_per_chunk", "model s/chunk", None),
)


def bootstrap(values, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean and 95% percentile interval of the mean of per-clip ``values`` (NaNs dropped)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], np.float64)
    if x.size == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "point": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    reps = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return _interval(reps, float(x.mean()), int(x.size))


def _interval(reps, point: float, n: int) -> dict:
    reps = np.asarray([r for r in reps if math.isfinite(r)], np.float64)
    if reps.size == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "point": point, "n": n}
    return {"mean": float(reps.mean()), "lo": float(np.percentile(reps, 2.5)), "hi": float(np.percentile(reps, 97.5)),
            "point": point, "n": n}


def _key(window) -> str:
    return window_name(window)[:-1]  # "0-5s" -> "0-5"


def _metrics_once(gen: list[dict], ref: list[dict], idx, windows, n_frames) -> dict:
    """Every metric of every window on the clips ``idx`` (with repeats) -> {window key: {metric: value}}."""
    from eval.frechet import frechet_distance

    samples = [{name: WindowSample(gen_features=g["windows"][name]["features"],
                                   ref_features=r["windows"][name]["features"],
                                   gen_identity=g["windows"][name]["identity"],
                                   ref_identity=r["windows"][name]["identity"],
                                   sync_offset_ms=g["windows"][name]["sync_ms"])
                for name in g["windows"] if name in r["windows"]}
               for g, r in ((gen[i], ref[i]) for i in idx)]
    entries = summarize_windows(windows, samples, frames_per_window=n_frames)
    model_s = float(np.mean([gen[i]["model_s"] for i in idx]))
    out = {}
    for w, e in zip(windows, entries):
        name = window_name(w)
        row = {k: float(e[src]) for k, _, src in METRICS if src is not None}
        ga = [gen[i]["windows"][name]["audio"] for i in idx if name in gen[i]["windows"]]
        ra = [ref[i]["windows"][name]["audio"] for i in idx if name in ref[i]["windows"]]
        row["audio_fd"] = frechet_distance(np.concatenate(ga), np.concatenate(ra)) if len(ga) > 1 else math.nan
        row["model_s_per_chunk"] = model_s
        out[_key(w)] = row
    return out


def system_metrics(gen: list[dict], ref: list[dict], windows, *, n_boot: int = 200, seed: int = 0,
                   sets: list[list[int]] | None = None, max_frames: int = 256) -> dict:
    """{window key: {metric: interval}} for one system; ``gen[i]`` and ``ref[i]`` are the measurements of
    the same seed (``{"windows": {window name: {features, identity, sync_ms, audio}}, "model_s": s}``).
    ``sets``: clip indices of each seed set -> also ``"by_set"``: the point values per set.
    ``max_frames``: N of the set metrics (frames per window and side, the same everywhere): KID costs
    O(N^2) per replicate, so the default 256 (2x the 128-d corpus features) keeps B replicates affordable."""
    if len(gen) != len(ref) or len(gen) < 2:
        raise ValueError(f"need >= 2 paired clips, got {len(gen)} generated and {len(ref)} real")
    per_clip = min(len(c["windows"][window_name(w)]["features"]) for c in gen + ref for w in windows
                   if window_name(w) in c["windows"])
    n_frames = min(per_clip * len(gen), max_frames)  # one N for every window, the point and every replicate
    point = _metrics_once(gen, ref, range(len(gen)), windows, n_frames)
    rng = np.random.default_rng(seed)
    reps = [_metrics_once(gen, ref, rng.integers(0, len(gen), len(gen)), windows, n_frames) for _ in range(n_boot)]
    out = {w: {m: _interval([r[w][m] for r in reps], point[w][m], len(gen)) for m in point[w]} for w in point}
    if sets:
        out["by_set"] = [_metrics_once(gen, ref, s, windows, n_frames) for s in sets if len(s) >= 2]
    return out


def _fmt(v: dict, digits: int) -> str:
    m = v.get("mean") if isinstance(v, dict) else None
    if m is None or not math.isfinite(m):
        return "n/a"
    return f"{v['mean']:.{digits}f} [{v['lo']:.{digits}f}, {v['hi']:.{digits}f}]"


DIGITS = {"corpus_fd": 2, "kid": 4, "sync_abs_ms": 0, "sync_within_40ms": 2, "identity_ratio": 2, "audio_fd": 2,
          "model_s_per_chunk": 3}


def markdown_table(result: dict) -> str:
    """The markdown of a result JSON (``eval.ablation`` output): one table for the 2 s clips, one per window
    of the long clips; every cell "mean [lo, hi]" (bootstrap 95% over clips)."""
    lines = [f"Command: `{result['command']}`", "",
             f"Held-out seed sets: {'; '.join(f'{s[0]}..{s[-1]}' for s in result['seeds'])} "
             f"(floor row: real corpus of seeds {result['floor_seeds'][0]}..{result['floor_seeds'][-1]} vs the "
             "real clips); every cell: mean [95% bootstrap interval over clips]."]
    if result.get("missing"):
        lines += ["", "Missing arms (not in the table): " + "; ".join(f"{m['arm']}: {m['reason']}"
                                                                       for m in result["missing"])]
    if result.get("skipped"):
        lines += ["", "Left out of this run (`--skip`): " + ", ".join(result["skipped"])]
    metrics = [m for m in METRICS if m[0] != "identity_ratio"]
    head = "| arm | steps | " + " | ".join(label for _, label, _ in metrics) + " |"
    rule = "|---|---:|" + "---:|" * len(metrics)
    short_s, long_s = result.get("short_seconds", 2), result.get("long_seconds", 25)
    sections = ([(f"{short_s:g} s clips", "short", None)]
                + [(f"{long_s:g} s clips, {w} s", "windows", w) for w in result["windows"]])
    for title, part, w in sections:
        lines += ["", f"**{title}**", "", head, rule]
        for s in result["systems"]:
            cell = s[part] if w is None else s[part].get(w, {})
            lines.append(f"| {s['arm']} | {s['steps'] or '-'} | " + " | ".join(
                _fmt(cell.get(k, {}), DIGITS[k]) for k, _, _ in metrics) + " |")
    checks = floor_checks(result)
    if checks:
        lines += ["", "**Issue-13 floors (corpus-FD, long clips; `eval.ablation_report.floor_checks`)**", "",
                  "| floor | window (s) | status | measured: mean [95% interval] |", "|---|---|---|---|"]
        lines += [f"| {c['floor']} | {c['window']} | {c['status']} | {c['detail']} |" for c in checks]
    return "\n".join(lines)


def _system(result: dict, arm: str, steps: int) -> dict | None:
    return next((s for s in result["systems"] if s["arm"] == arm and s["steps"] == steps), None)


def _cell(system: dict | None, window: str, metric: str = "corpus_fd") -> dict | None:
    cell = (system or {}).get("windows", {}).get(window, {}).get(metric)
    ok = isinstance(cell, dict) and all(isinstance(cell.get(k), (int, float)) and math.isfinite(cell[k])
                                        for k in ("mean", "lo", "hi"))
    return cell if ok else None


def floor_checks(result: dict) -> list[dict]:
    """The issue-13 floors on corpus-FD of the long clips' windows, read from a result JSON:

    - F@4 beats B@4 by >= 30% in every window (mean ratio <= 0.7) with non-overlapping intervals;
    - F@4 beats C@4 and E@4 in the last window (15-25 s); an overlapping interval is said, not hidden;
    - F@4 is no worse than A@50 beyond the interval (F's mean <= A's upper bound), in every window.
    Each row: {"floor", "window", "status": PASS | FAIL | not measured, "detail"}."""
    f = _system(result, "F", 4)
    windows = list(result.get("windows", []))
    rows = []

    def add(floor, window, status, detail):
        rows.append({"floor": floor, "window": window, "status": status, "detail": detail})

    def fmt(c):
        return f"{c['mean']:.2f} [{c['lo']:.2f}, {c['hi']:.2f}]"

    for w in windows:
        a, b = _cell(f, w), _cell(_system(result, "B", 4), w)
        if a is None or b is None:
            add("F@4 beats B@4 by >= 30%, intervals apart", w, "not measured", "F@4 or B@4 absent")
        else:
            ratio = a["mean"] / b["mean"] if b["mean"] > 0 else math.inf
            ok = ratio <= 0.7 and a["hi"] < b["lo"]
            add("F@4 beats B@4 by >= 30%, intervals apart", w, "PASS" if ok else "FAIL",
                f"F@4 {fmt(a)} vs B@4 {fmt(b)}: ratio {ratio:.2f}, intervals "
                f"{'apart' if a['hi'] < b['lo'] else 'overlap'}")
    last = "15-25" if "15-25" in windows else None
    for other in ("C", "E"):
        a, o = (_cell(f, last), _cell(_system(result, other, 4), last)) if last else (None, None)
        if a is None or o is None:
            add(f"F@4 beats {other}@4 at 15-25 s", last or "15-25", "not measured",
                "no 15-25 s window in this run" if last is None else f"F@4 or {other}@4 absent")
        else:
            apart = a["hi"] < o["lo"]
            add(f"F@4 beats {other}@4 at 15-25 s", last, "PASS" if a["mean"] < o["mean"] else "FAIL",
                f"F@4 {fmt(a)} vs {other}@4 {fmt(o)}: intervals {'apart' if apart else 'OVERLAP'}")
    for w in windows:
        a, o = _cell(f, w), _cell(_system(result, "A", 50), w)
        if a is None or o is None:
            add("F@4 no worse than A@50 beyond the interval", w, "not measured", "F@4 or A@50 absent")
        else:
            add("F@4 no worse than A@50 beyond the interval", w, "PASS" if a["mean"] <= o["hi"] else "FAIL",
                f"F@4 {fmt(a)} vs A@50 {fmt(o)}")
    return rows


def figure(result: dict, metric: str = "corpus_fd"):
    """Plotly figure: ``metric`` vs time window of the long clips, one line per system, interval bands as
    error bars."""
    import plotly.graph_objects as go

    label = dict((k, lab) for k, lab, _ in METRICS)[metric]
    fig = go.Figure()
    for s in result["systems"]:
        xs = [w for w in result["windows"] if w in s["windows"]]
        ys = [s["windows"][w][metric] for w in xs]
        fig.add_trace(go.Scatter(x=[f"{w} s" for w in xs], y=[y["mean"] for y in ys], mode="lines+markers",
                                 name=f"{s['arm']}@{s['steps']}" if s["steps"] else s["arm"],
                                 error_y=dict(type="data", symmetric=False, array=[y["hi"] - y["mean"] for y in ys],
                                              arrayminus=[y["mean"] - y["lo"] for y in ys])))
    long_s = result.get("long_seconds", 25)
    fig.update_layout(title=f"Ablation: {label} per time window ({long_s:g} s clips)", xaxis_title="window",
                      yaxis_title=label, template="plotly_white")
    return fig


__all__ = ["DIGITS", "METRICS", "bootstrap", "figure", "floor_checks", "markdown_table", "system_metrics"]
