"""Facial landmarks for the sync estimator: MediaPipe's face-mesh model (468 points), run by ``cv2.dnn``.

Owns ``load_landmark_model`` (the ONNX network, loaded once), ``landmarks_in_roi`` (one frame),
``track_face_mesh`` (every frame of a clip, seeded by a face box per frame), ``mouth_opening``
(inner-lip gap normalised by face size), ``lip_geometry`` (face-aligned lip shape) and ``mouth_patches``
(face-aligned grayscale pictures of the mouth).

Model: ``assets/eval/face/face_landmark.onnx`` (MediaPipe Face Mesh, Apache-2.0; source, commit and
license in ``assets/eval/face/SOURCES.md``). Input: one 192 x 192 RGB crop, float in [0, 1], NHWC.
Outputs: 1404 numbers = 468 landmarks (x, y, z) in crop pixels, and a face-presence logit.

Tracking (as MediaPipe's own face-mesh graph does): the crop of frame i is a square around the
landmarks of frame i - 1 (side = ROI_SCALE x the larger side of their bounding box in the face's own
axes), rotated so the eye line is horizontal. Where there is no previous frame, or its landmarks were
lost, the crop comes from the seed face box (centre, ROI_SCALE x its larger side, upright) and is run
twice (the second time around the first pass's landmarks). A frame whose presence logit is below
PRESENCE_MIN_LOGIT is lost (NaN) and the next frame restarts from the seed box.

Mouth opening (``mouth_opening``): the mean distance of three upper/lower inner-lip landmark pairs
(13-14 at the centre, 82-87 and 312-317 either side) divided by the distance between the outer eye
corners (33, 263). Dividing by the eye distance makes it independent of the face's size in the
picture and of how near the speaker is; distances are taken in the image plane (rotation invariant).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

MODEL_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "assets", "eval", "face", "face_landmark.onnx")
INPUT_SIDE = 192
N_LANDMARKS = 468
ROI_SCALE = 1.5  # crop side / face extent, as MediaPipe's landmarks-to-ROI step
PRESENCE_MIN_LOGIT = 0.0  # sigmoid 0.5: below, the frame's face is lost
EYE_CORNERS = (33, 263)  # outer corners, the subject's right then left eye (image left then right)
INNER_LIP_PAIRS = ((13, 14), (82, 87), (312, 317))  # (upper, lower) inner-lip landmarks
MOUTH_RING = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
_OUTPUTS = ("conv2d_21", "conv2d_31")  # landmarks, presence logit


class LandmarkModelError(RuntimeError):
    """The landmark model file is missing or unreadable (an install problem, not a user error)."""


@lru_cache(maxsize=1)
def load_landmark_model(path: str = MODEL_PATH) -> cv2.dnn.Net:
    """The face-mesh network (cached). LandmarkModelError when the asset is absent or broken."""
    if not os.path.isfile(path):
        raise LandmarkModelError(f"face landmark model missing: assets/eval/face/{os.path.basename(path)}")
    try:
        return cv2.dnn.readNetFromONNX(path)
    except cv2.error as exc:
        raise LandmarkModelError(f"face landmark model unreadable: {os.path.basename(path)} ({exc})") from None


@dataclass
class FaceMeshTrack:
    """Landmarks of every frame of a clip (NaN where the face was lost)."""

    points: np.ndarray  # float [T, 468, 2], frame pixels (x, y)
    presence: np.ndarray  # float [T], presence logit (NaN where never run)

    @property
    def found(self) -> np.ndarray:
        return np.isfinite(self.points[:, 0, 0])

    def face_boxes(self) -> np.ndarray:
        """Bounding box (x, y, w, h) of each frame's landmarks, float [T, 4] (NaN where lost)."""
        lo, hi = np.min(self.points, axis=1), np.max(self.points, axis=1)
        return np.concatenate([lo, hi - lo], axis=1)

    def mouth_boxes(self) -> np.ndarray:
        """Bounding box (x0, y0, x1, y1) of the outer-lip ring per frame, float [T, 4] (NaN where lost)."""
        ring = self.points[:, list(MOUTH_RING)]
        return np.concatenate([np.min(ring, axis=1), np.max(ring, axis=1)], axis=1)


def _roi_affine(cx: float, cy: float, side: float, angle: float) -> np.ndarray:
    """2x3 matrix taking frame pixels to crop pixels: the ROI rotated by -angle, scaled to INPUT_SIDE."""
    k = INPUT_SIDE / side
    c, s = math.cos(angle), math.sin(angle)
    a = k * np.array([[c, s], [-s, c]])
    b = INPUT_SIDE / 2 - a @ np.array([cx, cy])
    return np.concatenate([a, b[:, None]], axis=1)


def landmarks_in_roi(frame: np.ndarray, cx: float, cy: float, side: float, angle: float = 0.0,
                     net: cv2.dnn.Net | None = None) -> tuple[np.ndarray, float]:
    """Landmarks (float [468, 2], frame pixels) and presence logit of the face in one square ROI."""
    m = _roi_affine(cx, cy, side, angle)
    crop = cv2.warpAffine(frame, m, (INPUT_SIDE, INPUT_SIDE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    net = net if net is not None else load_landmark_model()
    net.setInput(np.ascontiguousarray(crop[None].astype(np.float32) / 255.0))
    raw, presence = net.forward(list(_OUTPUTS))
    uv = raw.reshape(N_LANDMARKS, 3)[:, :2].astype(np.float64)
    pts = (uv - m[:, 2]) @ np.linalg.inv(m[:, :2]).T
    return pts, float(np.ravel(presence)[0])


def roi_from_landmarks(pts: np.ndarray) -> tuple[float, float, float, float]:
    """(cx, cy, side, angle) of the next frame's crop around ``pts`` (see the module docstring)."""
    left, right = pts[EYE_CORNERS[0]], pts[EYE_CORNERS[1]]
    angle = math.atan2(right[1] - left[1], right[0] - left[0])
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, s], [-s, c]])  # frame -> face axes
    q = pts @ rot.T
    lo, hi = q.min(axis=0), q.max(axis=0)
    centre = rot.T @ ((lo + hi) / 2)
    return float(centre[0]), float(centre[1]), float(ROI_SCALE * np.max(hi - lo)), angle


def track_face_mesh(frames: np.ndarray, seed_boxes: np.ndarray) -> FaceMeshTrack:
    """Landmarks for every frame of ``frames`` (uint8 [T, H, W, 3] RGB).

    ``seed_boxes`` float [T, 4] (x, y, w, h): a face box per frame (e.g. the interpolated Haar track),
    used wherever the previous frame's landmarks are not available.
    """
    net = load_landmark_model()
    t = len(frames)
    points = np.full((t, N_LANDMARKS, 2), np.nan)
    presence = np.full(t, np.nan)
    prev = None
    for i in range(t):
        if prev is None:
            x, y, w, h = seed_boxes[i]
            pts, logit = landmarks_in_roi(frames[i], x + w / 2, y + h / 2, ROI_SCALE * max(w, h), 0.0, net)
            if logit >= PRESENCE_MIN_LOGIT:  # refine around the first pass's landmarks
                pts, logit = landmarks_in_roi(frames[i], *roi_from_landmarks(pts), net=net)
        else:
            pts, logit = landmarks_in_roi(frames[i], *roi_from_landmarks(prev), net=net)
        presence[i] = logit
        if logit >= PRESENCE_MIN_LOGIT and np.all(np.isfinite(pts)):
            points[i] = pts
            prev = pts
        else:
            prev = None
    return FaceMeshTrack(points, presence)


def mouth_opening(track: FaceMeshTrack) -> np.ndarray:
    """Inner-lip gap / outer-eye-corner distance per frame, float [T] (NaN where the face was lost)."""
    p = track.points
    gap = np.mean([np.linalg.norm(p[:, a] - p[:, b], axis=1) for a, b in INNER_LIP_PAIRS], axis=0)
    eyes = np.linalg.norm(p[:, EYE_CORNERS[0]] - p[:, EYE_CORNERS[1]], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(eyes > 0, gap / eyes, np.nan)


# Lip geometry (``lip_geometry``): signed vertical gaps between landmark pairs of the inner and the outer lip
# contour, the widths of both contours, the jaw drop (nose tip 1 to chin 152) and the heights of three lip
# points, all in the face's own axes (origin between the outer eye corners, x along the eye line) and in
# units of the eye distance, so the head's position, size and roll drop out.
LIP_GAP_PAIRS = ((13, 14), (82, 87), (312, 317), (81, 178), (311, 402), (80, 88), (310, 318),  # inner lip
                 (0, 17), (37, 84), (267, 314))  # outer lip
LIP_WIDTH_PAIRS = ((61, 291), (78, 308))  # outer and inner mouth corners
JAW_PAIR = (1, 152)
LIP_HEIGHT_POINTS = (13, 14, 17)
N_LIP_FEATURES = len(LIP_GAP_PAIRS) + len(LIP_WIDTH_PAIRS) + 1 + len(LIP_HEIGHT_POINTS)


def lip_geometry(track: FaceMeshTrack) -> np.ndarray:
    """Face-aligned lip shape per frame, float [T, N_LIP_FEATURES] (NaN rows where the face was lost):
    the vertical gaps of LIP_GAP_PAIRS, the widths of LIP_WIDTH_PAIRS, the jaw drop, then the heights of
    LIP_HEIGHT_POINTS below the eye line (see the comment above ``LIP_GAP_PAIRS``)."""
    p = np.asarray(track.points, dtype=np.float64)  # [T, 468, 2]
    left, right = p[:, EYE_CORNERS[0]], p[:, EYE_CORNERS[1]]
    axis = right - left
    scale = np.linalg.norm(axis, axis=1)  # [T]
    with np.errstate(invalid="ignore", divide="ignore"):
        ux = axis / scale[:, None]  # [T, 2] unit vector along the eye line
        uy = np.stack([-ux[:, 1], ux[:, 0]], axis=1)  # perpendicular, pointing down the face (image y down)
        rel = p - ((left + right) / 2)[:, None]  # [T, 468, 2]
        x = np.einsum("tnd,td->tn", rel, ux) / scale[:, None]
        y = np.einsum("tnd,td->tn", rel, uy) / scale[:, None]
    cols = [y[:, b] - y[:, a] for a, b in LIP_GAP_PAIRS]
    cols += [x[:, b] - x[:, a] for a, b in LIP_WIDTH_PAIRS]
    cols += [y[:, JAW_PAIR[1]] - y[:, JAW_PAIR[0]]]
    cols += [y[:, i] for i in LIP_HEIGHT_POINTS]
    out = np.stack(cols, axis=1)
    out[~(scale > 0)] = np.nan
    return out


# Mouth patches (``mouth_patches``): the picture of the mouth in the face's own axes, so that head motion, size and
# roll drop out and a pixel keeps its place on the lips from frame to frame (teeth, tongue and the dark mouth
# cavity are visible in it, which the landmarks do not describe).
PATCH_SIZE = (48, 32)  # (width, height) in pixels
PATCH_WIDTH = 1.1  # the patch spans this many eye distances across (mouth corners sit at about +-0.45)
MOUTH_CENTRE = (13, 14)  # the patch is centred on the middle of these inner-lip points


def fill_lost(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over the rows of ``x`` (float [T] or [T, k]) where the face was lost (NaN), from
    the nearest found rows (held constant beyond the first and last); returned as is when no row, or every
    row, was found."""
    x = np.array(x, dtype=np.float64)
    cols = x.reshape(len(x), -1)
    ok = np.isfinite(cols).all(axis=1)
    if ok.any() and not ok.all():
        t = np.arange(len(x))
        for j in range(cols.shape[1]):
            cols[:, j] = np.interp(t, t[ok], cols[ok, j])
    return cols.reshape(x.shape)


def mouth_patches(frames: np.ndarray, track: FaceMeshTrack, size: tuple[int, int] = PATCH_SIZE,
                  width: float = PATCH_WIDTH) -> np.ndarray:
    """Face-aligned grayscale mouth patches, uint8 [T, size[1], size[0]].

    Patch pixel (u, v) shows the frame at centre + R (u - W / 2, v - H / 2) x s, where centre is the middle of
    MOUTH_CENTRE, R turns the patch's x axis onto the eye line (outer eye corners) and s = ``width`` x eye
    distance / W. Frames whose landmarks were lost take the key points interpolated from their neighbours
    (all frames black when no frame has landmarks)."""
    w, h = size
    p = np.asarray(track.points, dtype=np.float64)
    keys = fill_lost(np.concatenate([p[:, EYE_CORNERS[0]], p[:, EYE_CORNERS[1]],
                                   p[:, list(MOUTH_CENTRE)].mean(axis=1)], axis=1))  # [T, 6]
    out = np.zeros((len(frames), h, w), np.uint8)
    for i, (frame, (lx, ly, rx, ry, cx, cy)) in enumerate(zip(frames, keys)):
        dx, dy = rx - lx, ry - ly
        scale = width * math.hypot(dx, dy) / w
        if not (math.isfinite(scale) and scale > 0):
            continue
        ang = math.atan2(dy, dx)
        a, b = math.cos(ang) * scale, math.sin(ang) * scale
        patch_to_frame = np.array([[a, -b, cx - a * w / 2 + b * h / 2],
                                   [b, a, cy - b * w / 2 - a * h / 2]])
        gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        out[i] = cv2.warpAffine(gray, patch_to_frame, (w, h), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    return out
