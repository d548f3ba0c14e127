"""`python -m mf.train codecs --preset tiny`: train the video autoencoder and the audio vocoder, then
measure them; `python -m mf.train codecs --eval` measures the shipped weights only.

Owns the codec training loops, the held-out evaluation (video PSNR, audio PESQ-wb, decode cost) and
the reference sample stored next to the weights (assets/codecs/reference.npz) that the tests use to
check that the shipped weights reproduce their recorded quality offline.

Data: the procedural corpus, `mf.data.render_clip(seed, seconds, size)`. Training seeds start at 0,
a small validation range sits at VALIDATION_SEED_START (still < HELDOUT_SEED_START), and the bars are
measured on seeds >= HELDOUT_SEED_START only.

Both loops are step-scheduled (cosine LR over a fixed number of steps) so that the same seed gives the
same weights; a wall-clock cap (--max-minutes per part) only ends a run early on an overloaded CPU
and says so in the log.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mf.codecs.audio import AudioCodec
from mf.codecs.video import VideoCodec
from mf.constants import FPS, HELDOUT_SEED_START, HOP, SAMPLE_RATE

VALIDATION_SEED_START = 900_000_000
REFERENCE_FILE = "reference.npz"

TRAIN_PRESETS: dict[str, dict] = {
    "micro": dict(codec="micro", crop_fraction=0.5, train_clips=3, clip_seconds=1.0, video_steps=4, video_batch=4, video_lr=2e-3,
                  audio_steps=4, audio_batch=2, audio_segment_frames=32, audio_lr=1e-3, eval_clips=2,
                  max_minutes=2.0),
    "tiny": dict(codec="tiny", crop_fraction=0.85, train_clips=256, clip_seconds=2.0, video_steps=4000, video_batch=24, video_lr=2e-3,
                 audio_steps=4000, audio_batch=12, audio_segment_frames=64, audio_lr=1e-3, eval_clips=50,
                 max_minutes=10.0),
}


# ------------------------------------------------------------------------------------------- data
def corpus_renderer():
    """mf.data.render_clip (the corpus package is another engineer's; say clearly if it is missing)."""
    try:
        from mf.data import render_clip
    except ImportError:
        try:
            from mf.data.render import render_clip
        except ImportError as exc:
            raise SystemExit(f"codecs: cannot import mf.data.render_clip ({exc}); the corpus is required") from exc
    return render_clip


def render_clips(seeds, seconds: float, size: int, progress: str | None = None, workers: int = 1):
    """Render corpus clips; returns (frames uint8 [sum T, H, W, 3], list of float32 waves)."""
    corpus_renderer()  # fail early and clearly if the corpus package is missing
    from mf.data import render_clips as render_many

    started = time.perf_counter()
    clips = render_many(seeds, seconds, size=size, workers=workers)
    if progress:
        print(f"[codecs] rendered {len(clips)} {progress} clips with {workers} worker(s) "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return np.concatenate([c.frames for c in clips]), [np.asarray(c.audio, dtype=np.float32) for c in clips]


def cosine_lr(step: int, progress: float, peak: float, warmup: int = 50, floor_ratio: float = 0.03) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay over training progress in [0, 1]."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (floor_ratio + (1 - floor_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Progress:
    """Training progress = max(step fraction, wall-clock fraction).

    On a quiet machine the step count binds and the run is deterministic (same seed, same weights);
    on an overloaded shared CPU the wall-clock cap binds and the LR schedule still decays to its floor
    before the cap instead of being cut off mid-schedule.
    """

    def __init__(self, steps: int, max_minutes: float | None):
        self.steps, self.budget_s = steps, None if max_minutes is None else 60.0 * max_minutes
        self.started = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self, step: int) -> float:
        by_time = 0.0 if self.budget_s is None else self.elapsed / self.budget_s
        return max(step / self.steps, by_time)

    def begin_step(self, step: int, opt: torch.optim.Optimizer, peak_lr: float, tag: str) -> float | None:
        """Progress of ``step`` with the optimizer's LR set for it; None (and a log line) once capped."""
        done = self(step)
        if done >= 1.0:  # only the time budget can get here: step < steps inside the loop
            print(f"[codecs/{tag}] wall-clock cap {self.budget_s / 60.0:g} min reached at step {step}/{self.steps}",
                  flush=True)
            return None
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, done, peak_lr, warmup=min(50, max(1, self.steps // 10)))
        return done


class CsvLog:
    def __init__(self, path: Path | None, fields: list[str]):
        self.path, self.fields = path, fields
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(fields)

    def write(self, row: dict) -> None:
        if self.path is not None:
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow([row[k] for k in self.fields])


# ------------------------------------------------------------------------------------------- video
def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def train_video_codec(codec: VideoCodec, frames: np.ndarray, *, steps: int, batch_size: int, lr: float,
                      seed: int = 0, crop_fraction: float = 0.5, max_minutes: float | None = None,
                      log_path: Path | None = None, log_every: int = 25, decoder_only: bool = False) -> list[float]:
    """Train the autoencoder on uint8 frames [N,H,W,3]; returns the per-step losses.

    decoder_only=True freezes the encoder, so the latent space (and every latent a generator was
    trained on) stays exactly the same while the decoder keeps improving.

    The first `crop_fraction` of the steps see 32x32 crops on the 8-pixel latent grid (4x cheaper per
    sample; the net is convolutional so the crop's latents are the full frame's latents, borders
    aside), the rest full frames so the borders are learnt too. Loss: MSE (what PSNR measures) +
    0.2 L1 (sharper edges early) + a tiny latent L2 that keeps latents inside the decoder's tanh clamp.
    """
    gen = torch.Generator().manual_seed(seed)
    model = codec.autoencoder.train()
    if decoder_only:
        model.encoder.eval().requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    device = codec.device  # the whole uint8 pool moves once (1.3 GB for 100k frames: fine on a GPU)
    pool = torch.from_numpy(frames).to(device)
    size, grid = codec.frame_size, codec.downsample
    log = CsvLog(log_path, ["step", "elapsed_s", "lr", "loss", "psnr_db", "crop"])
    losses, progress = [], Progress(steps, max_minutes)
    for step in range(steps):
        done = progress.begin_step(step, opt, lr, "video")
        if done is None:
            break
        idx = torch.randint(0, pool.shape[0], (batch_size,), generator=gen).to(device)
        pixels = pool[idx].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        crop = done < crop_fraction and size >= 4 * grid
        weight = torch.ones(1, 1, *pixels.shape[2:], device=device)
        if crop:
            half = size // 2
            oy, ox = (torch.randint(0, (size - half) // grid + 1, (2,), generator=gen) * grid).tolist()
            pixels = pixels[:, :, oy : oy + half, ox : ox + half]
            # A crop edge inside the frame is zero-padded like a true frame border; the pixels next
            # to such a fake border are not what the full frame would give, so they carry no loss.
            weight = torch.ones(1, 1, half, half, device=device)
            if oy > 0:
                weight[..., :grid, :] = 0
            if oy + half < size:
                weight[..., -grid:, :] = 0
            if ox > 0:
                weight[..., :, :grid] = 0
            if ox + half < size:
                weight[..., :, -grid:] = 0
        with torch.set_grad_enabled(not decoder_only):
            latents = codec.encode_raw(pixels)
        recon = codec.decode_raw(latents)
        norm = weight.sum() * pixels.shape[0] * pixels.shape[1]
        mse = ((recon - pixels) ** 2 * weight).sum() / norm
        loss = mse + 0.2 * ((recon - pixels).abs() * weight).sum() / norm + 1e-4 * latents.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        elapsed = progress.elapsed
        if step % log_every == 0 or step == steps - 1:
            psnr = 10 * math.log10(4.0 / max(float(mse.detach()), 1e-12))  # pixels span 2.0 in [-1, 1]
            log.write(dict(step=step, elapsed_s=round(elapsed, 1), lr=f"{opt.param_groups[0]['lr']:.2e}",
                           loss=f"{losses[-1]:.5f}", psnr_db=f"{psnr:.2f}", crop=int(crop)))
            if log_path is not None:
                print(f"[codecs/video] step {step}/{steps} loss {losses[-1]:.4f} psnr {psnr:.2f} dB "
                      f"({elapsed:.0f} s)", flush=True)
    codec.autoencoder.eval().requires_grad_(True)
    return losses


def fit_latent_normalisation(codec: VideoCodec, frames: np.ndarray, max_frames: int = 2048, seed: int = 0) -> None:
    """Per-channel mean/std of the raw latents over (a sample of) the training frames."""
    rng = np.random.default_rng(seed)
    sample = frames[np.sort(rng.choice(len(frames), min(max_frames, len(frames)), replace=False))]
    codec.latent_mean = torch.zeros(codec.latent_channels)
    codec.latent_std = torch.ones(codec.latent_channels)
    raw = codec.encode(sample)  # identity normalisation at this point -> raw latents
    codec.latent_mean = raw.mean(dim=(0, 2, 3)).cpu()
    codec.latent_std = raw.std(dim=(0, 2, 3)).clamp_min(1e-3).cpu()


# ------------------------------------------------------------------------------------------- audio
STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256))


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Spectral convergence + log-magnitude L1, averaged over three STFT resolutions."""
    total = pred.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=pred.device)
        sp = torch.stft(pred, n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-5)
        st = torch.stft(target, n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-5)
        convergence = torch.linalg.norm(st - sp, dim=(1, 2)) / torch.linalg.norm(st, dim=(1, 2)).clamp_min(1e-5)
        total = total + convergence.mean() + F.l1_loss(sp.log(), st.log())
    return total / len(STFT_RESOLUTIONS)


def vocoder_loss(codec: AudioCodec, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    mel_l1 = F.l1_loss(codec.log_mel(pred), codec.log_mel(target))
    return mel_l1 + multi_resolution_stft_loss(pred, target)


def train_audio_codec(codec: AudioCodec, waves: list[np.ndarray], *, steps: int, batch_size: int,
                      segment_frames: int, lr: float, seed: int = 0, max_minutes: float | None = None,
                      log_path: Path | None = None, log_every: int = 25) -> list[float]:
    """Train the vocoder on random segments of the training waves; returns per-step losses.

    The input is exactly what encode() produces (normalised log-mel), so the vocoder learns to invert
    the generator's audio latent space. Losses: log-mel L1 + multi-resolution STFT (no adversary:
    it would double the cost per step and the corpus voice is synthetic and clean).
    """
    gen = torch.Generator().manual_seed(seed)
    segment = segment_frames * HOP
    usable = [torch.from_numpy(w).to(codec.device) for w in waves if len(w) >= segment]
    if not usable:
        raise ValueError(f"no training wave is at least {segment} samples long")
    vocoder = codec.vocoder.train()
    opt = torch.optim.AdamW(vocoder.parameters(), lr=lr, betas=(0.8, 0.99), weight_decay=0.0)
    log = CsvLog(log_path, ["step", "elapsed_s", "lr", "loss"])
    losses, progress = [], Progress(steps, max_minutes)
    for step in range(steps):
        done = progress.begin_step(step, opt, lr, "audio")
        if done is None:
            break
        batch = []
        for _ in range(batch_size):
            wave = usable[int(torch.randint(0, len(usable), (1,), generator=gen))]
            start = int(torch.randint(0, (len(wave) - segment) // HOP + 1, (1,), generator=gen)) * HOP
            batch.append(wave[start : start + segment])
        target = torch.stack(batch)
        with torch.no_grad():
            mel = codec.normalise(codec.log_mel(target))  # [B, F, n_mels]
        pred = vocoder(mel.transpose(1, 2))
        loss = vocoder_loss(codec, pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vocoder.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        elapsed = progress.elapsed
        if step % log_every == 0 or step == steps - 1:
            log.write(dict(step=step, elapsed_s=round(elapsed, 1), lr=f"{opt.param_groups[0]['lr']:.2e}",
                           loss=f"{losses[-1]:.5f}"))
            if log_path is not None:
                print(f"[codecs/audio] step {step}/{steps} loss {losses[-1]:.4f} ({elapsed:.0f} s)", flush=True)
    codec.vocoder.eval()
    return losses


# ------------------------------------------------------------------------------------------- evaluation
def pesq_wb(reference: np.ndarray, degraded: np.ndarray) -> float | None:
    """PESQ-wb at 16 kHz; None when the reference has no speech (pesq's NoUtterancesError)."""
    from pesq import pesq
    from pesq.cypesq import NoUtterancesError

    n = max(len(reference), len(degraded))  # pad, never truncate
    ref = np.pad(reference, (0, n - len(reference))).astype(np.float64)
    deg = np.pad(degraded, (0, n - len(degraded))).astype(np.float64)
    try:
        return float(pesq(SAMPLE_RATE, ref, deg, "wb"))
    except NoUtterancesError:
        return None


def decode_cost(video: VideoCodec, audio: AudioCodec, video_latents: torch.Tensor, mel: torch.Tensor,
                frames_per_chunk: int = 4, repeats: int = 3) -> dict:
    """Seconds of decode per second of audio-video, decoding chunk by chunk as the pipeline does."""
    mels_per_chunk = frames_per_chunk * audio.frames_per_video_frame
    n_chunks = video_latents.shape[0] // frames_per_chunk
    video.decode_uint8(video_latents[:frames_per_chunk])  # warm-up (allocator, oneDNN primitives)
    audio.decode(mel[:mels_per_chunk])
    best_video = best_audio = float("inf")
    for _ in range(repeats):  # best of N: the CPU is shared, the minimum is the codec's own cost
        t0 = time.perf_counter()
        for k in range(n_chunks):
            video.decode_uint8(video_latents[k * frames_per_chunk : (k + 1) * frames_per_chunk])
        t1 = time.perf_counter()
        for k in range(n_chunks):
            audio.decode(mel[k * mels_per_chunk : (k + 1) * mels_per_chunk])
        t2 = time.perf_counter()
        best_video, best_audio = min(best_video, t1 - t0), min(best_audio, t2 - t1)
    seconds = n_chunks * frames_per_chunk / FPS
    return dict(chunk_frames=frames_per_chunk, chunks=n_chunks, media_seconds=seconds,
                video_s_per_s=best_video / seconds, audio_s_per_s=best_audio / seconds,
                ratio=(best_video + best_audio) / seconds,
                per_chunk_ms=1e3 * (best_video + best_audio) / n_chunks, threads=torch.get_num_threads())


def evaluate(video: VideoCodec, audio: AudioCodec, *, n_clips: int, seconds: float = 2.0,
             griffin_lim_clips: int = 5) -> dict:
    """Video PSNR and audio PESQ-wb on held-out corpus seeds, plus the decode cost ratio."""
    render_clip = corpus_renderer()
    psnrs, pesqs, gl_pesqs, skipped = [], [], [], 0
    for i in range(n_clips):
        clip = render_clip(HELDOUT_SEED_START + i, seconds, size=video.frame_size)
        latents = video.encode(clip.frames)
        psnrs.append(psnr_uint8(clip.frames, video.decode_uint8(latents)))
        mel = audio.encode(clip.audio)
        score = pesq_wb(clip.audio, audio.decode(mel))
        if score is None:
            skipped += 1
        else:
            pesqs.append(score)
            if len(gl_pesqs) < griffin_lim_clips:
                gl_pesqs.append(pesq_wb(clip.audio, audio.decode(mel, mode="griffinlim")))
    cost_clip = render_clip(HELDOUT_SEED_START, 1.28, size=video.frame_size)  # 32 frames = 8 chunks
    cost = decode_cost(video, audio, video.encode(cost_clip.frames), audio.encode(cost_clip.audio))
    return dict(
        heldout_seeds=[HELDOUT_SEED_START, HELDOUT_SEED_START + n_clips - 1], clip_seconds=seconds,
        video_psnr_db_mean=float(np.mean(psnrs)), video_psnr_db_min=float(np.min(psnrs)), video_clips=len(psnrs),
        audio_pesq_wb_mean=float(np.mean(pesqs)) if pesqs else None,
        audio_pesq_wb_min=float(np.min(pesqs)) if pesqs else None, audio_clips=len(pesqs),
        audio_clips_without_speech=skipped,
        griffin_lim_pesq_wb_mean=float(np.mean(gl_pesqs)) if gl_pesqs else None, griffin_lim_clips=len(gl_pesqs),
        decode=cost,
        bars=dict(video_psnr_db=30.0, audio_pesq_wb=3.0, decode_ratio=0.1),
    )


def write_reference(video: VideoCodec, audio: AudioCodec, out: Path) -> None:
    """Store a small fixed held-out sample and its reconstruction metrics next to the weights."""
    render_clip = corpus_renderer()
    clip = render_clip(HELDOUT_SEED_START, 0.64, size=video.frame_size)
    frames, wave = clip.frames[:4], clip.audio[: 64 * HOP].astype(np.float32)
    np.savez_compressed(out / REFERENCE_FILE, frames=frames, audio=wave)
    mel = audio.encode(wave)
    decoded = audio.decode(mel)
    video.reference = dict(file=f"../{REFERENCE_FILE}", psnr_db=round(psnr_uint8(frames, video.decode_uint8(video.encode(frames))), 4))
    audio.reference = dict(file=f"../{REFERENCE_FILE}",
                           decoded_rms=round(float(np.sqrt(np.mean(decoded.astype(np.float64) ** 2))), 6),
                           mel_roundtrip_l1=round(float((audio.encode(decoded) - mel).abs().mean()), 6))


# ------------------------------------------------------------------------------------------- CLI
# Options `train_in_parallel` passes on to its two child processes unchanged.
FORWARDED_OPTIONS = ("--video-lr", "--audio-lr", "--video-steps", "--audio-steps", "--video-batch",
                     "--audio-batch", "--train-clips", "--crop-fraction", "--device", "--workers")


def train_in_parallel(args, out: Path, run_dir: Path, n_eval: int) -> int:
    """Train video and audio in two 1-thread child processes (2 cores -> ~2x faster than in turn),
    then assemble out/{video,audio} from their staging folders and evaluate."""
    import shutil
    import subprocess

    children = {}
    for part in ("video", "audio"):
        cmd = [sys.executable, "-m", "mf.train", "codecs", "--preset", args.preset, "--parts", part,
               "--threads", "1", "--no-eval", "--seed", str(args.seed),
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
    print(f"[codecs] wrote {out}/video and {out}/audio", flush=True)
    if args.no_eval:
        return 0
    from mf.codecs import load_codecs
    video, audio = load_codecs(out)
    report = evaluate(video, audio, n_clips=n_eval)
    report["training"] = {part: json.loads((run_dir / part / "train_summary.json").read_text())
                          for part in ("video", "audio")}
    (run_dir / "eval.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "codecs":
        argv = argv[1:]
    ap = argparse.ArgumentParser(prog="python -m mf.train codecs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS))
    ap.add_argument("--out", default="assets/codecs", help="where the trained codecs are written / read")
    ap.add_argument("--run-dir", default="runs/codecs", help="loss CSVs and the evaluation JSON go here")
    ap.add_argument("--parts", default="video,audio", help="which codecs to train: video,audio")
    ap.add_argument("--eval", action="store_true", help="only evaluate the codecs in --out on held-out clips")
    ap.add_argument("--eval-clips", type=int, default=None, help="held-out clips for the bars (default: preset)")
    ap.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap per part (default: preset)")
    ap.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation after training")
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda (training only; evaluation runs on the CPU)")
    ap.add_argument("--workers", type=int, default=1, help="processes that render the training corpus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = TRAIN_PRESETS[args.preset]
    out, run_dir = Path(args.out), Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    n_eval = args.eval_clips or preset["eval_clips"]

    if args.eval:
        from mf.codecs import load_codecs
        try:
            video, audio = load_codecs(out)
        except (FileNotFoundError, ValueError) as exc:
            print(f"codecs: {exc}", file=sys.stderr)
            return 2
        report = evaluate(video, audio, n_clips=n_eval)
        (run_dir / "eval.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
        return 0

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"video", "audio"}:
        print(f"codecs: --parts must name video and/or audio, got {args.parts!r}", file=sys.stderr)
        return 2
    if parts == {"video", "audio"} and not args.sequential:
        return train_in_parallel(args, out, run_dir, n_eval)
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
                                   segment_frames=preset["audio_segment_frames"], lr=args.audio_lr or preset["audio_lr"],
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
    if args.no_eval:
        return 0
    report = evaluate(video, audio, n_clips=n_eval)
    report["training"] = summary
    (run_dir / "eval.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
