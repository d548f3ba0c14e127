"""``render_clip``: one corpus clip (frames + audio + script) from a seed.

Owns: ``CorpusClip`` and ``render_clip``, which tie character, script, prosody, voice and face
together with exact alignment.

Clocks and the shift. The script lives on the video clock: frame i shows the mouth at i / FPS.
The voice is synthesised over a fixed span [-SHIFT_MARGIN_S, seconds + SHIFT_MARGIN_S] of that
clock, always the same span whatever the shift, and the clip's audio is cut from it:
``audio[n] = speech(n / SAMPLE_RATE + shift_s)``. So with ``shift_ms > 0`` the sound of a phoneme
comes ``shift_ms`` earlier than its mouth shape (audio leads, SyncNet's sign), the clip keeps its
length, there is no padding at either end, and two renders of one seed with different shifts are
sample-exact shifted copies. Shifts are rounded to whole samples (1/16 ms); the clip records the
shift actually applied.

Determinism: each part draws from its own generator seeded by (seed, part), so the same seed
gives bitwise-identical clips, and e.g. changing the text does not change the blinks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mf.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from mf.data.characters import MAX_CHARACTER_ID, Character, character
from mf.data.face import render_face
from mf.data.prosody import make_prosody
from mf.data.script import Phone, clip_phones, is_question, pad_with_silence, random_script, text_to_phones
from mf.data.voice import synthesize

SHIFT_MARGIN_S = 0.8          # largest |shift_ms| is 800 ms (20 video frames)
MAX_SECONDS = 600.0
MIN_SIZE, MAX_SIZE = 16, 1024
TEXT_START_S = 0.0            # text clips start speaking at the clip start (after the lead-in silence)

# Salts for the per-part generators.
_SCRIPT, _PROSODY, _VOICE, _FACE = 1, 2, 3, 4


@dataclass
class CorpusClip:
    frames: np.ndarray   # uint8 [T, H, W, 3] at FPS
    audio: np.ndarray    # float32 [N] at SAMPLE_RATE, N == T * SAMPLE_RATE // FPS exactly
    phones: list[Phone]  # script timing on the video clock, cut to [0, T / FPS]
    character: Character
    seed: int
    shift_ms: float      # shift actually applied (whole samples); > 0 = audio leads video
    text: str | None

    @property
    def seconds(self) -> float:
        return self.frames.shape[0] / FPS


def _rng(seed: int, part: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, part, 0x4D46]))


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def n_frames_for(seconds: float) -> int:
    """Video frames of a clip of ``seconds`` (round(seconds * FPS), at least 1)."""
    if not isinstance(seconds, (int, float, np.integer, np.floating)) or isinstance(seconds, bool):
        raise TypeError(f"seconds must be a number, got {seconds!r}")
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise ValueError(f"seconds must be in (0, {MAX_SECONDS:g}], got {seconds}")
    n = int(round(seconds * FPS))
    if n < 1:
        raise ValueError(f"seconds={seconds} is shorter than one video frame (1/{FPS} s)")
    return n


def build_script(seed: int, char: Character, n_frames: int, text: str | None) -> list[Phone]:
    """The clip's script over the whole synthesis span [-SHIFT_MARGIN_S, T/FPS + SHIFT_MARGIN_S]."""
    rng = _rng(seed, _SCRIPT)
    start, end = -SHIFT_MARGIN_S, n_frames / FPS + SHIFT_MARGIN_S
    if text is None:
        return random_script(rng, start, end, rate=char.voice.rate)
    phones = text_to_phones(text, rate=char.voice.rate, rng=rng, start=TEXT_START_S)
    return pad_with_silence(clip_phones(phones, start, end), start, end)


def render_clip(seed: int, seconds: float, *, text: str | None = None,
                character_id: int | None = None, size: int = 64, shift_ms: float = 0.0,
                phones: list[Phone] | None = None) -> CorpusClip:
    """Render one corpus clip. See the module docstring for clocks, shift and determinism.

    seed: >= 0; seeds >= HELDOUT_SEED_START are reserved for evaluation.
    text: None for a random babble script, else the sentence to say (cut at the clip end).
    character_id: None uses the seed as the character id (every clip its own character).
    phones: a ready timed script on the video clock (e.g. ``mf.conditions.script_phones``, what the
    generator was conditioned on) instead of one drawn from ``text``/``seed``; padded with silence.
    """
    if not isinstance(shift_ms, (int, float, np.integer, np.floating)) or not math.isfinite(shift_ms):
        raise ValueError(f"shift_ms must be a finite number, got {shift_ms!r}")
    if abs(shift_ms) > SHIFT_MARGIN_S * 1000:
        raise ValueError(f"|shift_ms| must be <= {SHIFT_MARGIN_S * 1000:g}, got {shift_ms}")
    seed, T, size, char, phones, prosody = _plan(seed, seconds, text, character_id, size, phones)
    n_audio = T * SAMPLES_PER_FRAME
    margin = int(round(SHIFT_MARGIN_S * SAMPLE_RATE))
    full = synthesize(phones, prosody, char.voice, -SHIFT_MARGIN_S, n_audio + 2 * margin,
                      _rng(seed, _VOICE))
    shift_samples = int(round(shift_ms * SAMPLE_RATE / 1000.0))
    audio = np.ascontiguousarray(full[margin + shift_samples: margin + shift_samples + n_audio])
    frames = render_face(char, phones, prosody, T, size, _rng(seed, _FACE))
    return CorpusClip(
        frames=frames,
        audio=audio,
        phones=clip_phones(phones, 0.0, T / FPS),
        character=char,
        seed=seed,
        shift_ms=shift_samples * 1000.0 / SAMPLE_RATE,
        text=text,
    )


def _plan(seed, seconds, text, character_id, size, phones):
    """What frames and voice share: checked arguments, the character, the timed script and its prosody."""
    seed = _check_int("seed", seed, 0, MAX_CHARACTER_ID)
    T = n_frames_for(seconds)
    size = _check_int("size", size, MIN_SIZE, MAX_SIZE)
    if text is not None and not isinstance(text, str):
        raise TypeError(f"text must be a string or None, got {type(text).__name__}")
    char = character(seed if character_id is None else character_id)
    if phones is None:
        phones = build_script(seed, char, T, text)
    else:
        span = (-SHIFT_MARGIN_S, T / FPS + SHIFT_MARGIN_S)
        phones = pad_with_silence(clip_phones(list(phones), *span), *span)
    prosody = make_prosody(phones, _rng(seed, _PROSODY), pitch_range=char.voice.pitch_range,
                           question=is_question(text))
    return seed, T, size, char, phones, prosody


def render_frames(seed: int, seconds: float, *, text: str | None = None, character_id: int | None = None,
                  size: int = 64, phones: list[Phone] | None = None) -> tuple[np.ndarray, Character]:
    """``render_clip``'s frames and character without its voice: (frames uint8 [T, H, W, 3], character).

    The same frames bit for bit (every part draws from its own generator, and the face does not depend
    on the voice), without synthesising the 2 x SHIFT_MARGIN_S of audio around the clip: what a
    reference frame needs (``mf.pipeline.reference_frame``: 1 frame, about 8 ms less per stream)."""
    seed, T, size, char, phones, prosody = _plan(seed, seconds, text, character_id, size, phones)
    return render_face(char, phones, prosody, T, size, _rng(seed, _FACE)), char


def _render_job(job: tuple[int, float, int]) -> CorpusClip:
    seed, seconds, size = job
    return render_clip(seed, seconds, size=size)


def render_clips(seeds, seconds: float, *, size: int = 64, workers: int = 1) -> list[CorpusClip]:
    """render_clip over many seeds, in order; workers > 1 renders in forked processes.

    Every clip depends on its seed alone, so the result is the same for any number of workers
    (a many-core GPU box renders a training corpus in seconds instead of minutes).
    """
    jobs = [(int(seed), float(seconds), int(size)) for seed in seeds]
    if workers <= 1 or len(jobs) < 2:
        return [_render_job(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_render_job, jobs, chunksize=8))
