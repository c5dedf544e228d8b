"""Stopping grids cleanly: signals as :class:`Interrupted`, and worker processes that die with their parent.

Signals. Ctrl-C (SIGINT) raises ``KeyboardInterrupt`` in Python; inside :func:`sigterm_interrupts`
SIGTERM raises :class:`Interrupted` (a ``KeyboardInterrupt`` that remembers its signal) the same way, so
one ``except KeyboardInterrupt`` stops a run or a grid on either, and ``hybrid-pg`` exits with
``128 + signal`` (130, 143). A ``KeyboardInterrupt`` can land between any two bytecodes; code that
must not be left half-done (a logger's row, a CSV line) runs inside :func:`interrupts_deferred`,
which holds SIGINT and SIGTERM until the block ends and then delivers them.

:class:`WorkerPool` runs a function in ``spawn``-started worker processes, one call at a time per
worker, and guarantees that no worker outlives the pool or its parent process:

* nothing is queued ahead: a worker gets its next call only when it has returned the last one, from
  a parent that is alive to hand it out (a pool that pre-queues calls lets workers start new ones
  after the parent is gone);
* each worker dies with its parent: ``PR_SET_PDEATHSIG`` (SIGKILL) on Linux, and on every platform a
  thread that ends the worker when its parent process changes (the parent died: SIGKILL included);
* workers ignore SIGINT: a Ctrl-C in a terminal reaches the whole foreground process group, and the
  parent alone decides what happens; SIGTERM raises :class:`Interrupted` in a worker;
* when the parent stops the pool on an exception (a Ctrl-C, a SIGTERM, an error), it sends SIGTERM
  to every worker, waits up to ``grace`` seconds for them, then SIGKILLs the rest; a second Ctrl-C
  during that wait SIGKILLs them at once. Either way every worker is reaped before the exception goes
  on, so none is left behind.

A worker killed half-way through a call leaves what that call wrote unfinished; the run engine's
result file is written last and atomically (:mod:`hybrid_pg.experiments.run_files`), so nothing
half-done ever counts as finished.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

__all__ = ["Interrupted", "WorkerPool", "interrupts_deferred", "sigterm_interrupts"]


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (SIGINT or SIGTERM); ``exit_status`` is ``128 + signum``."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def signal_of(exc: BaseException) -> int:
    """The signal a ``KeyboardInterrupt`` stands for (SIGINT unless it is an :class:`Interrupted`)."""
    return getattr(exc, "signum", int(signal.SIGINT))


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Interrupted` in the main thread (outside it, or off
    the main thread, nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are held; when it ends (normally or not) the handlers in
    force before it are restored and each held signal is raised again once, so it acts exactly as
    if it had arrived just after the block: ``KeyboardInterrupt``/:class:`Interrupted` where those
    handlers raise, nothing where they ignore it, the default action where they are the default.
    Off the main thread (where Python cannot set handlers) nothing changes. Cheap enough for once
    per update (four handler swaps), not for every logged value."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: List[int] = []

    def hold(signum: int, frame: Any) -> None:
        if signum not in held:
            held.append(signum)

    # a handler set outside Python (getsignal gives None) could not be put back: leave it alone
    previous = {signum: signal.signal(signum, hold) for signum in _DEFERRED_SIGNALS if signal.getsignal(signum) is not None}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for held_signal in held:
            signal.raise_signal(held_signal)


# ------------------------------------------------------------------------------------------------
# the worker side
# ------------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies: the kernel's PDEATHSIG on Linux, and a watching
    thread everywhere (it also covers a parent that died before the PDEATHSIG was set)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except OSError:  # pragma: no cover - no libc to load: the thread below still watches
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=watch, name="hybrid-pg-parent-watch", daemon=True).start()


def _worker_main(conn: Connection, parent_pid: int, fn: Callable[..., Any]) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        while True:
            task = conn.recv()
            if task is None:
                return
            index, args = task
            try:
                value = fn(*args)
            except KeyboardInterrupt:
                return  # stopped by the parent: it is not waiting for an answer
            except BaseException as exc:
                text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                conn.send((index, False, text))
            else:
                conn.send((index, True, value))
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the parent went away, or stopped us between calls


# ------------------------------------------------------------------------------------------------
# the parent side
# ------------------------------------------------------------------------------------------------


class WorkerPool:
    """Up to ``n_workers`` spawned processes calling ``fn`` (module docstring). Use as a context
    manager; :meth:`imap_unordered` yields ``(index, ok, value)`` per call as calls finish: ``value``
    is what ``fn`` returned, or (``ok`` False) the exception's one-line description, or a note that
    the worker process died."""

    def __init__(self, fn: Callable[..., Any], n_workers: int, grace: float = 15.0) -> None:
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        self.fn, self.n_workers, self.grace = fn, n_workers, grace
        self._context = mp.get_context("spawn")
        self._workers: Dict[Any, Tuple[Any, Connection]] = {}  # sentinel -> (process, connection)

    def _start_worker(self) -> Tuple[Any, Connection]:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(child_end, os.getpid(), self.fn), daemon=True)
        process.start()
        child_end.close()
        self._workers[process.sentinel] = (process, parent_end)
        return process, parent_end

    def imap_unordered(self, calls: Sequence[Tuple[Any, ...]]) -> Iterator[Tuple[int, bool, Any]]:
        queue: List[Tuple[int, Tuple[Any, ...]]] = list(enumerate(calls))[::-1]
        busy: Dict[Connection, Tuple[Any, int]] = {}  # connection -> (process, index of its call)
        idle: List[Tuple[Any, Connection]] = []
        while queue or busy:
            while queue and (idle or len(self._workers) < self.n_workers):
                process, conn = idle.pop() if idle else self._start_worker()
                index, args = queue.pop()
                conn.send((index, args))
                busy[conn] = (process, index)
            ready = wait([*busy, *(p.sentinel for p, _ in busy.values())])
            for conn in [c for c in list(busy) if c in ready]:
                process, index = busy.pop(conn)
                try:
                    answer = conn.recv()
                except (EOFError, OSError):
                    answer = None
                if answer is None:
                    yield index, False, self._dead(process)
                    continue
                idle.append((process, conn))
                yield answer
            for conn, (process, index) in list(busy.items()):
                if process.sentinel in ready and not conn.poll():
                    del busy[conn]
                    yield index, False, self._dead(process)

    def _dead(self, process: Any) -> str:
        process.join()
        self._workers.pop(process.sentinel, None)
        return f"its worker process (pid {process.pid}) died with exit code {process.exitcode}"

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if kind is None:
            for _, conn in self._workers.values():
                with contextlib.suppress(OSError):
                    conn.send(None)  # done: the worker returns
            self._stop(signal_first=False)
        else:
            self._stop(signal_first=True)

    def _stop(self, signal_first: bool) -> None:
        processes = [p for p, _ in self._workers.values()]
        try:
            if signal_first:
                for process in processes:
                    _signal(process, signal.SIGTERM)
            deadline = time.monotonic() + self.grace
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
        finally:  # also on a second Ctrl-C during the wait
            for process in processes:
                if process.is_alive():
                    _signal(process, signal.SIGKILL)
            for process in processes:
                process.join()
            for _, conn in self._workers.values():
                conn.close()
            self._workers.clear()


def _signal(process: Any, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, TypeError):
        os.kill(process.pid, signum)
