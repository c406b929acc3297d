"""Files that are never lost or torn: atomic replacement, a clear stop when the disk is full, the sweep of
temporaries that killed writes leave, weights-only loading with errors that say what is wrong, the
commands' JSON results (:func:`write_results`), and where a command may write (:func:`refuse_inputs`,
:func:`check_replace`, :func:`check_writable`: never over an input, among the images it reads, or over a file
dgnet did not write)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Mapping
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


def replace_atomic(path: str | Path, write: Callable[[BinaryIO], object], size_hint: int | None = None,
                   advice: str = "Free some space and run again") -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, ``os.replace`` it onto ``path`` and
    fsync the folder (so the rename itself survives a power cut). Returns ``path``.

    On any failure the temporary is removed and ``path`` is as it was. A failure for lack of space raises
    :class:`DiskFull` naming the folder, the bytes needed (``size_hint``; without one, more than what had been
    written), the bytes free, and ``advice`` (what the caller's user should do: only training can resume).
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
            # What had been written is what fitted, about the free space: not what the file needs.
            need = (f"about {human_bytes(size_hint)}" if size_hint is not None and size_hint > written
                    else f"more than the {human_bytes(written)} written when the disk filled")
            raise DiskFull(errno.ENOSPC, f"no space left in {path.parent} to write {path.name}: it needs {need}, and "
                           f"{human_bytes(free)} are free; {path.name} was not replaced and nothing was left behind. "
                           f"{advice}") from None
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


def _program_kind(path: Path) -> str | None:
    """``"a TorchScript program"`` or ``"an ExportedProgram"`` when ``path`` is such an archive (read from its zip
    directory only), else ``None``."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "a TorchScript program"
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "an ExportedProgram"
    return None


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
    program = _program_kind(p)
    if program is not None:
        raise ValueError(f"{what} {str(p)!r} is {program} (a model's graph, such as python -m dgnet.export writes), "
                         "not weights; expected tensors written by torch.save (a dgnet checkpoint: dgnet.pt, "
                         "teacher.pt or a run's checkpoints/*.pt)")
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
        if "weights_only" in first:  # torch's advice to load unsafely, which dgnet never follows
            first = ""
        reason = first if len(first) > 12 else f"{type(exc).__name__}{': ' + first if first else ''}"
        raise ValueError(f"{what} {str(p)!r} is truncated, damaged or not a torch file ({reason})") from None


def write_results(data: dict, checkpoint: str | Path, output: str | Path | None, suffix: str) -> Path:
    """Write a CLI's results as JSON to ``output``, or next to ``checkpoint`` with ``suffix``; say where."""
    out = Path(output) if output else Path(checkpoint).with_suffix(suffix)
    write_text_atomic(out, json.dumps(data, indent=2))
    print(f"results written to {out}")
    return out


# ---- where a command may write: never over an input, among the images it reads, or over a file dgnet did not write
# (export, extract and search check their --out with these before any model is loaded; docs/reliability.md)


class OutputRefused(ValueError):
    """An output path that would replace an input, land among input images, replace a file dgnet did not write,
    or replace an earlier output without ``--force``; or a folder that cannot be written."""


def real(path: str | Path) -> Path:
    """``path`` absolute with every link resolved; never raises, even on a loop of links (then the loop is left
    as it is)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (links resolved)."""
    p, f = real(path), real(folder)
    return p == f or f in p.parents


def image_folders(source: str | Path) -> list[Path]:
    """The folders an image source reads recursively: the folder itself when ``source`` is one (a ``.txt`` list or
    a single image reads only the files it names, which are input files, not folders)."""
    return [Path(source)] if Path(source).is_dir() else []


def refuse_inputs(out: str | Path, option: str, files: Mapping[str, str | Path],
                  folders: Mapping[str, Iterable[str | Path]] = {}) -> None:  # noqa: B006 - read only
    """Refuse ``out`` when it is one of the input ``files`` (by option name, e.g. ``{"--checkpoint": path}``) or
    lies in one of the image ``folders`` (option -> folders that option's images are read from)."""
    for name, path in files.items():
        if path is not None and (real(out) == real(path) or (Path(out).exists() and Path(path).exists()
                                                            and os.path.samefile(out, path))):
            raise OutputRefused(f"{option} {str(out)!r} is the {name} input {str(path)!r}; writing there would destroy "
                                f"it: choose another {option}")
    for name, dirs in folders.items():
        for d in dirs:
            if is_inside(out, d):
                raise OutputRefused(f"{option} {str(out)!r} is inside {str(d)!r}, a folder of {name} images; dgnet "
                                    f"writes nothing among the images it reads (a later run would read its own "
                                    f"output): choose an {option} outside it")


def check_replace(out: str | Path, option: str, what: str, recognise: Callable[[Path], bool], force: bool) -> None:
    """Refuse to replace an existing ``out`` unless it is an earlier output of the same kind (``recognise``, e.g. a
    feature file by its metadata) and ``force`` is set. ``what`` names that kind ("feature file")."""
    p = Path(out)
    if not os.path.lexists(p):
        return
    if p.is_dir() and what != "search output":
        raise OutputRefused(f"{option} {str(out)!r} is a folder; expected the name of the {what} to write")
    if not recognise(p):
        raise OutputRefused(f"{option} {str(out)!r} exists and is not a {what} dgnet wrote; dgnet never replaces a "
                            f"file it did not write: remove it or choose another {option}")
    if not force:
        raise OutputRefused(f"{option} {str(out)!r} holds an earlier {what}; pass --force to replace it, or choose "
                            f"another {option}")


def check_writable(out: str | Path, option: str) -> None:
    """Refuse ``out`` when the nearest existing folder on its way cannot be written (read-only file system, or no
    permission), before anything is computed."""
    p = real(out)
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputRefused(f"{option} {str(out)!r}: cannot write in {str(folder)!r} (a read-only file system or no "
                            f"permission); choose an {option} in a folder you can write")


def unwritable(exc: BaseException, out: str | Path, option: str) -> str | None:
    """One line for a write refused by the system (permission, read-only file system) while writing ``out``, or
    ``None`` when ``exc`` is something else."""
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = exc.filename if exc.filename is not None else out
        return (f"cannot write {option} {str(out)!r}: {exc.strerror} ({where}); choose an {option} in a folder you "
                "can write")
    return None
