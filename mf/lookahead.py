"""How chunks are scheduled between the sampler and the consumer of ``mf.pipeline.generate``.

Owns the three look-ahead schemes; each turns ``sample(k, cache, pending, first_pass_done)`` (one
chunk, returning ``(ChunkSample, timings)``) into an iterator of the chunks in order:
- ``inline_results``: no thread, each chunk sampled when asked for;
- ``Producer``: a sampler thread runs one chunk ahead and goes straight on to the next one (the default);
- ``handoff_results``: the earlier scheme, where the consumer hands each next chunk to the thread.
The schedules run the same computations in the same order per chunk, so outputs are bit-identical.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor


def inline_results(sample, cache, indices):
    """No look-ahead: each chunk is sampled when the consumer asks for it."""
    pending = None
    for k in indices:
        out, model_s = sample(k, cache, pending)
        pending = out.pending
        yield out, model_s


def handoff_results(sample, cache, indices, wide: bool):
    """The earlier look-ahead: after taking chunk k, the consumer hands chunk k+1 to the sampler thread.

    The thread idles from the end of chunk k+1 until the consumer comes back for it (a wake-up of each
    thread per chunk). Kept for side-by-side measurement (``eval.bench --compare-lookahead``).
    """
    indices = list(indices)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mf-sampler")
    try:
        job = executor.submit(sample, indices[0], cache, None)
        for i in range(len(indices)):
            out, model_s = job.result()
            if i + 1 < len(indices):
                # the widened pass uses the decoder's core too: decode after it
                first_pass_done = threading.Event() if wide else None
                job = executor.submit(sample, indices[i + 1], cache, out.pending, first_pass_done)
                if first_pass_done is not None:
                    first_pass_done.wait()
            yield out, model_s
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


class Producer:
    """Look-ahead: a sampler thread samples chunk after chunk, at most one ahead of the consumer.

    Torch kernels release the GIL, so on 2 cores the network and the codecs run side by side. The
    thread goes on to chunk k+2 as soon as chunk k+1 is done and the consumer has taken chunk k (a
    one-slot queue), without waiting for the consumer to hand it over. With ``wide`` (a widened cache
    write) the consumer decodes chunk k only after chunk k+1's first pass, which uses its core too.
    """

    def __init__(self, sample, cache, indices, wide: bool):
        import queue

        self.indices = list(indices)
        self.queue = queue.Queue(maxsize=1)
        self.first_pass = {k: threading.Event() for k in self.indices} if wide else None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(sample, cache), name="mf-sampler", daemon=True)
        self.thread.start()

    def _put(self, item) -> None:
        """Wait for the slot to free up, or for ``stop``."""
        import queue

        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self, sample, cache):
        pending = None
        try:
            for k in self.indices:
                if self.stopped.is_set():
                    return
                event = self.first_pass[k] if self.first_pass is not None else None
                item = sample(k, cache, pending, event)
                pending = item[0].pending
                self._put(("ok", item))
        except BaseException as exc:  # re-raised in the consumer
            self._put(("error", exc))
        finally:
            if self.first_pass is not None:
                for event in self.first_pass.values():
                    event.set()

    def results(self):
        for i in range(len(self.indices)):
            status, item = self.queue.get()
            if status == "error":
                raise item
            if self.first_pass is not None and i + 1 < len(self.indices):
                self.first_pass[self.indices[i + 1]].wait()
            yield item

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
