"""The rolling key/value cache of streaming generation: ``KVCache``.

Owns what a chunk attends to at inference: the reference-frame prefix (never evicted) and the last
``window`` finished chunks, per layer, plus the chunk id of every cached key (for the attention rule
of ``mf.model``). Memory is constant once the window is full.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import torch

PREFIX_CHUNK = -(10**9)  # chunk id of prefix keys (always visible)


def _context_key(prefix, indices) -> tuple:
    """Hashable description of a context: prefix length and the cached chunk indices, oldest first."""
    return (int(prefix[0][0].shape[2]),) + tuple(indices)


def _chunk_ids(prefix, chunks) -> torch.Tensor:
    """Chunk id of every context key: the prefix's (PREFIX_CHUNK), then each (index, n_keys) in order."""
    device = prefix[0][0].device
    ids = [torch.full((int(prefix[0][0].shape[2]),), PREFIX_CHUNK, dtype=torch.long, device=device)]
    ids += [torch.full((int(n),), index, dtype=torch.long, device=device) for index, n in chunks]
    return torch.cat(ids)


@dataclass
class KVCache:
    """Keys/values of the prefix (never evicted) and of the last ``window`` finished chunks, per layer.

    Memory is constant once ``window`` chunks were written: the oldest chunk is dropped on write.
    ``context(layer)`` returns (prefix_k, prefix_v, history_k, history_v) for the next chunk: prefix keys
    carry only the spatial rotation, history keys the full one (history None before the first write).
    Tensors are never modified in place, so ``clone()`` is cheap and safe.
    """

    window: int
    prefix: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    chunks: deque = field(default_factory=deque)   # (chunk_index, [(k, v) per layer])
    next_chunk: int = 0
    _ctx: list[tuple] = field(default_factory=list)
    _ctx_chunk: torch.Tensor | None = None

    def _rebuild(self) -> None:
        self._ctx = []
        for layer, (pk, pv) in enumerate(self.prefix):
            if self.chunks:
                hk = torch.cat([entry[1][layer][0] for entry in self.chunks], dim=2)
                hv = torch.cat([entry[1][layer][1] for entry in self.chunks], dim=2)
            else:
                hk = hv = None
            self._ctx.append((pk, pv, hk, hv))
        self._ctx_chunk = _chunk_ids(self.prefix, [(index, kv[0][0].shape[2]) for index, kv in self.chunks])

    def set_prefix(self, kvs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.prefix = kvs
        self._rebuild()

    def append(self, chunk_index: int, kvs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if chunk_index != self.next_chunk:
            raise ValueError(f"cache expects chunk {self.next_chunk}, got {chunk_index}")
        self.chunks.append((chunk_index, kvs))
        while len(self.chunks) > self.window:
            self.chunks.popleft()
        self.next_chunk = chunk_index + 1
        self._rebuild()

    def incoming(self, chunk_index: int, n_keys: int) -> "IncomingContext":
        """What the next pass will see once chunk ``chunk_index`` (``n_keys`` keys) is written, before its
        keys exist.

        The write (``MFTransformer.write_cache(..., on_layer=view.publish)``) can then run in another
        thread while a pass reads ``view`` as its cache: layer l waits for the write's layer l only.
        """
        if chunk_index != self.next_chunk:
            raise ValueError(f"cache expects chunk {self.next_chunk}, got {chunk_index}")
        return IncomingContext(self, chunk_index, n_keys)

    def clone(self) -> "KVCache":
        """A copy that can be written to without touching this cache (tensors are shared, never mutated)."""
        return KVCache(self.window, list(self.prefix), deque(self.chunks), self.next_chunk, list(self._ctx),
                       self._ctx_chunk)

    def context(self, layer: int) -> tuple:
        return self._ctx[layer]

    @property
    def context_key(self) -> tuple:
        """Hashable description of what the cache holds (for memoised attention masks)."""
        return _context_key(self.prefix, [index for index, _ in self.chunks])

    @property
    def context_chunk_ids(self) -> torch.Tensor:
        return self._ctx_chunk

    @property
    def n_cached_chunks(self) -> int:
        return len(self.chunks)

    def num_bytes(self) -> int:
        total = 0
        for k, v in self.prefix:
            total += k.numel() * k.element_size() + v.numel() * v.element_size()
        for _, kvs in self.chunks:
            for k, v in kvs:
                total += k.numel() * k.element_size() + v.numel() * v.element_size()
        return total


class IncomingContext:
    """A read-only view of ``cache`` as it will be after ``chunk_index`` is appended (``KVCache.incoming``).

    Quacks like a ``KVCache`` for ``MFTransformer.forward``: ``prefix``, ``next_chunk``, ``context_key``
    and ``context_chunk_ids`` are known at once (they depend on chunk indices only); ``context(layer)``
    blocks until the write has published that layer (``publish``) and concatenates exactly as
    ``KVCache.append`` would, so a pass reading this view gives the same bits as one run after the write.
    ``fail(exc)`` releases every waiting reader with that error.
    """

    def __init__(self, cache: KVCache, chunk_index: int, n_keys: int):
        self.window = cache.window
        self.prefix = cache.prefix
        self.next_chunk = chunk_index + 1
        kept = list(cache.chunks) + [(chunk_index, None)]
        self._old = kept[-self.window:][:-1]   # the cached chunks that survive the append, oldest first
        self._new: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ready = [threading.Event() for _ in self.prefix]
        self._error: BaseException | None = None
        self.context_key = _context_key(self.prefix, [index for index, _ in self._old] + [chunk_index])
        self.context_chunk_ids = _chunk_ids(self.prefix, [(index, kv[0][0].shape[2]) for index, kv in self._old]
                                            + [(chunk_index, int(n_keys))])

    def publish(self, layer: int, kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        """The write's keys/values of ``layer`` are ready."""
        self._new[layer] = kv
        self._ready[layer].set()

    def fail(self, exc: BaseException) -> None:
        self._error = exc
        for event in self._ready:
            event.set()

    def _wait(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._ready[layer].wait()
        if layer not in self._new:
            raise RuntimeError("the cache write running beside this pass failed") from self._error
        return self._new[layer]

    def context(self, layer: int) -> tuple:
        k, v = self._wait(layer)
        pk, pv = self.prefix[layer]
        hk = torch.cat([entry[1][layer][0] for entry in self._old] + [k], dim=2)
        hv = torch.cat([entry[1][layer][1] for entry in self._old] + [v], dim=2)
        return pk, pv, hk, hv
