"""The README's picture: one Compare result as a small animated GIF (ground truth, 4, 8 and 50 steps).

    python -m eval.showcase --out docs/images/compare.gif [--seed 3] [--seconds 2] [--text "..."]

Runs what the app's Compare tab runs (``mf.pipeline.generate`` at each step count on one seed, the
ground truth from ``eval.compare.ground_truth``, the numbers from ``eval.compare.measure``) and
draws the four players side by side, frames scaled 2x without smoothing, each with its numbers
underneath (feature distance, log-mel distance, sync offset; "?" marks an uncertain offset). Wall
time and RTF depend on the machine and its load, so they go to ``<out>.json`` (with every number
drawn) but not into the picture. GIF has no sound: the numbers stand in for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from mf.constants import FPS

SCALE = 2
STEPS = (4, 8, 50)
CAPTION_H = 58


def _panel_frames(frames: np.ndarray, caption: list[str], every: int):
    from PIL import Image, ImageDraw

    out = []
    for f in frames[::every]:
        big = np.repeat(np.repeat(f, SCALE, axis=0), SCALE, axis=1)
        img = Image.new("RGB", (big.shape[1], big.shape[0] + CAPTION_H), "white")
        img.paste(Image.fromarray(big), (0, 0))
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(caption):
            draw.text((3, big.shape[0] + 3 + 13 * i), line, fill=(20, 20, 20))
        out.append(np.asarray(img))
    return out


def make_showcase(out: str, *, seed: int = 3, seconds: float = 2.0, text: str | None = "hello, nice to meet you",
                  assets: str = "assets", every: int = 2) -> dict:
    """Write the GIF (and its numbers as JSON next to it); returns the numbers."""
    import torch
    from PIL import Image

    from eval.compare import ground_truth, measure
    from eval.features import load_extractor
    from mf.pipeline import generate_clip, load_studio

    torch.set_num_threads(1)
    studio = load_studio(assets=assets)
    extractor = load_extractor()
    truth = ground_truth(seed, seconds, text=text, frames_per_chunk=studio.config.frames_per_chunk,
                         size=studio.video_codec.frame_size)
    panels = [_panel_frames(truth.frames, ["ground truth", "(corpus render,", " same script)"], every)]
    numbers = {"seed": seed, "seconds": seconds, "text": text, "runs": {}}
    for steps in STEPS:
        t0 = time.perf_counter()
        frames, audio, _ = generate_clip(studio, steps=steps, seed=seed, seconds=seconds, text=text)
        m = measure(frames, audio, truth.frames, truth.audio, wall_s=time.perf_counter() - t0, extractor=extractor)
        numbers["runs"][str(steps)] = m
        sync = f"sync {m['sync_offset_ms']:+.0f} ms" + ("?" if m["sync_uncertain"] else "")
        panels.append(_panel_frames(frames, [f"{steps} steps",
                                             f"feat {m['feature_distance']:.1f} mel {m['logmel_distance_db']:.1f}dB",
                                             sync], every))
    gap = np.full((panels[0][0].shape[0], 6, 3), 255, np.uint8)
    sheets = []
    for k in range(len(panels[0])):
        row = []
        for p in panels:
            row += [p[k], gap]
        sheets.append(Image.fromarray(np.concatenate(row[:-1], axis=1)))
    sheets[0].save(out, save_all=True, append_images=sheets[1:], duration=int(1000 * every / FPS), loop=0,
                   optimize=True)
    with open(out + ".json", "w") as fh:
        json.dump(numbers, fh, indent=2, default=float)
    return numbers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.showcase", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/images/compare.gif")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--text", default="hello, nice to meet you")
    ap.add_argument("--assets", default="assets")
    args = ap.parse_args(argv)
    numbers = make_showcase(args.out, seed=args.seed, seconds=args.seconds, text=args.text, assets=args.assets)
    for steps, m in numbers["runs"].items():
        print(f"{steps:>3} steps: feature distance {m['feature_distance']:.2f}, "
              f"log-mel {m['logmel_distance_db']:.2f} dB, sync {m['sync_offset_ms']:+.0f} ms"
              f"{' (uncertain)' if m['sync_uncertain'] else ''}, RTF {m['rtf']:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
