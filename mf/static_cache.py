"""A fixed-address, ring-buffer key/value cache for graph-captured streaming: ``StaticKVCache``.

Same contract as ``mf.kv_cache.KVCache`` (the reference prefix never evicted, the last ``window``
finished chunks, the chunk id of every cached key), but every tensor is allocated once and written in
place, so a CUDA graph can capture the passes that read and write it (``mf.graphs``):

- history keys/values per layer: one buffer [B, H, W*T, hd] (W = window, T = tokens per chunk);
  chunk c lives in slot ``c % W`` (tokens ``slot*T .. slot*T + T``), written by ``index_copy_`` with
  an index tensor (``slot_index``) that is updated outside the graph;
- chunk ids [P + W*T]: ``PREFIX_CHUNK`` for the P prefix keys, the chunk index of each written slot,
  ``EMPTY_CHUNK`` for slots never written. The attention rule is the model's one rule
  (``MFTransformer._visibility_matrix``): an empty slot is below every query's window, so it is
  hidden, and the slot a write overwrites holds chunk c - W, which only chunk c itself still sees
  (the write pass of c reads it before the ring copy at its end).

Softmax attention does not depend on the order of its keys, so the ring gives the rolling cache's
outputs up to float rounding (the keys are summed in another order; tested over a stream longer than
the window).

Pass buffers: ``static_pass(model, chunks, groups, ...)`` (the hook ``MFTransformer._cache_pass`` calls)
returns a ``Layout`` and a mask whose tensors keep their address for a given pass shape; outside a
capture (``frozen`` False) it first refills them from ``model._layout`` and ``model._visibility_matrix``
(unless they already hold this pass: same chunks and no cache write since, e.g. the steps of a chunk).
While ``frozen`` (inside a capture or a replay of one) it returns them as they are and ``append`` only
copies the keys into the ring: the runner calls ``begin_write`` / ``end_write`` around the pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mf.kv_cache import PREFIX_CHUNK
from mf.layers import Layout

EMPTY_CHUNK = -(2 * 10**9)  # chunk id of a never-written slot: below every window, so never visible


@dataclass
class _PassBuffers:
    layout: Layout
    mask: torch.Tensor          # bool [N, P + W*T + N]
    filled_for: tuple = ()      # (chunks, groups, ids version) the buffers hold


class StaticKVCache:
    """Prefix + ring of ``window`` chunks of ``tokens_per_chunk`` keys per layer, at fixed addresses.

    ``prefix``: per layer (k, v) [B, H, P, hd] (copied in; shapes fix the buffers). ``dtype`` of the
    history buffers: the prefix keys' dtype (the same layers produce both).
    """

    static = True

    def __init__(self, window: int, tokens_per_chunk: int, prefix: list[tuple[torch.Tensor, torch.Tensor]]):
        if window < 1 or tokens_per_chunk < 1:
            raise ValueError("window and tokens_per_chunk must be >= 1")
        self.window, self.tokens_per_chunk = int(window), int(tokens_per_chunk)
        pk = prefix[0][0]
        b, heads, n_prefix, hd = pk.shape
        self.device, self.dtype, self.n_prefix = pk.device, pk.dtype, n_prefix
        n_hist = self.window * self.tokens_per_chunk
        self.prefix = [(torch.empty_like(k), torch.empty_like(v)) for k, v in prefix]
        self.history = [(pk.new_zeros(b, heads, n_hist, hd), pk.new_zeros(b, heads, n_hist, hd)) for _ in prefix]
        self.ids = torch.full((n_prefix + n_hist,), EMPTY_CHUNK, dtype=torch.long, device=self.device)
        self.slot_index = torch.zeros(self.tokens_per_chunk, dtype=torch.long, device=self.device)
        self._offsets = torch.arange(self.tokens_per_chunk, device=self.device)
        self._passes: dict[tuple, _PassBuffers] = {}
        self.frozen = False
        self.version = 0
        self.reset(prefix)

    # ------------------------------------------------------------------ state
    def reset(self, prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Start a new stream: copy the prefix in, empty every slot (no buffer changes address)."""
        if len(prefix) != len(self.prefix) or prefix[0][0].shape != self.prefix[0][0].shape:
            raise ValueError(f"prefix of {len(prefix)} layers x {tuple(prefix[0][0].shape)} does not fit this "
                             f"cache ({len(self.prefix)} layers x {tuple(self.prefix[0][0].shape)})")
        for (dk, dv), (k, v) in zip(self.prefix, prefix):
            dk.copy_(k)
            dv.copy_(v)
        for hk, hv in self.history:
            hk.zero_()
            hv.zero_()
        self.ids[: self.n_prefix] = PREFIX_CHUNK
        self.ids[self.n_prefix:] = EMPTY_CHUNK
        self.slot_chunks = [None] * self.window   # chunk index held by each slot (None: empty)
        self.next_chunk = 0
        self.version += 1   # bumped whenever the chunk ids change

    def begin_write(self, chunk_index: int) -> None:
        """Point ``slot_index`` at the slot of ``chunk_index`` (outside a graph)."""
        if chunk_index != self.next_chunk:
            raise ValueError(f"cache expects chunk {self.next_chunk}, got {chunk_index}")
        self.slot_index.copy_(self._offsets + (chunk_index % self.window) * self.tokens_per_chunk)

    def end_write(self, chunk_index: int) -> None:
        """Record that ``chunk_index``'s keys are in its slot (outside a graph)."""
        slot = chunk_index % self.window
        start = self.n_prefix + slot * self.tokens_per_chunk
        self.ids[start: start + self.tokens_per_chunk] = chunk_index
        self.slot_chunks[slot] = chunk_index
        self.next_chunk = chunk_index + 1
        self.version += 1

    def append(self, chunk_index: int, kvs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store one chunk's per-layer (k, v) [B, H, T, hd] in its slot (evicting chunk - window)."""
        if not self.frozen:
            self.begin_write(chunk_index)
        for (hk, hv), (k, v) in zip(self.history, kvs):
            if k.shape[2] != self.tokens_per_chunk:
                raise ValueError(f"a chunk has {self.tokens_per_chunk} keys per layer, got {k.shape[2]}")
            hk.index_copy_(2, self.slot_index, k.to(self.dtype))
            hv.index_copy_(2, self.slot_index, v.to(self.dtype))
        if not self.frozen:
            self.end_write(chunk_index)

    # ------------------------------------------------------------------ what the model reads
    def context(self, layer: int) -> tuple:
        pk, pv = self.prefix[layer]
        hk, hv = self.history[layer]
        return pk, pv, hk, hv

    @property
    def context_chunk_ids(self) -> torch.Tensor:
        return self.ids

    @property
    def context_key(self) -> tuple:
        return ("ring", self.n_prefix) + tuple(self.slot_chunks)

    def static_pass(self, model, chunks: list[int], groups: list[int], with_video: bool = True,
                    with_audio: bool = True) -> tuple[Layout, torch.Tensor]:
        """Fixed-address (layout, mask) for a pass over ``chunks``; refilled unless ``frozen``."""
        key = (len(chunks), tuple(groups), with_video, with_audio)
        entry = self._passes.get(key)
        if self.frozen:
            if entry is None:
                raise RuntimeError(f"no pass buffers for {key}: fill them (frozen=False) before a capture")
            return entry.layout, entry.mask
        filled_for = (tuple(chunks), tuple(groups), self.version)
        if entry is not None and entry.filled_for == filled_for:   # the steps of one chunk: nothing to do
            return entry.layout, entry.mask
        fresh = model._layout(list(chunks), list(groups), self.device, with_video, with_audio)
        mask = model._visibility_matrix(fresh, self.ids)
        tensors = ("cos", "sin", "cos_sp", "sin_sp", "token_chunk", "token_group", "token_seg")
        if entry is None:
            layout = Layout(list(chunks), list(groups), *(getattr(fresh, n).clone() for n in tensors))
            entry = self._passes[key] = _PassBuffers(layout, mask.clone())
        else:
            for name in tensors:
                getattr(entry.layout, name).copy_(getattr(fresh, name))
            entry.mask.copy_(mask)
            entry.layout.chunks, entry.layout.groups = list(chunks), list(groups)
        entry.filled_for = filled_for
        return entry.layout, entry.mask

    # ------------------------------------------------------------------ bookkeeping
    @property
    def n_cached_chunks(self) -> int:
        return sum(c is not None for c in self.slot_chunks)

    def num_bytes(self) -> int:
        tensors = [t for pair in self.prefix + self.history for t in pair] + [self.ids]
        return sum(t.numel() * t.element_size() for t in tensors)

    def data_ptrs(self) -> tuple[int, ...]:
        """Addresses of every buffer a captured pass reads or writes (they never change)."""
        tensors = [t for pair in self.prefix + self.history for t in pair] + [self.ids, self.slot_index]
        for entry in self._passes.values():
            tensors += [entry.mask, entry.layout.cos, entry.layout.sin, entry.layout.cos_sp, entry.layout.sin_sp]
        return tuple(t.data_ptr() for t in tensors)
