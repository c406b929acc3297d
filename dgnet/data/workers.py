"""Worker processes that are safe to start from a threaded parent.

``fork`` copies only the calling thread: a lock that another thread (torch's or OpenMP's pools, DALI, gloo, a
logging handler) held at that moment stays locked forever in the child, which then hangs on it. Every dgnet pool
(the DataLoader's workers, the synthetic set's renderers) therefore starts its workers with ``forkserver``: a
clean single-threaded helper process, started once, forks them (``spawn`` where ``forkserver`` does not exist).
Workers ignore SIGINT and SIGTERM: a Ctrl-C or a scheduler's SIGTERM reaches the whole process group, and the
parent decides what to do (``dgnet.preemption``); workers end when their parent does.

Because they ignore SIGTERM, ``Process.terminate()`` does not end them, and Python's exit handler for
multiprocessing terminates its daemonic children (the DataLoader's workers) and then joins them: a worker still
alive at exit (an iterator that something still references) would hang the parent forever. So the parent kills
(SIGKILL) its live daemonic children at exit first, in an exit handler registered after multiprocessing's, which
therefore runs before it.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit handler before ours (handlers run last-in first)
import signal
from multiprocessing.context import BaseContext

START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def pool_context() -> BaseContext:
    """The multiprocessing context every dgnet worker pool uses (``START_METHOD``)."""
    return multiprocessing.get_context(START_METHOD)


def ignore_stop_signals() -> None:
    """A worker initialiser: leave SIGINT and SIGTERM to the parent process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def kill_daemonic_children() -> None:
    """Kill this process's live daemonic worker processes (they ignore SIGTERM; module docstring)."""
    for p in multiprocessing.active_children():
        if p.daemon:
            p.kill()


atexit.register(kill_daemonic_children)
