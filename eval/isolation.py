"""Crash-isolated worker processes: a C library that segfaults costs one task, never the caller.

What this module owns: running ``fn(task)`` for a stream of tasks in ``n`` separate Python processes
(``python -m eval.isolation``, started with ``subprocess``: no fork of a threaded server, no
re-import of the caller's main module), at most one task per worker at a time, and turning every
way a task can end into a result the caller can put in a row:

* ``Done(key, value)``: ``fn`` returned ``value``.
* ``Failed(key, reason)``: ``fn`` raised (``reason`` is ``"ExcClass: message"``, no traceback), the
  worker died (killed by a signal such as SIGSEGV from the PESQ C core, or ``os.abort``), or the task
  ran past ``timeout_s`` (the worker is killed). A dead worker is replaced before the next task.

Contract of ``fn``: a module-level function named ``"package.module:function"`` (the worker imports it
by name), taking one picklable task and returning a picklable value. Tasks are pulled from the
iterable lazily, so a caller can stream a large set through with at most ``n`` tasks in memory.
Results come back in completion order, each with the key it was submitted with.

Workers are reused: ``WorkerPool`` keeps up to ``KEEP_IDLE`` started workers per function after
``close()`` (importing numpy/scipy/torch in a fresh process costs 2-5 s on the shared CPU), so the
app and repeated library calls pay that once. ``shutdown_idle()`` ends them (also at exit).

Protocol: a Unix socket pair; each message is a ``multiprocessing.connection`` frame (length + pickle).
The worker keeps stdout and stderr of the caller, so library warnings still show.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

DEFAULT_TIMEOUT_S = 600.0
KEEP_IDLE = 2
_STOP = "__stop__"


@dataclass
class Done:
    key: Any
    value: Any


@dataclass
class Failed:
    key: Any
    reason: str


def _death_reason(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the worker process crashed ({name})"
    return f"the worker process exited unexpectedly (exit status {returncode})"


class _Worker:
    def __init__(self, fn: str):
        self.fn = fn
        parent, child = socket.socketpair()
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "eval.isolation", str(child.fileno()), fn],
                                     pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env)
        child.close()
        self.conn = Connection(parent.detach())
        self.key = None
        self.deadline = None
        self.pending = False  # a task was sent and its reply not read: never hand this worker on

    def send(self, key, task, timeout_s: float) -> None:
        self.key, self.deadline = key, time.monotonic() + timeout_s
        self.pending = True
        self.conn.send(task)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.close_fds()

    def close_fds(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass

    def stop(self) -> None:
        try:
            self.conn.send(_STOP)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.close_fds()


_IDLE: dict[str, list[_Worker]] = {}
_IDLE_LOCK = threading.Lock()


def _take_idle(fn: str) -> _Worker | None:
    with _IDLE_LOCK:
        while _IDLE.get(fn):
            w = _IDLE[fn].pop()
            if w.proc.poll() is None:
                return w
            w.close_fds()
    return None


def _give_idle(w: _Worker) -> None:
    with _IDLE_LOCK:
        idle = _IDLE.setdefault(w.fn, [])
        if len(idle) < KEEP_IDLE and w.proc.poll() is None:
            idle.append(w)
            return
    w.stop()


def shutdown_idle() -> None:
    """Stop every kept worker (called at interpreter exit)."""
    with _IDLE_LOCK:
        workers = [w for ws in _IDLE.values() for w in ws]
        _IDLE.clear()
    for w in workers:
        w.stop()


atexit.register(shutdown_idle)


class WorkerPool:
    """``n`` isolated workers running ``fn``; use as a context manager (``close`` keeps or stops them)."""

    def __init__(self, fn: str, n: int = 1, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        if int(n) < 1:
            raise ValueError(f"workers must be >= 1, got {n}")
        self.fn, self.n, self.timeout_s = fn, int(n), float(timeout_s)
        self.workers: list[_Worker] = []

    def _worker(self) -> _Worker:
        return _take_idle(self.fn) or _Worker(self.fn)

    def map(self, tasks: Iterable[tuple[Any, Any]]) -> Iterator[Done | Failed]:
        """Run ``(key, task)`` pairs; yields one ``Done``/``Failed`` per task, in completion order."""
        it = iter(tasks)
        busy: list[_Worker] = []
        free: list[_Worker] = list(self.workers)
        exhausted = False
        while True:
            while not exhausted and len(busy) < self.n:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    break
                for attempt in (0, 1):  # a kept worker may have died while idle: then one fresh try
                    w = free.pop() if free and attempt == 0 else self._worker()
                    if w not in self.workers:
                        self.workers.append(w)
                    try:
                        w.send(nxt[0], nxt[1], self.timeout_s)
                        busy.append(w)
                        break
                    except OSError:
                        self._drop(w)
                else:
                    yield Failed(nxt[0], _death_reason(w.proc.returncode))
            if not busy:
                return
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = wait([w.conn for w in busy], timeout=timeout)
            for w in list(busy):
                if w.conn in ready:
                    try:
                        status, value = w.conn.recv()
                    except (EOFError, OSError):
                        busy.remove(w)
                        w.proc.wait()
                        self._drop(w)
                        yield Failed(w.key, _death_reason(w.proc.returncode))
                        continue
                    busy.remove(w)
                    free.append(w)
                    w.pending = False
                    yield Done(w.key, value) if status == "ok" else Failed(w.key, value)
                elif time.monotonic() >= w.deadline:
                    busy.remove(w)
                    w.kill()
                    self.workers.remove(w)
                    yield Failed(w.key, f"timed out after {self.timeout_s:g} s (the worker was stopped)")

    def _drop(self, w: _Worker) -> None:
        w.kill()
        if w in self.workers:
            self.workers.remove(w)

    def close(self) -> None:
        """Keep idle workers for the next pool (up to ``KEEP_IDLE``); stop one still holding a task."""
        for w in self.workers:
            if w.pending:
                w.kill()
            else:
                _give_idle(w)
        self.workers = []

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


def _serve(fd: int, fn_name: str) -> None:
    import importlib

    conn = Connection(fd)
    module, _, attr = fn_name.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if isinstance(task, str) and task == _STOP:
            return
        try:
            reply = ("ok", fn(task))
        except Exception as exc:  # noqa: BLE001 - the caller turns it into a row; no traceback
            reply = ("error", f"{exc.__class__.__name__}: {exc}")
        conn.send(reply)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2])
