"""The network passes of streaming generation on fixed-address buffers, captured as CUDA graphs: ``GraphedModel``.

On a GPU the tiny model is launch-bound: one pass is hundreds of small kernels, each costing more to
launch than to run. ``GraphedModel`` stands in for ``MFTransformer`` where ``mf.sampler.sample_chunk``
calls it (``__call__`` = one denoising pass, ``write_cache``, ``step_and_write``), so the sampler code
path is unchanged (``Schedule.step`` still moves the latents). Each pass kind runs the model's own
method on static input buffers against a ``mf.static_cache.StaticKVCache``; on CUDA it is captured once
as a ``torch.cuda.CUDAGraph`` and then replayed (one launch per pass; the cache write's ring copy is
inside the graph). Everything that changes per chunk lives in buffers refreshed outside the graph:
the inputs, the rotary tables and attention mask of the pass (``StaticKVCache.static_pass``, from the
model's one layout and attention rule), the ring slot of a write and the chunk ids.

``capture=False`` runs the very same protocol eagerly (fill buffers, run the pass with the cache
frozen, record the write): this is how the CPU tests check the logic of the GPU path (shapes never
change, buffers never move, equal to the eager model within float rounding).

Passes under autocast (bf16 on CUDA) use ``cache_enabled=False``: autocast's weight-cast cache must not
outlive a capture, so the casts are part of the graph.

Contract: the tensors a pass returns are the graph's output buffers; they are valid until the next
pass of the same kind (``sample_chunk`` consumes them at once).
"""

from __future__ import annotations

import threading
from contextlib import nullcontext

import torch

from mf.conditions import Conditions
from mf.model import GROUP_HISTORY, GROUP_NOISY, MFTransformer
from mf.static_cache import StaticKVCache

PASS_KINDS = ("denoise", "write", "fused")


def new_static_cache(model: MFTransformer, cond: Conditions) -> StaticKVCache:
    """A ring-buffer cache holding the prefix of ``cond.ref_latent`` (call under the pass's autocast)."""
    config = model.model_config
    return StaticKVCache(config.window_chunks, config.tokens_per_chunk, model.prefix_kv(cond))


class _Pass:
    """One pass kind on static inputs: eager function, and its CUDA graph once captured."""

    def __init__(self, kind: str, tensors: tuple, conds: tuple):
        self.kind = kind
        self.tensors = tuple(t.clone() for t in tensors)
        self.conds = tuple(Conditions(c.ref_latent.clone(), c.attributes.clone(), c.phone_ids.clone(),
                                      c.text_dropped.clone()) for c in conds)
        self.graph = None
        self.outputs = None

    def signature(self) -> tuple:
        return _signature(self.kind, self.tensors, self.conds)

    def load(self, tensors: tuple, conds: tuple) -> None:
        for dst, src in zip(self.tensors, tensors):
            dst.copy_(src)
        for dst, src in zip(self.conds, conds):
            for name in ("ref_latent", "attributes", "phone_ids", "text_dropped"):
                getattr(dst, name).copy_(getattr(src, name))


def _signature(kind, tensors, conds) -> tuple:
    shapes = tuple((tuple(t.shape), t.dtype) for t in tensors)
    return (kind, shapes, tuple((tuple(c.phone_ids.shape), c.batch_size) for c in conds))


class GraphedModel:
    """``MFTransformer`` as the sampler calls it, on static buffers (CUDA graphs when ``capture``).

    model: the network (eval mode). cache: the ``StaticKVCache`` every pass reads (and writes).
    capture: record CUDA graphs (default: when the cache is on a CUDA device). autocast_dtype: the
    passes' autocast dtype (None: none). ``replays`` / ``captures`` count graph launches and captures.
    """

    def __init__(self, model: MFTransformer, cache: StaticKVCache, *, capture: bool | None = None,
                 autocast_dtype: torch.dtype | None = None):
        self.model, self.cache = model, cache
        self.model_config = model.model_config
        self.capture = cache.device.type == "cuda" if capture is None else bool(capture)
        if self.capture and cache.device.type != "cuda":
            raise ValueError("CUDA graphs need the cache on a CUDA device")
        self.autocast_dtype = autocast_dtype
        self.replays = self.captures = 0
        self.lock = threading.Lock()   # one stream at a time owns the buffers (see mf.pipeline)
        self._passes: dict[str, _Pass] = {}

    # ------------------------------------------------------------------ the model's interface
    def __call__(self, video, audio, t, d, cond: Conditions, kv_cache: StaticKVCache | None = None):
        self._check(kv_cache, video.shape[1])
        index = self.cache.next_chunk
        return self._run("denoise", (video, audio, t, d), (cond,), [index], [GROUP_HISTORY], None)

    def write_cache(self, video, audio, cond: Conditions, cache: StaticKVCache) -> StaticKVCache:
        self._check(cache, video.shape[1])
        index = self.cache.next_chunk
        self._run("write", (video, audio), (cond,), [index], [GROUP_HISTORY], index)
        return cache

    def step_and_write(self, noisy_video, noisy_audio, t, d, clean_video, clean_audio, cond_noisy: Conditions,
                       cond_clean: Conditions, cache: StaticKVCache):
        self._check(cache, noisy_video.shape[1])
        index = self.cache.next_chunk
        return self._run("fused", (noisy_video, noisy_audio, t, d, clean_video, clean_audio), (cond_noisy, cond_clean),
                         [index, index + 1], [GROUP_HISTORY, GROUP_NOISY], index)

    # ------------------------------------------------------------------ protocol
    def _check(self, cache, n_frames: int) -> None:
        if cache is not self.cache:
            raise ValueError("a GraphedModel runs against its own StaticKVCache only")
        if n_frames != self.model_config.frames_per_chunk:
            raise ValueError(f"static passes take exactly one chunk ({self.model_config.frames_per_chunk} frames), "
                             f"got {n_frames}")

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.cache.device.type, dtype=self.autocast_dtype, cache_enabled=False)

    def _body(self, p: _Pass):
        """The pass itself: the model's own method on the static inputs, the cache frozen."""
        m, c = self.model, self.cache
        with self._autocast():
            if p.kind == "denoise":
                v, a, t, d = p.tensors
                return m(v, a, t, d, p.conds[0], kv_cache=c)
            if p.kind == "write":
                v, a = p.tensors
                m.write_cache(v, a, p.conds[0], c)
                return ()
            v, a, t, d, cv, ca = p.tensors
            return m.step_and_write(v, a, t, d, cv, ca, p.conds[0], p.conds[1], c)

    @torch.inference_mode()
    def _run(self, kind: str, tensors: tuple, conds: tuple, chunks: list[int], groups: list[int],
             write: int | None):
        cache = self.cache
        cache.static_pass(self.model, chunks, groups)           # rotary tables + mask of this pass
        if write is not None:
            cache.begin_write(write)
        p = self._passes.get(kind)
        if p is not None and p.signature() != _signature(kind, tensors, conds):
            raise ValueError(f"{kind} pass: inputs {_signature(kind, tensors, conds)} do not match the captured "
                             f"{p.signature()} (one GraphedModel per batch size)")
        cache.frozen = True
        try:
            if p is None:
                p = self._passes[kind] = _Pass(kind, tensors, conds)
                out = self._first_run(p)
            else:
                p.load(tensors, conds)
                if p.graph is not None:
                    p.graph.replay()
                    self.replays += 1
                    out = p.outputs
                else:
                    out = self._body(p)
        finally:
            cache.frozen = False
        if write is not None:
            cache.end_write(write)
        return out

    def _first_run(self, p: _Pass):
        """Run the pass for real (on a side stream on CUDA: the warm-up), then capture it."""
        if not self.capture:
            return self._body(p)
        side = torch.cuda.Stream(device=self.cache.device)
        side.wait_stream(torch.cuda.current_stream(self.cache.device))
        with torch.cuda.stream(side):
            out = self._body(p)
        torch.cuda.current_stream(self.cache.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the consumer thread may decode on the GPU while the sampler thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            p.outputs = self._body(p)                           # recorded, not run: the ring is untouched
        p.graph = graph
        self.captures += 1
        return out

    @torch.inference_mode()
    def warm_up(self, cond: Conditions) -> None:
        """Capture every pass kind now (zeros for latents), then empty the ring again.

        ``cond``: one chunk's conditions at the batch the passes will see (e.g. ``cond_in.chunk_slice(0, 1, fc)``).
        """
        config, cache = self.model_config, self.cache
        b, fc = cond.batch_size, config.frames_per_chunk
        dev = cache.device
        v = torch.zeros(b, fc, config.video_channels, config.latent_size, config.latent_size, device=dev)
        a = torch.zeros(b, config.mels_per_chunk, config.n_mels, device=dev)
        t = torch.full((b, 1), 0.5, device=dev)
        prefix = [(k.clone(), vv.clone()) for k, vv in cache.prefix]
        self.write_cache(v, a, cond, cache)
        self.step_and_write(v, a, t, t, v, a, cond, cond, cache)
        self(v, a, t, t, cond, kv_cache=cache)
        cache.reset(prefix)


def acquire(runners: dict, model: MFTransformer, cond: Conditions, *, capture: bool,
            autocast_dtype: torch.dtype | None) -> GraphedModel:
    """A free ``GraphedModel`` for ``cond``'s batch from ``runners`` (key -> list), its cache holding
    ``cond``'s prefix; made and warmed up (captured) when none is free. The caller owns ``runner.lock``
    and releases it when its stream ends (a runner's buffers serve one stream at a time)."""
    fc = model.model_config.frames_per_chunk
    device = cond.ref_latent.device
    autocast = (torch.autocast(device.type, dtype=autocast_dtype, cache_enabled=False) if autocast_dtype
                else nullcontext())
    with torch.inference_mode(), autocast:
        prefix = model.prefix_kv(cond)
        key = (cond.batch_size, str(device), autocast_dtype, bool(capture), prefix[0][0].dtype)
        pool = runners.setdefault(key, [])
        for runner in pool:
            if runner.lock.acquire(blocking=False):
                runner.cache.reset(prefix)
                return runner
        config = model.model_config
        runner = GraphedModel(model, StaticKVCache(config.window_chunks, config.tokens_per_chunk, prefix),
                              capture=capture, autocast_dtype=autocast_dtype)
        runner.lock.acquire()
        try:
            runner.warm_up(cond.chunk_slice(0, 1, fc))
        except BaseException:
            runner.lock.release()
            raise
        pool.append(runner)
        return runner
