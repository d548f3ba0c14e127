"""`python -m eval.sheet`: a contact sheet of real vs generated frames and their log-mel
spectrograms on held-out seeds, for the "watched" check of the model card.

Owns nothing else: generation goes through `mf.pipeline.generate_clip` exactly as the ablation
does (same seed -> same character, script and noise), the real rows come from the corpus renderer.
This machine has no display or audio output, so the spectrograms stand in for listening.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from mf.constants import HELDOUT_SEED_START

DEFAULT_SYSTEMS = ("MF 4=assets/model@4", "MF 50=assets/model@50", "B 4=runs/joint/ema@4",
                   "C 4=runs/baseline_c/ema@4")
TILE = 66  # 64 px frame + 2 px gap


def parse_system(text: str) -> tuple[str, Path, int]:
    try:
        name, rest = text.split("=", 1)
        path, steps = rest.rsplit("@", 1)
        return name.strip(), Path(path), int(steps)
    except ValueError:
        raise SystemExit(f"eval.sheet: --system {text!r} is not NAME=WEIGHTS_DIR@STEPS") from None


def spectrogram_image(audio_codec, audio: np.ndarray) -> np.ndarray:
    """uint8 [80, F] image of the normalised log-mel (low frequencies at the bottom)."""
    mel = audio_codec.encode(audio).numpy().T
    return (np.clip((mel + 2.5) / 5.0, 0.0, 1.0)[::-1] * 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.sheet", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 17], help="offsets from HELDOUT_SEED_START")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--every", type=int, default=5, help="show every N-th frame")
    p.add_argument("--system", action="append", default=None, help="NAME=WEIGHTS_DIR@STEPS (repeatable)")
    p.add_argument("--codecs", default="assets/codecs")
    p.add_argument("--out", default="runs/sheet", help="folder for frames.png and spectrograms.png")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from PIL import Image, ImageDraw

    from mf.codecs import load_codecs
    from mf.data import render_clip
    from mf.pipeline import generate_clip, load_studio

    codecs = load_codecs(args.codecs)
    systems = [parse_system(s) for s in (args.system or DEFAULT_SYSTEMS)]
    rows, specs = [], []
    for offset in args.seeds:
        seed = HELDOUT_SEED_START + offset
        real = render_clip(seed, args.seconds, size=64)
        cols = list(range(0, len(real.frames), args.every))
        rows.append((f"real {offset}", real.frames[cols]))
        specs.append((f"real {offset}", spectrogram_image(codecs[1], real.audio)))
        for name, path, steps in systems:
            try:
                studio = load_studio(model_dir=path, codecs=codecs, device="cpu")
            except ValueError as exc:
                print(f"eval.sheet: skipping {name}: {exc}", file=sys.stderr)
                continue
            frames, audio, _ = generate_clip(studio, steps=steps, seed=seed, seconds=args.seconds)
            rows.append((name, frames[cols]))
            specs.append((f"{name} {offset}", spectrogram_image(codecs[1], audio)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    width = 80 + TILE * max(len(f) for _, f in rows)
    sheet = Image.new("RGB", (width, TILE * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, frames) in enumerate(rows):
        draw.text((4, TILE * r + 28), label, fill="black")
        for c, frame in enumerate(frames):
            sheet.paste(Image.fromarray(frame), (80 + TILE * c, TILE * r + 1))
    sheet.save(out / "frames.png", optimize=True)
    spec_sheet = Image.new("L", (480, 90 * len(specs)), 255)
    draw = ImageDraw.Draw(spec_sheet)
    for r, (label, image) in enumerate(specs):
        draw.text((4, 90 * r + 40), label, fill=0)
        spec_sheet.paste(Image.fromarray(image).resize((400, 80)), (80, 90 * r + 5))
    spec_sheet.save(out / "spectrograms.png", optimize=True)
    print(f"wrote {out / 'frames.png'} and {out / 'spectrograms.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
