"""Files that are never lost or torn: atomic replacement, a clear stop when the disk is full, the sweep of
temporaries that killed writes leave, weights-only loading with errors that say what is wrong, and the
commands' JSON results (:func:`write_results`)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

_TMP = re.compile(r"^\..+\.tmp(?P<pid>\d+)$")


class DiskFull(OSError):
    """A file could not be written for lack of space. The message names the folder, the bytes needed and the
    bytes free; the file it would have replaced is intact and no temporary is left."""


def _no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from is "no space left" (torch.save reports it as a
    RuntimeError from its zip writer, raised while handling the OSError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def replace_atomic(path: str | Path, write: Callable[[BinaryIO], object], size_hint: int | None = None) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, ``os.replace`` it onto ``path`` and
    fsync the folder (so the rename itself survives a power cut). Returns ``path``.

    On any failure the temporary is removed and ``path`` is as it was. A failure for lack of space raises
    :class:`DiskFull` naming the folder, the bytes needed (``size_hint``, else what had been written) and the
    bytes free.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if _no_space(exc):
            free = shutil.disk_usage(path.parent).free
            need = max(size_hint or 0, written)
            raise DiskFull(errno.ENOSPC, f"no space left in {path.parent} to write {path.name}: it needs about "
                           f"{human_bytes(need)} and {human_bytes(free)} are free; {path.name} was not replaced "
                           "and nothing was left behind. Free some space and run again (--resume continues)") from None
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot open or sync a folder
        pass
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``Path.write_text`` (UTF-8) that never leaves a torn file: see :func:`replace_atomic`."""
    return replace_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporaries of :func:`replace_atomic` in ``folder`` whose writing process is gone (a write that
    ``kill -9`` interrupted; one can be as large as a checkpoint). Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        m = _TMP.match(p.name)
        if m and p.is_file() and not _alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def load_weights_only(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name ``what`` and the file and say why: missing,
    a folder, empty, truncated or damaged, or holding pickled Python objects (which are never loaded: a
    weights-only load refuses anything that could run code).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: everything else.
    """
    import pickle

    import torch

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"{what} {str(p)!r} is a folder; expected a file written by torch.save")
    if p.stat().st_size == 0:
        raise ValueError(f"{what} {str(p)!r} is empty (0 bytes); expected a file written by torch.save")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, which must never be followed here: say what it found.
        lines = [line.strip() for line in str(exc).split("\n")]
        found = next((line for line in lines if "GLOBAL" in line or "global" in line.split(" ")[:4]), None)
        if found is not None:
            raise ValueError(f"{what} {str(p)!r} holds pickled Python objects, not only tensors ({found}); dgnet "
                             "loads weights only and never runs code from a file") from None
        raise ValueError(f"{what} {str(p)!r} is damaged or not a torch file (its pickle stream does not "
                         "decode)") from None
    except Exception as exc:  # noqa: BLE001 - zip reader, truncated stream, wrong magic: all mean "damaged"
        first = str(exc).strip().split("\n")[0]
        reason = first if len(first) > 12 else f"{type(exc).__name__}{': ' + first if first else ''}"
        raise ValueError(f"{what} {str(p)!r} is truncated, damaged or not a torch file ({reason})") from None


def write_results(data: dict, checkpoint: str | Path, output: str | Path | None, suffix: str) -> Path:
    """Write a CLI's results as JSON to ``output``, or next to ``checkpoint`` with ``suffix``; say where."""
    out = Path(output) if output else Path(checkpoint).with_suffix(suffix)
    write_text_atomic(out, json.dumps(data, indent=2))
    print(f"results written to {out}")
    return out
