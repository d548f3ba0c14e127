"""The project's one face-detector loader (OpenCV's frontal-face Haar cascade).

Owns ``haar_face_cascade``: the cascade shipped inside opencv-python-headless
(``cv2.data.haarcascades``; nothing downloaded), loaded once per process. Used by the real-footage
crop of ``mf.data.datasets`` and by the mouth localizer of ``eval.mouth`` (which then refines the
face with landmarks, ``eval.landmarks``). It lives in ``mf`` because ``mf`` never imports ``eval``.
"""

from __future__ import annotations

import os
from functools import lru_cache

import cv2

HAAR_FILE = "haarcascade_frontalface_default.xml"


@lru_cache(maxsize=1)
def haar_face_cascade() -> cv2.CascadeClassifier:
    """The frontal-face cascade; RuntimeError when the OpenCV install lacks it (not a user error)."""
    path = os.path.join(cv2.data.haarcascades, HAAR_FILE)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"OpenCV's face cascade {HAAR_FILE} could not be loaded (broken OpenCV install)")
    return cascade
