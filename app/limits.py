"""The limits the workbench enforces, in one place so the UI can show exactly what it enforces.

Generation on a shared CPU Space is the scarce resource: the caps keep one visitor's request from
starving the queue (a Compare click runs three generations, one of them at 50 steps). Upload caps
bound what the Evaluate tab decodes. Every cap is shown next to the control it limits.
"""

from __future__ import annotations

import os

# Seconds of generated audio-video per request, per tab.
MAX_SECONDS_COMPARE = float(os.environ.get("MF_MAX_SECONDS_COMPARE", 6.0))
MAX_SECONDS_CHUNKS = float(os.environ.get("MF_MAX_SECONDS_CHUNKS", 6.0))
MAX_SECONDS_STREAM = float(os.environ.get("MF_MAX_SECONDS_STREAM", 20.0))
MIN_SECONDS = 0.5

# Step counts offered (the pipeline supports more; these are the ones the method is about).
COMPARE_STEPS = (4, 8, 50)
STEP_CHOICES = (1, 2, 4, 8, 16, 50)

MAX_TEXT_CHARS = 200
MAX_SEED = 2**31 - 1

# Evaluate tab.
MAX_UPLOAD_MB = int(os.environ.get("MF_MAX_UPLOAD_MB", 200))
MAX_EVAL_CLIPS = int(os.environ.get("MF_MAX_EVAL_CLIPS", 64))

# Concurrency: generation is CPU-bound and the model is shared read-only, so two requests at a time
# keep both cores busy without thrashing; the rest wait in the queue and see their position.
GENERATION_CONCURRENCY = int(os.environ.get("MF_GENERATION_CONCURRENCY", 2))
EVAL_CONCURRENCY = 1
# Worker processes that score one evaluation's clips (each pair in its own process, so a crashing
# metric library costs one row and never the server).
EVAL_WORKERS = int(os.environ.get("MF_EVAL_WORKERS", 1))
QUEUE_MAX_SIZE = 32


def limits_markdown() -> str:
    """One line a visitor can read to know what this Space will and will not do."""
    return (
        f"Limits on this Space: Compare up to {MAX_SECONDS_COMPARE:g} s, Chunks up to "
        f"{MAX_SECONDS_CHUNKS:g} s, Stream up to {MAX_SECONDS_STREAM:g} s; text up to "
        f"{MAX_TEXT_CHARS} characters; uploads up to {MAX_UPLOAD_MB} MB and {MAX_EVAL_CLIPS} clips per set."
    )
