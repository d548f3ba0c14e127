"""`python -m eval.long_horizon`: quality per time window of long continuous-speech streams.

    python -m eval.long_horizon --checkpoints assets/model runs/long/mutual/ema --seeds 16 --seconds 25 \
        --steps 4 --json runs/long_horizon.json --markdown runs/long_horizon.md

For held-out corpus seeds ``HELDOUT_SEED_START + i`` (i < --seeds), every checkpoint streams a clip of
--seconds through ``mf.pipeline.generate`` (the app's code path: rolling KV cache, reference sink)
saying one long text (``LONG_TEXT``, ~31-47 s of speech for every corpus voice, so no window is
silence), and the corpus renders the ground truth of the same seed and text. Per window
(default 0-5 / 10-15 / 20-25 s, every frame of every clip: 125 x seeds frames per window, the same N
in every window) it reports, through ``eval.windows.summarize_windows``:
- corpus-FD / KID of generated vs real frames (``eval.features``; "corpus-FD (not standard FID)");
- identity drift (``eval.identity``): mean feature distance of the window's frames to the clip's
  reference frame (the frame the generator is conditioned on), generated and real, and the ratio;
- sync: median |offset| of the weight-free estimator (``eval.sync``) on the window, and the fraction
  of clips within 40 ms.
A "real vs real" row (other held-out seeds, same text) gives the noise floor of the distance at this N.
With two or more checkpoints the first is the baseline and the issue-12 floors are checked for the
others (ratios measured in this one run): corpus-FD <= 0.8x the baseline's in every window,
FD(last window) <= 1.1x FD(first), identity ratio at the last window within [1/1.2, 1.2] (read
two-sided, the stricter reading: far less drift than the real clips means a face that moves less
than a talking one, e.g. frozen on the reference), median |sync offset| <= 40 ms in every window.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from eval.windows import (
    WindowSample,
    summarize_windows,
    window_frame_indices,
    window_name,
)
from mf.constants import FPS, HELDOUT_SEED_START, SAMPLE_RATE

LONG_TEXT = ("Every morning the little lighthouse keeper climbs the winding stairs, polishes the great brass lamp, "
             "and writes a short letter to the sea. He tells it about the gulls that argue on the rocks, the "
             "fishing boats that come home late, the smell of bread from the village bakery, and the quiet songs "
             "his grandmother used to sing by the window. When the evening comes he lights the lamp again, watches "
             "the long beam sweep across the water, and waits for the answer that arrives each night as the sound "
             "of waves against the old stone wall below.")
DEFAULT_WINDOWS = ((0.0, 5.0), (10.0, 15.0), (20.0, 25.0))
FD_RATIO_FLOOR, DRIFT_FLOOR, IDENTITY_BAND, SYNC_FLOOR_MS = 0.8, 1.1, 1.2, 40.0


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def clip_measurements(frames, audio, reference_frame, windows, extractor) -> dict:
    """Per window of one clip: features of every frame, mean identity distance, sync offset (ms)."""
    from eval.identity import feature_distances
    from eval.sync import estimate_sync

    feats = extractor(frames)
    ref = extractor(np.asarray(reference_frame)[None])[0]
    dist = feature_distances(feats, ref)
    out = {}
    for w in windows:
        idx = window_frame_indices(w, len(frames), FPS)
        if len(idx) < FPS:  # under a second of the clip in this window: nothing to score
            continue
        s0, s1 = idx[0] * SAMPLE_RATE // FPS, (idx[-1] + 1) * SAMPLE_RATE // FPS
        sync = estimate_sync(frames[idx[0]: idx[-1] + 1], FPS, audio[s0:s1], SAMPLE_RATE)
        offset = float(sync.offset_ms) if math.isfinite(float(sync.confidence)) else math.nan
        out[window_name(w)] = {"features": feats[idx], "identity": float(dist[idx].mean()), "sync_ms": offset}
    return out


def _samples(gen: list[dict], real: list[dict]) -> list[dict]:
    return [{name: WindowSample(gen_features=g[name]["features"], ref_features=r[name]["features"],
                                gen_identity=g[name]["identity"], ref_identity=r[name]["identity"],
                                sync_offset_ms=g[name]["sync_ms"])
             for name in g if name in r} for g, r in zip(gen, real)]


def real_clips(seeds, seconds: float, size: int, windows, extractor, text: str) -> list[dict]:
    from mf.data import render_clip
    from mf.pipeline import reference_frame

    out = []
    for seed in seeds:
        clip = render_clip(seed, seconds, text=text, size=size)
        ref, _ = reference_frame(seed, size, seed)  # the frame the generator is conditioned on
        out.append(clip_measurements(clip.frames, clip.audio, ref, windows, extractor))
    return out


def generated_clips(studio, seeds, seconds: float, steps: int, windows, extractor, text: str) -> tuple[list, float]:
    from mf.pipeline import generate_clip, reference_frame

    out, t0 = [], time.monotonic()
    size = studio.video_codec.frame_size
    for i, seed in enumerate(seeds):
        frames, audio, _ = generate_clip(studio, steps=steps, seed=seed, seconds=seconds, text=text)
        ref, _ = reference_frame(seed, size, seed)
        out.append(clip_measurements(frames, audio, ref, windows, extractor))
        _log(f"  {studio.checkpoint}: {i + 1}/{len(seeds)} clips ({time.monotonic() - t0:.0f} s)")
    return out, time.monotonic() - t0


def check_floors(baseline: list[dict], new: list[dict]) -> dict:
    """The issue-12 floors of ``new`` against ``baseline`` (window entries of summarize_windows)."""
    fd_ratios = [n["corpus_fd"] / b["corpus_fd"] for b, n in zip(baseline, new)]
    drift = new[-1]["corpus_fd"] / new[0]["corpus_fd"]
    ident = new[-1]["identity_ratio"]
    syncs = [n["sync_abs_offset_ms_median"] for n in new]
    checks = {
        "fd_vs_baseline": {"ratios": fd_ratios, "floor": f"<= {FD_RATIO_FLOOR} in every window",
                           "met": all(r <= FD_RATIO_FLOOR for r in fd_ratios)},
        "fd_last_over_first": {"ratio": drift, "floor": f"<= {DRIFT_FLOOR}", "met": drift <= DRIFT_FLOOR},
        "identity_ratio_last": {"ratio": ident, "floor": f"within [1/{IDENTITY_BAND}, {IDENTITY_BAND}]",
                                "met": 1 / IDENTITY_BAND <= ident <= IDENTITY_BAND},
        "sync_median_ms": {"values": syncs, "floor": f"<= {SYNC_FLOOR_MS:g} in every window",
                           "met": all(s <= SYNC_FLOOR_MS for s in syncs)},
    }
    checks["all_met"] = all(c["met"] for c in checks.values())
    return checks


def _f(x, fmt=".2f") -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def markdown(result: dict) -> str:
    m = result["meta"]
    head = (f"Held-out corpus seeds {m['seeds'][0]}..{m['seeds'][-1]} ({len(m['seeds'])} clips x {m['seconds']:g} s, "
            f"one long text, {m['steps']} steps); N = {m['n_frames']} frames per window and side; command: "
            f"`{m['command']}`")
    columns = ("| system | window | corpus-FD | KID | identity drift gen / real (ratio) "
               "| sync median \\|offset\\| (ms) | within 40 ms |")
    lines = [head, "", columns, "|---|---|---:|---:|---|---:|---:|"]
    for sysname, entries in [("real vs real (other seeds)", result["real_vs_real"])] + \
            [(s["checkpoint"], s["windows"]) for s in result["systems"]]:
        for e in entries:
            lines.append(f"| {sysname} | {e['window']} | {_f(e['corpus_fd'])} | {_f(e['corpus_kid_mean'], '.3f')} | "
                         f"{_f(e['identity_gen_mean'])} / {_f(e['identity_ref_mean'])} ({_f(e['identity_ratio'])}) | "
                         f"{_f(e['sync_abs_offset_ms_median'], '.0f')} | {_f(e['sync_within_40ms_frac'], '.2f')} |")
    warnings = sorted({e["warning"] for s in result["systems"] for e in s["windows"] if e.get("warning")})
    lines += [f"\nWarning: {w}" for w in warnings]
    for s in result["systems"][1:]:
        f = s["floors"]
        lines += ["", (f"Floors for `{s['checkpoint']}` against `{result['systems'][0]['checkpoint']}`: "
                       f"FD ratio per window {', '.join(_f(r) for r in f['fd_vs_baseline']['ratios'])} "
                      f"(<= {FD_RATIO_FLOOR}: {'met' if f['fd_vs_baseline']['met'] else 'NOT met'}); "
                      f"FD last/first {_f(f['fd_last_over_first']['ratio'])} (<= {DRIFT_FLOOR}: "
                      f"{'met' if f['fd_last_over_first']['met'] else 'NOT met'}); identity ratio at the last window "
                      f"{_f(f['identity_ratio_last']['ratio'])} "
                      f"({'met' if f['identity_ratio_last']['met'] else 'NOT met'});"
                      f" sync medians {', '.join(_f(v, '.0f') for v in f['sync_median_ms']['values'])} ms "
                      f"({'met' if f['sync_median_ms']['met'] else 'NOT met'}).")]
    return "\n".join(lines) + "\n"


def run(args) -> dict:
    import torch

    from eval.features import load_extractor
    from mf.codecs import load_codecs
    from mf.pipeline import load_studio

    torch.set_num_threads(max(1, args.threads))
    windows = tuple(args.windows)
    seeds = [HELDOUT_SEED_START + i for i in range(args.seeds)]
    floor_seeds = [HELDOUT_SEED_START + args.seeds + i for i in range(args.seeds)]
    extractor = load_extractor()
    codecs = load_codecs(args.codecs, device=args.device)
    size = codecs[0].frame_size
    t0 = time.monotonic()
    real = real_clips(seeds, args.seconds, size, windows, extractor, args.text)
    other = real_clips(floor_seeds, args.seconds, size, windows, extractor, args.text)
    _log(f"real clips rendered and measured ({time.monotonic() - t0:.0f} s)")
    n = args.frames_per_window
    floor_samples = [{k: WindowSample(gen_features=o[k]["features"], ref_features=r[k]["features"],
                                      gen_identity=o[k]["identity"], ref_identity=r[k]["identity"],
                                      sync_offset_ms=o[k]["sync_ms"]) for k in o if k in r}
                     for o, r in zip(other, real)]
    result = {"meta": {"seeds": seeds, "floor_seeds": floor_seeds, "seconds": args.seconds, "steps": args.steps,
                       "windows": [list(w) for w in windows], "text": args.text, "command": args.command},
              "real_vs_real": summarize_windows(windows, floor_samples, frames_per_window=n), "systems": []}
    for ckpt in args.checkpoints:
        studio = load_studio(model_dir=ckpt, codecs=codecs, device=args.device)
        gen, wall = generated_clips(studio, seeds, args.seconds, args.steps, windows, extractor, args.text)
        result["systems"].append({"checkpoint": ckpt, "wall_s": round(wall, 1),
                                  "windows": summarize_windows(windows, _samples(gen, real), frames_per_window=n)})
    result["meta"]["n_frames"] = result["real_vs_real"][0]["frames_per_window"]
    for s in result["systems"][1:]:
        s["floors"] = check_floors(result["systems"][0]["windows"], s["windows"])
    return result


def position_check(model_dir: str, at_chunks=(125, 750)) -> list[dict]:
    """Same cache content (a full window of chunks), same next chunk, placed at chunk index W (as in
    training) and at each of ``at_chunks``: max |difference| of the predicted velocities. Rotary
    attention sees only time differences, so this is float rounding if positions are truly relative."""
    import torch

    from mf.model import MFTransformer
    from mf.train.flow_matching import conditions
    from mf.train.latents import random_latents

    model = MFTransformer.from_pretrained(model_dir).eval()
    c = model.model_config
    fc, w = c.frames_per_chunk, c.window_chunks
    lat = random_latents(1, (w + 1) * fc, channels=c.video_channels, size=c.latent_size, n_mels=c.n_mels,
                         attr_dim=c.attr_dim, n_phonemes=c.n_phonemes, seed=0)
    batch = lat.sample(1, w + 1, fc, torch.Generator().manual_seed(0))
    cond = conditions(batch)
    outs = {}
    with torch.no_grad():
        for last in (w,) + tuple(at_chunks):
            cache = model.new_cache(cond)
            cache.next_chunk = last - w
            for k in range(w):
                part = batch.chunks(k, k + 1, fc)
                model.write_cache(part.video, part.audio, cond.chunk_slice(k, 1, fc), cache)
            x = batch.chunks(w, w + 1, fc)
            outs[last] = model(x.video, x.audio, torch.full((1, 1), 0.5), torch.zeros(1, 1), cond.chunk_slice(w, 1, fc),
                               kv_cache=cache)
    ref = outs[w]
    return [{"chunk": k, "seconds": k * fc / FPS, "max_abs_diff_video": float((o[0] - ref[0]).abs().max()),
             "max_abs_diff_audio": float((o[1] - ref[1]).abs().max()), "max_abs_u_video": float(ref[0].abs().max()),
             "max_abs_u_audio": float(ref[1].abs().max())} for k, o in outs.items()]


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    return x


def _windows(text: str):
    from eval.score import parse_windows
    return parse_windows(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m eval.long_horizon", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoints", nargs="+", default=["assets/model"],
                   help="model folders; the first is the baseline")
    p.add_argument("--seeds", type=int, default=16, help="held-out seeds (from HELDOUT_SEED_START)")
    p.add_argument("--seconds", type=float, default=25.0)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--windows", type=_windows, default=DEFAULT_WINDOWS, help="e.g. 0-5,10-15,20-25")
    p.add_argument("--frames-per-window", type=int, default=None, help="N (default: all frames of the windows)")
    p.add_argument("--text", default=LONG_TEXT)
    p.add_argument("--codecs", default="assets/codecs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (float32 either way)")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--positions-only", action="store_true",
                   help="only check that a chunk at 20 s / 120 s meets the positions of a chunk at 1.3 s")
    args = p.parse_args(argv)
    if args.positions_only:
        for ckpt in args.checkpoints:
            for r in position_check(ckpt):
                print(f"{ckpt}: chunk {r['chunk']} ({r['seconds']:.1f} s): max |du| video {r['max_abs_diff_video']:.1e}"
                      f" audio {r['max_abs_diff_audio']:.1e} (|u| up to {r['max_abs_u_video']:.2f} / "
                      f"{r['max_abs_u_audio']:.2f})")
        return 0
    args.command = "python -m eval.long_horizon " + " ".join(argv)
    try:
        result = run(args)
    except (ValueError, OSError) as exc:
        print(f"eval.long_horizon: {exc}", file=sys.stderr)
        return 2
    text = markdown(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(_clean(result), indent=2))
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
