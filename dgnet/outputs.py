"""Where a command may write: never over one of its inputs, never into a folder of images it reads, never over a
file dgnet did not write, and over its own earlier output only when told (``--force``).

The commands (``export``, ``extract``, ``search``) call these checks before any model is loaded, so a typo in
``--out`` costs nothing and destroys nothing. Each raises :class:`OutputRefused` (a ``ValueError``) whose
message names the option, the path and what it collides with.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path


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
