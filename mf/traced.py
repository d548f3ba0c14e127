"""The cache write of CPU streaming without Python between its kernels: ``TracedWrite``.

Why (issue 15, ``scripts/gil_probe.py``): a tiny-preset pass is about 30% Python between its kernels, and
two threads that both run Python share one GIL. Chunk k's write runs in a second thread beside chunk
k+1's first pass (``mf.sampler.sample_chunk(write_beside=...)``); run eagerly, the two threads hand the
GIL back and forth at every kernel and that first pass costs 0.4-0.5 of a pass extra although it never
waits for the write's keys. Traced, each piece of the write is one call that runs its kernels in C++
with the GIL released, so the write no longer competes with the pass for the GIL: that pass's extra fell
to 0.33 of a pass (about 3 ms less, in three ``eval.bench --variants default eager_write`` runs). The write's
set-up (the chunk's embedding and the t = d = 0 modulations, about 35 small ops) stayed eager and still took
GIL turns from that pass; traced too, as the write's head, it took that pass from 9.67 to 9.16 ms (medians of
10 paired streams on a 2-core AVX512 box, against the write with an eager head; wall minus the sampler's CPU
time 1.10 -> 0.71 ms). What is left: the pass's own per-chunk work (its view's concatenations, the new
chunk's set-up; about 1.1 ms beside a writer that publishes ready keys at once) and the write's cache append.

What is traced: the head (``MFTransformer._write_head``) and, per block, two pieces of ``mf.layers.Block``
(``_Keys``: adaLN, qkv and the keys' rotation; ``_Rest``: the queries' rotation, attention over the context,
residual and MLP), so the keys of layer l are still published (``on_layer``) before layer l's attention, as
in the eager write. Same kernels in the same order: the same bits as the eager write (tests/test_traced.py,
tests/test_determinism.py's long streams). Traces are made for the steady shape only (one chunk over a full
window of history; one set per batch size), the first time it is met, under ``torch.no_grad``, and run on the
plain interpreter; everything else (the window's filling, training, autocast, masks, static caches) writes
eagerly (``MFTransformer._traced_write_pass``, ``applies``), and so does a model whose tracing failed (a
``RuntimeWarning`` says why once; ``failed``). The inputs are checked (phoneme ids, shapes) before a trace
runs. A trace reads the model's parameters as attributes, so in-place updates reach it; a parameter, buffer
or module replaced by another is noticed through torch's global registration hooks and traced again.
"""

from __future__ import annotations

import threading
import warnings
import weakref

import torch
import torch.nn as nn

from mf.conditions import Conditions
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


_REGISTRATIONS = [0]   # bumped whenever any module registers a parameter, buffer or submodule (a weight replaced)


def _registered(*args) -> None:
    _REGISTRATIONS[0] += 1


_HOOKS = [getattr(torch.nn.modules.module, f"register_module_{kind}_registration_hook", None)
          for kind in ("parameter", "buffer", "module")]
_HOOKED = all(hook is not None for hook in _HOOKS)   # else every write gathers the parameters again
if _HOOKED:
    for _hook in _HOOKS:
        _hook(_registered)


class _Head(nn.Module):
    """The write before its blocks (``MFTransformer._write_head``: the chunk's tokens and the t = d = 0
    modulations) as a module whose parameters and buffers are the model's own tensors (so a trace reads them
    as attributes and follows in-place updates), without holding the model (its owner keeps it weakly)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._owner = weakref.ref(model)
        for i, p in enumerate(model.parameters()):
            self.register_parameter(f"p{i}", p)
        for i, b in enumerate(model.buffers()):
            self.register_buffer(f"b{i}", b, persistent=False)

    def forward(self, video, audio, ref_latent, attributes, phone_ids, text_dropped):
        return self._owner()._write_head(video, audio, Conditions(ref_latent, attributes, phone_ids, text_dropped))


class TracedWrite:
    """``MFTransformer.write_cache`` of the steady shape as TorchScript traces (one ``MFTransformer`` owns one).

    ``write`` returns the keys/values of every layer and calls ``on_layer(li, (k, v))`` as soon as layer li's
    exist. ``traces`` counts trace sets made (the head and every block's pieces, per shape), ``calls`` writes
    run traced.
    """

    def __init__(self, model: nn.Module, history_keys: int):
        self._owner = weakref.ref(model)
        self.blocks = model.blocks
        self.history_keys = int(history_keys)   # keys of a full window: the one shape of steady streaming
        self._keys = [_Keys(block) for block in self.blocks]
        self._rest = [_Rest(block) for block in self.blocks]
        self._sets: dict = {}   # input shapes -> (head trace, [(keys trace, rest trace) per block])
        self._lock = threading.Lock()
        self.traces = self.calls = 0
        self.failed = ""   # why tracing is unavailable, once it failed
        self._traced_weights: tuple = ()
        self._params: list | None = None
        self._registrations = -1

    def applies(self, video, n_prefix: int, n_history: int) -> bool:
        """Whether a write can run traced (the model has checked the shapes): CPU inference without autocast,
        over a context of the prefix and a full window of history (the shape of every write once the window
        has filled: one set of traces per batch size, instead of one per filling step)."""
        return (video.device.type == "cpu" and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and n_history == self.history_keys and n_prefix > 0)

    def _weights(self) -> tuple:
        """Where the model's weights live: a trace reads its parameters as they are updated in place (an
        optimiser step, ``load_state_dict``), but a parameter or module replaced by another needs a new trace.
        The parameter list is gathered again only after a module registered something (a global hook)."""
        if self._params is None or self._registrations != _REGISTRATIONS[0] or not _HOOKED:
            self._registrations = _REGISTRATIONS[0]
            self._params = list(self._owner().parameters())
        return tuple(p.data_ptr() for p in self._params)

    def _trace_all(self, inputs: tuple, rope: tuple, ctx) -> tuple | None:
        """Trace the head and both pieces of every block for these shapes (the caller holds the lock). None
        when tracing is not available (e.g. a torch without ``torch.jit.trace``): the model then writes eagerly."""
        cos, sin, cos_sp, sin_sp = rope
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")   # torch.jit.trace's deprecation notice
                head = torch.jit.trace(_Head(self._owner()), inputs, check_trace=False)
                xv, xa, mod_v, mod_a = head(*inputs)
                pieces, last = [], len(self.blocks) - 1
                for li in range(len(self.blocks)):
                    args = (xv, xa, mod_v, mod_a, cos, sin)
                    keys = torch.jit.trace(self._keys[li], args, check_trace=False)
                    q, k, v, mv, ma = keys(*args)
                    rest = None
                    if li < last:   # the last block stops after its keys
                        rest_args = (xv, xa, q, k, v, mv, ma, cos, sin, cos_sp, sin_sp) + tuple(ctx[li])
                        rest = torch.jit.trace(self._rest[li], rest_args, check_trace=False)
                        xv, xa = rest(*rest_args)
                    pieces.append((keys, rest))
            self.traces += 1
            return head, pieces
        except Exception as exc:  # noqa: BLE001 - an optimisation: the eager write gives the same bits
            self.failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"cache writes stay eager: tracing failed ({self.failed})", RuntimeWarning, stacklevel=3)
            return None

    def write(self, video, audio, cond: Conditions, rope: tuple, ctx: list, n_prefix: int,
              on_layer=None) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The write's keys/values per layer, traced (tracing this shape first if needed); None when tracing
        failed (the caller writes eagerly)."""
        if self.failed:
            return None
        inputs = (video, audio, cond.ref_latent, cond.attributes, cond.phone_ids, cond.text_dropped)
        signature, weights = (tuple(tuple(t.shape) for t in inputs), video.dtype, int(n_prefix)), self._weights()
        fns = self._sets.get(signature) if weights == self._traced_weights else None
        if fns is None:
            with self._lock:
                if weights != self._traced_weights:
                    self._sets, self._traced_weights = {}, weights
                fns = self._sets.get(signature)
                if fns is None:
                    fns = self._trace_all(inputs, rope, ctx)
                    if fns is None:
                        return None
                    self._sets[signature] = fns
        head, pieces = fns
        cos, sin, cos_sp, sin_sp = rope
        kvs = []
        # the plain interpreter: the traced kernels exactly, no profiling runs or re-optimisation later on
        with torch.jit.optimized_execution(False):
            xv, xa, mod_v, mod_a = head(*inputs)
            for li, (keys, rest) in enumerate(pieces):
                q, k, v, mv, ma = keys(xv, xa, mod_v, mod_a, cos, sin)
                if on_layer is not None:
                    on_layer(li, (k, v))
                kvs.append((k, v))
                if rest is not None:
                    xv, xa = rest(xv, xa, q, k, v, mv, ma, cos, sin, cos_sp, sin_sp, *ctx[li])
        self.calls += 1
        return kvs


__all__ = ["TracedWrite"]
