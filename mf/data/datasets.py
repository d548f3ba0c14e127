"""Torch datasets: the procedural corpus rendered on the fly, and a folder of the user's own clips.

Owns: ``CorpusDataset`` and ``FolderDataset``. Both yield the same dict, so training code does
not care where clips come from:

    frames       uint8 tensor [T, S, S, 3]    (T = round(seconds * FPS))
    audio        float32 tensor [T * 640]     (16 kHz mono)
    phone_ids    int64 tensor [T * 4]         phoneme id per mel frame (100 Hz), video clock
    attributes   float32 tensor [CHARACTER_ATTR_DIM]
    character_id int   (-1 for real footage)
    seed         int   (corpus seed; for folders the window index)
    shift_ms     float (audio lead applied; 0 for real footage)

Real footage has no transcript and no character attributes: phone_ids are all UNK and
attributes all zero, which the model's conditioning can learn to treat as "unknown".
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mf.constants import FPS, HELDOUT_SEED_START, MELS_PER_FRAME, SAMPLE_RATE, SAMPLES_PER_FRAME
from mf.data.characters import CHARACTER_ATTR_DIM
from mf.data.phonemes import UNK_ID
from mf.data.render import MAX_SIZE, MIN_SIZE, SHIFT_MARGIN_S, n_frames_for, render_clip
from mf.data.script import phone_ids
from mf.media import VIDEO_EXTS


def _as_seeds(seeds) -> np.ndarray:
    if isinstance(seeds, tuple) and len(seeds) == 2 and all(isinstance(v, (int, np.integer)) for v in seeds):
        start, count = (int(v) for v in seeds)
        if count <= 0:
            raise ValueError(f"(start, count) needs count > 0, got {seeds}")
        return np.arange(start, start + count, dtype=np.int64)
    if isinstance(seeds, (range, Sequence, np.ndarray)):
        arr = np.asarray(list(seeds) if isinstance(seeds, range) else seeds)
        if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
            raise ValueError("seeds must be a non-empty 1-d sequence of integers or (start, count)")
        return arr.astype(np.int64)
    raise TypeError(f"seeds must be a range, a sequence of ints or (start, count), got {type(seeds).__name__}")


class CorpusDataset(Dataset):
    """Corpus clips rendered on demand, one per seed (a pure function of the seed: workers agree).

    seeds: range / sequence of ints, or a tuple (start, count) meaning range(start, start + count).
    split: "train" requires every seed < HELDOUT_SEED_START, "eval" every seed >= it, None checks
        nothing. The default keeps evaluation clips out of training by accident.
    shift_ms: a fixed audio lead in ms, or a (low, high) range to draw one per clip (drawn from
        the seed, so deterministic), e.g. for off-sync negatives.
    n_characters: if set, clip ``seed`` uses character ``seed % n_characters`` (a fixed cast);
        by default every seed is its own character.
    text: a sentence every clip says (default: random babble per seed).
    """

    def __init__(self, seeds, seconds: float = 2.0, size: int = 64, *, split: str | None = "train",
                 shift_ms: float | tuple[float, float] = 0.0, n_characters: int | None = None,
                 text: str | None = None):
        self.seeds = _as_seeds(seeds)
        self.n_frames = n_frames_for(seconds)
        self.seconds = seconds
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
        self.size = int(size)
        if self.seeds.min() < 0:
            raise ValueError(f"seeds must be >= 0, got {int(self.seeds.min())}")
        if split == "train" and self.seeds.max() >= HELDOUT_SEED_START:
            raise ValueError(f"split='train' but seed {int(self.seeds.max())} is held out for evaluation "
                             f"(seeds >= {HELDOUT_SEED_START}); pass split='eval' to evaluate on them")
        if split == "eval" and self.seeds.min() < HELDOUT_SEED_START:
            raise ValueError(f"split='eval' needs seeds >= {HELDOUT_SEED_START}, got {int(self.seeds.min())}")
        if split not in ("train", "eval", None):
            raise ValueError(f"split must be 'train', 'eval' or None, got {split!r}")
        limit = SHIFT_MARGIN_S * 1000
        if isinstance(shift_ms, (tuple, list)):
            lo, hi = (float(v) for v in shift_ms)
            if not -limit <= lo <= hi <= limit:
                raise ValueError(f"shift_ms range must satisfy -{limit:g} <= low <= high <= {limit:g}, got {shift_ms}")
            self.shift_range = (lo, hi)
        else:
            if not -limit <= float(shift_ms) <= limit:
                raise ValueError(f"|shift_ms| must be <= {limit:g}, got {shift_ms}")
            self.shift_range = (float(shift_ms), float(shift_ms))
        if n_characters is not None and n_characters < 1:
            raise ValueError(f"n_characters must be >= 1, got {n_characters}")
        self.n_characters = n_characters
        self.text = text

    def __len__(self) -> int:
        return int(self.seeds.size)

    def shift_for(self, seed: int) -> float:
        lo, hi = self.shift_range
        if lo == hi:
            return lo
        return float(np.random.default_rng([seed, 0x5348]).uniform(lo, hi))

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        seed = int(self.seeds[index])
        char_id = None if self.n_characters is None else seed % self.n_characters
        clip = render_clip(seed, self.seconds, text=self.text, character_id=char_id, size=self.size,
                           shift_ms=self.shift_for(seed))
        ids = phone_ids(clip.phones, self.n_frames * MELS_PER_FRAME, FPS * MELS_PER_FRAME)
        return dict(
            frames=torch.from_numpy(clip.frames),
            audio=torch.from_numpy(clip.audio),
            phone_ids=torch.from_numpy(ids),
            attributes=torch.from_numpy(clip.character.attributes()),
            character_id=clip.character.id,
            seed=seed,
            shift_ms=clip.shift_ms,
        )


# ---------------------------------------------------------------------------------------------
# Real footage

def face_box(frames: np.ndarray, n_probe: int = 5) -> tuple[int, int, int] | None:
    """(x0, y0, side) of a square crop around the face, or None when no face is found.

    The Haar detector runs on a few frames spread over the clip; the median box is widened to
    take in hair and chin (talking-head framing) and kept inside the picture.
    """
    import cv2

    from mf.face import haar_face_cascade

    T, H, W, _ = frames.shape
    boxes = []
    for i in np.linspace(0, T - 1, min(n_probe, T)).astype(int):
        gray = cv2.cvtColor(frames[i], cv2.COLOR_RGB2GRAY)
        found = haar_face_cascade().detectMultiScale(gray, scaleFactor=1.15, minNeighbors=5,
                                                     minSize=(max(16, min(H, W) // 10),) * 2)
        if len(found):
            boxes.append(max(found, key=lambda b: b[2] * b[3]))
    if not boxes:
        return None
    x, y, w, h = np.median(np.asarray(boxes, dtype=np.float64), axis=0)
    side = min(int(round(max(w, h) * 1.8)), H, W)
    cx, cy = x + w / 2.0, y + h / 2.0 + 0.1 * h  # a little below the eyes' box centre: the mouth
    x0 = int(np.clip(round(cx - side / 2.0), 0, W - side))
    y0 = int(np.clip(round(cy - side / 2.0), 0, H - side))
    return x0, y0, side


def crop_and_resize(frames: np.ndarray, size: int, crop: str = "face") -> np.ndarray:
    """Square crop (face box, or centre when no face / crop='center') resized to size x size."""
    import cv2

    T, H, W, _ = frames.shape
    box = face_box(frames) if crop == "face" else None
    if box is None:
        side = min(H, W)
        box = ((W - side) // 2, (H - side) // 2, side)
    x0, y0, side = box
    out = np.empty((T, size, size, 3), np.uint8)
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR
    for i in range(T):
        out[i] = cv2.resize(frames[i, y0:y0 + side, x0:x0 + side], (size, size), interpolation=interp)
    return out


class FolderDataset(Dataset):
    """Fixed-length windows over a folder of the user's paired audio-video clips.

    Every file (mp4, mov, mkv, webm, avi, m4v; searched recursively) is decoded once at
    construction through ``mf.media.read_av`` (resampled to FPS and 16 kHz mono), cropped to a
    square (the face found by OpenCV's Haar detector, else the centre), resized to ``size`` and
    kept in memory; ``seconds``-long windows are cut every ``stride_s`` seconds (default: no
    overlap). A file without sound, or one that cannot be read, raises the typed MediaError that
    names it; files shorter than one window are listed in ``self.skipped`` with the reason.
    """

    def __init__(self, root: str | os.PathLike, seconds: float = 2.0, size: int = 64, *,
                 stride_s: float | None = None, crop: str = "face", max_seconds_per_file: float = 600.0):
        from mf.media import read_av

        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: not a folder of video clips")
        if crop not in ("face", "center"):
            raise ValueError(f"crop must be 'face' or 'center', got {crop!r}")
        self.n_frames = n_frames_for(seconds)
        self.size = int(size)
        stride = self.n_frames if stride_s is None else max(1, int(round(n_frames_for(stride_s))))
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files
                       if f.lower().endswith(VIDEO_EXTS))
        if not paths:
            raise FileNotFoundError(f"{root}: no video clips ({', '.join(VIDEO_EXTS)}) found")
        self.paths: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._frames: list[np.ndarray] = []
        self._audio: list[np.ndarray] = []
        self._windows: list[tuple[int, int]] = []  # (file index, first frame)
        for path in paths:
            clip = read_av(path, FPS, SAMPLE_RATE, need_video=True, need_audio=True,
                           max_seconds=max_seconds_per_file)
            T = min(clip.frames.shape[0], clip.audio.shape[0] // SAMPLES_PER_FRAME)
            if T < self.n_frames:
                self.skipped.append((path, f"{T / FPS:.2f} s is shorter than one {seconds} s window"))
                continue
            k = len(self.paths)
            self.paths.append(path)
            self._frames.append(crop_and_resize(clip.frames[:T], self.size, crop))
            self._audio.append(np.ascontiguousarray(clip.audio[:T * SAMPLES_PER_FRAME], dtype=np.float32))
            self._windows += [(k, s) for s in range(0, T - self.n_frames + 1, stride)]
        if not self._windows:
            reasons = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in self.skipped)
            raise ValueError(f"{root}: no clip is long enough for a {seconds} s window ({reasons})")

    def __len__(self) -> int:
        return len(self._windows)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} windows")
        k, s = self._windows[index]
        T = self.n_frames
        frames = self._frames[k][s:s + T]
        audio = self._audio[k][s * SAMPLES_PER_FRAME:(s + T) * SAMPLES_PER_FRAME]
        return dict(
            frames=torch.from_numpy(np.ascontiguousarray(frames)),
            audio=torch.from_numpy(audio.copy()),
            phone_ids=torch.full((T * MELS_PER_FRAME,), UNK_ID, dtype=torch.int64),
            attributes=torch.zeros(CHARACTER_ATTR_DIM, dtype=torch.float32),
            character_id=-1,
            seed=int(index),
            shift_ms=0.0,
        )

    def source_of(self, index: int) -> tuple[str, float]:
        """(path, start second) of a window, for reports."""
        k, s = self._windows[index]
        return self.paths[k], s / FPS
