"""Benchmark of set scoring at scale: time and peak memory of ``python -m eval score`` at two set sizes.

    python -m eval.bench_score [--sizes 100,500] [--seconds 5] [--workers 2] [--metrics sync,pesq,stoi]
                               [--size 64] [--render-workers 2] [--keep DIR]

What it does, in one run: renders ``max(sizes)`` corpus clips (``mf.data.render_clip``) and writes each
as a reference mp4 and a generated mp4 (same frames, audio with seeded noise, ``mf.media.write_mp4``)
into a temp dir; then, for each size N, scores the first N pairs with the real command line
(``python -m eval score --workers W``) in a subprocess while a sampler reads the resident memory of
that process and of all its worker processes every 0.1 s. It prints per size: wall time, seconds per
clip, the peak of the summed RSS of the whole process tree, the peak RSS of the scoring process alone
and of the largest worker, and then the ratios between the largest and the smallest size. Memory that
is flat in the number of clips reads a peak ratio near 1.0 while the clip ratio is 5.0.

The clips are the corpus renderer's (64x64 by default; ``--size`` up to the renderer's maximum), so
the absolute peak is that of small frames; what the benchmark measures is that it does not grow
with the set (clips are streamed through the workers, one pair per worker at a time).

Measured 2026-11-27 on the shared 2-core box under a load average of ~14 (other jobs running), default
arguments: 100 clips 457.7 s (4.58 s/clip), 500 clips 1971.1 s (3.94 s/clip); peak RSS of the process
tree 1495 MiB and 1469 MiB (ratio 0.983 for 5.0x the clips), scoring process 124 / 125 MiB, largest
worker ~730 MiB (most of it the torch import that ``eval.sync`` pulls in). Rendering 500 pairs took 947 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _render_pair(job) -> None:
    from mf.constants import HELDOUT_SEED_START
    from mf.data import render_clip
    from mf.media import write_mp4

    i, seconds, size, root = job
    clip = render_clip(HELDOUT_SEED_START + 50_000 + i, seconds, size=size)
    noise = np.random.default_rng(i).normal(0.0, 0.01, clip.audio.shape)
    write_mp4(os.path.join(root, "ref", f"c{i:04d}.mp4"), clip.frames, audio=clip.audio)
    write_mp4(os.path.join(root, "gen", f"c{i:04d}.mp4"), clip.frames,
              audio=np.clip(clip.audio + noise, -1, 1).astype(np.float32))


def render_set(root: str, n: int, seconds: float, size: int, workers: int) -> float:
    """Writes n pairs under root/gen and root/ref; returns the seconds it took."""
    import multiprocessing

    for side in ("gen", "ref"):
        os.makedirs(os.path.join(root, side), exist_ok=True)
    jobs = [(i, seconds, size, root) for i in range(n)]
    t0 = time.perf_counter()
    if workers <= 1:
        for job in jobs:
            _render_pair(job)
    else:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            pool.map(_render_pair, jobs, chunksize=4)
    return time.perf_counter() - t0


def _subset(root: str, n: int) -> tuple[str, str]:
    """root/sub<n>/{gen,ref} holding symlinks to the first n pairs."""
    out = []
    for side in ("gen", "ref"):
        d = os.path.join(root, f"sub{n}", side)
        os.makedirs(d, exist_ok=True)
        for name in sorted(os.listdir(os.path.join(root, side)))[:n]:
            os.symlink(os.path.join(root, side, name), os.path.join(d, name))
        out.append(d)
    return out[0], out[1]


class _TreeSampler(threading.Thread):
    """Peak RSS of a process tree (sum over all processes), of the root alone, and of its largest child."""

    def __init__(self, pid: int, every_s: float = 0.1):
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.every_s = every_s
        self.peak_total = self.peak_root = self.peak_child = 0
        self.stop = threading.Event()

    def run(self):
        import psutil

        while not self.stop.is_set():
            try:
                root = self.root.memory_info().rss
                kids = []
                for c in self.root.children(recursive=True):
                    try:
                        kids.append(c.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.peak_root = max(self.peak_root, root)
            self.peak_child = max([self.peak_child, *kids])
            self.peak_total = max(self.peak_total, root + sum(kids))
            time.sleep(self.every_s)


def score_once(gen: str, ref: str, n: int, workers: int, metrics: str, out_json: str) -> dict:
    cmd = [sys.executable, "-m", "eval", "score", "--generated", gen, "--reference", ref, "--metrics", metrics,
           "--workers", str(workers), "--no-download", "--quiet", "--json", out_json]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=_REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = _TreeSampler(proc.pid)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"scoring {n} clips failed (exit {proc.returncode}): {err[-2000:]}")
    report = json.load(open(out_json))
    s = report["summary"]
    if s["n_clips"] != n:
        errors = [r["error"] for r in report["clips"] if r.get("error")][:3]
        raise SystemExit(f"scoring {n} clips gave {s['n_clips']} scored rows; first errors: {errors}")
    mib = 1024 ** 2
    return {"clips": n, "wall_s": wall, "s_per_clip": wall / n, "peak_tree_mib": sampler.peak_total / mib,
            "peak_scorer_mib": sampler.peak_root / mib, "peak_worker_mib": sampler.peak_child / mib,
            "pesq_wb_median": s.get("pesq_wb_median"), "stoi_median": s.get("stoi_median")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.bench_score", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,500", help="set sizes to score, comma separated")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--metrics", default="sync,pesq,stoi")
    p.add_argument("--size", type=int, default=64, help="frame size of the rendered clips")
    p.add_argument("--render-workers", type=int, default=2)
    p.add_argument("--keep", default=None, help="render into this folder and keep it (default: a temp dir)")
    args = p.parse_args(argv)
    sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
    root = args.keep or tempfile.mkdtemp(prefix="mf-bench-score-")
    try:
        t_render = render_set(root, max(sizes), args.seconds, args.size, args.render_workers)
        print(f"rendered {max(sizes)} pairs of {args.seconds:g} s {args.size}px clips in {t_render:.0f} s ({root})",
              flush=True)
        results = []
        for n in sizes:
            gen, ref = _subset(root, n)
            r = score_once(gen, ref, n, args.workers, args.metrics, os.path.join(root, f"report{n}.json"))
            results.append(r)
            print(f"{n:>5} clips, {args.metrics}, --workers {args.workers}: {r['wall_s']:.1f} s "
                  f"({r['s_per_clip']:.3f} s/clip); peak RSS tree {r['peak_tree_mib']:.0f} MiB, scorer "
                  f"{r['peak_scorer_mib']:.0f} MiB, largest worker {r['peak_worker_mib']:.0f} MiB; "
                  f"median pesq_wb {r['pesq_wb_median']}, stoi {r['stoi_median']}", flush=True)
        if len(results) > 1:
            a, b = results[0], results[-1]
            print(f"ratios {b['clips']}/{a['clips']} clips = {b['clips'] / a['clips']:.1f}: wall "
                  f"{b['wall_s'] / a['wall_s']:.2f}, peak tree memory {b['peak_tree_mib'] / a['peak_tree_mib']:.3f}, "
                  f"peak scorer memory {b['peak_scorer_mib'] / a['peak_scorer_mib']:.3f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
