"""`python -m eval.ablation`: the factor table of the ablation arms A-F (issue 13), straight from its runs.

    python -m eval.ablation --json runs/ablation.json --markdown runs/ablation.md --html runs/ablation.html
    python -m eval.ablation --quick --workers 2 ...   # fewer / shorter clips, no F@50 (sized for 15 min on 2 cores)

Arms are read from ``<--arms-dir>/<arm>/`` (layout in ``mf.train.arms``; produced by
``python -m mf.train arm --arm all``); each arm is sampled at its steps of ``mf.train.arms.ARMS`` (B: 4 Euler
steps with d = 0, mode "multi"). An absent arm is listed under "missing" (JSON and markdown) and the
others are measured. For 3 disjoint held-out seed sets (seeds >= HELDOUT_SEED_START; set k is
``first + k n .. first + (k + 1) n - 1``) every system generates, with ``mf.pipeline.generate`` (the app's
code path), one 2 s clip per seed (random babble, the corpus renders the same seed) and one 25 s clip
per seed saying ``eval.long_horizon.LONG_TEXT`` (windows 0-5 / 5-15 / 15-25 s). Per clip and window:
corpus features, identity distance and sync offset (``eval.long_horizon.clip_measurements``) and the
log-mel frames of the audio; the numbers with their intervals come from ``eval.ablation_report``.
A "real" row (the corpus of 3n further seeds vs the real clips) gives every metric's floor.

Outputs: --json (``{"systems": [{"arm", "steps", "mode", "short": {metric: {mean, lo, hi, ...}},
"windows": {"0-5": {...}, ...}}], "seeds", "floor_seeds", "missing", "command", ...}``), --markdown
(``eval.ablation_report.markdown_table`` of that JSON) and --html (plotly figure: corpus-FD per window,
one line per arm). ``--training-only --card`` refreshes the model card's training table.

``--cache DIR`` keeps every finished job's per-clip measurements (``ClipCache``): a run that stops is resumed,
and the statistics can be recomputed with another ``--frames`` / ``--n-boot`` / ``--seed`` without generating
again. A job is reused only when its seeds, seconds, windows, text, steps and mode and the bytes of the arm's
weights, the codecs and the corpus-feature extractor are the same; the project's code is not part of that key,
so clear the folder after changing the generation or measurement code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from mf.constants import FPS, HELDOUT_SEED_START, MELS_PER_FRAME, SAMPLE_RATE

LONG_WINDOWS = ((0.0, 5.0), (5.0, 15.0), (15.0, 25.0))
N_SETS = 3


class AblationError(Exception):
    pass


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure_clip(frames, audio, reference_frame, windows, extractor, audio_codec) -> dict:
    """One clip -> {window name: {features, identity, sync_ms, audio (log-mel frames [n, M])}}."""
    import torch

    from eval.long_horizon import clip_measurements
    from eval.windows import window_frame_indices, window_name

    out = clip_measurements(frames, audio, reference_frame, windows, extractor)
    mel = audio_codec.encode(torch.as_tensor(np.asarray(audio, np.float32)), SAMPLE_RATE).cpu().numpy()
    for w in windows:
        name = window_name(w)
        if name in out:
            idx = window_frame_indices(w, len(frames), FPS)
            out[name]["audio"] = mel[idx[0] * MELS_PER_FRAME: (idx[-1] + 1) * MELS_PER_FRAME]
    return out


def real_clip(seed: int, seconds: float, windows, ctx: dict, text: str | None) -> dict:
    from mf.data import render_clip
    from mf.pipeline import reference_frame

    clip = render_clip(seed, seconds, text=text, size=ctx["size"])
    ref, _ = reference_frame(seed, ctx["size"], seed)
    return {"windows": measure_clip(clip.frames, clip.audio, ref, windows, ctx["extractor"], ctx["audio_codec"]),
            "model_s": math.nan}


def generated_clip(studio, steps: int, mode: str, seed: int, seconds: float, windows, ctx: dict,
                   text: str | None) -> dict:
    from mf.pipeline import generate_clip, reference_frame

    frames, audio, chunks = generate_clip(studio, steps=steps, mode=mode, seed=seed, seconds=seconds, text=text)
    ref, _ = reference_frame(seed, ctx["size"], seed)
    return {"windows": measure_clip(frames, audio, ref, windows, ctx["extractor"], ctx["audio_codec"]),
            "model_s": float(np.mean([c.timings["model_s"] for c in chunks]))}


def find_arms(arms_dir: Path, names) -> tuple[list[tuple], list[dict]]:
    """(present: [(arm, folder)], missing: [{"arm", "reason"}]) for the requested arm names."""
    from mf.train.arms import get_arm, read_arm

    present, missing = [], []
    for name in names:
        arm = get_arm(name)
        folder = Path(arms_dir) / arm.name
        try:
            read_arm(folder)
            present.append((arm, folder))
        except (FileNotFoundError, ValueError) as exc:
            missing.append({"arm": arm.name, "reason": f"{exc} (make it: python -m mf.train arm --arm {arm.name} "
                                                       "--init <stage-2 weights> --steps N)"})
    return present, missing


def _systems(args, present) -> list[tuple]:
    """(arm, folder, steps, mode) of every system this run measures (``--steps`` keeps step counts,
    ``--skip`` drops systems such as F@50)."""
    return [(arm, folder, steps, mode) for arm, folder in present for steps, mode in arm.sampling
            if (not args.steps or steps in args.steps) and f"{arm.name}@{steps}" not in args.skip]


def _jobs(parts, seeds, floor_seeds, systems) -> list[dict]:
    """Every generation/measurement job of a run, biggest first (50-step systems) so workers balance."""
    jobs = []
    for p, w, sec, text in parts:
        jobs.append({"key": ("real", p), "kind": "real", "seeds": seeds, "seconds": sec, "windows": w, "text": text})
        jobs.append({"key": ("floor", p), "kind": "real", "seeds": floor_seeds, "seconds": sec, "windows": w,
                     "text": text})
    for arm, folder, steps, mode in systems:
        for p, w, sec, text in parts:
            jobs.append({"key": (arm.name, steps, p), "kind": "gen", "folder": str(folder), "steps": steps,
                         "mode": mode, "seeds": seeds, "seconds": sec, "windows": w, "text": text})
    return sorted(jobs, key=lambda j: -(j["steps"] if j["kind"] == "gen" else 1) * j["seconds"])


_WORKER: dict = {}


def _worker_init(codecs_dir: str, device: str, threads: int) -> None:
    """A worker process: its own codecs, extractor and studios (loaded once, reused by its jobs)."""
    import torch

    from eval.features import load_extractor
    from mf.codecs import load_codecs

    torch.set_num_threads(max(1, threads))
    codecs = load_codecs(codecs_dir)
    _WORKER.update(ctx={"size": codecs[0].frame_size, "extractor": load_extractor(), "audio_codec": codecs[1],
                        "codecs": codecs, "device": device, "studios": {}})


def _run_job(job: dict, ctx: dict | None = None) -> tuple:
    """(job key, [clip measurements], seconds) of one job; ``ctx`` None = this worker's context."""
    import torch

    from mf.pipeline import load_studio

    ctx = ctx or _WORKER["ctx"]
    t0 = time.monotonic()
    if job["kind"] == "real":
        clips = [real_clip(s, job["seconds"], job["windows"], ctx, job["text"]) for s in job["seeds"]]
    else:
        studio = ctx["studios"].get(job["folder"])
        if studio is None:
            studio = load_studio(model_dir=job["folder"], codecs=ctx["codecs"], device=ctx["device"])
            studio.model.to(torch.float32)
            ctx["studios"] = {job["folder"]: studio}  # one arm at a time: jobs of an arm are mostly adjacent
        clips = [generated_clip(studio, job["steps"], job["mode"], s, job["seconds"], job["windows"], ctx,
                                job["text"]) for s in job["seeds"]]
    return job["key"], clips, time.monotonic() - t0


def _files_digest(folder, h) -> None:
    """Feed every file under ``folder`` (relative name and bytes, sorted) into the hash ``h``."""
    folder = Path(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)


class ClipCache:
    """Per-job clip measurements on disk (``--cache DIR``), one pickle per job, written atomically.

    The file name carries a sha256 of the job (its seeds, seconds, windows, text, steps, mode) and of the bytes
    of the codecs, the corpus-feature extractor and, for a generated job, the arm's folder: a changed input
    is a different file, never a stale hit. The files are this project's own output; load only a folder you
    wrote (pickle)."""

    def __init__(self, folder, codecs_dir, extractor_dir):
        if codecs_dir is None or extractor_dir is None:
            raise AblationError("--cache needs the codecs and the extractor from folders (--codecs, shipped extractor)")
        self.folder = Path(folder)
        base = hashlib.sha256()
        _files_digest(codecs_dir, base)
        _files_digest(extractor_dir, base)
        self._base, self._arms = base, {}

    def path(self, job: dict) -> Path:
        h = self._base.copy()
        h.update(json.dumps({k: v for k, v in job.items() if k != "key"}, sort_keys=True).encode())
        if job["kind"] == "gen":
            if job["folder"] not in self._arms:
                arm = hashlib.sha256()
                _files_digest(job["folder"], arm)
                self._arms[job["folder"]] = arm.digest()
            h.update(self._arms[job["folder"]])
        return self.folder / f"{'-'.join(map(str, job['key']))}-{h.hexdigest()[:16]}.pkl"

    def load(self, job: dict) -> list | None:
        path = self.path(job)
        if not path.is_file():
            return None
        with open(path, "rb") as fh:
            return pickle.load(fh)

    def save(self, job: dict, clips: list) -> None:
        path = self.path(job)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(clips, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)


def _run_jobs(jobs: list[dict], args, ctx: dict, cache: ClipCache | None = None) -> dict:
    """{job key: clips}: in this process (``--workers 1``) or in ``--workers`` processes (spawned, one torch
    thread each; clips are deterministic per seed, so the numbers do not depend on the worker count).
    With a ``cache``, jobs found there are read instead of run and every finished job is stored at once."""
    out = {}
    if cache is not None:
        for job in list(jobs):
            clips = cache.load(job)
            if clips is not None:
                _log(f"{'/'.join(map(str, job['key']))}: {len(clips)} clips from the cache")
                out[job["key"]] = clips
        jobs = [job for job in jobs if job["key"] not in out]

    def done(job, clips):
        out[job["key"]] = clips
        if cache is not None:
            cache.save(job, clips)

    if args.workers <= 1 or not jobs:
        for job in jobs:
            key, clips, dt = _run_job(job, ctx)
            _log(f"{'/'.join(map(str, key))}: {len(clips)} clips in {dt:.0f} s")
            done(job, clips)
        return out
    import concurrent.futures as cf
    import multiprocessing as mp

    if args.codecs is None:
        raise AblationError("--workers > 1 needs codecs from a folder (--codecs)")
    with cf.ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                initargs=(args.codecs, args.device, args.threads)) as pool:
        futures = {pool.submit(_run_job, job): job for job in jobs}
        for n, fut in enumerate(cf.as_completed(futures), 1):
            key, clips, dt = fut.result()
            _log(f"{'/'.join(map(str, key))}: {len(clips)} clips in {dt:.0f} s ({n}/{len(jobs)} jobs)")
            done(futures[fut], clips)
    return out


def run(args, command: str) -> dict:
    """Generate and measure every system; the result JSON (see the module docstring)."""
    from eval.ablation_report import system_metrics
    from eval.features import load_extractor
    from eval.long_horizon import LONG_TEXT
    from mf.codecs import load_codecs

    n = args.clips_per_set
    first = args.first_seed
    sets = [list(range(first + k * n, first + (k + 1) * n)) for k in range(N_SETS)]
    seeds = [s for part in sets for s in part]
    floor_seeds = [first + N_SETS * n + i for i in range(len(seeds))]
    set_idx = [list(range(k * n, (k + 1) * n)) for k in range(N_SETS)]
    short_w = ((0.0, float(args.short_seconds)),)
    long_w = tuple(w for w in LONG_WINDOWS if w[1] <= args.long_seconds + 1e-9)
    parts = [("short", short_w, args.short_seconds, None)] + ([("windows", long_w, args.long_seconds, LONG_TEXT)]
                                                              if long_w else [])
    present, missing = find_arms(Path(args.arms_dir), args.arms)
    for m in missing:
        _log(f"arm {m['arm']} missing: {m['reason']}")
    ctx = None
    if args.workers <= 1:
        codecs = load_codecs(args.codecs) if args.codecs else args.codec_objects
        ctx = {"size": codecs[0].frame_size, "extractor": args.extractor or load_extractor(),
               "audio_codec": codecs[1], "codecs": codecs, "device": args.device, "studios": {}}
    t0 = time.monotonic()
    measured = _systems(args, present)
    cache = None
    if args.cache:
        from eval.features import ASSET_DIR

        cache = ClipCache(args.cache, args.codecs, ASSET_DIR if args.extractor is None else None)
    clips = _run_jobs(_jobs(parts, seeds, floor_seeds, measured), args, ctx, cache)
    stats = dict(n_boot=args.n_boot, seed=args.seed, sets=set_idx, max_frames=args.frames)
    systems = [{"arm": "real", "steps": None, "mode": None, "weights": None}
               | {p: system_metrics(clips[("floor", p)], clips[("real", p)], w, **stats) for p, w, _, _ in parts}]
    for arm, folder, steps, mode in measured:
        systems.append({"arm": arm.name, "steps": steps, "mode": mode, "weights": str(folder)}
                       | {p: system_metrics(clips[(arm.name, steps, p)], clips[("real", p)], w, **stats)
                          for p, w, _, _ in parts})
    for s in systems:
        s["short"] = s["short"]["0-" + f"{args.short_seconds:g}"] | {"by_set": s["short"].get("by_set")}
        s.setdefault("windows", {})
    return {"systems": systems, "seeds": sets, "floor_seeds": floor_seeds, "missing": missing,
            "windows": [f"{a:g}-{b:g}" for a, b in long_w], "short_seconds": args.short_seconds,
            "long_seconds": args.long_seconds, "n_boot": args.n_boot, "command": command,
            "skipped": sorted(args.skip), "workers": args.workers, "wall_s": round(time.monotonic() - t0, 1)}


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


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.ablation", description=__doc__.split("\n")[0])
    p.add_argument("--arms-dir", default="assets/arms")
    p.add_argument("--arms", default="A,B,C,D,E,F", help="comma-separated arms to measure")
    p.add_argument("--steps", default=None, help="only these step counts, e.g. 4,50")
    p.add_argument("--clips-per-set", type=int, default=8, help="seeds per held-out set (3 sets)")
    p.add_argument("--short-seconds", type=float, default=2.0)
    p.add_argument("--long-seconds", type=float, default=25.0, help="0 skips the long clips")
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--frames", type=int, default=256, help="N frames per window and side for FD / KID")
    p.add_argument("--skip", default=None,
                   help="systems left out, e.g. F@50 (default: none; with --quick: F@50, in no floor)")
    p.add_argument("--quick", action="store_true",
                   help="2 seeds per set, 15 s long clips, 100 bootstraps, --skip F@50 (sized for 15 min on 2 cores)")
    p.add_argument("--first-seed", type=int, default=HELDOUT_SEED_START)
    p.add_argument("--codecs", default="assets/codecs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--workers", type=int, default=1,
                   help="processes that generate and measure in parallel (numbers do not depend on it)")
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="keep per-clip measurements here: resume a run, recompute statistics without generating")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--html", default=None, help="plotly figure: corpus-FD per window, one line per arm")
    p.add_argument("--card", default=None, help="write the table into this model card (between markers)")
    p.add_argument("--training-only", action="store_true",
                   help="only refresh the training table of --card from runs/*/summary.json (no generation)")
    p.add_argument("--runs", default="runs")
    return p


def main(argv: list[str] | None = None, *, codec_objects=None, extractor=None) -> int:
    """CLI. ``codec_objects`` / ``extractor`` (tests): ready codecs and feature extractor instead of assets."""
    import torch

    from eval.ablation_report import figure, markdown_table

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.training_only:
        if not args.card:
            print("eval.ablation: --training-only needs --card PATH", file=sys.stderr)
            return 2
        try:
            update_card(Path(args.card), "training", training_table(Path(args.runs)))
        except (AblationError, OSError) as exc:
            print(f"eval.ablation: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.quick:
        args.clips_per_set, args.long_seconds, args.n_boot = 2, min(args.long_seconds, 15.0), 100
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    args.steps = {int(s) for s in args.steps.split(",")} if args.steps else None
    if args.skip is None:
        args.skip = "F@50" if args.quick else ""
    args.skip = {x.strip().upper() for x in args.skip.split(",") if x.strip()}
    args.codec_objects, args.extractor = codec_objects, extractor
    if codec_objects is not None:
        args.codecs = None
    if args.first_seed < HELDOUT_SEED_START or args.clips_per_set < 2:
        print(f"eval.ablation: --first-seed must be >= {HELDOUT_SEED_START} and --clips-per-set >= 2",
              file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    try:
        result = _clean(run(args, "python -m eval.ablation " + " ".join(argv)))
    except (AblationError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"eval.ablation: {exc}", file=sys.stderr)
        return 2
    table = markdown_table(result)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.html:
        figure(result).write_html(args.html, include_plotlyjs=True)
    if args.card:
        update_card(Path(args.card), "factor-ablation", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
