"""Why a second thread slows the sampler on the CPU: ``python scripts/gil_probe.py [--repeats 4]``.

Issue 15's diagnostic (not a test: it times things). Measures, in one process on one torch thread each:
1. one denoising pass of the shipped model run eagerly vs the same pass as a TorchScript trace (the trace
   runs the same kernels from C++, without the Python between them);
2. a 50-step generation (0.64 s, no look-ahead, decode stubbed) alone, beside a thread running that eager
   pass in a loop, and beside a thread running the traced pass in a loop, interleaved per repeat.
Both threads do the same arithmetic in (2); only the eager one needs the GIL between its kernels. If the
sampler slows far more beside the eager thread, what costs it is the GIL that the two Python threads share,
not the second core's compute. The trace here is a probe only; the pipeline does not use it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/gil_probe.py", description=__doc__.splitlines()[0])
    p.add_argument("--assets", default="assets")
    p.add_argument("--repeats", type=int, default=4)
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository root: finds mf
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from mf.pipeline import build_conditions, generate, load_studio

    studio = load_studio(args.assets)
    model, cfg = studio.model, studio.config
    for param in model.parameters():   # tracing keeps weights as constants: no autograd on them
        param.requires_grad_(False)
    studio.video_codec.decode_uint8 = lambda lat: np.zeros((lat.shape[0], 64, 64, 3), np.uint8)
    studio.audio_codec.decode = lambda mel: np.zeros(mel.shape[0] * 160, np.float32)

    cond, _ = build_conditions(studio, seed=0, n_chunks=10, text=None, character_id=None)
    fc = cfg.frames_per_chunk
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(1, fc, cfg.video_channels, cfg.latent_size, cfg.latent_size, generator=gen)
    a = torch.randn(1, cfg.mels_per_chunk, cfg.n_mels, generator=gen)
    t = torch.full((1, 1), 0.5)
    with torch.no_grad():
        cache = model.new_cache(cond.chunk_slice(0, 1, fc))
        for k in range(cfg.window_chunks):   # a full window of context, as in steady streaming
            model.write_cache(v, a, cond.chunk_slice(k, 1, fc), cache)
        this_chunk = cond.chunk_slice(cfg.window_chunks, 1, fc)

        def eager(v, a, t):
            return model(v, a, t, t, this_chunk, kv_cache=cache)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # torch.jit.trace's deprecation and tracer warnings
            traced = torch.jit.trace(eager, (v, a, t), check_trace=False)
        same = all(torch.equal(x, y) for x, y in zip(eager(v, a, t), traced(v, a, t)))

        def per_pass_ms(fn, n=40):
            fn(v, a, t)
            start = time.perf_counter()
            for _ in range(n):
                fn(v, a, t)
            return (time.perf_counter() - start) / n * 1e3

        ms_eager, ms_traced = per_pass_ms(eager), per_pass_ms(traced)
    print(f"one pass: eager {ms_eager:.2f} ms, traced {ms_traced:.2f} ms (same bits: {same})", flush=True)

    def loop(stop, fn):
        torch.set_num_threads(1)
        with torch.no_grad():
            while not stop.is_set():
                fn(v, a, t)

    def sampler() -> float:
        start = time.perf_counter()
        for _ in generate(studio, steps=50, seed=3, seconds=0.64, lookahead=False, write_beside=False):
            pass
        return time.perf_counter() - start

    def beside(fn) -> float:
        stop = threading.Event()
        thread = threading.Thread(target=loop, args=(stop, fn), daemon=True)
        thread.start()
        time.sleep(0.1)
        try:
            return sampler()
        finally:
            stop.set()
            thread.join()

    sampler()   # warm-up
    runs = {"alone": [], "beside_eager_thread": [], "beside_traced_thread": []}
    for rep in range(args.repeats):
        runs["alone"].append(sampler())
        runs["beside_eager_thread"].append(beside(eager))
        runs["beside_traced_thread"].append(beside(traced))
        print(f"[{rep + 1}/{args.repeats}] 50-step generation, s: " +
              ", ".join(f"{k} {x[-1]:.2f}" for k, x in runs.items()), flush=True)
    med = {k: statistics.median(x) for k, x in runs.items()}
    print("median s: " + ", ".join(f"{k} {x:.2f}" for k, x in med.items()) +
          f"; slowdown beside the eager thread {med['beside_eager_thread'] / med['alone'] - 1:+.0%}, "
          f"beside the traced thread {med['beside_traced_thread'] / med['alone'] - 1:+.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
