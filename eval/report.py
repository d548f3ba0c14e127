"""The scored set as data: per-clip rows, the set summary, and their JSON / CSV forms.

What this module owns: ``Report`` (rows + summary, written as JSON with NaN -> null and as CSV
with one row per clip, errors included), the per-metric aggregation of rows (median, mean and the
number of clips that had a finite value) for the whole clip and for each time window, and the
final scrub that keeps server paths out of every user-visible string.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

# An absolute POSIX path (two or more components): shown to users as its last component only.
_ABS_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\"/:;,()]+/)+([^\s'\"/:;,()]+)")


def scrub_paths(text: str, known: dict[str, str] | None = None) -> str:
    """``text`` with each known on-disk path replaced by its display name and any other absolute
    path cut to its base name: a row names files, never where the server keeps them."""
    for path, display in sorted((known or {}).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, display)
    return _ABS_PATH.sub(r"\1", text)


def clean(x):
    """JSON-safe: NaN/inf -> None, numpy scalars -> python."""
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


@dataclass
class Report:
    """``clips``: one dict per clip (``error`` non-empty for a clip that could not be scored);
    ``summary``: set-level numbers; ``columns``: the leading CSV columns, in order."""

    clips: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    columns: tuple[str, ...] = ()

    def error_rows(self) -> list[dict]:
        return [r for r in self.clips if r.get("error")]

    def to_dict(self) -> dict:
        return clean({"clips": self.clips, "summary": self.summary})

    def to_json(self, path: str | os.PathLike) -> str:
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)
        return os.fspath(path)

    def to_csv(self, path: str | os.PathLike) -> str:
        """One row per clip (errors included); window columns after the main ones."""
        keys = list(self.columns)
        for row in self.clips:
            keys += [k for k in row if k not in keys]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            for row in self.clips:
                w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                            for k, v in ((k, row.get(k)) for k in keys)})
        return os.fspath(path)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def mean(vals) -> float:
    vals = [v for v in vals if finite(v)]
    return float(np.mean(vals)) if vals else math.nan


def aggregate(key: str, rows, suffix: str = "", out_key: str | None = None) -> dict:
    """``<out_key>_median``, ``_mean`` and ``_n`` (clips with a finite value) of ``row[key + suffix]``."""
    vals = [v for v in (r.get(key + suffix) for r in rows) if finite(v)]
    out_key = out_key or key
    return {f"{out_key}_median": float(np.median(vals)) if vals else math.nan,
            f"{out_key}_mean": float(np.mean(vals)) if vals else math.nan, f"{out_key}_n": len(vals)}


def window_name(w) -> str:
    return f"{w[0]:g}-{w[1]:g}s"


def per_clip_summary(good_rows, keys, windows, with_sync: bool) -> dict:
    """Aggregates of the per-clip metrics, overall and per window (``summary["windows"]``)."""
    out: dict = {}
    for key in keys:
        out.update(aggregate(key, good_rows))
    if with_sync:
        out["sync_abs_offset_ms_mean"] = mean([abs(r["sync_offset_ms"]) for r in good_rows
                                               if finite(r.get("sync_offset_ms"))])
    out["windows"] = []
    for w in windows:
        wn = window_name(w)
        entry = {"window": wn, "start": w[0], "end": w[1],
                 "n_clips": sum(1 for r in good_rows if any(finite(r.get(f"{k}@{wn}"))
                                                            for k in ("sync_offset_ms", "pesq_wb", "stoi")))}
        for key in keys:
            entry.update(aggregate(key, good_rows, suffix=f"@{wn}", out_key=key))
        out["windows"].append(entry)
    return out
