"""Command line for the eval package: the same numbers as the library, one-line errors, exit codes.

    python -m eval score --generated G [--reference R] [--metrics sync,pesq,stoi,fid,kid]
                         [--windows 0-5,5-15,15-25] [--json out.json] [--csv out.csv]
                         [--inception-weights PATH] [--frames-per-clip K] [--no-download]
                         [--workers N] [--quiet]
    python -m eval sync clip.mp4 [--json]

Exit codes: 0 scored (error rows may exist: they are in the table), 1 nothing could be scored,
2 bad arguments or an unusable set (missing path, refused zip). ``--workers N`` scores N pairs at once,
each in its own process (a crash is that file's error row); progress goes to stderr, one line per
finished pair with the elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def _fmt(x, nd=3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _print_report(report) -> None:
    s = report.summary
    print(f"{'name':<24} {'offset_ms':>9} {'conf':>6} {'pesq_wb':>7} {'pesq_nb':>7} {'stoi':>6}  error/note")
    for r in report.clips:
        tail = r["error"] or r.get("note", "")
        print(f"{r['name'][:24]:<24} {_fmt(r['sync_offset_ms'], 0):>9} {_fmt(r['sync_confidence'], 2):>6} "
              f"{_fmt(r['pesq_wb'], 2):>7} {_fmt(r['pesq_nb'], 2):>7} {_fmt(r['stoi'], 3):>6}  {tail}")
    print(f"clips scored: {s['n_clips']}, error rows: {s['n_errors']}")
    for key in ("sync_offset_ms", "sync_confidence", "pesq_wb", "pesq_nb", "stoi"):
        if s.get(f"{key}_n"):
            print(f"  {key}: median {_fmt(s[f'{key}_median'])}, mean {_fmt(s[f'{key}_mean'])} (n={s[f'{key}_n']})")
    if "fid" in s:
        if s.get("feature_extractor"):
            print(f"  FID {_fmt(s['fid'], 2)}, KID {_fmt(s['kid_mean'], 4)} +- {_fmt(s['kid_std'], 4)} "
                  f"(frames gen/ref {s['n_frames'][0]}/{s['n_frames'][1]})")
        if s.get("fid_note"):
            print(f"  {s['fid_note']}")
        print(f"  {s['corpus_feature_extractor']}: {_fmt(s['corpus_fd'], 2)}, KID {_fmt(s['corpus_kid_mean'], 4)} "
              f"+- {_fmt(s['corpus_kid_std'], 4)} (frames gen/ref {s['corpus_n_frames'][0]}/{s['corpus_n_frames'][1]})"
              + (f"  [{s['corpus_note']}]" if s.get("corpus_note") else ""))
    if s.get("timings_s"):
        print("  time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in s["timings_s"].items()))
    for w in s.get("windows", []):
        parts = [f"window {w['window']}: clips {w['n_clips']}"]
        for key in ("sync_offset_ms", "pesq_wb", "stoi"):
            if w.get(f"{key}_n"):
                parts.append(f"{key} median {_fmt(w[f'{key}_median'])}")
        if "corpus_fd" in w and w["corpus_n_frames"][0]:
            n = w["corpus_n_frames"]
            parts.append(f"corpus-FD {_fmt(w['corpus_fd'], 2)} ({n[0]}/{n[1]} frames)")
        if w.get("feature_extractor") and w["n_frames"][0]:
            parts.append(f"FID {_fmt(w['fid'], 2)}")
        if w.get("identity_gen_mean") is not None:  # eval.windows: identity drift and sync per window
            parts.append(f"identity drift {_fmt(w['identity_gen_mean'], 2)} "
                         f"(real {_fmt(w.get('identity_ref_mean'), 2)})"
                         f", |sync| median {_fmt(w.get('sync_abs_offset_ms_median'))} ms, "
                         f"within 40 ms {_fmt(w.get('sync_within_40ms_frac'), 2)}")
        print("  " + ", ".join(parts))


def _cmd_score(args) -> int:
    from eval.score import parse_windows, score_sets
    from eval.sets import SetError

    try:
        windows = parse_windows(args.windows)
        report = score_sets(args.generated, args.reference, metrics=args.metrics, windows=windows,
                            progress=_StderrProgress() if not args.quiet else None,
                            inception_weights=args.inception_weights, allow_download=not args.no_download,
                            frames_per_clip=args.frames_per_clip, workers=args.workers)
    except (SetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        report.to_json(args.json)
    if args.csv:
        report.to_csv(args.csv)
        if report.summary.get("windows"):  # one row per window beside the per-clip CSV (eval.windows)
            from eval.windows import write_windows_csv
            stem = args.csv[:-4] if args.csv.lower().endswith(".csv") else args.csv
            write_windows_csv(report.summary["windows"], stem + ".windows.csv")
    _print_report(report)
    return 0 if report.summary["n_clips"] > 0 else 1


class _StderrProgress:
    """``[done/total] name  elapsed, ~left`` on stderr as each pair finishes."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int, desc: str) -> None:
        elapsed = time.perf_counter() - self.t0
        left = elapsed / max(done, 1) * (total - done)
        print(f"[{done}/{total}] {desc}  {elapsed:.0f} s elapsed, ~{left:.0f} s left", file=sys.stderr, flush=True)


def _cmd_sync(args) -> int:
    from mf.media import MediaError

    try:
        from eval.sync import sync_file
    except ImportError as exc:
        print(f"error: eval.sync is not available ({exc})", file=sys.stderr)
        return 2
    try:
        res = sync_file(args.clip)
    except MediaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    d = res.to_dict() if hasattr(res, "to_dict") else dict(res)
    if args.json:
        print(json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in d.items()}, indent=2))
    else:
        conf = "n/a" if d.get("confidence") is None else f"{d['confidence']:.2f}"
        lip = d.get("lip_model_offset_frames")  # the second opinion on real faces (eval.sync step 6)
        tail = f", mouth localizer: {d.get('localizer', '?')}"
        if lip is not None:
            tail += f", lip-shape model {lip:+d} frames"
        if d.get("uncertain", bool(d.get("flag"))):  # no confident number for a flagged estimate
            print(f"{args.clip}: offset UNCERTAIN ({d['flag']}; best lag {d['offset_frames']:+d} frames, not a "
                  f"measurement), confidence {conf}{tail}")
        else:
            print(f"{args.clip}: offset {d['offset_frames']:+d} frames ({d['offset_ms']:+.0f} ms; positive = audio "
                  f"leads), confidence {conf}{tail}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval", description="Mutual Forcing studio evaluation.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="score a generated set (against a reference set)")
    s.add_argument("--generated", required=True, nargs="+", help="zip, folder or files")
    s.add_argument("--reference", nargs="+", default=None, help="zip, folder or files (needed for pesq/stoi/fid/kid)")
    s.add_argument("--metrics", default=None,
                   help="comma list of sync,pesq,stoi,fid,kid (default: all; sync only without --reference)")
    s.add_argument("--windows", default="0-5,5-15,15-25", help="time windows in seconds, '' for none")
    s.add_argument("--json", default=None)
    s.add_argument("--csv", default=None)
    s.add_argument("--inception-weights", default=None, help="path to weights-inception-2015-12-05-6726825d.pth")
    s.add_argument("--no-download", action="store_true",
                   help="never download the standard weights (Inception, SyncNet); same as MF_NO_DOWNLOAD=1")
    s.add_argument("--frames-per-clip", type=int, default=None, help="frames sampled per clip for FID/KID")
    s.add_argument("--workers", type=int, default=1, help="pairs scored in parallel, each in its own process")
    s.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    y = sub.add_parser("sync", help="audio-video offset of one clip (no reference needed)")
    y.add_argument("clip")
    y.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "score":
        if args.no_download:  # every loader (and any worker process) reads it: see eval.weights
            os.environ["MF_NO_DOWNLOAD"] = "1"
        if args.metrics is None:
            args.metrics = "sync,pesq,stoi,fid,kid" if args.reference else "sync"
        gen = args.generated[0] if len(args.generated) == 1 else args.generated
        ref = None if args.reference is None else (args.reference[0] if len(args.reference) == 1 else args.reference)
        args.generated, args.reference = gen, ref
        return _cmd_score(args)
    return _cmd_sync(args)


if __name__ == "__main__":
    sys.exit(main())
