"""Speed and memory benchmark of the shipped generator: ``python -m eval.bench --json bench.json``.

Owns the measurement protocol (one process, the same studio for every number):
- ``rtf[steps]`` for steps 4, 8, 50: wall seconds per second of generated audio-video, decode included,
  all on the same clip length (``--seconds``), after a warm-up stream that fills the cache window once
  (``mf.pipeline.warm_up``'s length: one-time costs such as the traced cache write); step counts are interleaved
  and repeated (``--repeats``) and the fastest repeat is kept (a shared machine only adds time);
  process CPU seconds are reported beside wall seconds;
- ``ratio_50_over_4``: wall time of 50 steps over wall time of 4 steps for that same length (the ideal
  is 12.5 when cost is proportional to network evaluations), computed per repeat and bracketed: each
  repeat runs 4 steps, then 50, then 4 again, and divides the 50-step wall by the mean of the two 4-step
  walls, so a machine that speeds up or slows down during the long run biases no ratio in one direction
  (``--no-bracket``: the 4-step run before only; ``ratio_50_over_4_drift_per_repeat`` = how far the
  second 4-step wall moved from the first); the median over repeats is reported
  (``ratio_50_over_4_per_repeat`` lists them; ``ratio_50_over_4_fastest`` = fastest 50 over fastest 4);
  ``ratio_50_over_4_sampler_cpu``: the same ratio of the sampler thread's own CPU seconds (the critical
  path when the decode overlaps it): what per-chunk fixed costs do, far less sensitive to other load;
- ``pass_ms``: per step count, the median wall / sampler-CPU milliseconds of a chunk's first pass and of
  its later passes (pooled over repeats), the first pass's extra in passes and the model-time ratio they
  imply: which part of a chunk keeps the ratio under 12.5 (``_pass_breakdown``);
- ``--variants``: several generation paths measured interleaved in the same process (e.g. ``graph eager``
  on a GPU, ``default handoff`` for the CPU look-ahead before/after); the first one fills the top-level
  numbers, every one gets its own block under ``variants``;
- ``device``, ``dtype`` (``--dtype``; default float32 on CPU, bfloat16 autocast on CUDA) and ``mode``
  (graph: static buffers + CUDA graphs, eager) of every variant;
- ``first_chunk_seconds``: from calling ``generate`` (4 steps) to holding the first decoded chunk;
- ``rss_mb``: resident memory after 10 s and after 60 s of one continuous 4-step generation (the
  rolling KV cache must keep it flat);
- ``nfe`` per steps, hardware (CPU model, cores, torch threads, load average before/after: the machine
  may be shared, so compare ratios measured in one run), whether the weights are trained, and the
  floors for the tiny preset with a pass/fail each; ``floors_uncertain`` names the floors whose verdict
  the repeats do not settle (some repeats on each side of the floor: the median's pass/fail then says
  more about the machine's noise than about the code).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import contextmanager

FLOORS = {"rtf_4": 1.0, "ratio_50_over_4": 11.0, "first_chunk_seconds": 0.5, "rss60_over_rss10": 1.1}
GPU_FLOORS = {"rtf_4": 0.05, "ratio_50_over_4": 11.0}   # issue 15, tiny preset on one H100/H200 (graph mode)
# name -> generate() keyword arguments of a measured path
VARIANTS = {"default": {}, "graph": {"graphs": True}, "eager": {"graphs": False}, "handoff": {"lookahead": "handoff"},
            "nolookahead": {"lookahead": False},
            # how the cache write runs (mf.pipeline.generate): beside the next pass (the CPU default with a
            # spare core), as its own pass, folded into the next pass (fused), fused and widened to 2 threads
            "beside": {"write_beside": True}, "separate": {"write_beside": False, "fuse_cache_write": False},
            "fused": {"write_beside": False, "fuse_cache_write": True},
            "fused_wide": {"write_beside": False, "wide_cache_write": True},
            # the CPU default before issue 15: hand-off look-ahead, cache write fused and widened
            "handoff_wide": {"lookahead": "handoff", "wide_cache_write": True},
            # the video decoder as diffusers runs it (upsample, then conv), not folded (mf.codecs.video)
            "unfolded_decode": {"video_codec": {"folded_decode": False}},
            # the CPU cache write eager, not traced (mf.traced: same bits; the traced write holds no GIL)
            "eager_write": {"model": {"traced_cache_write": False}}}


@contextmanager
def _variant(studio, name: str):
    """generate() keyword arguments of variant ``name``; its codec / model settings hold while the block runs."""
    kwargs = dict(VARIANTS[name])
    settings = [(getattr(studio, attr), kwargs.pop(key, {})) for key, attr in (("video_codec", "video_codec"),
                                                                                ("model", "model"))]
    before = [(obj, {k: getattr(obj, k) for k in values}) for obj, values in settings]
    for obj, values in settings:
        for k, v in values.items():
            setattr(obj, k, v)
    try:
        yield kwargs
    finally:
        for obj, values in before:
            for k, v in values.items():
                setattr(obj, k, v)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _timed_run(studio, steps: int, seconds: float, seed: int, **kwargs) -> dict:
    from mf.pipeline import generate

    start = time.perf_counter()
    cpu_start = time.process_time()
    first = None
    nfe = writes = 0
    model_s = decode_s = model_cpu_s = 0.0
    n_frames = 0
    passes = dict(first=[], rest=[], first_cpu=[], rest_cpu=[], after_steps=[])   # seconds, one per pass/chunk
    for chunk in generate(studio, steps=steps, seed=seed, seconds=seconds, **kwargs):
        if first is None:
            first = time.perf_counter() - start
        t = chunk.timings
        passes["first"].append(t["steps_s"][0])
        passes["first_cpu"].append(t["steps_cpu_s"][0])
        passes["rest"] += t["steps_s"][1:]
        passes["rest_cpu"] += t["steps_cpu_s"][1:]
        passes["after_steps"].append(t["model_s"] - sum(t["steps_s"]))   # e.g. a cache write run after the steps
        nfe += chunk.timings["nfe"]
        writes += chunk.timings["cache_writes"]
        model_s += chunk.timings["model_s"]
        model_cpu_s += chunk.timings["model_cpu_s"]
        decode_s += chunk.timings["decode_s"]
        n_frames += chunk.frames.shape[0]
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    clip_seconds = n_frames / 25.0
    return dict(steps=steps, seconds=clip_seconds, wall_seconds=wall, cpu_seconds=cpu, rtf=wall / clip_seconds,
                first_chunk_seconds=first, nfe=nfe, cache_writes=writes, model_seconds=model_s,
                model_cpu_seconds=model_cpu_s,
                decode_seconds=decode_s, passes=passes)


def _rss_run(studio, seconds_marks=(10.0, 60.0), seed: int = 7) -> dict:
    """One continuous 4-step generation; RSS sampled when the marks are reached (chunks discarded)."""
    import psutil

    from mf.pipeline import generate

    proc = psutil.Process()
    marks = sorted(seconds_marks)
    out = {}
    start = time.perf_counter()
    for chunk in generate(studio, steps=4, seed=seed, seconds=marks[-1]):
        done = (chunk.start_frame + chunk.frames.shape[0]) / 25.0
        for mark in marks:
            if mark not in out and done >= mark - 1e-9:
                out[mark] = proc.memory_info().rss / 2**20
        del chunk
    return dict(rss_mb={f"{m:g}s": round(out[m], 1) for m in marks}, wall_seconds=time.perf_counter() - start)


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def _pass_breakdown(all_runs: dict) -> dict:
    """Where a chunk's sampling time goes, per step count, pooled over repeats (median milliseconds):
    ``first`` = the first step's pass (with the chunk's set-up, and the previous chunk's cache write when it
    runs beside or inside that pass), ``rest`` = every later pass, ``*_cpu`` = the sampler thread's own CPU,
    ``after_steps`` = the chunk's time after its last step (the write when it runs there).
    ``first_extra_passes`` = (first - rest) / rest: the per-chunk fixed cost on the critical path, in passes;
    ``ratio_50_over_4_from_passes`` = the model-time ratio these medians imply (decode excluded)."""
    out = {}
    for steps, runs in all_runs.items():
        pooled = {k: [x for r in runs for x in r["passes"][k]] for k in runs[0]["passes"]}
        ms = {k: round(1e3 * _median(v), 2) for k, v in pooled.items() if v}
        if "rest" in ms and ms["rest"] > 0:
            ms["first_extra_passes"] = round((ms["first"] - ms["rest"]) / ms["rest"], 3)
        out[steps] = ms
    if all(k in out and "rest" in out[k] for k in ("4", "50")):
        def chunk_ms(k, n):
            return out[k]["first"] + (n - 1) * out[k]["rest"] + out[k]["after_steps"]
        out["ratio_50_over_4_from_passes"] = round(chunk_ms("50", 50) / chunk_ms("4", 4), 3)
    return out


def _verdict(values: list[float], floor: float, at_most: bool) -> str:
    """"pass" / "fail" when every repeat is on that side of the floor, else "uncertain"."""
    ok = [(v <= floor) if at_most else (v >= floor) for v in values]
    return "pass" if all(ok) else "fail" if not any(ok) else "uncertain"


def _summary(all_runs: dict, after4: list[dict] | None = None) -> dict:
    """Numbers of one variant from its repeats: fastest repeat per step count, per-repeat 50/4 ratios
    (``after4``: the 4-step runs that close each repeat; the ratio's denominator is then the mean of the
    4-step walls before and after the 50-step run)."""
    runs = {k: min(v, key=lambda r: r["wall_seconds"]) for k, v in all_runs.items()}
    out = dict(rtf={k: v["rtf"] for k, v in runs.items()},
               rtf_all_repeats={k: [r["rtf"] for r in v] for k, v in all_runs.items()},
               # this process's CPU seconds (all threads), fastest repeat: less sensitive to other load
               cpu_seconds={k: min(r["cpu_seconds"] for r in v) for k, v in all_runs.items()},
               nfe={k: v["nfe"] for k, v in runs.items()}, pass_ms=_pass_breakdown(all_runs),
               runs={k: {f: x for f, x in v.items() if f != "passes"} for k, v in runs.items()})
    if "4" in runs and "50" in runs:
        fours = [a["wall_seconds"] for a in all_runs["4"]]
        if after4:
            fours = [0.5 * (a + c["wall_seconds"]) for a, c in zip(fours, after4)]
            out["ratio_50_over_4_drift_per_repeat"] = [
                (c["wall_seconds"] - a["wall_seconds"]) / m for a, c, m in zip(all_runs["4"], after4, fours)]
        per_repeat = [b["wall_seconds"] / a for a, b in zip(fours, all_runs["50"])]
        out["ratio_50_over_4_per_repeat"] = per_repeat
        out["ratio_50_over_4"] = _median(per_repeat)
        out["ratio_50_over_4_fastest"] = runs["50"]["wall_seconds"] / runs["4"]["wall_seconds"]
        out["ratio_50_over_4_cpu"] = out["cpu_seconds"]["50"] / out["cpu_seconds"]["4"]
        # the sampler thread's CPU seconds (the critical path when the decode overlaps it), per repeat:
        # what the per-chunk fixed costs do to the ratio, far less sensitive to other load than wall time
        per_cpu = [b["model_cpu_seconds"] / a["model_cpu_seconds"] for a, b in zip(all_runs["4"], all_runs["50"])]
        out["ratio_50_over_4_sampler_cpu_per_repeat"] = per_cpu
        out["ratio_50_over_4_sampler_cpu"] = _median(per_cpu)
    return out


def run(args) -> dict:
    import torch

    from mf.pipeline import load_studio, warm_up

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {sorted(VARIANTS)}")
    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    studio = load_studio(assets=args.assets, device=args.device, dtype=dtype, preset=args.preset,
                         codec_preset=args.codec_preset)
    load_seconds = time.perf_counter() - t0
    print(f"model: {'trained' if studio.trained else 'INITIAL WEIGHTS'}; {studio.message}", flush=True)
    on_cuda = studio.device.type == "cuda"
    modes = {}
    for name in args.variants:
        warm = time.perf_counter()
        with _variant(studio, name) as kwargs:
            modes[name] = "graph" if kwargs.get("graphs", on_cuda) else "eager"
            warm_up(studio, **kwargs)   # lazy init, graph capture, the traced cache write
        print(f"variant {name}: mode {modes[name]}, dtype {str(studio.dtype).replace('torch.', '')}, warm-up "
              f"{time.perf_counter() - warm:.2f} s", flush=True)
    # Step counts and variants are interleaved and repeated, so every one sees the same background load;
    # each step count keeps its fastest repeat (other processes only ever add time), and the 50/4 ratio
    # is taken per repeat (the 50-step wall over the 4-step walls just before and, bracketed, just after it)
    # with the median over repeats.
    all_runs = {name: {str(s): [] for s in args.steps} for name in args.variants}
    bracket = args.bracket and {4, 50} <= set(args.steps)
    after4: dict[str, list[dict]] = {name: [] for name in args.variants}
    loads = []
    for rep in range(args.repeats):
        for steps in args.steps:
            for name in args.variants:
                with _variant(studio, name) as kwargs:
                    r = _timed_run(studio, steps, args.seconds, args.seed, **kwargs)
                r["loadavg_1min"] = os.getloadavg()[0]
                loads.append(r["loadavg_1min"])
                all_runs[name][str(steps)].append(r)
                print(f"[{rep + 1}/{args.repeats}] {name:>8} steps {steps:>3}: rtf {r['rtf']:.3f} (wall "
                      f"{r['wall_seconds']:.2f} s, cpu {r['cpu_seconds']:.2f} s for {r['seconds']:.2f} s; model "
                      f"{r['model_seconds']:.2f} s, decode {r['decode_seconds']:.2f} s), nfe {r['nfe']}, first chunk "
                      f"{r['first_chunk_seconds']:.3f} s, load {r['loadavg_1min']:.1f}", flush=True)
        if bracket:   # 4 steps again, variants in reverse order: each 50-step run sits between two 4-step runs
            for name in reversed(args.variants):
                with _variant(studio, name) as kwargs:
                    r = _timed_run(studio, 4, args.seconds, args.seed, **kwargs)
                loads.append(os.getloadavg()[0])
                after4[name].append(r)
                print(f"[{rep + 1}/{args.repeats}] {name:>8} steps   4 again: rtf {r['rtf']:.3f} (wall "
                      f"{r['wall_seconds']:.2f} s)", flush=True)
        for name in args.variants:
            a, b = all_runs[name].get("4", []), all_runs[name].get("50", [])
            if len(a) == len(b) == rep + 1:
                four = a[-1]["wall_seconds"]
                if bracket:
                    four = 0.5 * (four + after4[name][-1]["wall_seconds"])
                print(f"[{rep + 1}/{args.repeats}] {name:>8} ratio_50_over_4 "
                      f"{b[-1]['wall_seconds'] / four:.2f} (sampler thread CPU: "
                      f"{b[-1]['model_cpu_seconds'] / a[-1]['model_cpu_seconds']:.2f})", flush=True)
    variants = {}
    for name in args.variants:
        variants[name] = _summary(all_runs[name], after4[name] if bracket else None)
        variants[name].update(mode=modes[name], dtype=str(studio.dtype).replace("torch.", ""),
                              device=str(studio.device))
    main = args.variants[0]
    with _variant(studio, main) as kwargs:
        firsts = [_timed_run(studio, 4, 0.16, args.seed + i, **kwargs)["first_chunk_seconds"] for i in range(3)]
    result = dict(variants[main])
    result.update(
        variant=main, repeats=args.repeats, seconds=args.seconds,
        first_chunk_seconds=sorted(firsts)[1] if firsts else None,  # median of 3
        first_chunk_seconds_runs=firsts,
        trained=studio.trained, codecs_trained=studio.codecs_trained, checkpoint=studio.checkpoint,
        preset_config=studio.config.to_dict(),
        params_m=round(sum(p.numel() for p in studio.model.parameters()) / 1e6, 3),
        load_seconds=load_seconds, loadavg_during=dict(min=min(loads), median=_median(loads), max=max(loads)),
    )
    if len(variants) > 1:
        result["variants"] = {k: {f: v[f] for f in v if f != "runs"} for k, v in variants.items()}
    if not args.skip_rss:
        rss = _rss_run(studio, tuple(args.rss_marks))
        lo, hi = (f"{m:g}s" for m in sorted(args.rss_marks))
        result["rss_mb"] = rss["rss_mb"]
        result["rss_run_wall_seconds"] = rss["wall_seconds"]
        # named after the default marks (10 s and 60 s of generated audio-video)
        result["rss60_over_rss10"] = rss["rss_mb"][hi] / rss["rss_mb"][lo]
        print(f"rss: {rss['rss_mb']} (ratio {result['rss60_over_rss10']:.3f})", flush=True)
    hardware = dict(cpu=_cpu_model(), cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                    device=str(studio.device), torch=torch.__version__, python=platform.python_version(),
                    loadavg_before=load_before, loadavg_after=os.getloadavg())
    if on_cuda:
        hardware["gpu"] = torch.cuda.get_device_name(studio.device)
    result["hardware"] = hardware
    floors = GPU_FLOORS if on_cuda else FLOORS
    checks = {}
    uncertain = []
    if "4" in result["rtf"]:
        checks["rtf_4"] = result["rtf"]["4"] <= floors["rtf_4"]   # the fastest repeat
        if _verdict(result["rtf_all_repeats"]["4"], floors["rtf_4"], at_most=True) == "uncertain":
            uncertain.append("rtf_4")
    if "ratio_50_over_4" in result:
        checks["ratio_50_over_4"] = result["ratio_50_over_4"] >= floors["ratio_50_over_4"]   # the median
        if _verdict(result["ratio_50_over_4_per_repeat"], floors["ratio_50_over_4"], at_most=False) == "uncertain":
            uncertain.append("ratio_50_over_4")
    if "first_chunk_seconds" in floors:
        checks["first_chunk_seconds"] = result["first_chunk_seconds"] <= floors["first_chunk_seconds"]
    if "rss60_over_rss10" in result and "rss60_over_rss10" in floors:
        checks["rss60_over_rss10"] = result["rss60_over_rss10"] <= floors["rss60_over_rss10"]
    result["floors"] = floors
    result["floors_passed"] = checks
    result["floors_uncertain"] = uncertain
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--assets", default="assets")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: float32 on CPU, bfloat16 autocast on CUDA")
    p.add_argument("--variants", nargs="+", default=["default"],
                   help=f"generation paths measured interleaved, first one reported on top: {sorted(VARIANTS)}")
    p.add_argument("--threads", type=int, default=1)
    # 10 s: the first chunk (sampled before any decode can overlap it) and the last chunk's decode
    # (nothing left to overlap it with) are fixed costs per clip; at 3 s they were ~5% of a 4-step run.
    p.add_argument("--seconds", type=float, default=10.0, help="clip length of the rtf runs")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved repeats per step count (fastest kept; 50/4 ratio: median over repeats)")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 50])
    p.add_argument("--no-bracket", dest="bracket", action="store_false",
                   help="skip the second 4-step run of each repeat (the 50/4 ratio then uses the run before only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-rss", action="store_true", help="skip the 60 s memory run")
    p.add_argument("--rss-marks", type=float, nargs=2, default=[10.0, 60.0],
                   help="seconds of generated clip at which RSS is sampled (one continuous run)")
    p.add_argument("--preset", default="tiny", help="model preset for initial weights when assets/model is absent")
    p.add_argument("--codec-preset", default="tiny", help="codec preset when assets/codecs is absent")
    args = p.parse_args(argv)
    try:
        result = run(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            fh.write(text)
    keys = ("variant", "mode", "dtype", "device", "rtf", "ratio_50_over_4", "ratio_50_over_4_per_repeat",
            "ratio_50_over_4_fastest", "ratio_50_over_4_cpu", "ratio_50_over_4_sampler_cpu", "pass_ms",
            "first_chunk_seconds", "rss_mb", "loadavg_during", "floors_passed", "floors_uncertain")
    print(json.dumps({k: result[k] for k in keys if k in result}, indent=1))
    for name, v in result.get("variants", {}).items():
        per = ", ".join(f"{x:.2f}" for x in v.get("ratio_50_over_4_per_repeat", []))
        print(f"{name:>8} ({v['mode']}, {v['dtype']}, {v['device']}): rtf " +
              ", ".join(f"{k}: {x:.3f}" for k, x in v["rtf"].items()) +
              (f"; ratio_50_over_4 per repeat [{per}], median {v['ratio_50_over_4']:.2f} (sampler thread CPU "
               f"median {v['ratio_50_over_4_sampler_cpu']:.2f})" if per else ""))
    for name in result.get("floors_uncertain", []):
        print(f"{name}: UNCERTAIN: the repeats fall on both sides of the floor {result['floors'][name]}, so the "
              f"pass/fail above reflects this machine's noise as much as the code; compare variants measured in one "
              f"run, or repeat on a quieter machine", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
