"""Cartoon face renderer: frames of a corpus character talking, vectorised over time with numpy.

Owns: ``render_face(character, phones, prosody, n_frames, size, rng)`` -> uint8 [T, S, S, 3], and
``mouth_track`` (the per-frame mouth shape, also used by tests to know where the mouth opens).

Picture: background (gradient, optional stripes/dots) and shirt are static; head, ears, hair,
eyes (with blinks and gaze shifts), eyebrows (raised on pitch accents), nose, mouth and glasses
move together with a small head motion (slow sway plus a nod on accents). Every shape is an
anti-aliased implicit curve (ellipse / superellipse) evaluated on the pixel grid for all frames at
once; each shape is evaluated only inside the box it can reach over the clip, so small parts
(eyes, mouth) cost little. Coordinates are normalised: x, y in [-1, 1], y pointing down.

Mouth: the viseme of each phone (``mf.data.phonemes.PHONE_VISEME``) is held over the phone's
middle half and interpolated linearly across phone boundaries (coarticulation); jaw opening is
scaled by the prosody's loudness, so louder syllables open wider. The frame at time i / FPS shows
the mouth of the script at that instant: audio and picture share one clock.
"""

from __future__ import annotations

import numpy as np

from mf.constants import FPS
from mf.data.characters import Character, Look
from mf.data.phonemes import PHONE_VISEME, VISEMES
from mf.data.prosody import Prosody
from mf.data.script import Phone

_INNER_MOUTH = np.array([0.28, 0.06, 0.08], np.float32)
_TONGUE = np.array([0.85, 0.42, 0.45], np.float32)
_TEETH = np.array([0.97, 0.97, 0.93], np.float32)
_EYE_WHITE = np.array([0.98, 0.98, 0.98], np.float32)
_PUPIL = np.array([0.05, 0.05, 0.07], np.float32)


def mouth_track(phones: list[Phone], prosody: Prosody, times: np.ndarray) -> dict[str, np.ndarray]:
    """Mouth shape at ``times``: open (0..~1.2), width factor, teeth and tongue visibility."""
    key_t, key_v = [], []
    for p in phones:
        v = VISEMES[PHONE_VISEME.get(p.symbol, "rest")]
        values = (v.open, v.width, v.teeth, v.tongue)
        if p.duration < 0.05:
            key_t.append(0.5 * (p.start + p.end))
            key_v.append(values)
        else:
            key_t += [p.start + 0.25 * p.duration, p.end - 0.25 * p.duration]
            key_v += [values, values]
    times = np.asarray(times, dtype=np.float64)
    if not key_t:
        key_t, key_v = [0.0], [(0.0, 1.0, 0.0, 0.0)]
    key_t = np.asarray(key_t)
    key_v = np.asarray(key_v)
    track = {name: np.interp(times, key_t, key_v[:, i])
             for i, name in enumerate(("open", "width", "teeth", "tongue"))}
    loud = np.clip(prosody.level(times) / 0.9, 0.0, 1.3)
    track["open"] = track["open"] * (0.55 + 0.45 * loud)
    return track


class _Canvas:
    """A float32 [T, S, S, 3] canvas with box-limited anti-aliased shape painting."""

    def __init__(self, n_frames: int, size: int, background: np.ndarray):
        self.size = size
        self.px = 2.0 / size  # one pixel in normalised units
        self.coord = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
        self.img = np.broadcast_to(background, (n_frames, size, size, 3)).copy()

    def box(self, x0, x1, y0, y1) -> tuple[slice, slice]:
        """Pixel slices covering [x0, x1] x [y0, y1] (normalised), over all frames, with a margin."""
        s = self.size
        to_px = lambda v: (float(v) + 1.0) / 2.0 * s  # noqa: E731
        c0 = int(np.clip(np.floor(to_px(np.min(x0))) - 1, 0, s))
        c1 = int(np.clip(np.ceil(to_px(np.max(x1))) + 1, 0, s))
        r0 = int(np.clip(np.floor(to_px(np.min(y0))) - 1, 0, s))
        r1 = int(np.clip(np.ceil(to_px(np.max(y1))) + 1, 0, s))
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def grid(self, box):
        rows, cols = box
        return self.coord[None, cols][None], self.coord[rows][None, :, None]  # x [1,1,w], y [1,h,1]

    def ellipse(self, cx, cy, rx, ry, n: float = 2.0, taper=None):
        """(box, alpha [T, h, w]) of a superellipse; ``taper`` narrows its lower half (a chin)."""
        cx, cy, rx, ry = (np.asarray(v, np.float32).reshape(-1, 1, 1) for v in (cx, cy, rx, ry))
        box = self.box(cx - rx, cx + rx, cy - ry, cy + ry)
        x, y = self.grid(box)
        dy = (y - cy) / ry
        rxe = rx
        if taper is not None:
            rxe = rx * (1.0 - taper * np.clip(dy, 0.0, 1.0) ** 2)
        dx = np.abs(x - cx) / rxe
        if n == 2.0:
            q = np.sqrt(dx * dx + dy * dy)
        else:
            q = (dx ** n + np.abs(dy) ** n) ** (1.0 / n)
        d = (q - 1.0) * np.minimum(rxe, ry)
        return box, np.clip(0.5 - d / self.px, 0.0, 1.0)

    def paint(self, box, alpha, colour):
        region = self.img[:, box[0], box[1]]
        colour = np.asarray(colour, np.float32)
        region += alpha[..., None] * (colour - region)


def _halfplane(canvas: _Canvas, box, boundary_y) -> np.ndarray:
    """Soft alpha of y < boundary_y (boundary given on the box grid, broadcastable)."""
    _, y = canvas.grid(box)
    return np.clip(0.5 + (boundary_y - y) / canvas.px, 0.0, 1.0)


def _background(look: Look, size: int) -> np.ndarray:
    c = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    x, y = c[None, :], c[:, None]
    base = np.asarray(look.background, np.float32)
    shade = (1.05 - 0.18 * (y + 1.0) / 2.0)[..., None] * np.ones_like(x)[..., None]
    img = np.clip(base * shade, 0, 1)
    if look.background_pattern == "stripes":
        stripe = (np.sin((x + y) * 9.0 * np.pi) > 0.6).astype(np.float32)[..., None]
        img = img * (1.0 - 0.12 * stripe)
    elif look.background_pattern == "dots":
        gx, gy = (x * 4.0) % 1.0 - 0.5, (y * 4.0) % 1.0 - 0.5
        dot = np.clip(0.5 - (np.sqrt(gx * gx + gy * gy) - 0.12) * size / 8.0, 0, 1)[..., None]
        img = img * (1.0 - 0.15 * dot) + 0.15 * dot * np.clip(base + 0.2, 0, 1)
    # shoulders and shirt, with a neck in darker skin (static: the head sways above them)
    canvas = _Canvas(1, size, img)
    skin = np.asarray(look.skin, np.float32)
    box, a = canvas.ellipse(0.0, 0.75, 0.17, 0.4)
    canvas.paint(box, a, skin * 0.82)
    box, a = canvas.ellipse(0.0, 1.27, 0.95, 0.5, n=2.6)
    canvas.paint(box, a, look.shirt)
    box, a = canvas.ellipse(0.0, 0.79, 0.17, 0.1)  # collar opening
    canvas.paint(box, a, skin * 0.82)
    return canvas.img[0]


def render_face(char: Character, phones: list[Phone], prosody: Prosody, n_frames: int,
                size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n_frames, size, size, 3]: the character saying ``phones`` (frame i at i / FPS)."""
    look = char.look
    T = n_frames
    t = np.arange(T) / FPS
    canvas = _Canvas(T, size, _background(look, size))
    skin = np.asarray(look.skin, np.float32)
    hair = np.asarray(look.hair, np.float32)

    # head motion: slow sway plus a nod on accents
    ph = rng.uniform(0, 2 * np.pi, size=4)
    accent = prosody.accent(t)
    hx = 0.03 * np.sin(2 * np.pi * 0.21 * t + ph[0]) + 0.012 * np.sin(2 * np.pi * 0.63 * t + ph[1])
    hy = -0.1 + 0.015 * np.sin(2 * np.pi * 0.29 * t + ph[2]) + 0.1 * np.clip(accent, 0, None)
    a = look.head_width
    b = a * look.head_aspect * 0.92
    hy = hy + (0.55 - b) * 0.4  # taller heads sit a little higher

    # hair behind the head
    if look.hair_style == "long":
        box, al = canvas.ellipse(hx, hy + 0.3 * b, a * 1.22, b * 1.12, n=2.5)
        canvas.paint(box, al, hair * 0.85)
    elif look.hair_style == "curly":
        box, al = canvas.ellipse(hx, hy - 0.22 * b, a * 1.38, b * 1.0, n=2.0)
        canvas.paint(box, al, hair)
    # ears and head
    for side in (-1.0, 1.0):
        box, al = canvas.ellipse(hx + side * a * 0.97, hy + 0.05 * b, 0.075, 0.12)
        canvas.paint(box, al, skin * 0.88)
    box, head = canvas.ellipse(hx, hy, a, b, n=look.head_squareness, taper=look.chin_taper)
    canvas.paint(box, head, skin)
    # hair on top of the head
    style = look.hair_style
    if style in ("short", "long", "spiky", "bun", "fringe", "curly"):
        box, cap = canvas.ellipse(hx, hy - 0.04 * b, a * 1.08, b * 1.06, n=look.head_squareness)
        x, y = canvas.grid(box)
        rel = (x - hx.reshape(-1, 1, 1)) / a
        top = hy.reshape(-1, 1, 1) - b * 0.45
        if style == "long":
            line = top + b * 1.1 * np.clip(np.abs(rel), 0, 1) ** 4
        elif style == "fringe":
            line = top + b * (0.2 - 0.22 * rel)
        elif style == "spiky":
            line = top + b * 0.08 * np.abs(np.sin(rel * 4.0 * np.pi))
            line = line + b * 0.1
        else:
            line = top + b * 0.05 * np.cos(rel * np.pi)
        cap = cap * _halfplane(canvas, box, line)
        canvas.paint(box, cap, hair)
        if style == "spiky":
            for k in range(-2, 3):
                box, al = canvas.ellipse(hx + k * a * 0.38, hy - b * 0.98 + 0.03 * abs(k), 0.06, b * 0.22)
                canvas.paint(box, al, hair)
        if style == "bun":
            box, al = canvas.ellipse(hx, hy - b * 1.1, a * 0.38, a * 0.32)
            canvas.paint(box, al, hair)

    # eyes: white, iris, pupil, highlight; blinks close them, gaze drifts now and then
    openness = np.ones(T)
    blink_t = -rng.uniform(0, 2.0)
    while blink_t < T / FPS + 1:
        blink_t += rng.uniform(1.5, 5.0)
        openness = np.minimum(openness, np.clip(np.abs(t - blink_t) / 0.09, 0.08, 1.0))
    gaze = np.zeros((T, 2))
    g_t = -rng.uniform(0, 2.0)
    while g_t < T / FPS:
        nxt = g_t + rng.uniform(0.8, 3.0)
        sel = (t >= g_t) & (t < nxt)
        gaze[sel] = rng.uniform(-1, 1, size=2) * [0.5, 0.25] if rng.uniform() < 0.5 else 0.0
        g_t = nxt
    eye_ry = look.eye_size * b
    eye_rx = eye_ry * 1.1
    eye_y = hy - 0.12 * b
    brow_lift = 0.5 * np.clip(accent, 0, None) * b
    for side in (-1.0, 1.0):
        ex = hx + side * look.eye_spacing * a
        box, white = canvas.ellipse(ex, eye_y, eye_rx, eye_ry * openness)
        canvas.paint(box, white, _EYE_WHITE)
        ix, iy = ex + gaze[:, 0] * eye_rx * 0.4, eye_y + gaze[:, 1] * eye_ry * 0.4
        iris = _fit(canvas, box, ix, iy, eye_ry * 0.62, eye_ry * 0.62) * white
        canvas.paint(box, iris, look.iris)
        pupil = _fit(canvas, box, ix, iy, eye_ry * 0.3, eye_ry * 0.3) * white
        canvas.paint(box, pupil, _PUPIL)
        shine = _fit(canvas, box, ix + eye_ry * 0.22, iy - eye_ry * 0.22, eye_ry * 0.14, eye_ry * 0.14) * white
        canvas.paint(box, shine, _EYE_WHITE)
        # eyebrow
        box, brow = canvas.ellipse(ex, eye_y - eye_ry * 1.45 - 0.03 - brow_lift, eye_rx * 1.15, 0.028)
        canvas.paint(box, brow, hair * 0.7)
        if look.glasses:
            box, outer = canvas.ellipse(ex, eye_y, eye_rx * 1.55, eye_ry * 1.45 + 0.02)
            inner = _fit(canvas, box, ex, eye_y, eye_rx * 1.55 - 0.03, eye_ry * 1.45 - 0.01)
            canvas.paint(box, np.clip(outer - inner, 0, 1), np.array([0.12, 0.1, 0.1]))
    if look.glasses:
        box, bridge = canvas.ellipse(hx, eye_y - eye_ry * 0.3, look.eye_spacing * a * 0.45, 0.018)
        canvas.paint(box, bridge, np.array([0.12, 0.1, 0.1]))
    # nose
    box, nose = canvas.ellipse(hx, hy + 0.15 * b, 0.045, 0.06)
    canvas.paint(box, nose * 0.6, skin * 0.72)

    # mouth
    m = mouth_track(phones, prosody, t)
    mx = hx
    my = hy + 0.52 * b
    mw = look.mouth_width * a * m["width"]
    h_max = 0.27 * b
    mh = np.maximum(m["open"] * h_max, 0.012)
    lip = 0.028
    box, lips = canvas.ellipse(mx, my, mw + lip, mh + lip)
    canvas.paint(box, lips, look.lips)
    inner = _fit(canvas, box, mx, my, mw, mh)
    canvas.paint(box, inner, _INNER_MOUTH)
    x, y = canvas.grid(box)
    teeth_edge = (my - mh + 0.45 * h_max * m["teeth"]).reshape(-1, 1, 1)
    teeth = inner * _halfplane(canvas, box, teeth_edge) * (m["teeth"] > 0.05).reshape(-1, 1, 1)
    canvas.paint(box, teeth, _TEETH)
    tongue = _fit(canvas, box, mx, my + mh * 0.7, mw * 0.6, mh * 0.55 * (0.4 + m["tongue"])) * inner
    canvas.paint(box, tongue, _TONGUE)

    return (np.clip(canvas.img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _fit(canvas: _Canvas, box, cx, cy, rx, ry) -> np.ndarray:
    """Alpha of an ellipse evaluated inside an existing box (for shapes clipped by a parent)."""
    cx, cy, rx, ry = (np.asarray(v, np.float32).reshape(-1, 1, 1) for v in (cx, cy, rx, ry))
    x, y = canvas.grid(box)
    rx = np.maximum(rx, 1e-4)
    ry = np.maximum(ry, 1e-4)
    q = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    d = (q - 1.0) * np.minimum(rx, ry)
    return np.clip(0.5 - d / canvas.px, 0.0, 1.0)
