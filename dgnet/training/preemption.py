"""Stopping a run on SIGTERM or SIGINT without losing it: the first signal asks, the loop saves and stops.

:func:`stop_on_signals` installs the handlers for the duration of a ``with`` block and yields a
:class:`StopRequest`, which the training loop reads once per iteration (:meth:`StopRequest.agreed`: under
torchrun every rank learns whether any rank was signalled, so all stop after the same iteration and the
checkpoint is that iteration's). The loop finishes the iteration it is in, writes a checkpoint through the
usual (atomic, finite-checked) path and raises :class:`Stopped`; ``python -m dgnet.train`` prints where the
checkpoint is and how to resume, and exits with ``128 + signal`` (130 for SIGINT, 143 for SIGTERM), the status a
shell or a scheduler reports for a process the signal ended. A second signal ends the process at once, by the
signal itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signum: int) -> int:
    """The exit status of a run stopped by ``signum``: 128 + the signal number, as a shell reports a process the
    signal killed (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


class Stopped(Exception):
    """A run stopped on a signal after saving: ``checkpoint`` is what ``--resume`` continues from (``None`` when
    nothing had been trained yet), ``signum`` the signal."""

    def __init__(self, message: str, signum: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint

    @property
    def exit_status(self) -> int:
        return exit_status(self.signum)


class StopRequest:
    """Whether a stop was asked for, by which signal (``signum``, 0 for none)."""

    def __init__(self) -> None:
        self.signum = 0

    def request(self, signum: int) -> None:
        self.signum = int(signum)

    def agreed(self, device: torch.device | str = "cpu") -> int:
        """The signal any rank received, 0 when none did: a collective under torch.distributed (every rank must
        call it at the same point), a plain read otherwise. Its cost is one all-reduce of one integer."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.signum = max(self.signum, int(flag.item()))
        return self.signum


def _say(text: str) -> None:
    """Write to stderr from a signal handler: ``os.write``, since ``print`` is not reentrant (the handler may run
    while the main thread is inside a print to the same stream)."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode() + b"\n")


@contextlib.contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS, announce: bool = True) -> Iterator[StopRequest]:
    """Turn ``signals`` into a :class:`StopRequest` for the ``with`` block; the previous handlers come back after.

    The first signal sets the request (and, with ``announce``, says so on stderr); a second one restores the
    default action and re-sends itself, ending the process at once. Outside the main thread (where Python cannot
    install handlers) the request is never set and signals act as before.
    """
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if stop.signum:
            _say(f"dgnet: {name} again: stopping at once (no checkpoint of the current iteration)")
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stop.request(signum)
        if announce:
            _say(f"dgnet: {name}: finishing this iteration, then saving a checkpoint and stopping "
                 f"(send {name} again to stop at once)")

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
