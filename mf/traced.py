"""The cache write of CPU streaming without Python between its kernels: ``TracedWrite``.

Why (issue 15, ``scripts/gil_probe.py``): a tiny-preset pass is about 30% Python between its kernels, and
two threads that both run Python share one GIL. Chunk k's write runs in a second thread beside chunk
k+1's first pass (``mf.sampler.sample_chunk(write_beside=...)``); run eagerly, the two threads hand the
GIL back and forth at every kernel and that first pass costs 0.4-0.5 of a pass extra although it never
waits for the write's keys. Traced, each piece of the write is one call that runs its kernels in C++
with the GIL released, so the write no longer competes with the pass for the GIL: that pass's extra fell
to 0.33 of a pass (about 3 ms less, in three ``eval.bench --variants default eager_write`` runs). What is
left: about 3 ms of the pass's own per-chunk work (there even beside a writer that computes nothing) and
the GIL turns the pass still takes with the write's eager set-up and cache append, around these traces
(a profile: 12.7 ms between kernels in that pass against 6.0 serial; docs/ARCHITECTURE.md).

What is traced: per block, two pieces of ``mf.layers.Block`` (``_Keys``: adaLN, qkv and the keys'
rotation; ``_Rest``: the queries' rotation, attention over the context, residual and MLP), so the keys
of layer l are still published (``on_layer``) before layer l's attention, as in the eager write. Same
kernels in the same order: the same bits as the eager write (tests/test_traced.py). Traces are made
for the steady shape only (a full window of history; one set per batch size), the first time it is met,
under ``torch.no_grad``, and run on the plain interpreter; everything else (the window's filling,
training, autocast, masks) writes eagerly (``applies``), and so does a model whose tracing failed (a
``RuntimeWarning`` says why once; ``failed``).
"""

from __future__ import annotations

import threading
import warnings

import torch
import torch.nn as nn

from mf.layers import apply_rope, attend


class _Keys(nn.Module):
    """Block piece 1: (xv, xa, mod_v, mod_a, cos, sin) -> (q, k rotated, v, mod_v, mod_a)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, xv, xa, mod_v, mod_a, cos, sin):
        q, k, v, mod_v, mod_a = self.block.qkv(xv, xa, mod_v, mod_a)
        return q, apply_rope(k, cos, sin), v, mod_v, mod_a


class _Rest(nn.Module):
    """Block piece 2: attention of this block's queries over [prefix; history; own keys], then the
    towers' residual and MLP -> (xv, xa)."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, xv, xa, q, k, v, mod_v, mod_a, cos, sin, cos_sp, sin_sp, pk, pv, hk, hv):
        out = attend(apply_rope(q, cos, sin), apply_rope(q, cos_sp, sin_sp), k, v, (pk, pv, hk, hv), None)
        return self.block.finish(xv, xa, out, mod_v, mod_a)


def _shapes(tensors) -> tuple:
    return tuple((tuple(t.shape), t.dtype) for t in tensors)


class TracedWrite:
    """``MFTransformer.write_cache``'s blocks as TorchScript traces (one ``MFTransformer`` owns one).

    ``run`` has ``_run_blocks``' contract for the WRITE plan: it returns the keys/values of every layer
    and calls ``on_layer(li, (k, v))`` as soon as layer li's exist. ``traces`` counts traces made,
    ``calls`` writes run traced.
    """

    def __init__(self, blocks: nn.ModuleList, history_keys: int):
        self.blocks = blocks
        self.history_keys = int(history_keys)   # keys of a full window: the one shape of steady streaming
        self._keys = [_Keys(block) for block in blocks]
        self._rest = [_Rest(block) for block in blocks]
        self._fns: dict = {}
        self._lock = threading.Lock()
        self.traces = self.calls = 0
        self.failed = ""   # why tracing is unavailable, once it failed
        self._traced_weights: tuple = ()

    def applies(self, xv, xa, ctx, mask) -> bool:
        """Whether a write pass runs traced: CPU inference without autocast, both towers with tokens, no
        attention mask, and every layer's context a tensor tuple holding a full window of history (the
        shape of every write once the window has filled: a handful of traces, made once, instead of one
        per filling step)."""
        return (xv.device.type == "cpu" and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and xv.shape[2] > 0 and xa.shape[2] > 0 and mask is None and ctx is not None
                and all(isinstance(c, tuple) and c[2] is not None and c[2].shape[2] == self.history_keys
                        for c in ctx))

    def _key(self, kind: str, li: int, tensors) -> tuple:
        return (kind, li) + _shapes(tensors)

    def _trace_all(self, xv, xa, mod_v, mod_a, cos, sin, cos_sp, sin_sp, ctx) -> bool:
        """Trace every piece for these shapes (once; the caller holds the lock). False when tracing is
        not available (e.g. a torch without ``torch.jit.trace``): the model then writes eagerly."""
        try:
            made = {}   # published all at once: a reader that sees layer 0 traced finds every piece
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")   # torch.jit.trace's deprecation notice
                last = len(self.blocks) - 1
                for li in range(len(self.blocks)):
                    args = (xv, xa, mod_v, mod_a, cos, sin)
                    fn = made[self._key("keys", li, args)] = torch.jit.trace(self._keys[li], args, check_trace=False)
                    q, k, v, mv, ma = fn(*args)
                    if li == last:
                        break
                    rest = (xv, xa, q, k, v, mv, ma, cos, sin, cos_sp, sin_sp) + tuple(ctx[li])
                    fn = made[self._key("rest", li, rest)] = torch.jit.trace(self._rest[li], rest, check_trace=False)
                    xv, xa = fn(*rest)
            self._fns.update(made)
            self.traces += len(made)
            return True
        except Exception as exc:  # noqa: BLE001 - an optimisation: the eager write gives the same bits
            self.failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"cache writes stay eager: tracing failed ({self.failed})", RuntimeWarning, stacklevel=2)
            return False

    def _weights(self) -> tuple:
        """Where the blocks' weights live: a trace reads its module's parameters as they are updated in place
        (an optimiser step, ``load_state_dict``), but a parameter replaced by another tensor needs a new trace."""
        return tuple(p.data_ptr() for p in self.blocks.parameters())

    def ready(self, xv, xa, mod_v, mod_a, rope: tuple, ctx) -> bool:
        """Whether this write's pieces are traced (tracing them now if they are not)."""
        if self.failed:
            return False
        key, weights = self._key("keys", 0, (xv, xa, mod_v, mod_a) + tuple(rope[:2])), self._weights()
        if key in self._fns and weights == self._traced_weights:
            return True
        with self._lock:
            if weights != self._traced_weights:
                self._fns, self._traced_weights = {}, weights
            if key in self._fns:
                return True
            return self._trace_all(xv, xa, mod_v, mod_a, *rope, ctx)

    def run(self, xv, xa, mod_v, mod_a, rope: tuple, ctx, on_layer=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The write's keys/values per layer (after ``ready`` said True)."""
        cos, sin, cos_sp, sin_sp = rope
        kvs, last = [], len(self.blocks) - 1
        # the plain interpreter: the traced kernels exactly, no profiling runs or re-optimisation later on
        with torch.jit.optimized_execution(False):
            for li in range(len(self.blocks)):
                args = (xv, xa, mod_v, mod_a, cos, sin)
                q, k, v, mv, ma = self._fns[self._key("keys", li, args)](*args)
                if on_layer is not None:
                    on_layer(li, (k, v))
                kvs.append((k, v))
                if li == last:   # the WRITE plan: the last block stops after its keys
                    break
                rest = (xv, xa, q, k, v, mv, ma, cos, sin, cos_sp, sin_sp) + tuple(ctx[li])
                xv, xa = self._fns[self._key("rest", li, rest)](*rest)
        self.calls += 1
        return kvs


__all__ = ["TracedWrite"]
