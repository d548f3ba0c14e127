"""Input checks that keep a score from being silently wrong: windows, file lengths, pair lengths.

What this module owns, for ``eval.score``:

* ``check_windows`` / ``parse_windows``: at most ``MAX_WINDOWS`` windows (each re-scores its span:
  100 windows cost 30x a clip's scoring), finite bounds, ``0 <= start < end <= MAX_CLIP_SECONDS``
  (nothing past the decode cap exists to score) and at least ``MIN_WINDOW_SECONDS`` long.
* ``length_note``: a file longer than the decode cap (``mf.media.MAX_UPLOAD_SECONDS``) is scored on
  its first ``MAX_CLIP_SECONDS``; a file that decodes to less than its header declares, by more than
  ``max(TRUNCATION_TOLERANCE_S, TRUNCATION_FRACTION * declared)``, is truncated or damaged. Either
  way the row says so.
* ``overlap``: a generated and a reference clip whose durations differ by more than
  ``DURATION_TOLERANCE_S`` are compared on their overlap only (the first ``min(durations)`` s), and
  the row says so.
"""

from __future__ import annotations

import math
from dataclasses import replace

from mf.media import MAX_UPLOAD_SECONDS

MAX_CLIP_SECONDS = MAX_UPLOAD_SECONDS  # decode cap per file (memory: frames are held at full resolution)
MIN_WINDOW_SECONDS = 1.0  # a window needs at least this much of the clip to be scored
MAX_WINDOWS = 8
DURATION_TOLERANCE_S = 0.1  # generated vs reference; AAC frame padding alone is ~0.02-0.06 s
TRUNCATION_TOLERANCE_S = 0.25  # decoded vs declared; with TRUNCATION_FRACTION, whichever is larger
TRUNCATION_FRACTION = 0.05


def check_windows(windows) -> tuple[tuple[float, float], ...]:
    """Validated ``((start, end), ...)`` in seconds; ``ValueError`` naming the first bad window."""
    windows = tuple((float(a), float(b)) for a, b in windows)
    if len(windows) > MAX_WINDOWS:
        raise ValueError(f"{len(windows)} windows; at most {MAX_WINDOWS} (each one re-scores its span)")
    for a, b in windows:
        name = f"{a:g}-{b:g}"
        if not (math.isfinite(a) and math.isfinite(b)):
            raise ValueError(f"bad window '{name}': bounds must be finite seconds")
        if not 0 <= a < b:
            raise ValueError(f"bad window '{name}': need 0 <= start < end")
        if b > MAX_CLIP_SECONDS:
            raise ValueError(f"bad window '{name}': ends after {MAX_CLIP_SECONDS:g} s, the most decoded of any clip")
        if b - a < MIN_WINDOW_SECONDS:
            raise ValueError(f"bad window '{name}': shorter than {MIN_WINDOW_SECONDS:g} s")
    return windows


def parse_windows(text: str) -> tuple[tuple[float, float], ...]:
    """'0-5,5-15,15-25' -> ((0, 5), (5, 15), (15, 25)); '' -> no windows. Validated by ``check_windows``."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            a, b = (float(x) for x in part.split("-"))
        except ValueError:
            raise ValueError(f"bad window '{part}': expected start-end in seconds, e.g. 0-5") from None
        out.append((a, b))
    return check_windows(out)


def length_note(display: str, clip) -> str:
    """The row's note when the file is longer than the cap or shorter than its header declares ("" if neither)."""
    declared = clip.declared_duration
    if clip.capped:
        total = f"; the file lasts {declared:.1f} s" if declared else ""
        return f"{display}: scored on its first {MAX_CLIP_SECONDS:g} s only (decode cap{total})"
    if declared and declared - clip.duration > max(TRUNCATION_TOLERANCE_S, TRUNCATION_FRACTION * declared):
        return (f"{display}: truncated or damaged: decoded {clip.duration:.2f} s of the {declared:.2f} s "
                "its header declares; scored on what decoded")
    return ""


def head(clip, seconds: float):
    """The first ``seconds`` of a decoded ``mf.media.AVClip``."""
    frames = None if clip.frames is None else clip.frames[: max(1, int(round(seconds * clip.fps)))]
    audio = None if clip.audio is None else clip.audio[: int(round(seconds * clip.sample_rate))]
    return replace(clip, frames=frames, audio=audio, duration=float(seconds))


def overlap(gen, ref, metrics, notes: list):
    """(gen, ref) cut to their common length when the durations differ by more than the tolerance."""
    if abs(gen.duration - ref.duration) <= DURATION_TOLERANCE_S:
        return gen, ref
    d = min(gen.duration, ref.duration)
    which = "/".join(m for m in metrics if m != "sync")
    notes.append(f"duration mismatch: generated {gen.duration:.2f} s, reference {ref.duration:.2f} s (tolerance "
                 f"{DURATION_TOLERANCE_S:g} s): {which} scored on the overlap only, the first {d:.2f} s")
    return head(gen, d), head(ref, d)
