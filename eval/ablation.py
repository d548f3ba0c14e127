"""`python -m eval.ablation`: the systems x steps x metrics table of the model card.

For N held-out corpus seeds (>= HELDOUT_SEED_START, never trained on), every system generates one
clip per seed with the pipeline (`mf.pipeline.generate`, the app's code path: same seed -> same
character, script and noise for every system), and we measure:
  sync |ms|    median |offset| of the weight-free sync estimator (eval.sync.estimate_sync) between
               the generated audio and video (the corpus itself is in sync: offset 0)
  sync conf    median confidence of that estimate
  corpus-FD    Fréchet distance of the generated frames to real corpus frames of the same seeds,
               with the project's offline feature extractor (eval.frechet.corpus_frechet); KID beside
  s/chunk      model seconds per chunk (network only, from the chunk timings)
Rows: Mutual Forcing at 4 / 8 / 50 steps (same weights), baseline B (stage-2 weights, no
self-distillation) at 4 and 50 steps, and baselines C / E at 4 steps when their weights exist.
A "real vs real" row (another set of held-out corpus seeds) gives the metric's noise floor.

Output: a markdown table (stdout and --markdown), and --json with every per-clip number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mf.constants import FPS, HELDOUT_SEED_START, SAMPLE_RATE

DEFAULT_SYSTEMS = (
    # name, weights folder, steps
    ("Mutual Forcing", "assets/model", (4, 8, 50)),
    ("B: stage 2, no self-distillation", "runs/joint/ema", (4, 50)),
    ("C: ShortCut + teacher forcing", "runs/baseline_c/ema", (4,)),
    ("E: Self-Forcing DMD, frozen teacher", "runs/baseline_e/ema", (4,)),
)


class AblationError(Exception):
    pass


def measure_system(studio, steps: int, seeds: list[int], seconds: float, log) -> dict:
    from eval.sync import estimate_sync
    from mf.pipeline import generate_clip

    rows, frames_all = [], []
    t0 = time.monotonic()
    for i, seed in enumerate(seeds):
        frames, audio, chunks = generate_clip(studio, steps=steps, seed=seed, seconds=seconds)
        sync = estimate_sync(frames, FPS, audio, SAMPLE_RATE)
        model_s = float(np.mean([c.timings["model_s"] for c in chunks]))
        rows.append({"seed": seed, "offset_ms": float(sync.offset_ms), "confidence": float(sync.confidence),
                     "flag": sync.flag, "model_s_per_chunk": model_s})
        frames_all.append(frames[:: max(1, len(frames) // 8)])  # 8 frames per clip for the FD
        if log and (i + 1) % 10 == 0:
            log(f"  {i + 1}/{len(seeds)} clips ({time.monotonic() - t0:.0f} s)")
    return {"rows": rows, "frames": frames_all}


def summarise(rows: list[dict]) -> dict:
    offsets = np.array([abs(r["offset_ms"]) for r in rows if r["flag"] not in ("too_short", "silent_audio",
                                                                                "static_video")])
    conf = np.array([r["confidence"] for r in rows if np.isfinite(r["confidence"])])
    return {"sync_abs_ms_median": float(np.median(offsets)) if offsets.size else float("nan"),
            "sync_conf_median": float(np.median(conf)) if conf.size else float("nan"),
            "n_sync": int(offsets.size),
            "model_s_per_chunk": float(np.mean([r["model_s_per_chunk"] for r in rows]))}


def real_frames(seeds: list[int], seconds: float, size: int) -> tuple[list[np.ndarray], list[dict]]:
    from eval.sync import estimate_sync
    from mf.data import render_clip

    frames, rows = [], []
    for seed in seeds:
        clip = render_clip(seed, seconds, size=size)
        sync = estimate_sync(clip.frames, FPS, clip.audio, SAMPLE_RATE)
        rows.append({"seed": seed, "offset_ms": float(sync.offset_ms), "confidence": float(sync.confidence),
                     "flag": sync.flag, "model_s_per_chunk": 0.0})
        frames.append(clip.frames[:: max(1, len(clip.frames) // 8)])
    return frames, rows


def markdown_table(results: list[dict], meta: dict) -> str:
    lines = [f"Held-out corpus seeds {meta['first_seed']}..{meta['first_seed'] + meta['clips'] - 1} "
             f"({meta['clips']} clips x {meta['seconds']} s); command: `{meta['command']}`", "",
             "| system | steps | sync median \\|offset\\| (ms) | sync conf (median) | corpus-FD | KID "
             "| model s/chunk |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s = r["summary"]
        lines.append(f"| {r['system']} | {r['steps'] or '-'} | {s['sync_abs_ms_median']:.1f} | "
                     f"{s['sync_conf_median']:.3f} | {r['fd']:.2f} | {r['kid']:.4f} | {s['model_s_per_chunk']:.3f} |")
    return "\n".join(lines)


def training_table(runs: Path) -> str:
    """Markdown table of the training stages from runs/<stage>/summary.json (whatever exists)."""
    lines = ["| stage | steps | wall time (min) | batch x chunks | lr | final losses (mean of last 20 steps) |",
             "|---|---:|---:|---|---:|---|"]
    total = 0.0
    for stage in ("unimodal", "joint", "mutual", "baseline_c", "baseline_e"):
        path = Path(runs) / stage / "summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        total += s["wall_s"] if stage in ("unimodal", "joint", "mutual") else 0.0
        losses = ", ".join(f"{k} {v:.4g}" for k, v in s.get("final_losses", {}).items()
                           if k not in ("grad_norm", "fake_grad_norm", "history", "shortcut_substeps"))
        lines.append(f"| {stage} | {s['steps']} | {s['wall_s'] / 60:.1f} | {s['batch_size']} x {s['n_chunks']} | "
                     f"{s['lr']:g} | {losses} |")
    lines.append(f"\nStages 1-3 together: {total / 60:.1f} min of wall time (excluding the latent-set build).")
    return "\n".join(lines)


def update_card(card: Path, section: str, text: str) -> None:
    """Replace the text between <!-- section:begin --> and <!-- section:end --> in the model card."""
    body = card.read_text()
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    if begin not in body or end not in body:
        raise AblationError(f"{card}: markers {begin} ... {end} not found")
    head, rest = body.split(begin, 1)
    _, tail = rest.split(end, 1)
    card.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.ablation", description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=50)
    p.add_argument("--seconds", type=float, default=3.0, help="clip length (the sync estimator flags < 2 s)")
    p.add_argument("--first-seed", type=int, default=HELDOUT_SEED_START)
    p.add_argument("--codecs", default="assets/codecs")
    p.add_argument("--mf", default="assets/model", help="Mutual Forcing weights")
    p.add_argument("--runs", default="runs", help="where the baselines' runs/<stage>/ema live")
    p.add_argument("--steps", default=None, help="restrict every system to these steps, e.g. 4,50")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--card", default=None, help="also write the tables into this model card (between markers)")
    p.add_argument("--training-only", action="store_true",
                   help="only refresh the training table of --card from runs/*/summary.json (no generation)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.training_only:
        if not args.card:
            print("eval.ablation: --training-only needs --card PATH", file=sys.stderr)
            return 2
        try:
            update_card(Path(args.card), "training", training_table(Path(args.runs)))
        except (AblationError, OSError) as exc:
            print(f"eval.ablation: {exc}", file=sys.stderr)
            return 2
        print(training_table(Path(args.runs)))
        return 0
    if args.first_seed < HELDOUT_SEED_START:
        print(f"eval.ablation: --first-seed must be >= {HELDOUT_SEED_START} (held-out seeds)", file=sys.stderr)
        return 2
    if args.clips < 2:
        print("eval.ablation: --clips must be >= 2 (a Fréchet distance needs a set)", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)  # noqa: E731
    try:
        from eval.features import load_extractor
        from eval.frechet import corpus_frechet
        from mf.codecs import load_codecs
        from mf.pipeline import load_studio

        codecs = load_codecs(args.codecs)
        extractor = load_extractor()
        seeds = list(range(args.first_seed, args.first_seed + args.clips))
        size = codecs[0].frame_size
        ref_frames, ref_rows = real_frames(seeds, args.seconds, size)
        floor_frames, floor_rows = real_frames([s + args.clips for s in seeds], args.seconds, size)
        only = None if args.steps is None else {int(s) for s in args.steps.split(",")}
        systems = [(n, args.mf if d == "assets/model" else str(Path(args.runs) / Path(d).relative_to("runs")), st)
                   for n, d, st in DEFAULT_SYSTEMS]
        fd_floor = corpus_frechet(floor_frames, ref_frames, extractor=extractor)
        results = [{"system": "real corpus vs real corpus (noise floor)", "steps": None,
                    "summary": summarise(floor_rows), "fd": fd_floor["fd"], "kid": fd_floor["kid_mean"],
                    "rows": floor_rows}]
        for name, folder, steps_list in systems:
            if not (Path(folder) / "config.json").is_file():
                log(f"skip {name}: no weights at {folder}")
                continue
            studio = load_studio(model_dir=folder, codecs=codecs, device="cpu")
            for steps in steps_list:
                if only is not None and steps not in only:
                    continue
                log(f"{name} @ {steps} steps: {args.clips} clips")
                out = measure_system(studio, steps, seeds, args.seconds, log)
                fd = corpus_frechet(out["frames"], ref_frames, extractor=extractor)
                results.append({"system": name, "weights": folder, "steps": steps, "summary": summarise(out["rows"]),
                                "fd": fd["fd"], "kid": fd["kid_mean"], "rows": out["rows"]})
                log(f"  -> {results[-1]['summary']} corpus-FD {fd['fd']:.2f}")
    except (AblationError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"eval.ablation: {exc}", file=sys.stderr)
        return 2
    meta = {"first_seed": args.first_seed, "clips": args.clips, "seconds": args.seconds,
            "command": "python -m eval.ablation " + " ".join(sys.argv[1:] if argv is None else argv)}
    table = markdown_table(results, meta)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=float))
    if args.card:
        try:
            update_card(Path(args.card), "ablation", table)
            update_card(Path(args.card), "training", training_table(Path(args.runs)))
        except (AblationError, OSError) as exc:
            print(f"eval.ablation: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
