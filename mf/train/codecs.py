"""`python -m mf.train codecs --preset tiny`: train the video autoencoder and the audio vocoder.

Owns the command line: the training presets, and by default two 1-thread child processes (video and
audio side by side on 2 cores; ``--sequential`` trains both in this process), assembled into
``--out/{video,audio}`` with the reference sample (``mf.train.codec_data``). The loops are
``mf.train.codec_trainers``; measure the result with ``python -m eval.codec_eval --codecs OUT``.

Data: the procedural corpus, ``mf.data.render_clip(seed, seconds, size)``; training seeds start at 0,
the bars are measured on seeds >= HELDOUT_SEED_START only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mf.codecs.audio import AudioCodec
from mf.codecs.video import VideoCodec
from mf.constants import SAMPLE_RATE
from mf.train.codec_data import REFERENCE_FILE, render_clips, write_reference
from mf.train.codec_trainers import fit_latent_normalisation, train_audio_codec, train_video_codec

TRAIN_PRESETS: dict[str, dict] = {
    "micro": dict(codec="micro", crop_fraction=0.5, train_clips=3, clip_seconds=1.0,
                  video_steps=4, video_batch=4, video_lr=2e-3,
                  audio_steps=4, audio_batch=2, audio_segment_frames=32, audio_lr=1e-3,
                  max_minutes=2.0),
    "tiny": dict(codec="tiny", crop_fraction=0.85, train_clips=256, clip_seconds=2.0,
                 video_steps=4000, video_batch=24, video_lr=2e-3,
                 audio_steps=4000, audio_batch=12, audio_segment_frames=64, audio_lr=1e-3,
                 max_minutes=10.0),
}


# Options `train_in_parallel` passes on to its two child processes unchanged.
FORWARDED_OPTIONS = ("--video-lr", "--audio-lr", "--video-steps", "--audio-steps", "--video-batch",
                     "--audio-batch", "--train-clips", "--crop-fraction", "--device", "--workers")


def train_in_parallel(args, out: Path, run_dir: Path) -> int:
    """Train video and audio in two 1-thread child processes (2 cores -> ~2x faster than in turn),
    then assemble out/{video,audio} from their staging folders."""
    import shutil
    import subprocess

    children = {}
    for part in ("video", "audio"):
        cmd = [sys.executable, "-m", "mf.train", "codecs", "--preset", args.preset, "--parts", part,
               "--threads", "1", "--seed", str(args.seed),
               "--out", str(run_dir / f"stage_{part}"), "--run-dir", str(run_dir / part)]
        if args.max_minutes is not None:
            cmd += ["--max-minutes", str(args.max_minutes)]
        if args.init:
            cmd += ["--init", args.init]
        if args.decoder_only:
            cmd += ["--decoder-only"]
        for flag in FORWARDED_OPTIONS:  # every per-run override reaches both children
            value = getattr(args, flag[2:].replace("-", "_"))
            if value is not None:
                cmd += [flag, str(value)]
        log_path = run_dir / f"{part}.log"
        print(f"[codecs] training {part} in a child process, log: {log_path}", flush=True)
        children[part] = (subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT), log_path)
    failed = [part for part, (proc, _) in children.items() if proc.wait() != 0]
    if failed:
        for part in failed:
            tail = children[part][1].read_text().strip().splitlines()[-5:]
            print(f"codecs: {part} training failed; last lines of {children[part][1]}:\n  " + "\n  ".join(tail),
                  file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for part in ("video", "audio"):
        staged, final = run_dir / f"stage_{part}" / part, out / part
        tmp = out / f".{part}.new"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(staged, tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    shutil.copy2(run_dir / "stage_video" / REFERENCE_FILE, out / REFERENCE_FILE)
    print(f"[codecs] wrote {out}/video and {out}/audio; training summaries in {run_dir}/{{video,audio}}; "
          f"measure them with: python -m eval.codec_eval --codecs {out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "codecs":
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="python -m mf.train codecs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS))
    ap.add_argument("--out", default="assets/codecs", help="where the trained codecs are written / read")
    ap.add_argument("--run-dir", default="runs/codecs", help="loss CSVs and the training summary go here")
    ap.add_argument("--parts", default="video,audio", help="which codecs to train: video,audio")
    ap.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap per part (default: preset)")
    ap.add_argument("--init", default=None, help="continue training from the codecs in this folder")
    ap.add_argument("--decoder-only", action="store_true",
                    help="video: train the decoder only (latents of the --init encoder stay identical)")
    ap.add_argument("--sequential", action="store_true",
                    help="train video then audio in this process instead of two parallel 1-thread processes")
    ap.add_argument("--video-lr", type=float, default=None, help="peak learning rate (default: preset)")
    ap.add_argument("--audio-lr", type=float, default=None, help="peak learning rate (default: preset)")
    ap.add_argument("--video-steps", type=int, default=None, help="optimizer steps (default: preset)")
    ap.add_argument("--audio-steps", type=int, default=None, help="optimizer steps (default: preset)")
    ap.add_argument("--video-batch", type=int, default=None, help="frames per video step (default: preset)")
    ap.add_argument("--audio-batch", type=int, default=None, help="segments per vocoder step (default: preset)")
    ap.add_argument("--train-clips", type=int, default=None, help="corpus clips to train on (default: preset)")
    ap.add_argument("--crop-fraction", type=float, default=None,
                    help="share of video steps on 32x32 crops (default: preset; 0 = full frames, for a GPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--workers", type=int, default=1, help="processes that render the training corpus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = TRAIN_PRESETS[args.preset]
    out, run_dir = Path(args.out), Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"video", "audio"}:
        print(f"codecs: --parts must name video and/or audio, got {args.parts!r}", file=sys.stderr)
        return 2
    if parts == {"video", "audio"} and not args.sequential:
        return train_in_parallel(args, out, run_dir)
    max_minutes = args.max_minutes if args.max_minutes is not None else preset["max_minutes"]
    started = time.perf_counter()
    if args.init:  # continue from trained codecs (e.g. a longer run that must keep the latent space)
        from mf.codecs import load_codecs
        try:
            video, audio = load_codecs(args.init)
        except (FileNotFoundError, ValueError) as exc:
            print(f"codecs: --init: {exc}", file=sys.stderr)
            return 2
    else:
        video = VideoCodec.from_preset(preset["codec"], seed=args.seed)
        audio = AudioCodec.from_preset(preset["codec"], seed=args.seed)
    seeds = list(range(args.train_clips or preset["train_clips"]))
    frames, waves = render_clips(seeds, preset["clip_seconds"], video.frame_size, progress="training",
                                 workers=args.workers)
    if args.device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        video.to(args.device), audio.to(args.device)
    print(f"[codecs] {len(seeds)} training clips: {len(frames)} frames, {sum(map(len, waves)) / SAMPLE_RATE:.0f} s "
          f"of audio ({time.perf_counter() - started:.0f} s)", flush=True)
    summary = dict(preset=args.preset, seed=args.seed, train_seeds=[0, len(seeds) - 1], init=args.init,
                   decoder_only=args.decoder_only, device=args.device,
                   clip_seconds=preset["clip_seconds"], threads=torch.get_num_threads())
    if "video" in parts:
        t0 = time.perf_counter()
        losses = train_video_codec(video, frames, steps=args.video_steps or preset["video_steps"],
                                   batch_size=args.video_batch or preset["video_batch"],
                                   lr=args.video_lr or preset["video_lr"], seed=args.seed, max_minutes=max_minutes,
                                   log_path=run_dir / "video_loss.csv", decoder_only=args.decoder_only,
                                   crop_fraction=preset["crop_fraction"] if args.crop_fraction is None
                                   else args.crop_fraction)
        if not args.decoder_only:  # a frozen encoder keeps its latent statistics
            fit_latent_normalisation(video, frames, seed=args.seed)
        summary.update(video_steps=len(losses), video_batch=args.video_batch or preset["video_batch"],
                       video_train_s=round(time.perf_counter() - t0, 1),
                       video_final_loss=losses[-1])
    if "audio" in parts:
        t0 = time.perf_counter()
        if not args.init:  # the mel normalisation defines the audio latent space: keep it when continuing
            audio.fit_normalisation(waves)
        losses = train_audio_codec(audio, waves, steps=args.audio_steps or preset["audio_steps"],
                                   batch_size=args.audio_batch or preset["audio_batch"],
                                   segment_frames=preset["audio_segment_frames"],
                                   lr=args.audio_lr or preset["audio_lr"],
                                   seed=args.seed, max_minutes=max_minutes, log_path=run_dir / "audio_loss.csv")
        summary.update(audio_steps=len(losses), audio_batch=args.audio_batch or preset["audio_batch"],
                       audio_train_s=round(time.perf_counter() - t0, 1),
                       audio_final_loss=losses[-1])
    summary["train_wall_s"] = round(time.perf_counter() - started, 1)
    video.to("cpu"), audio.to("cpu")
    out.mkdir(parents=True, exist_ok=True)
    write_reference(video, audio, out)
    video.save_pretrained(out / "video")
    audio.save_pretrained(out / "audio")
    print(f"[codecs] wrote {out}/video and {out}/audio ({summary['train_wall_s']:.0f} s)", flush=True)
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
    print(f"[codecs] measure them with: python -m eval.codec_eval --codecs {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
