"""Pre-flight scan for corrupt, truncated or unsupported images, cached by file size and modification time.

A truncated JPEG in a dataset kills a training run hours in (or worse, a decoder silently pads it with
grey), and an image the two input pipelines read differently (a 16-bit grey PNG that a plain Pillow
``convert("RGB")`` turns white) trains on different pixels depending on the loader. :func:`scan` decodes
every file once, as the torch pipeline does (:func:`dgnet.data.decoding.rgb8`, which raises on truncation,
on corrupt entropy-coded data and on modes without an agreed 8-bit RGB reading), refuses content other
than JPEG or PNG (the formats the layouts' extensions name), and remembers each good file by
``(size, mtime_ns)`` in ``.dgnet_check.json`` at the scanned root (or under ``~/.cache/dgnet`` when the root
is read-only), so later runs re-check only files that changed. :func:`preflight` runs before training: it
refuses bad files, each with its reason, unless told to skip them.

CLI: ``python -m dgnet.data.check ROOT [--no-cache]`` lists bad files and exits 1 if there are any.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image, ImageFile

from dgnet.data.decoding import EXPECTED, FORMATS, rgb8, unsupported
from dgnet.data.layouts import Sample, is_image_file

CACHE_NAME = ".dgnet_check.json"
# Bumped whenever the rules change, so that files a laxer check cached as good are checked again.
CACHE_VERSION = 2


def is_corrupt(path: str | Path) -> str | None:
    """Why ``path`` cannot be trained on (it does not decode in full, its content is not JPEG or PNG, or its
    mode has no reading both input pipelines agree on), or ``None`` when it is fine."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a library elsewhere may have turned it on; we want the error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow reports some corrupt data only as a warning
            with Image.open(path) as im:
                fmt, mode, why = im.format, im.mode, unsupported(im)
            if fmt not in FORMATS:
                return f"{fmt} content in mode {mode} in a {Path(path).suffix} file; {EXPECTED}"
            if why is not None:
                return f"{fmt} image in mode {mode}: {why}; {EXPECTED}"
            rgb8(path)  # the torch pipeline's full decode
    except Exception as e:  # any failure to decode is what we are looking for
        return f"{type(e).__name__}: {e}"
    return None


def _cache_file(root: Path) -> Path:
    if os.access(root, os.W_OK):
        return root / CACHE_NAME
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "dgnet" / f"check-{digest}.json"


def _files(root_or_paths: str | Path | Iterable[str | Path]) -> tuple[Path, list[Path]]:
    if isinstance(root_or_paths, (str, Path)):
        root = Path(root_or_paths)
        if not root.exists():
            raise FileNotFoundError(f"check: {root} does not exist")
        if root.is_file():
            return root.parent, [root]
        # the layouts' own test of what an image is; files inside hidden folders are no dataset's either
        files = sorted(p for p in root.rglob("*")
                       if is_image_file(p) and not any(d.startswith(".") for d in p.relative_to(root).parts))
        return root, files
    files = [Path(p) for p in root_or_paths]
    if not files:
        return Path("."), []
    # realpath, not Path.resolve: it never raises, even on a loop of links (which the scan then reports)
    return Path(os.path.commonpath([os.path.dirname(os.path.realpath(p)) for p in files])), files


def _read_cache(cache_path: Path) -> dict[str, list[int]]:
    try:
        data = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        return {}  # an unreadable cache is only a lost speed-up
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("files"), dict):
        return {}  # written under other rules (or by hand): check everything again
    return data["files"]


def problems(root_or_paths: str | Path | Iterable[str | Path], cache: bool = True,
             verbose: bool = False) -> dict[Path, str]:
    """Bad images under a folder (recursively) or in a list of files, each with the reason (:func:`is_corrupt`).

    Good files are cached by ``(size, mtime_ns)``; bad ones are never cached, so they are re-checked
    (and reported) every time until fixed.
    """
    root, files = _files(root_or_paths)
    cache_path = _cache_file(root) if cache else None
    known = _read_cache(cache_path) if cache_path is not None and cache_path.exists() else {}
    bad, changed = {}, False
    for p in files:
        try:
            st = p.stat()
        except OSError as e:  # a listed file that is gone, a link to one, or a loop of links: report it
            if e.errno == errno.ELOOP:
                bad[p] = f"a loop of symbolic links (it points to {os.readlink(p)}, which leads back to it)"
            else:
                bad[p] = (f"missing: a link to {os.readlink(p)}, which does not exist" if p.is_symlink()
                          else f"missing: {e.strerror}")
            if verbose:
                print(f"bad image: {p}: {bad[p]}")
            continue
        key, stamp = str(p.resolve()), [st.st_size, st.st_mtime_ns]
        if known.get(key) == stamp:
            continue
        why = is_corrupt(p)
        if why is None:
            known[key], changed = stamp, True
        else:
            bad[p] = why
            known.pop(key, None)
            if verbose:
                print(f"bad image: {p}: {why}")
    if cache_path is not None and changed:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": known}))
            tmp.replace(cache_path)
        except OSError:
            pass  # read-only everywhere: scanning still worked
    return dict(sorted(bad.items()))


def scan(root_or_paths: str | Path | Iterable[str | Path], cache: bool = True, verbose: bool = False) -> list[Path]:
    """The bad paths of :func:`problems`, sorted."""
    return list(problems(root_or_paths, cache=cache, verbose=verbose))


def preflight(samples: Sequence[Sample], skip_corrupt: bool, cache: bool = True) -> tuple[list[Sample], int]:
    """Scan the files of ``samples`` before training.

    Raises ``ValueError`` listing the bad files, each with its reason, unless ``skip_corrupt``; then returns
    the samples without them and how many were left out.
    """
    reasons = {str(p): why for p, why in problems([s.path for s in samples], cache=cache).items()}
    bad = set(reasons)
    samples = [s._replace(path=str(Path(s.path))) for s in samples]  # compare paths in one spelling
    if not bad:
        return list(samples), 0
    if not skip_corrupt:
        shown = "\n  ".join(f"{p}: {reasons[p]}" for p in sorted(bad)[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ValueError(
            f"{len(bad)} corrupt, truncated or unsupported image(s):\n  {shown}{more}\n"
            f"fix or remove them, or pass --skip-corrupt to train without them"
        )
    kept = [s for s in samples if s.path not in bad]
    return kept, len(samples) - len(kept)
