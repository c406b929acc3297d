"""One writer per folder: a lock file holding the writer's host, pid, start time and purpose.

``with acquire(folder, "train"):`` creates ``<folder>/.dgnet.lock`` and holds an exclusive ``flock`` on it for the
duration; a second writer into the same folder (another process, or this one again) is refused with
:class:`LockHeld`, whose message names the holder. The kernel drops a ``flock`` when its process dies, however
it dies (``kill -9`` included), so a lock file left by a dead writer is recognised as stale, taken over and
reported with a warning naming the old holder. On file systems without ``flock`` the file's pid is checked
instead (same host: a dead pid, or a live pid started at another time, is stale; another host's lock is held).

The lock is released (the file removed) when the ``with`` block ends, by return, exception or signal handler
raising; a process killed outright leaves the file, which the next writer takes over.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = ".dgnet.lock"


class LockHeld(FileExistsError):
    """Another writer holds the folder's lock; the message names it (host, pid, purpose, start time)."""


class StaleLockWarning(UserWarning):
    """A lock left by a writer that is gone was taken over."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock, as its file records it."""

    host: str
    pid: int
    purpose: str = "?"
    started: str = "?"
    proc_start: str = ""  # /proc/<pid>/stat start time: tells a reused pid from the writer itself (Linux)

    def describe(self) -> str:
        return f"{self.purpose} (pid {self.pid} on host {self.host}, started {self.started})"


@dataclass(frozen=True)
class RunLock:
    """A held lock: its file and what it records about this process."""

    path: Path
    holder: Holder


def _proc_start(pid: int) -> str:
    """The kernel's start time of ``pid`` (jiffies since boot, field 22 of /proc/<pid>/stat), or "" off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # fields after the command name start at field 3


def _me(purpose: str) -> Holder:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Holder(socket.gethostname(), os.getpid(), purpose, now, _proc_start(os.getpid()))


def read_holder(path: str | Path) -> Holder | None:
    """The holder a lock file records, or ``None`` when it is absent, empty or unreadable (a writer killed while
    it wrote the file)."""
    try:
        data = json.loads(Path(path).read_text())
        return Holder(str(data["host"]), int(data["pid"]), str(data.get("purpose", "?")),
                      str(data.get("started", "?")), str(data.get("proc_start", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(holder: Holder) -> bool:
    """Whether ``holder`` still runs, as far as this host can tell (another host's writer counts as running)."""
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return not holder.proc_start or _proc_start(holder.pid) in ("", holder.proc_start)


def _held_error(path: Path, holder: Holder | None) -> LockHeld:
    who = holder.describe() if holder else "another process (its lock file is being written)"
    return LockHeld(f"{path.parent} is in use by {who}: only one writer per folder. Wait for it to finish, or "
                    f"choose another folder; if that process is gone, delete {path}")


def _write(fd: int, holder: Holder) -> None:
    data = json.dumps(holder.__dict__).encode() + b"\n"
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _take(path: Path, me: Holder) -> int:
    """Open and lock ``path``; returns the open descriptor (which holds the lock). Raises :class:`LockHeld`."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except BlockingIOError:
                raise _held_error(path, read_holder(path)) from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                flocked = False  # no flock on this file system: judge by the recorded pid alone
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:  # the holder released (removed the file) between our open and lock: start over
                os.close(fd)
                continue
            old = read_holder(path)
            if old is not None and not flocked and _alive(old):
                raise _held_error(path, old)
            if old is not None:
                warnings.warn(f"{path}: took over the lock of {old.describe()}, which ended without releasing it",
                              StaleLockWarning, stacklevel=4)
            _write(fd, me)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


@contextlib.contextmanager
def acquire(folder: str | Path, purpose: str) -> Iterator[RunLock]:
    """Hold ``folder``'s writer lock (``<folder>/.dgnet.lock``, the folder created if absent) for the ``with`` block.

    ``purpose`` (e.g. ``"train"``, ``"extract cache"``) is recorded in the file and named to anyone refused.

    Raises:
        LockHeld: another live writer holds it (a ``FileExistsError``; the message names host, pid, purpose and
            start time, and the file to delete if that process is really gone).

    Warns:
        StaleLockWarning: the lock of a writer that ended without releasing it was taken over.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; expected a folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    me = _me(purpose)
    fd = _take(path, me)
    try:
        yield RunLock(path, me)
    finally:
        # remove while still locked, so a waiter that opened the old file sees it is gone and starts over
        with contextlib.suppress(OSError):
            if read_holder(path) == me:
                path.unlink()
        os.close(fd)
