"""One writer per folder (dgnet.runlock): a live holder refuses a second writer, naming it; a lock a dead writer
left is taken over with a warning; the lock goes away with the ``with`` block, also on an exception."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dgnet import runlock
from dgnet.runlock import LOCK_NAME, LockHeld, StaleLockWarning, acquire

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys
from dgnet.runlock import acquire
with acquire(sys.argv[1], "holder test"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _holder(folder: Path) -> subprocess.Popen:
    """A process that holds ``folder``'s lock until its stdin closes (returns once it holds it: no sleeps)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_lock_records_this_process_and_is_removed_after(tmp_path):
    with acquire(tmp_path / "run", "train") as lock:
        data = json.loads(lock.path.read_text())
        assert lock.path == tmp_path / "run" / LOCK_NAME
        assert (data["pid"], data["host"], data["purpose"]) == (os.getpid(), socket.gethostname(), "train")
    assert not lock.path.exists()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    p = _holder(tmp_path)
    try:
        with pytest.raises(LockHeld, match=rf"pid {p.pid} on host {socket.gethostname()}") as info:
            with acquire(tmp_path, "train"):
                pass
        assert "holder test" in str(info.value) and str(tmp_path / LOCK_NAME) in str(info.value)
        assert runlock.read_holder(tmp_path / LOCK_NAME).pid == p.pid  # the holder's file is untouched
    finally:
        p.stdin.close()
        p.wait(30)
    assert p.returncode == 0 and not (tmp_path / LOCK_NAME).exists()
    with acquire(tmp_path, "train"):  # free again once the holder is done
        pass


def test_the_same_process_cannot_take_a_folder_twice(tmp_path):
    with acquire(tmp_path, "train"):
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            with acquire(tmp_path, "extract cache"):
                pass
        assert (tmp_path / LOCK_NAME).exists()  # the refused attempt did not remove the holder's file


def test_a_lock_left_by_a_killed_writer_is_taken_over_with_a_warning(tmp_path):
    p = _holder(tmp_path)
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert runlock.read_holder(tmp_path / LOCK_NAME).pid == p.pid  # kill -9 left the file behind
    with pytest.warns(StaleLockWarning, match=rf"lock of holder test \(pid {p.pid} "):
        with acquire(tmp_path, "train") as lock:
            assert runlock.read_holder(lock.path).pid == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_an_exception_releases_the_lock(tmp_path):
    with pytest.raises(KeyError):
        with acquire(tmp_path, "train"):
            raise KeyError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stale to report
        with acquire(tmp_path, "train"):
            pass


def test_without_flock_the_recorded_pid_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    for pid, alive in ((os.getppid(), True), (dead.pid, False)):
        stamp = runlock._proc_start(pid)
        (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "purpose": "x",
                                                      "started": "t", "proc_start": stamp}))
        if alive:
            with pytest.raises(LockHeld, match=f"pid {pid} "):
                with acquire(tmp_path, "train"):
                    pass
        else:
            with pytest.warns(StaleLockWarning, match=f"pid {pid} "), acquire(tmp_path, "train"):
                pass
    # a live pid that was started at another time than the recorded writer is a reused pid: stale
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "purpose": "x",
                                                  "started": "t", "proc_start": "1"}))
    with pytest.warns(StaleLockWarning), acquire(tmp_path, "train"):
        pass
    # another host's lock cannot be checked from here: it is held
    (tmp_path / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "purpose": "x", "started": "t"}))
    with pytest.raises(LockHeld, match="host elsewhere"):
        with acquire(tmp_path, "train"):
            pass


def test_a_file_where_the_folder_should_be_is_named(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(NotADirectoryError, match="expected a folder"):
        with acquire(tmp_path / "out", "train"):
            pass
