"""Running the shared generation API for the workbench: inputs in, chunks and honest timings out.

Owns the parts of a request that do not depend on Gradio, so they are testable as plain functions:
validating what a visitor typed (seed, length, text, character), running ``mf.pipeline.generate``
once, and turning its chunks into the numbers the UI shows (wall time, real-time factor, network
evaluations, decode share, generation FPS). Media files are written only through ``mf.media``.

Timing rules (so numbers are comparable across the three Compare players):
* ``wall_s`` is measured here around the generator loop: model + decode + pipeline overhead, not
  the mp4 muxing the app does afterwards (reported separately as ``mux_s``).
* ``model_s`` / ``decode_s`` are summed from each chunk's own ``timings``.
* ``rtf`` = wall seconds per second of output (< 1 means faster than real time).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass

import numpy as np

from app import limits
from mf.constants import FPS, SAMPLE_RATE
from mf.media import write_mp4
from mf.pipeline import Chunk, Studio


class InputError(ValueError):
    """A request the workbench refuses, with a message meant for the person who made it."""


def resolve_seed(seed) -> int:
    """``-1`` (or empty) means "pick one for me"; the seed actually used is returned and shown."""
    if seed is None or seed == "":
        seed = -1
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise InputError(f"Seed must be a whole number (or -1 for random), got {seed!r}.") from None
    if value != int(value):
        raise InputError(f"Seed must be a whole number (or -1 for random), got {seed!r}.")
    value = int(value)
    if value == -1:
        return secrets.randbelow(limits.MAX_SEED + 1)
    if not 0 <= value <= limits.MAX_SEED:
        raise InputError(f"Seed must be between 0 and {limits.MAX_SEED}, or -1 for random; got {value}.")
    return value


def check_seconds(seconds, cap: float) -> float:
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise InputError(f"Length must be a number of seconds, got {seconds!r}.") from None
    if not np.isfinite(value) or value < limits.MIN_SECONDS:
        raise InputError(f"Length must be at least {limits.MIN_SECONDS:g} s, got {seconds!r}.")
    if value > cap:
        raise InputError(f"Length {value:g} s is above this Space's limit of {cap:g} s.")
    return value


def check_text(text) -> str | None:
    """Blank text becomes None, which ``mf.pipeline.generate`` reads as "babble a random script drawn from the seed"."""
    if text is None:
        return None
    text = str(text).strip()
    if not text:
        return None
    if len(text) > limits.MAX_TEXT_CHARS:
        raise InputError(f"Text is {len(text)} characters; the limit is {limits.MAX_TEXT_CHARS}.")
    return text


def parse_character(choice) -> int | None:
    """Dropdown value -> character id; ``"random"``/empty -> None (the pipeline picks from the seed)."""
    if choice is None:
        return None
    text = str(choice).strip().lower()
    if text in ("", "random", "none", "-1"):
        return None
    text = text.lstrip("#").split(":")[0].split()[0]
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"Character must be a character number or 'random', got {choice!r}.") from None
    if value < 0:
        raise InputError(f"Character number must be 0 or more, got {value}.")
    return value


def check_steps(steps) -> int:
    try:
        value = int(steps)
    except (TypeError, ValueError):
        raise InputError(f"Steps must be one of {list(limits.STEP_CHOICES)}, got {steps!r}.") from None
    if value not in limits.STEP_CHOICES:
        raise InputError(f"Steps must be one of {list(limits.STEP_CHOICES)}, got {value}.")
    return value


@dataclass
class RunStats:
    """What one generation cost, as shown under each player."""

    steps: int
    seed: int
    seconds: float  # duration of the output (frames / FPS)
    chunks: int
    frames: int
    wall_s: float
    model_s: float
    decode_s: float
    nfe: int
    mux_s: float = 0.0
    trained: bool = True  # False: the studio runs initial weights (shown to the user)

    @property
    def rtf(self) -> float:
        return self.wall_s / self.seconds if self.seconds > 0 else float("inf")

    @property
    def decode_share(self) -> float:
        busy = self.model_s + self.decode_s
        return self.decode_s / busy if busy > 0 else 0.0

    @property
    def gen_fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "steps": self.steps, "seed": self.seed, "seconds": round(self.seconds, 3),
            "chunks": self.chunks, "frames": self.frames, "wall_s": round(self.wall_s, 3),
            "model_s": round(self.model_s, 3), "decode_s": round(self.decode_s, 3),
            "mux_s": round(self.mux_s, 3), "rtf": round(self.rtf, 4),
            "decode_share": round(self.decode_share, 4), "nfe": self.nfe,
            "nfe_per_chunk": round(self.nfe / max(self.chunks, 1), 2),
            "generation_fps": round(self.gen_fps, 2),
            "weights": "trained" if self.trained else "initial (untrained)",
        }

    def markdown(self) -> str:
        speed = "faster" if self.rtf < 1 else "slower"
        return (
            f"**{self.steps} steps** · seed {self.seed}\n\n"
            f"wall **{self.wall_s:.2f} s** for {self.seconds:.2f} s of video · RTF **{self.rtf:.2f}** "
            f"({speed} than real time)\n\n"
            f"network evaluations **{self.nfe}** ({self.nfe / max(self.chunks, 1):.0f} per chunk × "
            f"{self.chunks} chunks) · decode share **{100 * self.decode_share:.0f}%** · "
            f"{self.gen_fps:.0f} frames/s generated"
        )


@dataclass
class GenerationRun:
    """One finished generation: its chunks, the joined media, the mp4 and the stats."""

    chunks: list
    frames: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [T * SAMPLE_RATE / FPS]
    stats: RunStats
    mp4_path: str | None = None


def join_chunks(chunks: list[Chunk]) -> tuple[np.ndarray, np.ndarray]:
    if not chunks:
        raise RuntimeError("the pipeline produced no chunks")
    frames = np.concatenate([np.asarray(c.frames) for c in chunks], axis=0)
    audio = np.concatenate([np.asarray(c.audio, dtype=np.float32).reshape(-1) for c in chunks])
    return frames, audio


def run_generation(studio: Studio, generate_fn, *, steps: int, seed: int, seconds: float, text: str | None,
                   character_id: int | None, out_dir: str | None, name: str = "clip",
                   keep_step_latents: bool = False, cfg_scale: float = 1.0, history=None,
                   mode: str | None = None) -> GenerationRun:
    """Run ``generate`` to the end, then mux one mp4 into ``out_dir`` (skipped when None).

    ``mode``: the sampler mode (``mf.sampler``: "few" = shortcut jumps, "multi" = plain Euler, d = 0);
    None lets the step count choose."""
    start = time.perf_counter()
    extra = {} if mode is None else {"mode": mode}
    chunks = list(generate_fn(studio, steps=steps, seed=seed, seconds=seconds, text=text, character_id=character_id,
                              cfg_scale=cfg_scale, keep_step_latents=keep_step_latents, history=history, **extra))
    wall = time.perf_counter() - start
    prior = list(history or [])
    all_chunks = prior + chunks
    frames, audio = join_chunks(all_chunks)
    new_frames = sum(int(np.asarray(c.frames).shape[0]) for c in chunks)
    stats = RunStats(
        steps=steps, seed=seed, seconds=frames.shape[0] / FPS, chunks=len(chunks), frames=new_frames,
        wall_s=wall,
        model_s=float(sum(c.timings["model_s"] for c in chunks)),
        decode_s=float(sum(c.timings["decode_s"] for c in chunks)),
        nfe=int(sum(c.timings["nfe"] for c in chunks)),
        trained=studio.trained,
    )
    if history:
        # RTF of a continuation is about the part generated now, not the reused prefix.
        stats.seconds = new_frames / FPS
    run = GenerationRun(all_chunks, frames, audio, stats)
    if out_dir is not None:
        t0 = time.perf_counter()
        tag = f"{steps}steps" + ("" if mode is None else f"-{mode}")
        run.mp4_path = write_mp4(os.path.join(out_dir, f"{name}-{tag}-seed{seed}.mp4"),
                                 frames, FPS, audio, SAMPLE_RATE)
        stats.mux_s = time.perf_counter() - t0
    return run
