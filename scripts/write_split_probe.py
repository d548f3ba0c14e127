"""What moving the cache write's set-up out of the writer thread buys: ``python scripts/write_split_probe.py``.

Issue 15's diagnostic (not a test: it times things). ``mf.sampler`` runs chunk k's cache write beside chunk k+1's
first pass. Two ways to split it between the threads, measured interleaved in one process on 4-step streams:
- ``split`` (the pipeline's): the write's set-up (embedding, adaLN, layout, mask, context: ``prepare_write``) in
  the sampler thread, only its blocks (traces that hold no GIL on the CPU, ``mf.traced``) in the writer thread,
  and the cache append in the sampler thread, reusing the contexts the first pass concatenated;
- ``whole`` (the scheme before): all of ``write_cache`` in the writer thread, where its eager set-up and its
  append take turns at the GIL with the first pass.
Both give the same bits (tests/test_pipeline.py, tests/test_model.py). Printed: per variant the medians over
repeats of a steady chunk's first pass, its later passes and the interval between chunks (decode included),
and the paired ratio of chunk intervals (split over whole; below 1 = split faster).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/write_split_probe.py", description=__doc__.splitlines()[0])
    p.add_argument("--assets", default="assets")
    p.add_argument("--repeats", type=int, default=16)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import mf.sampler as sampler
    from mf.pipeline import generate, load_studio, warm_up

    split = sampler._step_beside_write

    def whole(model, cache, pending, executor, in_v, in_a, t, d, cond_in):
        view = cache.incoming(cache.next_chunk, model.model_config.tokens_per_chunk)

        def write():
            try:
                with torch.inference_mode():
                    model.write_cache(pending.video, pending.audio, pending.cond, cache, on_layer=view.publish)
            except BaseException as exc:
                view.fail(exc)
                raise

        job = executor.submit(write)
        try:
            return model(in_v, in_a, t, d, cond_in, kv_cache=view)
        finally:
            job.result()

    studio = load_studio(args.assets)
    steady = studio.config.window_chunks + 2   # chunks after the window filled (full-window writes)
    variants = {"whole": whole, "split": split}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
    try:
        for fn in variants.values():
            sampler._step_beside_write = fn
            warm_up(studio)
        for rep in range(args.repeats):
            for name in (list(variants) if rep % 2 == 0 else list(variants)[::-1]):
                sampler._step_beside_write = variants[name]
                firsts, rests, stamps = [], [], []
                for chunk in generate(studio, steps=args.steps, seed=1, seconds=args.seconds):
                    stamps.append(time.perf_counter())
                    if chunk.index >= steady:
                        firsts.append(chunk.timings["steps_s"][0])
                        rests += chunk.timings["steps_s"][1:]
                gaps = [b - a for a, b in zip(stamps[steady:], stamps[steady + 1:])]
                if not gaps:
                    raise SystemExit(f"--seconds {args.seconds} is too short: no chunk after the window filled")
                results[name].append((statistics.median(firsts) * 1e3,
                                       statistics.median(rests) * 1e3 if rests else float("nan"),
                                       statistics.mean(gaps) * 1e3))
    finally:
        sampler._step_beside_write = split
    for name, runs in results.items():
        first, rest, chunk = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"{name:>5}: first pass {first:.2f} ms, later passes {rest:.2f} ms, chunk interval {chunk:.2f} ms "
              f"(medians of {len(runs)} streams of {args.seconds:g} s at {args.steps} steps)")
    paired = [b[2] / a[2] for a, b in zip(results["whole"], results["split"])]
    first_diff = [b[0] - a[0] for a, b in zip(results["whole"], results["split"])]
    print(f"chunk interval split / whole, paired: median {statistics.median(paired):.3f} "
          f"(min {min(paired):.3f}, max {max(paired):.3f}); first pass split - whole: median "
          f"{statistics.median(first_diff):+.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
