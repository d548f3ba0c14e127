"""Fit the sync estimator's lip model (``eval.lip_model``) on real talking-face clips published in sync.

    python -m eval.lip_fit FOLDER [FOLDER ...] --out assets/eval/sync/lip_model.npz [--exclude NAME ...]

Each clip (mp4/mov/mkv/avi/webm, at least 2 x MAX_SHIFT + MIN_OVERLAP frames) is read at 25 fps / 16 kHz,
its face tracked with the landmarks (``eval.mouth.locate_mouth``; clips where no face mesh is found are
skipped and listed) and its in-sync frames enter the fit: the spectral bands and the lip geometry at lag 0,
voting frames only, exactly as ``eval.sync.estimate_sync`` prepares them. Writes the weights (.npz) and a
.json beside them with the command, the clips (name, frames), the canonical correlations and the date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import numpy as np

from eval.lip_model import CONTEXT, N_COMPONENTS, RIDGE, fit_lip_model, save_lip_model
from eval.mouth import locate_mouth
from eval.sync import (
    MAX_SHIFT,
    MESH_EDGE,
    MESH_SPEECH_BAND_HZ,
    MIN_OVERLAP,
    audio_envelope,
    bandpass_columns,
    spectral_bands,
    voiced_frames,
)
from eval.sync_validate import clip_paths
from mf.constants import FPS, SAMPLE_RATE
from mf.media import MediaError, read_av


def clip_example(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(bands_bp, lips_bp, votes) of one clip at lag 0, or None when no face mesh is found."""
    clip = read_av(path, fps=FPS, sample_rate=SAMPLE_RATE, need_video=True, need_audio=True)
    t = len(clip.frames)
    if t < 2 * MAX_SHIFT + MIN_OVERLAP:
        raise ValueError(f"{os.path.basename(path)}: {t} frames, too short")
    track = locate_mouth(clip.frames, FPS)
    if track.lips is None:
        return None
    return example_from_signals(clip.audio, track.lips)


def example_from_signals(audio: np.ndarray, lips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bands_bp, lips_bp, votes) from 16 kHz mono audio and the raw lip geometry [T, L] of the same frames."""
    t = len(lips)
    env = audio_envelope(audio, SAMPLE_RATE, t, FPS, MESH_SPEECH_BAND_HZ)
    votes = voiced_frames(env)
    votes[:MESH_EDGE] = votes[t - MESH_EDGE:] = False
    return spectral_bands(audio, SAMPLE_RATE, t, FPS), bandpass_columns(lips, FPS), votes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.lip_fit", description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", help="folders of real talking-face clips published in sync")
    ap.add_argument("--out", required=True, help="weights file to write (.npz; the .json goes beside it)")
    ap.add_argument("--exclude", nargs="*", default=[], help="clip names to leave out")
    args = ap.parse_args(argv)
    try:
        paths = [p for p in clip_paths(args.folders)  # a name is excluded with or without its extension
                 if not {os.path.basename(p), os.path.splitext(os.path.basename(p))[0]} & set(args.exclude)]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    examples, used = [], []
    for path in paths:
        name = os.path.basename(path)
        try:
            ex = clip_example(path)
        except (MediaError, ValueError) as exc:
            print(f"skipped: {exc}")
            continue
        if ex is None:
            print(f"skipped: {name}: no face mesh")
            continue
        examples.append(ex)
        used.append({"clip": name, "frames": int(len(ex[2])), "voting_frames": int(ex[2].sum())})
        print(f"{name}: {len(ex[2])} frames, {int(ex[2].sum())} voting", flush=True)
    try:
        model = fit_lip_model(examples)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    command = "python -m eval.lip_fit " + " ".join(args.folders) + f" --out {args.out}"
    if args.exclude:
        command += " --exclude " + " ".join(args.exclude)
    save_lip_model(model, args.out, {"command": command, "date": datetime.date.today().isoformat(),
                                     "ridge": RIDGE, "clips": used})
    print(f"wrote {args.out}: {len(used)} clips, {model.n_frames} voting frames, context +-{CONTEXT}, "
          f"{N_COMPONENTS} components, canonical correlations {np.round(model.canonical_corr, 3).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
