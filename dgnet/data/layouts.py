"""Dataset layouts: Market-1501, DukeMTMC-reID, CUHK03-NP, MSMT17 (V1 and V2), a plain folder tree, and the
synthetic set.

Every loader returns a :class:`ReidDataset` of :class:`Sample` lists. Conventions shared by all layouts:

- ``camid`` is zero-based (Market's ``c1`` is camera 0, MSMT17's ``01`` is camera 0); evaluation only
  compares cameras for equality, so the offset is immaterial, but it is the same everywhere.
- Train identities are relabelled ``0..K-1`` in order of their original id; ``pid_map`` keeps
  original -> label. Query and gallery keep original ids, so they never collide with train labels by accident.
- Identity ``-1`` (junk) and ``0`` (distractor) are dropped from train and kept in query/gallery as they are;
  evaluation removes the junk from each ranking.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class Sample(NamedTuple):
    """One image: its file, identity and zero-based camera."""

    path: str
    pid: int
    camid: int


@dataclass
class ReidDataset:
    """The three splits of a re-id dataset.

    ``train`` pids are labels ``0..num_train_pids-1``; ``pid_map`` maps the original train id to its label.
    ``query``/``gallery`` keep original ids (``-1`` junk, ``0`` distractor where the layout has them).
    """

    name: str
    root: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]
    pid_map: dict[int, int] = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        return len(self.pid_map)

    def stats(self) -> list[tuple[str, int, int, int]]:
        """``(split, identities, images, cameras)`` for each split."""
        rows = []
        for split in ("train", "query", "gallery"):
            samples = getattr(self, split)
            rows.append((split, len({s.pid for s in samples}), len(samples), len({s.camid for s in samples})))
        return rows

    def table(self) -> str:
        """The statistics table that :func:`load_dataset` prints."""
        lines = [f"dataset {self.name} at {self.root}", f"  {'split':<8} {'ids':>7} {'images':>9} {'cameras':>8}"]
        lines += [f"  {s:<8} {i:>7} {n:>9} {c:>8}" for s, i, n, c in self.stats()]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# helpers


def is_image_file(path: Path) -> bool:
    """Whether a directory entry is one of the dataset's images: an ``IMAGE_EXTENSIONS`` suffix (any case), not
    hidden, and a file or a link to one. Hidden names are skipped because macOS leaves a ``._name.jpg`` metadata
    file beside every image it copies to a foreign disk; a link whose target is missing still counts, so that
    the pre-flight check names it instead of the image silently leaving the dataset."""
    if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
        return False
    return path.is_file() or (path.is_symlink() and not path.exists())


def _images(directory: Path) -> list[Path]:
    """Image files directly in ``directory``, sorted (Market ships Thumbs.db files: non-images are ignored)."""
    if not directory.is_dir():
        raise FileNotFoundError(f"expected a directory of images at {directory}, found none")
    return sorted(p for p in directory.iterdir() if is_image_file(p))


def _require_nonempty(name: str, split: str, where: Path, samples: list[Sample], expected: str) -> None:
    if not samples:
        raise ValueError(f"{name}: split '{split}' at {where} is empty; expected images named like {expected}")


def relabel(samples: Sequence[Sample]) -> tuple[list[Sample], dict[int, int]]:
    """Relabel the identities of ``samples`` to ``0..K-1`` in order of their original ids."""
    pid_map = {pid: label for label, pid in enumerate(sorted({s.pid for s in samples}))}
    return [Sample(s.path, pid_map[s.pid], s.camid) for s in samples], pid_map


def _find_root(root: Path, marker: str) -> Path:
    """``root`` itself, or its only sub-directory holding ``marker`` (archives unpack into a named folder)."""
    if (root / marker).exists():
        return root
    if root.is_dir():
        found = [d for d in sorted(root.iterdir()) if d.is_dir() and (d / marker).exists()]
        if len(found) == 1:
            return found[0]
    raise FileNotFoundError(f"expected {root}/{marker} (or one sub-directory of {root} holding {marker}); not found")


# --------------------------------------------------------------------------------------------------------------------
# Market-1501 and DukeMTMC-reID


MARKET_PATTERN = re.compile(r"^(-?\d+)_c(\d)s(\d+)_(\d+)_(\d+)$")
DUKE_PATTERN = re.compile(r"^(-?\d+)_c(\d+)_f(\d+)$")
MARKET_EXAMPLE = "0002_c1s1_000451_03.jpg"
DUKE_EXAMPLE = "0005_c2_f0046985.jpg"


def _parse_market_dir(name: str, directory: Path, pattern: re.Pattern, example: str) -> list[Sample]:
    samples = []
    for p in _images(directory):
        m = pattern.match(p.stem)
        if m is None:
            raise ValueError(
                f"{name}: file name {p} does not match the layout's pattern {pattern.pattern!r} (e.g. {example})"
            )
        pid, cam = int(m.group(1)), int(m.group(2))
        if cam < 1:
            raise ValueError(f"{name}: camera {cam} in {p}: cameras are numbered from 1")
        samples.append(Sample(str(p), pid, cam - 1))
    return samples


def _load_market_like(name: str, root: Path, pattern: re.Pattern, example: str) -> ReidDataset:
    root = _find_root(root, "bounding_box_train")
    splits = {}
    for split, sub in (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")):
        samples = _parse_market_dir(name, root / sub, pattern, example)
        if split == "train":  # junk and distractors carry no identity to learn
            samples = [s for s in samples if s.pid > 0]
        _require_nonempty(name, split, root / sub, samples, example)
        splits[split] = samples
    train, pid_map = relabel(splits["train"])
    return ReidDataset(name, str(root), train, splits["query"], splits["gallery"], pid_map)


def load_market1501(root: str | Path) -> ReidDataset:
    """Market-1501: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names like
    ``0002_c1s1_000451_03.jpg`` (identity, camera, sequence, frame, box)."""
    return _load_market_like("market1501", Path(root), MARKET_PATTERN, MARKET_EXAMPLE)


def load_dukemtmc(root: str | Path) -> ReidDataset:
    """DukeMTMC-reID: Market's folders with names like ``0005_c2_f0046985.jpg`` (identity, camera, frame)."""
    return _load_market_like("dukemtmc", Path(root), DUKE_PATTERN, DUKE_EXAMPLE)


# --------------------------------------------------------------------------------------------------------------------
# CUHK03-NP


CUHK03_PATTERN = re.compile(r"^(-?\d+)_c(\d)_(\d+)$")
CUHK03_EXAMPLE = "0001_c1_1.png"
CUHK03_SUBSETS = ("detected", "labeled")


def load_cuhk03(root: str | Path, subset: str = "detected") -> ReidDataset:
    """CUHK03-NP (Zhong et al.'s new protocol for CUHK03: 767 train and 700 test identities, two cameras), one of
    its two box sets: ``subset`` ``"detected"`` (DPM boxes, the harder one) or ``"labeled"`` (hand-drawn).

    ``root`` holds ``detected/`` and ``labeled/`` (or is the folder an archive unpacked them into, or is the subset
    folder itself); each has Market's ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names like
    ``0001_c1_1.png`` (identity, camera 1 or 2, index). It is evaluated under the Market-1501 protocol
    (``dgnet.evaluation.evaluate_rank``'s default; ``use_metric_cuhk03`` is the classic CUHK03 protocol instead).
    """
    if subset not in CUHK03_SUBSETS:
        raise ValueError(f"cuhk03: subset {subset!r} (data.cuhk03_subset); expected one of {CUHK03_SUBSETS}")
    root = Path(root)
    if not (root / "bounding_box_train").is_dir():
        try:
            root = _find_root(root, subset) / subset
        except FileNotFoundError:
            raise FileNotFoundError(
                f"cuhk03: expected {root}/{subset}/bounding_box_train (CUHK03-NP: detected/ and labeled/, each with "
                f"bounding_box_train/, query/, bounding_box_test/), or {root}/bounding_box_train; not found"
            ) from None
    ds = _load_market_like("cuhk03", root, CUHK03_PATTERN, CUHK03_EXAMPLE)
    for split in (ds.train, ds.query, ds.gallery):
        bad = next((s for s in split if s.camid > 1), None)
        if bad is not None:
            raise ValueError(f"cuhk03: camera {bad.camid + 1} in {bad.path}; CUHK03 has cameras 1 and 2 "
                             f"(e.g. {CUHK03_EXAMPLE})")
    return ds


# --------------------------------------------------------------------------------------------------------------------
# MSMT17


MSMT_NAME = re.compile(r"^(\d+)_(\d+)_(\d{2})_")
MSMT_EXAMPLE = "0000/0000_000_01_0303morning_0015_0.jpg"


def _msmt_camid(path: str, where: str) -> int:
    m = MSMT_NAME.match(Path(path).name)
    if m is None:
        raise ValueError(
            f"msmt17: image name {path!r} ({where}) does not match {MSMT_NAME.pattern!r} "
            f"(e.g. {MSMT_EXAMPLE}: identity, index, two-digit camera, ...)"
        )
    return int(m.group(3)) - 1


def _read_msmt_list(list_path: Path, image_dir: Path) -> list[Sample]:
    samples = []
    # UTF-8 whatever the locale, and without a byte-order mark, which editors on Windows put before the first path
    for lineno, line in enumerate(list_path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            raise ValueError(
                f"msmt17: {list_path}:{lineno}: expected 'relative/path.jpg pid', got {line.strip()!r}"
            )
        where = f"{list_path}:{lineno}"
        samples.append(Sample(str(image_dir / parts[0]), int(parts[1]), _msmt_camid(parts[0], where)))
    return samples


def load_msmt17(
    root: str | Path,
    train_lists: Sequence[str] = ("list_train.txt", "list_val.txt"),
    query_list: str = "list_query.txt",
    gallery_list: str = "list_gallery.txt",
) -> ReidDataset:
    """MSMT17, V1 (``train/``, ``test/``) or V2 (``mask_train_v2/``, ``mask_test_v2/``).

    Splits come from list files beside those folders, each line ``path pid`` relative to the train or test
    folder: ``train_lists`` (by default ``list_train.txt`` + ``list_val.txt``, together the train split:
    1041 identities, as the DG-Net reference trains; lists that are absent are skipped), ``query_list`` and
    ``gallery_list``. Without any train list, V2's ``mask_train_v2/<pid>/<image>`` folders are read
    directly; query and gallery always need their lists (nothing else tells them apart). Cameras are the two
    digits after the second underscore of the name (``..._01_...`` is camera 0).
    """
    root = Path(root)
    for train_sub, test_sub in (("train", "test"), ("mask_train_v2", "mask_test_v2")):  # noqa: B007 (used after)
        try:
            base = _find_root(root, train_sub)
            break
        except FileNotFoundError:
            continue
    else:
        raise FileNotFoundError(
            f"msmt17: expected {root}/train + {root}/test (V1) or {root}/mask_train_v2 + {root}/mask_test_v2 (V2)"
        )
    train_dir, test_dir = base / train_sub, base / test_sub
    present = [base / name for name in train_lists if (base / name).exists()]
    if present:
        train = [s for lst in present for s in _read_msmt_list(lst, train_dir)]
    else:
        train = []
        for pid_dir in sorted(d for d in train_dir.iterdir() if d.is_dir()):
            if not re.fullmatch(r"\d+", pid_dir.name):
                raise ValueError(f"msmt17: folder {pid_dir} is not an identity number (expected {MSMT_EXAMPLE})")
            train += [Sample(str(p), int(pid_dir.name), _msmt_camid(p.name, str(p))) for p in _images(pid_dir)]
    splits = {"train": train}
    for split, name in (("query", query_list), ("gallery", gallery_list)):
        lst = base / name
        if not lst.exists():
            raise FileNotFoundError(f"msmt17: {lst} is missing; query and gallery are defined by their list files")
        splits[split] = _read_msmt_list(lst, test_dir)
    for split, samples in splits.items():
        _require_nonempty("msmt17", split, base, samples, MSMT_EXAMPLE)
    train, pid_map = relabel(splits["train"])
    return ReidDataset("msmt17", str(base), train, splits["query"], splits["gallery"], pid_map)


# --------------------------------------------------------------------------------------------------------------------
# folder


DEFAULT_CAMERA_PATTERN = r"c(\d+)"
JUNK_FOLDER = "-1"  # the identity folder of junk images (never trained on; left out of every ranking)
CAMID_EXPECTED = "expected a zero-based integer camera (0, 1, 2, ...)"


def read_camera_csv(camera_csv: str | Path) -> dict[str, int]:
    """A camera manifest: columns ``path`` (relative to the dataset root) and ``camid`` (zero-based integer),
    one row per image -> ``{posix path: camid}``. Errors name the file, the line, the path and the value.

    Read as UTF-8 with an optional byte-order mark, and cells stripped of spaces: what spreadsheets export.
    """
    cameras: dict[str, int] = {}
    lines: dict[str, int] = {}
    data = Path(camera_csv).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:  # e.object: the bytes after any byte-order mark, which e.start counts in
        line = e.object.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"folder: {camera_csv} is not UTF-8 (byte 0x{e.object[e.start]:02x} on line {line}); "
            f"expected a UTF-8 file (save it as UTF-8)"
        ) from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f, skipinitialspace=True)
        if reader.fieldnames is None or not {"path", "camid"} <= {n.strip() for n in reader.fieldnames}:
            raise ValueError(f"folder: {camera_csv} must have a header with columns 'path' and 'camid' "
                             f"(found {reader.fieldnames})")
        reader.fieldnames = [n.strip() for n in reader.fieldnames]
        for row in reader:
            line = reader.line_num  # the file's line (header = 1), also past quoted multi-line cells
            raw_path, value = (row.get("path") or "").strip(), row.get("camid")
            if not raw_path:
                raise ValueError(f"folder: {camera_csv}:{line}: empty path; expected 'relative/path.jpg,camid'")
            key = Path(raw_path).as_posix()
            where = f"folder: {camera_csv}:{line}: path {key!r}"
            if value is None:
                raise ValueError(f"{where} has no camid; {CAMID_EXPECTED}")
            value = value.strip()
            if not re.fullmatch(r"[+-]?\d+", value):
                raise ValueError(f"{where}: camid {value!r} is not an integer; {CAMID_EXPECTED}")
            if int(value) < 0:
                raise ValueError(f"{where}: camid {value!r} is negative; {CAMID_EXPECTED}")
            if key in cameras:
                raise ValueError(f"{where} is already on line {lines[key]} (camid {cameras[key]}, here {value!r}); "
                                 f"expected one row per image")
            cameras[key], lines[key] = int(value), line
    return cameras


def load_folder(
    root: str | Path,
    camera_pattern: str = DEFAULT_CAMERA_PATTERN,
    camera_csv: str | Path | None = None,
    splits: tuple[str, str, str] = ("train", "query", "gallery"),
) -> ReidDataset:
    """A plain tree ``<root>/<split>/<pid>/<image>``.

    Identity folders are integers (``-1`` junk, left out of training; ``0`` a gallery distractor as in
    Market, but in the train split an identity like any other, as in MSMT17 and dgnet.generate's output) or,
    when any is not, names numbered in sorted order over all splits (so query and gallery agree). The
    camera is either the first group of ``camera_pattern`` searched in the file name (numbered from 1,
    stored zero-based) or, with ``camera_csv`` (default ``<root>/cameras.csv`` when it exists), a CSV with
    columns ``path,camid`` (path relative to root, camid as written: zero-based).
    """
    root = Path(root)
    regex = re.compile(camera_pattern)
    if regex.groups < 1:
        raise ValueError(f"folder: camera_pattern {camera_pattern!r} needs one group capturing the camera number")
    if camera_csv is None and (root / "cameras.csv").exists():
        camera_csv = root / "cameras.csv"
    cameras = read_camera_csv(camera_csv) if camera_csv is not None else None
    names: dict[str, list[tuple[str, Path]]] = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise FileNotFoundError(f"folder: expected {split_dir}/<pid>/<image>; {split_dir} does not exist")
        names[split] = [(d.name, p) for d in sorted(split_dir.iterdir()) if d.is_dir() for p in _images(d)]
    all_names = sorted({n for entries in names.values() for n, _ in entries})
    # "-1" is junk in either naming: with named identities it must not be numbered as one more person
    numeric = all(re.fullmatch(r"-?\d+", n) for n in all_names if n != JUNK_FOLDER)
    if numeric:  # '0012' and '12' would silently become one identity
        for split, entries in names.items():
            spelt: dict[int, str] = {}
            for name in sorted({n for n, _ in entries}):
                if int(name) in spelt:
                    raise ValueError(f"folder: {root / split / spelt[int(name)]} and {root / split / name} name the "
                                     f"same identity {int(name)}; expected one folder per identity")
                spelt[int(name)] = name
    named = {JUNK_FOLDER: -1} | {n: i for i, n in enumerate(n for n in all_names if n != JUNK_FOLDER)}
    to_pid: Callable[[str], int] = int if numeric else named.__getitem__
    out = {}
    for split, entries in names.items():
        samples = []
        for name, p in entries:
            if cameras is not None:
                rel = p.relative_to(root).as_posix()
                if rel not in cameras:
                    raise ValueError(f"folder: {p} has no row in camera manifest {camera_csv} (path {rel!r})")
                camid = cameras[rel]
            else:
                m = regex.search(p.name)
                if m is None:
                    raise ValueError(
                        f"folder: file name {p} does not match camera pattern {camera_pattern!r}; "
                        f"name files like 0001_c1_0001.jpg or give a camera CSV (path,camid)"
                    )
                camid = int(m.group(1)) - 1
            samples.append(Sample(str(p), to_pid(name), camid))
        if split == splits[0]:  # junk never trains; 0 is a real identity here (distractors live in the gallery)
            samples = [s for s in samples if s.pid >= 0]
        _require_nonempty("folder", split, root / split, samples, "<pid>/0001_c1_0001.jpg")
        out[split] = samples
    train, pid_map = relabel(out[splits[0]])
    return ReidDataset("folder", str(root), train, out[splits[1]], out[splits[2]], pid_map)


# --------------------------------------------------------------------------------------------------------------------


def load_synthetic(root: str | Path) -> ReidDataset:
    """The synthetic pedestrians (:mod:`dgnet.data.synthetic`), stored in the Market-1501 layout."""
    ds = _load_market_like("synthetic", Path(root), MARKET_PATTERN, MARKET_EXAMPLE)
    return ds


LOADERS: dict[str, Callable[..., ReidDataset]] = {
    "market1501": load_market1501,
    "dukemtmc": load_dukemtmc,
    "cuhk03": load_cuhk03,
    "msmt17": load_msmt17,
    "folder": load_folder,
    "synthetic": load_synthetic,
}


def singleton_identities(samples: Sequence[Sample]) -> list[int]:
    """Identities with exactly one image in ``samples`` (they have no positive to pair with)."""
    counts: dict[int, int] = defaultdict(int)
    for s in samples:
        counts[s.pid] += 1
    return sorted(pid for pid, n in counts.items() if n == 1)


def load_dataset(name: str, root: str | Path, verbose: bool = True, **options) -> ReidDataset:
    """Read a dataset in one of the published layouts.

    Args:
        name: ``market1501``, ``dukemtmc``, ``cuhk03`` (CUHK03-NP), ``msmt17``, ``folder`` or ``synthetic``.
        root: the dataset folder (or the folder its archive unpacked into).
        verbose: print the statistics table (identities, images and cameras per split).
        options: layout options (``folder``: ``camera_pattern``, ``camera_csv``, ``splits``; ``msmt17``:
            ``train_lists``, ``query_list``, ``gallery_list``; ``cuhk03``: ``subset``), as
            ``dgnet.config.layout_options`` gives them.

    Returns:
        a :class:`ReidDataset` whose ``train``/``query``/``gallery`` are lists of :class:`Sample`.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(LOADERS)}")
    ds = LOADERS[name](root, **options)
    if verbose:
        print(ds.table())
        single = singleton_identities(ds.train)
        if single:
            print(
                f"  note: {len(single)} train identities have a single image (no positive for DG-Net pairs), "
                f"e.g. labels {single[:5]}"
            )
    return ds
