"""Face and mouth localisation for the sync metrics.

Owns: ``locate_mouth`` (a per-frame mouth box for a clip, plus the face boxes it came from, the
mouth opening when landmarks were found, and the name of the localizer that produced it),
``mouth_crops`` (grayscale mouth patches for the sync estimator) and ``face_crops`` (square face patches for SyncNet).

Localizers, tried in this order; the one used is reported (``MouthTrack.localizer``):

0. ``"face-mesh"``: where the Haar step below finds a face, MediaPipe's face-mesh landmarks
   (``eval.landmarks``, model in assets/eval/face) are tracked from the Haar face track on every
   frame. When they are found on at least MIN_MESH_RATE of the frames, the mouth box is the outer-lip
   ring's bounding box widened by MOUTH_MARGIN, and ``opening`` is the inner-lip gap / eye distance
   (frames where the face was lost are interpolated). ``face_boxes`` stay the Haar track (SyncNet's
   crops). Otherwise the Haar box below is used.
   Tight face crops (LRS2's 160 x 160, a face filling the frame) defeat the cascade while the landmark
   model still sees the face: when the cascade finds a face in SOME sampled frames but fewer than
   MIN_DETECTION_RATE, the landmarks are seeded with a centred square of CENTRE_SEED x the frame's short
   side instead (``face_boxes`` = that square), and kept under the same MIN_MESH_RATE rule. Frames under
   CENTRE_SEED_MIN_SIDE pixels never try this: the cascade fires now and then on the project's own 64 px
   characters (on 18 of 40 held-out corpus seeds), and the seed would have moved 9 of them from the
   motion localizer, which the corpus sync bar was measured with, to landmarks on a cartoon. Nor does a
   clip where the cascade finds no face at all. On LRS2 demo clips 00008 and
   00024 and an astorfi clip (Haar rates 0.08-0.23) the centred seed tracked the landmarks on every frame
   (docs/measurements/sync_fresh_split.md).
1. ``"haar-face"``: OpenCV's frontal-face Haar cascade (``mf.face.haar_face_cascade``, shipped with
   opencv-python-headless, nothing downloaded). It runs on up to ``MAX_DETECTIONS`` evenly spaced
   frames, downscaled so the long side is ~320 px (upscaled for tiny frames such as the 64 px
   corpus). Per frame the largest face is kept; detections far from the median face (false positives
   on the background) are dropped. A head that barely moves gets one fixed (median) box; a moving
   head is tracked (interpolated between detections, smoothed over ~0.6 s), so the crop follows the
   head without Haar's frame-to-frame jitter.
   The mouth is the lower-middle part of the face box: x in [0.25, 0.75] w, y in [0.62, 1.0] h
   (Haar boxes end near the chin, so this covers both lips and the jaw line, which moves with the
   mouth opening).
2. ``"motion-fallback"``: used when the cascade finds a face in fewer than ``MIN_DETECTION_RATE``
   of the sampled frames (cartoon characters, profile views, tiny frames). Talking mouths move at
   the syllable rate, so each pixel's grayscale time series is band-passed to 1-8 Hz and its
   energy is averaged over a mouth-sized window; the window with the most energy, searched over the
   frame with a mild preference for the lower half (eyes blink, mouths talk), is the mouth. The box
   is fixed over the clip.
3. ``"centre-fallback"``: a static clip (no motion energy at all) gets the centre-lower box
   (x in [0.35, 0.65], y in [0.55, 0.85] of the frame), where a frontal talking head's mouth sits.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import median_filter, uniform_filter
from scipy.signal import butter, sosfiltfilt

from mf.face import haar_face_cascade

MAX_DETECTIONS = 40  # frames the cascade runs on (cost ~10-40 ms each at 320 px)
PROBE_DETECTIONS = 8  # frames tried first; no face in any of them -> no further detection
MIN_DETECTION_RATE = 0.3  # below this fraction of sampled frames with a face, use the motion fallback
DETECT_SIDE = 320  # long side (px) the cascade sees
# Mouth box inside a face box (fractions of its width / height).
MOUTH_X = (0.25, 0.75)
MOUTH_Y = (0.62, 1.0)
# Fallback mouth box size as a fraction of the frame (a frontal head fills most of a talking-head frame).
FALLBACK_W, FALLBACK_H = 0.30, 0.22
HEAD_STILL = 0.25  # face-centre travel (fraction of face width) below which the face box is fixed
MIN_MESH_RATE = 0.8  # fraction of frames with landmarks needed for the "face-mesh" localizer
CENTRE_SEED = 0.75  # side of the centred landmark seed square / the frame's short side (tight face crops)
CENTRE_SEED_MIN_SIDE = 128  # frames with a shorter side (the 64 px corpus) never get the centred seed
MOUTH_MARGIN = 0.25  # the landmark mouth box is widened by this fraction of its size on every side
LOCALIZERS = ("face-mesh", "haar-face", "motion-fallback", "centre-fallback")


@dataclass
class MouthTrack:
    """Where the mouth is in each frame of a clip."""

    boxes: np.ndarray  # int [T, 4] mouth boxes (x0, y0, x1, y1), pixel coordinates, x1/y1 exclusive
    face_boxes: np.ndarray | None  # float [T, 4] face boxes (x, y, w, h) when a face detector was used
    localizer: str  # one of LOCALIZERS
    detection_rate: float  # fraction of sampled frames where the cascade found a face
    opening: np.ndarray | None = None  # float [T] mouth opening (eval.landmarks) for "face-mesh"
    lips: np.ndarray | None = None  # float [T, N_LIP_FEATURES] lip geometry (eval.landmarks.lip_geometry), "face-mesh"
    patches: np.ndarray | None = None  # uint8 [T, 32, 48] face-aligned mouth pictures (eval.landmarks.mouth_patches)
    mesh_rate: float = 0.0  # fraction of frames where the landmarks were found

    def median_box(self) -> tuple[int, int, int, int]:
        """The clip's typical mouth box (x0, y0, x1, y1), as reported in SyncResult.mouth_box."""
        return tuple(int(v) for v in np.median(self.boxes, axis=0).round())


def _gray(frame: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty uint8 array [T, H, W, 3], got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return frames


def detect_faces(frames: np.ndarray, max_detections: int = MAX_DETECTIONS) -> tuple[np.ndarray, np.ndarray, int]:
    """Run the Haar cascade on evenly spaced frames.

    Returns (frame indices with a kept face, their boxes float [n, 4] as x, y, w, h in frame pixels,
    number of frames tried: PROBE_DETECTIONS when the probe found no face, else all sampled).
    Detections far from the median face are dropped as false positives.
    """
    frames = _check_frames(frames)
    t, h, w = frames.shape[:3]
    scale = DETECT_SIDE / max(h, w)
    cascade = haar_face_cascade()
    sampled = np.unique(np.linspace(0, t - 1, min(t, max_detections)).round().astype(int))
    min_side = max(24, int(0.15 * min(h, w) * scale))
    # Probe a few evenly spaced frames first: when none of them shows a face (a cartoon character,
    # a profile view) the clip will take the motion fallback anyway, and the other detections would
    # cost ~20 ms each for nothing (most of the sync time on corpus clips).
    n_probe = min(len(sampled), PROBE_DETECTIONS)
    probe = sampled[np.unique(np.linspace(0, len(sampled) - 1, n_probe).round().astype(int))]
    order = np.concatenate([probe, np.setdiff1d(sampled, probe)])
    idx, boxes = [], []
    for n_tried, i in enumerate(order):
        if n_tried == len(probe) and not boxes:
            return np.zeros(0, int), np.zeros((0, 4)), len(probe)
        img = _gray(frames[i])
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        img = cv2.equalizeHist(cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=interp))
        found = cascade.detectMultiScale(img, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        if len(found):
            largest = max(found, key=lambda b: b[2] * b[3])
            idx.append(int(i))
            boxes.append(np.asarray(largest, dtype=np.float64) / scale)
    if not boxes:
        return np.zeros(0, int), np.zeros((0, 4)), len(sampled)
    order_by_time = np.argsort(idx)
    idx_arr, boxes_arr = np.asarray(idx)[order_by_time], np.stack(boxes)[order_by_time]
    centre = boxes_arr[:, :2] + boxes_arr[:, 2:] / 2
    med_centre, med_size = np.median(centre, axis=0), np.median(boxes_arr[:, 2])
    keep = (np.linalg.norm(centre - med_centre, axis=1) < 0.5 * med_size) & (
        np.abs(boxes_arr[:, 2] / med_size - 1) < 0.4)
    return idx_arr[keep], boxes_arr[keep], len(sampled)


def _face_track(n_frames: int, idx: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """One face box per frame.

    A head that stays within HEAD_STILL of its face width gets the median box for the whole clip:
    Haar boxes jitter by a few pixels from frame to frame, and on real talking heads that jitter
    moved the crop more than the head did (measured on the real_av clips: the tracked crop put two
    of the three in-sync clips 11-14 frames off, the fixed one within 5). A moving head is tracked:
    detections interpolated to every frame, then median- and mean-smoothed over ~0.6 s.
    """
    median_box = np.median(boxes, axis=0)
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    travel = np.ptp(centres, axis=0).max() if len(boxes) > 1 else 0.0
    if travel <= HEAD_STILL * median_box[2]:
        return np.repeat(median_box[None], n_frames, axis=0)
    frames_axis = np.arange(n_frames)
    track = np.stack([np.interp(frames_axis, idx, boxes[:, j]) for j in range(4)], axis=1)
    if n_frames >= 5:
        track = median_filter(track, size=(5, 1), mode="nearest")
        track = uniform_filter(track, size=(15, 1), mode="nearest")
    return track


def _mouth_from_face(face: np.ndarray, h: int, w: int) -> np.ndarray:
    x, y, fw, fh = face.T
    box = np.stack([x + MOUTH_X[0] * fw, y + MOUTH_Y[0] * fh, x + MOUTH_X[1] * fw, y + MOUTH_Y[1] * fh], axis=1)
    return _clip_boxes(box, h, w)


def _clip_boxes(box: np.ndarray, h: int, w: int) -> np.ndarray:
    box = np.round(box).astype(int)
    box[:, [0, 2]] = np.clip(box[:, [0, 2]], 0, w)
    box[:, [1, 3]] = np.clip(box[:, [1, 3]], 0, h)
    # Never an empty box (a face at the frame border): keep at least 2 px in each direction.
    box[:, 2] = np.maximum(box[:, 2], np.minimum(box[:, 0] + 2, w))
    box[:, 0] = np.minimum(box[:, 0], box[:, 2] - 2)
    box[:, 3] = np.maximum(box[:, 3], np.minimum(box[:, 1] + 2, h))
    box[:, 1] = np.minimum(box[:, 1], box[:, 3] - 2)
    return box


def _motion_box(frames: np.ndarray, fps: float) -> np.ndarray | None:
    """Mouth-sized window with the most 1-8 Hz pixel energy; None when the clip does not move."""
    t, h, w = frames.shape[:3]
    scale = min(1.0, 96.0 / max(h, w))
    sw, sh = max(8, round(w * scale)), max(8, round(h * scale))
    gray = np.stack([cv2.resize(_gray(f), (sw, sh), interpolation=cv2.INTER_AREA) for f in frames]).astype(np.float32)
    hi = min(8.0, 0.45 * fps)
    if t >= 16 and hi > 1.5:
        sos = butter(2, [1.0, hi], btype="band", fs=fps, output="sos")
        moving = sosfiltfilt(sos, gray - gray.mean(axis=0), axis=0)
    else:  # too short to filter: frame differences still show where things move
        moving = np.diff(gray, axis=0) if t > 1 else np.zeros_like(gray)
    energy = (moving**2).mean(axis=0)
    if float(energy.max()) < 1e-3:
        return None
    win_w, win_h = max(2, round(FALLBACK_W * sw)), max(2, round(FALLBACK_H * sh))
    pooled = uniform_filter(energy, size=(win_h, win_w), mode="constant")
    # Prefer the lower part of the frame (mouths sit below eyes): weight rises from 0.7 at the top to 1.
    pooled *= np.linspace(0.7, 1.0, sh)[:, None]
    cy, cx = np.unravel_index(int(np.argmax(pooled)), pooled.shape)
    cx, cy = (cx + 0.5) * w / sw, (cy + 0.5) * h / sh  # back to frame pixels
    bw, bh = FALLBACK_W * w, FALLBACK_H * h
    return np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])


def _mesh_track(frames: np.ndarray, face: np.ndarray, h: int, w: int, rate: float) -> MouthTrack | None:
    """"face-mesh" track from the landmarks (eval.landmarks), or None when too few frames have them."""
    from eval.landmarks import fill_lost, lip_geometry, mouth_opening, mouth_patches, track_face_mesh

    mesh = track_face_mesh(frames, face)
    found = mesh.found
    if found.mean() < MIN_MESH_RATE:
        return None
    mouth = fill_lost(mesh.mouth_boxes())
    pad = MOUTH_MARGIN * (mouth[:, 2:] - mouth[:, :2])
    mouth = np.concatenate([mouth[:, :2] - pad, mouth[:, 2:] + pad], axis=1)
    # face_boxes stay the Haar track: SyncNet's face crops (eval.syncnet) are framed like its detector's boxes.
    return MouthTrack(_clip_boxes(mouth, h, w), face, "face-mesh", rate,
                      opening=fill_lost(mouth_opening(mesh)), mesh_rate=float(found.mean()),
                      lips=fill_lost(lip_geometry(mesh)), patches=mouth_patches(frames, mesh))


def locate_mouth(frames: np.ndarray, fps: float = 25.0, use_landmarks: bool = True) -> MouthTrack:
    """Mouth box per frame of ``frames`` (uint8 [T, H, W, 3]) and which localizer found it.

    ``use_landmarks=False`` stops at the Haar box (the localizer before landmarks, for comparisons).
    """
    frames = _check_frames(frames)
    t, h, w = frames.shape[:3]
    idx, boxes, n_sampled = detect_faces(frames)
    rate = len(idx) / max(1, n_sampled)
    if rate >= MIN_DETECTION_RATE:
        face = _face_track(t, idx, boxes)
        mesh = _mesh_track(frames, face, h, w, float(rate)) if use_landmarks else None
        if mesh is not None:
            return mesh
        return MouthTrack(_mouth_from_face(face, h, w), face, "haar-face", float(rate))
    if use_landmarks and rate > 0 and min(h, w) >= CENTRE_SEED_MIN_SIDE:  # a tight face crop? (localizer 0)
        side = CENTRE_SEED * min(w, h)
        centre = np.tile([(w - side) / 2, (h - side) / 2, side, side], (t, 1)).astype(np.float64)
        mesh = _mesh_track(frames, centre, h, w, float(rate))
        if mesh is not None:
            return mesh
    box = _motion_box(frames, float(fps))
    localizer = "motion-fallback"
    if box is None:
        box = np.array([0.35 * w, 0.55 * h, 0.65 * w, 0.85 * h])
        localizer = "centre-fallback"
    return MouthTrack(_clip_boxes(np.repeat(box[None], t, axis=0), h, w), None, localizer, float(rate))


def mouth_crops(frames: np.ndarray, track: MouthTrack, size: tuple[int, int] = (32, 24)) -> np.ndarray:
    """Grayscale mouth patches float32 [T, size[1], size[0]] following the track."""
    frames = _check_frames(frames)
    out = np.empty((len(frames), size[1], size[0]), np.float32)
    for i, (frame, (x0, y0, x1, y1)) in enumerate(zip(frames, track.boxes)):
        out[i] = cv2.resize(_gray(frame[y0:y1, x0:x1]), size, interpolation=cv2.INTER_AREA)
    return out


def face_crops(frames: np.ndarray, track: MouthTrack, side: int = 224, scale: float = 1.3) -> np.ndarray:
    """Square face patches uint8 [T, side, side, 3] (RGB), as SyncNet's pipeline feeds its lip tower.

    The face box is enlarged by ``scale`` around its centre (the pipeline of syncnet_python pads the
    detected face too); without a face track the square is centred on the mouth box, 3x its width.
    """
    frames = _check_frames(frames)
    t, h, w = frames.shape[:3]
    if track.face_boxes is not None:
        x, y, fw, fh = track.face_boxes.T
        cx, cy, half = x + fw / 2, y + fh / 2, scale * np.maximum(fw, fh) / 2
    else:
        b = track.boxes.astype(np.float64)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2 - 0.25 * (b[:, 3] - b[:, 1]) * 2
        half = np.minimum(1.5 * (b[:, 2] - b[:, 0]), min(h, w) / 2)
    pad = int(np.ceil(half.max())) + 1
    padded = np.pad(frames, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.empty((t, side, side, 3), np.uint8)
    for i in range(t):
        x0, y0 = int(round(cx[i] - half[i])) + pad, int(round(cy[i] - half[i])) + pad
        s = max(2, int(round(2 * half[i])))
        out[i] = cv2.resize(padded[i, y0:y0 + s, x0:x0 + s], (side, side), interpolation=cv2.INTER_AREA)
    return out
