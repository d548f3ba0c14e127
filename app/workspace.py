"""Per-request scratch folders under one per-app root, so concurrent visitors never share files.

Every request gets ``tempfile.mkdtemp`` under the app's root (named after what it is for), which
is what makes four simultaneous users' outputs separate by construction rather than by care.
The root is passed to ``launch(allowed_paths=...)`` so Gradio may serve what is written there.
Folders older than ``max_age_s`` are removed when new ones are made: a public Space must not fill
its disk with old clips.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time


class Workspace:
    def __init__(self, root: str | None = None, max_age_s: float = 6 * 3600):
        self.root = os.path.abspath(root or tempfile.mkdtemp(prefix="mf-studio-"))
        os.makedirs(self.root, exist_ok=True)
        self.max_age_s = max_age_s

    def new_dir(self, purpose: str) -> str:
        """A fresh, empty folder that belongs to exactly one request."""
        self._sweep()
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in purpose)[:32] or "req"
        return tempfile.mkdtemp(prefix=f"{safe}-", dir=self.root)

    def _sweep(self) -> None:
        cutoff = time.time() - self.max_age_s
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_dir() and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                continue  # another request removed it first
