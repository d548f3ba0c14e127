"""Plotly figures of an eval ``Report`` for the app (and for notebooks).

* ``offset_histogram(report)``: per-clip sync offsets in ms, binned one video frame (40 ms) wide,
  with the 0 line; positive = audio leads.
* ``pesq_distribution(report)``: per-clip PESQ wb and nb as box plots with every clip shown.
* ``window_metrics(report)``: medians of per-clip metrics and the set-level distances per time
  window (the paper's long-video table as a chart), one subplot per metric.

Each takes a ``Report`` (or its ``to_dict()``) and returns a ``plotly.graph_objects.Figure``; a
report without the needed numbers gives a figure that says so instead of an empty axis.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mf.constants import FPS


def _parts(report):
    d = report.to_dict() if hasattr(report, "to_dict") else report
    return d.get("clips", []), d.get("summary", {})


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False)
    return fig


def offset_histogram(report) -> go.Figure:
    clips, _ = _parts(report)
    vals = [r["sync_offset_ms"] for r in clips if not r.get("error") and _finite(r.get("sync_offset_ms"))]
    title = "Sync offset per clip (ms, positive = audio leads)"
    if not vals:
        return _empty(title, "no sync offsets in this report")
    frame_ms = 1000.0 / FPS
    fig = go.Figure(go.Histogram(x=vals, xbins=dict(start=-15.5 * frame_ms, end=15.5 * frame_ms, size=frame_ms),
                                 name="clips", hovertemplate="%{x} ms: %{y} clips<extra></extra>"))
    fig.add_vline(x=0, line_dash="dash", line_color="gray")
    fig.update_layout(title=title, xaxis_title="offset (ms), one bin = one video frame", yaxis_title="clips",
                      bargap=0.05)
    return fig


def pesq_distribution(report) -> go.Figure:
    clips, _ = _parts(report)
    title = "PESQ per clip"
    fig = go.Figure()
    for key, label in (("pesq_wb", "wide-band"), ("pesq_nb", "narrow-band")):
        rows = [r for r in clips if not r.get("error") and _finite(r.get(key))]
        if rows:
            fig.add_trace(go.Box(y=[r[key] for r in rows], name=label, boxpoints="all", jitter=0.3,
                                 text=[r["name"] for r in rows], hovertemplate="%{text}: %{y:.2f}<extra></extra>"))
    if not fig.data:
        return _empty(title, "no PESQ scores in this report (needs a reference set)")
    fig.update_layout(title=title, yaxis_title="PESQ (MOS-LQO)", yaxis_range=[1.0, 4.7])
    return fig


def window_metrics(report) -> go.Figure:
    _, summary = _parts(report)
    windows = summary.get("windows") or []
    title = "Metrics per time window"
    series = [("sync_offset_ms_median", "sync offset median (ms)"),
              ("sync_confidence_median", "sync confidence median"),
              ("pesq_wb_median", "PESQ-wb median"), ("stoi_median", "STOI median"),
              ("fid", "FID"), ("corpus_fd", "corpus-FD (not standard FID)")]
    names = [w["window"] for w in windows]
    present = [(k, lab) for k, lab in series if any(_finite(w.get(k)) for w in windows)]
    if not present:
        return _empty(title, "no per-window numbers in this report")
    fig = make_subplots(rows=1, cols=len(present), subplot_titles=[lab for _, lab in present])
    for i, (key, lab) in enumerate(present, start=1):
        ys = [w.get(key) if _finite(w.get(key)) else None for w in windows]
        fig.add_trace(go.Bar(x=names, y=ys, name=lab, showlegend=False,
                             hovertemplate="%{x}: %{y:.3f}<extra>" + lab + "</extra>"), row=1, col=i)
    fig.update_layout(title=title)
    return fig
