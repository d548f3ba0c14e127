"""Look at and listen to the corpus: ``python -m mf.data.preview``.

    python -m mf.data.preview --seed 3 --seconds 4 --text "hello there" --out preview.mp4
    python -m mf.data.preview --seed 3 --sheet sheet.png --spectrogram spec.png --wav voice.wav
    python -m mf.data.preview --bench            # render speed, single thread

Writes an mp4 (H.264 + AAC via mf.media) and prints the character and the phone script.
``--sheet`` saves a contact sheet of frames; ``--spectrogram`` a log-spectrogram with the phone
boundaries marked, to check the voice by eye; ``--bench`` measures seconds of audio-video
rendered per CPU second (run it with one thread: it sets the thread count itself).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _limit_threads() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def contact_sheet(frames, columns: int = 10, every: int = 2, scale: int = 2):
    """PIL image: every ``every``-th frame in a grid, each upscaled ``scale`` times."""
    import numpy as np
    from PIL import Image

    picked = frames[::every]
    rows = -(-len(picked) // columns)
    t, h, w, _ = picked.shape
    sheet = np.full((rows * h, columns * w, 3), 255, np.uint8)
    for i, f in enumerate(picked):
        r, c = divmod(i, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = f
    img = Image.fromarray(sheet)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def spectrogram_image(audio, phones, sample_rate: int, width_per_s: int = 200):
    """PIL image of the log-magnitude spectrogram (0-8 kHz, low at the bottom), phone starts in red."""
    import numpy as np
    from PIL import Image, ImageDraw

    n_fft, hop = 512, sample_rate // width_per_s
    pad = np.concatenate([np.zeros(n_fft // 2), audio, np.zeros(n_fft)])
    frames = np.lib.stride_tricks.sliding_window_view(pad, n_fft)[::hop]
    mag = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1))
    db = 20 * np.log10(mag + 1e-6)
    db = np.clip((db - (db.max() - 70)) / 70, 0, 1)
    img = Image.fromarray((255 * db.T[::-1]).astype(np.uint8)).convert("RGB")
    img = img.resize((img.width, img.height))
    draw = ImageDraw.Draw(img)
    for p in phones:
        x = int(p.start * sample_rate / hop)
        draw.line([(x, 0), (x, 12)], fill=(255, 0, 0))
        draw.text((x + 1, 12), p.symbol, fill=(255, 80, 80))
    return img


def bench(seconds: float = 4.0, clips: int = 10, size: int = 64) -> dict:
    """Render ``clips`` clips of ``seconds`` each; return seconds rendered per CPU second."""
    from mf.data import render_clip

    render_clip(0, seconds, size=size)  # warm up imports and caches
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for seed in range(1, clips + 1):
        render_clip(seed, seconds, size=size)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    total = clips * seconds
    return dict(rendered_s=total, cpu_s=cpu, wall_s=wall, per_cpu_s=total / cpu, size=size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mf.data.preview", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--text", default=None, help="sentence to say (default: random babble)")
    ap.add_argument("--character", type=int, default=None, help="character id (default: the seed)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--shift-ms", type=float, default=0.0, help="> 0: audio leads video")
    ap.add_argument("--out", default=None, help="mp4 to write")
    ap.add_argument("--wav", default=None, help="wav to write")
    ap.add_argument("--sheet", default=None, help="PNG contact sheet of frames")
    ap.add_argument("--spectrogram", default=None, help="PNG spectrogram with phone marks")
    ap.add_argument("--bench", action="store_true", help="measure render speed (one thread)")
    args = ap.parse_args(argv)

    if args.bench:
        _limit_threads()
        try:
            import torch
            torch.set_num_threads(1)
        except ImportError:
            pass
        r = bench(size=args.size)
        print(f"rendered {r['rendered_s']:.0f} s of {r['size']}x{r['size']} audio-video in "
              f"{r['cpu_s']:.2f} CPU s ({r['wall_s']:.2f} s wall): "
              f"{r['per_cpu_s']:.1f} s per CPU second (bar: >= 20)")
        return 0

    from mf.data import render_clip
    from mf.media import write_mp4, write_wav

    try:
        clip = render_clip(args.seed, args.seconds, text=args.text, character_id=args.character,
                           size=args.size, shift_ms=args.shift_ms)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"character {clip.character.id}: {clip.character.describe()}")
    print(f"{clip.frames.shape[0]} frames {args.size}x{args.size}, {clip.audio.size} samples, "
          f"shift {clip.shift_ms:g} ms")
    print("script: " + " ".join(f"{p.symbol}[{p.start:.2f}-{p.end:.2f}]" for p in clip.phones))
    for path in (args.out, args.wav, args.sheet, args.spectrogram):  # e.g. outputs/ on a fresh clone
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if args.out:
        print("wrote", write_mp4(args.out, clip.frames, audio=clip.audio))
    if args.wav:
        print("wrote", write_wav(args.wav, clip.audio))
    if args.sheet:
        contact_sheet(clip.frames).save(args.sheet)
        print("wrote", args.sheet)
    if args.spectrogram:
        from mf.constants import SAMPLE_RATE
        spectrogram_image(clip.audio, clip.phones, SAMPLE_RATE).save(args.spectrogram)
        print("wrote", args.spectrogram)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
