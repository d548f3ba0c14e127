"""Command line generation: ``python -m mf.generate --steps 4 --seconds 5 --seed 0 [--out clip.mp4]``.

Without ``--out`` the clip goes to ``outputs/clip-<steps>steps-seed<seed>.mp4`` (git ignores ``outputs/``).

Owns the CLI around ``mf.pipeline``: loads the studio (trained checkpoint from ``assets/`` when it
exists, otherwise initial weights, said on stdout and in the JSON), streams the chunks, writes the mp4
with audio through ``mf.media.write_mp4`` and optionally a stats JSON: steps, mode, nfe (network
evaluations actually run, total and per chunk), cache_writes, seconds, wall_seconds, rtf,
first_chunk_seconds, model/decode seconds, seed, character, trained, checkpoint.
Bad arguments exit with status 2 and one line naming the problem (no stack trace).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from mf.configs import MAX_SECONDS

DEFAULT_OUT = os.path.join("outputs", "clip-{steps}steps-seed{seed}.mp4")  # .gitignore covers outputs/


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mf.generate",
                                description="Generate a talking-character clip (video + audio) with Mutual Forcing.")
    p.add_argument("--steps", type=int, default=4, help="denoising steps per chunk (4/8 few-step, 50 multi-step)")
    p.add_argument("--seconds", type=float, default=5.0, help=f"clip length in seconds (max {MAX_SECONDS:g})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text", default=None, help='sentence to say; omit for random babble; "" for no script')
    p.add_argument("--character", type=int, default=None, help="corpus character id (default: from the seed)")
    p.add_argument("--cfg", type=float, default=1.0, dest="cfg_scale", help="classifier-free guidance scale (1 = off)")
    p.add_argument("--mode", choices=("few", "multi"), default=None, help="override the step-count rule")
    p.add_argument("--shift", type=float, default=1.0, help="time-schedule shift (1 = uniform)")
    p.add_argument("--assets", default="assets", help="folder with model/ and codecs/")
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="tiny", help="model preset for initial weights when assets/model is absent")
    p.add_argument("--codec-preset", default="tiny", help="codec preset when assets/codecs is absent")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: the sampler and the decoders already run in two threads)")
    p.add_argument("--out", default=None,
                   help=f"output .mp4 path (default: {DEFAULT_OUT.format(steps='STEPS', seed='SEED')})")
    p.add_argument("--json", default=None, help="optional stats JSON path")
    return p


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from mf.media import write_mp4
    from mf.pipeline import generate, load_studio
    from mf.sampler import make_schedule

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.out is None:
        args.out = DEFAULT_OUT.format(steps=args.steps, seed=args.seed)
    if not args.out.lower().endswith(".mp4"):
        raise ValueError(f"--out must end in .mp4, got {args.out!r}")
    torch.set_num_threads(args.threads)
    studio = load_studio(assets=args.assets, device=args.device, preset=args.preset,
                         codec_preset=args.codec_preset)
    status = "trained checkpoint" if studio.trained else "INITIAL WEIGHTS (untrained model, no assets/model)"
    print(f"model: {status}; {studio.message}")
    schedule = make_schedule(args.steps, mode=args.mode, shift=args.shift)
    frames, audio, per_chunk = [], [], []
    start = time.perf_counter()
    first_chunk = None
    note = ""
    for chunk in generate(studio, steps=args.steps, seed=args.seed, seconds=args.seconds, text=args.text,
                          character_id=args.character, cfg_scale=args.cfg_scale, mode=args.mode, shift=args.shift):
        if first_chunk is None:
            first_chunk = time.perf_counter() - start
            note = chunk.note
        frames.append(chunk.frames)
        audio.append(chunk.audio)
        per_chunk.append(chunk.timings)
    wall = time.perf_counter() - start
    frames_arr, audio_arr = np.concatenate(frames), np.concatenate(audio)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_mp4(args.out, frames_arr, audio=audio_arr)
    seconds = frames_arr.shape[0] / 25.0
    stats = dict(
        steps=args.steps, mode=schedule.mode, shift=schedule.shift, cfg_scale=args.cfg_scale,
        nfe=int(sum(t["nfe"] for t in per_chunk)), nfe_per_chunk=per_chunk[0]["nfe"],
        cache_writes=int(sum(t["cache_writes"] for t in per_chunk)), chunks=len(per_chunk),
        seconds=seconds, wall_seconds=wall, rtf=wall / seconds, first_chunk_seconds=first_chunk,
        model_seconds=float(sum(t["model_s"] for t in per_chunk)),
        decode_seconds=float(sum(t["decode_s"] for t in per_chunk)),
        seed=args.seed, text=args.text, character=args.seed if args.character is None else args.character,
        script_note=note, trained=studio.trained, codecs_trained=studio.codecs_trained,
        weights="trained" if studio.trained else "initial weights", checkpoint=studio.checkpoint,
        device=str(studio.device), threads=torch.get_num_threads(), out=args.out,
    )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(stats, fh, indent=1)
    print(f"wrote {args.out}: {seconds:.2f} s, {stats['nfe']} network evaluations, wall {wall:.2f} s "
          f"(rtf {stats['rtf']:.2f}, first chunk {first_chunk:.2f} s)")
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from mf.media import MediaError

    try:
        run(args)
    except (ValueError, OSError, MediaError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
