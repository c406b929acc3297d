"""Your own images as feature files, and searching them: what ``python -m dgnet.extract`` and
``python -m dgnet.search`` do.

- :func:`list_images`: the images of a folder (recursively) or of a text file listing one path per line.
- :func:`extract_features`: the test protocol's features of image files (:class:`dgnet.FeatureExtractor`),
  after a decode check that skips, with a warning, the files that do not decode (listed in the result).
- :class:`FeatureSet`: features with their paths and the identity of the checkpoint that made them, saved as
  ``.npz`` (no pickles) and refused when loaded for another checkpoint.
- :func:`gallery_features`: a folder's features through a cache that a second search reuses (files that
  changed, or are new, are extracted again; removed ones are dropped).
- :func:`search`: distances on the features' device through ``dgnet.ops`` (the same ops as ``dgnet.test``;
  cosine distance by default, which ranks as the protocol's score), optionally k-reciprocal re-ranking, and each
  query's top k.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dgnet import __version__, ops
from dgnet.data.check import problems
from dgnet.data.layouts import IMAGE_EXTENSIONS, is_image_file
from dgnet.evaluation.protocol import rerank_metric
from dgnet.fileio import (
    OutputRefused,
    check_replace,
    check_writable,
    image_folders,
    is_inside,
    real,
    refuse_inputs,
    replace_atomic,
    write_text_atomic,
)
from dgnet.generative.figures import Thumbnails, display_scale, search_figure
from dgnet.inference.extractor import FeatureExtractor
from dgnet.runlock import LockHeld, acquire

FORMAT = "dgnet-features"
RANKLISTS = 50  # rank-list figures a search draws by default (the first queries'); results.json holds every ranking
SEARCH_FORMAT = "dgnet-search"  # results.json of python -m dgnet.search
_KEYS = ("features", "paths", "skipped", "reasons", "stamps", "meta")


def list_images(source: str | Path) -> list[str]:
    """Image paths (``.jpg``, ``.jpeg``, ``.png``, any case) of a file, a folder (recursively, hidden entries left
    out, sorted) or a ``.txt`` list of paths (one per line, relative to the list's folder; blank lines and
    ``#`` comments skipped).

    Raises:
        FileNotFoundError: ``source``, or a listed path, does not exist.
        ValueError: no image found (the message names the folder or list and the extensions looked for).
    """

    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"{str(src)!r} does not exist; expected an image, a folder of images or a .txt list")
    if src.is_file() and src.suffix.lower() == ".txt":
        paths = []
        for lineno, line in enumerate(src.read_text(encoding="utf-8-sig").splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            p = Path(line) if Path(line).is_absolute() else src.parent / line
            if not p.is_file():
                raise FileNotFoundError(f"{src}:{lineno}: {line!r} does not exist (paths are relative to {src.parent})")
            paths.append(str(p))
    elif src.is_file():
        paths = [str(src)] if is_image_file(src) else []
    else:
        found = sorted(src.rglob("*"))
        # an earlier search's rank lists (``<out>/ranklists/*.png`` beside its results.json) are not gallery images
        own = [r.parent / "ranklists" for r in found if r.name == "results.json" and is_search_output(r.parent)]
        paths = [str(p) for p in found
                 if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(src).parts)
                 and not any(o in p.parents for o in own)]
    if not paths:
        raise ValueError(f"{src}: no image found; expected files ending in {', '.join(IMAGE_EXTENSIONS)}")
    return paths


@dataclass
class FeatureSet:
    """Features of images: ``features`` float32 ``(N, D)`` (on any device), their ``paths``, the ``identity`` of the
    checkpoint that made them (:func:`dgnet.inference.extractor.checkpoint_identity`), and the files ``skipped``
    (path -> why) because they do not decode; ``checkpoint`` and ``model``: the checkpoint file and model that
    made them, when known (error messages name them)."""

    features: torch.Tensor
    paths: list[str]
    identity: str
    skipped: dict[str, str] = field(default_factory=dict)
    stamps: list[tuple[int, int]] | None = None  # (size, mtime_ns) per path, when known: what a cache compares
    checkpoint: str | None = None
    model: str | None = None

    def save(self, path: str | Path) -> Path:
        """Write ``.npz`` (arrays and strings only: it loads without pickles) atomically."""

        stamps = np.asarray(self.stamps if self.stamps is not None else [(-1, -1)] * len(self.paths), np.int64)
        arrays = {"features": self.features.detach().float().cpu().numpy(), "paths": np.asarray(self.paths, str),
                  "skipped": np.asarray(list(self.skipped), str),
                  "reasons": np.asarray(list(self.skipped.values()), str), "stamps": stamps.reshape(-1, 2),
                  "meta": np.asarray(json.dumps({"format": FORMAT, "identity": self.identity, "dgnet": __version__,
                                                 "checkpoint": self.checkpoint, "model": self.model}))}
        return replace_atomic(Path(path), lambda fh: np.savez(fh, **arrays),
                              size_hint=sum(a.nbytes for a in arrays.values()))

    @classmethod
    def load(cls, path: str | Path, identity: str | None = None, checkpoint: str | Path | None = None) -> FeatureSet:
        """Read a file :meth:`save` wrote, checking every array (keys, shapes, row counts, dtypes, finite
        features); with ``identity``, refuse features another checkpoint made (``checkpoint``: that checkpoint's
        file, named in the message). No pickle is ever loaded.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: not a dgnet feature file, damaged (truncated, empty, altered: what is wrong and what was
                expected), or made by another checkpoint (the files named).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature file {str(path)!r} does not exist")
        expected = "expected the .npz that python -m dgnet.extract writes"
        why = _not_a_zip(path)
        if why is None:
            try:
                with np.load(path, allow_pickle=False) as z:
                    missing = [k for k in _KEYS if k not in z.files]
                    arrays = {k: z[k] for k in _KEYS if k in z.files}
                why = f"it lacks the array(s) {', '.join(missing)}" if missing else _invalid(arrays)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, RuntimeError) as exc:
                reason = str(exc).split("\n")[0] if "allow_pickle" not in str(exc) else "it holds pickled objects"
                why = f"it is truncated or damaged ({type(exc).__name__}: {reason})"
        if why is not None:
            raise ValueError(f"feature file {str(path)!r} is unusable: {why}; {expected}")
        meta = json.loads(str(arrays["meta"]))
        fs = cls(torch.from_numpy(arrays["features"].astype(np.float32, copy=False)),
                 [str(p) for p in arrays["paths"]], meta["identity"],
                 dict(zip([str(p) for p in arrays["skipped"]], [str(r) for r in arrays["reasons"]], strict=True)),
                 [tuple(int(v) for v in s) for s in arrays["stamps"]], meta.get("checkpoint"), meta.get("model"))
        if identity is not None and fs.identity != identity:
            this = f"{str(checkpoint)!r}" if checkpoint is not None else "this checkpoint"
            made = f"checkpoint {fs.checkpoint!r}" if fs.checkpoint else "another checkpoint"
            if fs.checkpoint and checkpoint is not None and real(fs.checkpoint) == real(checkpoint):
                made = f"an earlier {this} (the file has been replaced since)"
            raise ValueError(f"feature file {str(path)!r} holds features of {made}, not of {this} (their weights "
                             "or test settings differ, and features of two models do not compare); extract the "
                             f"gallery again with {this}")
        return fs


def _not_a_zip(path: Path) -> str | None:
    """Why ``path`` is not a zip archive (a .npz is one), from its first bytes; ``None`` when it may be one."""
    with path.open("rb") as fh:
        head = fh.read(6)
    if not head:
        return "it is empty (0 bytes)"
    if head[:2] == b"PK":
        return None
    if head[:1] == b"\x80":
        return "it is a Python pickle, not a .npz archive (dgnet never loads pickles)"
    if head == b"\x93NUMPY":
        return "it is a single .npy array, not a .npz archive"
    return f"it is not a .npz (zip) archive (it starts with {head!r})"


def _invalid(a: dict[str, np.ndarray]) -> str | None:
    """What is wrong with the arrays of a feature file, or ``None``."""
    try:
        meta = json.loads(str(a["meta"])) if a["meta"].ndim == 0 and a["meta"].dtype.kind == "U" else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("identity"), str):
        return "its meta record is not the JSON object with an identity that dgnet writes"
    if meta.get("format") != FORMAT:
        return f"format {meta.get('format')!r}, expected {FORMAT!r}"
    f, paths = a["features"], a["paths"]
    if f.ndim != 2 or f.dtype.kind != "f":
        return f"features are {f.dtype} of shape {f.shape}, expected floats of shape (rows, dimension)"
    if paths.ndim != 1 or (paths.dtype.kind != "U" and paths.size):
        return f"paths are {paths.dtype} of shape {paths.shape}, expected a list of strings"
    if len(f) != len(paths):
        return f"{len(f)} feature rows for {len(paths)} paths, expected one row per path"
    st = a["stamps"]
    if st.dtype.kind not in "iu" or st.shape != (len(paths), 2):
        return f"stamps are {st.dtype} of shape {st.shape}, expected integers of shape ({len(paths)}, 2)"
    if a["skipped"].ndim != 1 or a["reasons"].shape != a["skipped"].shape:
        return f"{a['skipped'].size} skipped files for {a['reasons'].size} reasons, expected one reason per file"
    bad = int((~np.isfinite(f)).any(axis=1).sum()) if f.size else 0
    if bad:
        return f"{bad} of {len(f)} feature rows hold NaN or inf, expected finite features"
    return None


def check_features_out(out: str | Path, images: str | Path, checkpoint: str | Path, force: bool = False) -> None:
    """Where ``python -m dgnet.extract`` may write its feature file ``out``: a ``.npz`` name, not an input (the
    checkpoint, the list, the image) nor inside the folder of images it reads, not a file dgnet did not write,
    and an earlier feature file only with ``force``. Raises :class:`dgnet.fileio.OutputRefused`."""
    if Path(out).suffix.lower() != ".npz":
        raise ValueError(f"--out {str(out)!r}: expected a file name ending in .npz (the feature file to write)")
    refuse_inputs(out, "--out", {"--checkpoint": checkpoint, "--images": images}, {"--images": image_folders(images)})
    check_replace(out, "--out", "feature file", _is_feature_file, force)
    check_writable(out, "--out")


def _is_feature_file(path: Path) -> bool:
    try:
        FeatureSet.load(path)
    except (ValueError, OSError):
        return False
    return True


def is_search_output(folder: str | Path) -> bool:
    """Whether ``folder`` holds the ``results.json`` of a search (what :func:`search_to_folder` writes)."""
    try:
        res = json.loads((Path(folder) / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # files written before the format key have the same record without it
    return isinstance(res, dict) and (res.get("format") == SEARCH_FORMAT or {"identity", "ranked"} <= res.keys())


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:  # gone, or a loop of links: the decode check names it, and it is never cached
        return -1, -1
    return st.st_size, st.st_mtime_ns


def extract_features(fx: FeatureExtractor, paths: list[str], check: bool = True, progress: bool = False) -> FeatureSet:
    """The features of ``paths`` (in order) by ``fx``; files that do not decode are skipped with a warning.

    ``check``: decode every file first (``dgnet.data.check``) so that a truncated or unsupported file is skipped
    instead of stopping the run or being silently padded by a decoder. Nothing is written into the images'
    folders (the check's cache is for datasets). ``progress``: a progress bar on stderr.
    """

    skipped = {str(p): why for p, why in problems(paths, cache=False).items()} if check else {}
    if skipped:
        shown = "; ".join(f"{p}: {w}" for p, w in list(skipped.items())[:5])
        warnings.warn(f"skipped {len(skipped)} image(s) that do not decode: {shown}"
                      + (" ..." if len(skipped) > 5 else ""), stacklevel=2)
    good = [p for p in paths if p not in skipped]
    feats = torch.zeros(0, fx.dim, device=fx.device)
    if good:
        from tqdm import tqdm

        bar = tqdm(total=len(good), unit="img", desc="extract", disable=not progress)
        parts = []
        for f in fx.batches(good):
            parts.append(f)
            bar.update(len(f))
        bar.close()
        feats = torch.cat(parts)
    return FeatureSet(feats, good, fx.fingerprint, skipped, [_stamp(p) for p in good], str(fx.checkpoint), fx.which)


def _cache_path(folder: Path, identity: str, cache_dir: Path, which: str = "dgnet") -> Path:
    # the teacher's features (512-d) are another cache than the DG-Net model's of the same checkpoint
    key = hashlib.sha256(f"{folder.resolve()}|{identity}{'' if which == 'dgnet' else '|' + which}".encode())
    key = key.hexdigest()[:20]
    return cache_dir / f"{key}.npz"


def default_cache_dir() -> Path:
    """Where gallery features are cached: ``$DGNET_CACHE`` or ``~/.cache/dgnet/galleries``."""
    return Path(os.environ.get("DGNET_CACHE", Path.home() / ".cache" / "dgnet")) / "galleries"


def gallery_features(fx: FeatureExtractor, source: str | Path, cache: bool = True,
                     cache_dir: str | Path | None = None, check: bool = True,
                     progress: bool = False) -> tuple[FeatureSet, int]:
    """Features of a gallery: a ``.npz`` from ``dgnet.extract`` (checked against ``fx``'s checkpoint), or the
    images of a folder or list, with ``cache`` through a file keyed by the folder and the checkpoint in
    ``cache_dir`` (default :func:`default_cache_dir`).

    Every feature file is checked as it is read (:meth:`FeatureSet.load`, and its width against ``fx.dim``): a
    damaged or foreign ``.npz`` given as ``source`` is an error naming it; a damaged cache entry is named in a
    warning, deleted and rebuilt.

    Returns ``(features, how many images were extracted now)``: 0 when every feature came from the cache.
    """
    src = Path(source)
    if src.suffix.lower() == ".npz":
        fs = FeatureSet.load(src, fx.fingerprint, fx.checkpoint)
        why = _wrong_width(fs, fx)
        if why is not None:
            raise ValueError(f"feature file {str(src)!r}: {why}; extract the gallery again with --model {fx.which}")
        return FeatureSet(fs.features.to(fx.device), fs.paths, fs.identity, fs.skipped, fs.stamps, fs.checkpoint,
                          fs.model), 0
    paths = list_images(src)
    cache_file = _cache_path(src, fx.fingerprint, Path(cache_dir or default_cache_dir()), fx.which) if cache else None
    known: dict[str, tuple[tuple[int, int], int]] = {}
    old = None
    if cache_file is not None and os.path.lexists(cache_file):
        try:
            old = FeatureSet.load(cache_file, fx.fingerprint)
            why = _wrong_width(old, fx)
            if why is not None:
                raise ValueError(f"feature file {str(cache_file)!r}: {why}")
            known = {p: (s, i) for i, (p, s) in enumerate(zip(old.paths, old.stamps or [], strict=True))}
        except (ValueError, OSError) as exc:  # a damaged cache is only a lost speed-up: say so, and rebuild it
            warnings.warn(f"gallery cache of {src}: {exc}; it is deleted and the gallery is extracted again",
                          stacklevel=2)
            _write_cache(cache_file, None)
            old = None
    stamps = [_stamp(p) for p in paths]
    reuse = {p: known[p][1] for p, s in zip(paths, stamps, strict=True) if p in known and known[p][0] == s}
    todo = [p for p in paths if p not in reuse]
    fresh = extract_features(fx, todo, check=check, progress=progress) if todo else None
    new_index = {p: i for i, p in enumerate(fresh.paths)} if fresh is not None else {}
    skipped = dict(fresh.skipped) if fresh is not None else {}
    rows, kept, kept_stamps = [], [], []
    for p, s in zip(paths, stamps, strict=True):
        if p in reuse:
            rows.append(old.features[reuse[p]].to(fx.device))
        elif p in new_index:
            rows.append(fresh.features[new_index[p]])
        else:
            continue
        kept.append(p)
        kept_stamps.append(s)
    feats = torch.stack(rows) if rows else torch.zeros(0, fx.dim, device=fx.device)
    fs = FeatureSet(feats, kept, fx.fingerprint, skipped, kept_stamps, str(fx.checkpoint), fx.which)
    if cache_file is not None and todo:
        _write_cache(cache_file, fs)
    return fs, len(todo)


def _write_cache(cache_file: Path, fs: FeatureSet | None) -> None:
    """Save ``fs`` as ``cache_file`` (``None``: delete it) under the cache folder's one-writer lock
    (:mod:`dgnet.runlock`). When another process holds it, nothing is written: a warning says so, and the
    search goes on (a cache is a speed-up; its writes are atomic, so readers never see a torn file)."""
    try:
        with acquire(cache_file.parent, "gallery cache writer"):
            if fs is None:
                cache_file.unlink(missing_ok=True)
            else:
                fs.save(cache_file)
    except (LockHeld, OSError) as exc:  # LockHeld first: it is an OSError too
        warnings.warn(f"gallery cache {cache_file} was not {'updated' if fs is not None else 'deleted'}: {exc}",
                      stacklevel=3)


def _wrong_width(fs: FeatureSet, fx: FeatureExtractor) -> str | None:
    if fs.features.shape[1] == fx.dim or len(fs.paths) == 0:
        return None
    made = f" (--model {fs.model})" if fs.model else ""
    return (f"its features are {fs.features.shape[1]} wide{made}, but this checkpoint's {fx.which} features are "
            f"{fx.dim} wide")


@dataclass
class SearchResult:
    """Each query's top ``k`` gallery entries: ``indices`` int64 ``(Q, k)`` and ``distances`` float32 ``(Q, k)``
    (ascending; host tensors), whether they were re-ranked, and the metric."""

    indices: torch.Tensor
    distances: torch.Tensor
    reranked: bool
    metric: str = "cosine"


def describe_distance(metric: str, rerank: bool) -> str:
    """What :func:`search`'s distances are, in words (``results.json`` and the command's output say it)."""
    plain = {"cosine": "cosine distance 1 - cos, in [0, 2]", "euclidean": "Euclidean distance",
             "neg_dot": "negative dot product (negative: the protocol's score with its sign turned)"}[metric]
    if rerank:
        return (f"k-reciprocal re-ranked distance in [0, 1] (Jaccard distance mixed with lambda x the "
                f"{rerank_metric(metric)} distance); smaller is closer")
    return f"{plain}; smaller is closer"


def search(qf: torch.Tensor, gf: torch.Tensor, topk: int = 10, rerank: bool = False, k1: int = 20, k2: int = 6,
           lambda_value: float = 0.3, metric: str = "cosine") -> SearchResult:
    """Rank the gallery ``gf`` ``(G, D)`` for every query ``qf`` ``(Q, D)`` (test-protocol features on one device).

    ``metric`` (``dgnet.evaluation.protocol.METRICS``): ``cosine`` (default: ``1 - cos``, in [0, 2]) ranks exactly
    as the protocol's negative dot product (every test-protocol feature has one norm) but reads as a distance; with
    ``rerank``, k-reciprocal re-ranking (``ops.re_ranking_features``, parameters as ``eval.k1/k2/lambda_value``),
    whose distances lie in [0, 1] (:func:`describe_distance`). Both run on the features' device; ties keep
    gallery order.
    """
    if topk < 1:
        raise ValueError(f"topk={topk}: expected an integer >= 1")
    if len(qf) == 0 or len(gf) == 0:
        raise ValueError(f"search: {len(qf)} query and {len(gf)} gallery features; expected at least one of each")
    if rerank:
        dist = ops.re_ranking_features(qf, gf, k1=k1, k2=k2, lambda_value=lambda_value, metric=rerank_metric(metric))
    else:
        rerank_metric(metric)  # names a bad metric
        dist = ops.pairwise_distance(qf, gf, metric=metric)
    k = min(topk, dist.shape[1])
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return SearchResult(order.cpu(), torch.gather(dist, 1, order).float().cpu(), rerank, metric)


def check_search_out(out: str | Path, query: str | Path, gallery: str | Path, checkpoint: str | Path,
                     force: bool = False) -> list[Path]:
    """Where :func:`search_to_folder` may write: a folder that is no input and lies in no folder of query or
    gallery images (the next search would rank its rank lists), holding no ``results.json`` or ``ranklists/``
    that dgnet did not write, nor an earlier search's unless ``force``. Returns the earlier rank lists that
    ``force`` replaces. Raises :class:`dgnet.fileio.OutputRefused`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputRefused(f"--out {str(out)!r} is a file; expected the folder to write rank lists and results.json "
                            "into")
    refuse_inputs(out, "--out", {"--checkpoint": checkpoint, "--query": query, "--gallery": gallery},
                  {"--query": image_folders(query), "--gallery": image_folders(gallery)})
    old: list[Path] = []
    if (out / "results.json").exists() or (out / "ranklists").exists():
        check_replace(out, "--out", "search output", is_search_output, force)
        ranked = json.loads((out / "results.json").read_text(encoding="utf-8")).get("ranked", [])
        old = [Path(r["ranklist"]) for r in ranked if isinstance(r, dict) and r.get("ranklist")]
        old = [p for p in old if is_inside(p, out / "ranklists") and p.suffix in (".png", ".jpg")]
    check_writable(out / "results.json", "--out")
    return old


def search_to_folder(fx: FeatureExtractor, query: str | Path, gallery: str | Path, out: str | Path, topk: int = 10,
                     rerank: bool | None = None, cache: bool = True, progress: bool = True,
                     ranklists: int | None = RANKLISTS, force: bool = False, metric: str = "cosine") -> dict:
    """What ``python -m dgnet.search`` does: the queries' and the gallery's features (the gallery through
    :func:`gallery_features`), :func:`search` by ``metric`` with the checkpoint's ``eval`` re-ranking parameters
    (``rerank`` default: its ``eval.rerank``), ``out/results.json`` with every query's ranking, and a labelled
    rank-list figure (``.jpg``, :func:`dgnet.generative.figures.search_figure`) under ``out/ranklists/`` for each
    of the first ``ranklists`` queries (``None``: all). The cap keeps drawing from dominating a search of many
    queries; results.json holds them all. Returns a summary (counts, and ``distance``: what the distances are).

    ``out`` is checked first (:func:`check_search_out`); with ``force`` an earlier search's rank lists there are
    deleted before the new ones are written."""
    rerank = fx.cfg.eval.rerank if rerank is None else rerank
    out = Path(out)
    earlier = check_search_out(out, query, gallery, fx.checkpoint, force)
    queries = extract_features(fx, list_images(query), progress=False)
    if not queries.paths:
        raise ValueError(f"{query}: none of the query images decodes ({len(queries.skipped)} skipped)")
    gal, extracted = gallery_features(fx, gallery, cache=cache, progress=progress)
    if not gal.paths:
        raise ValueError(f"{gallery}: the gallery holds no image that decodes")
    e = fx.cfg.eval
    res = search(queries.features, gal.features, topk, rerank, e.k1, e.k2, e.lambda_value, metric)
    for p in earlier:
        p.unlink(missing_ok=True)
    (out / "ranklists").mkdir(parents=True, exist_ok=True)
    records = []
    scale = display_scale(fx.size[0])
    thumbs = Thumbnails((fx.size[0] * scale, fx.size[1] * scale))  # each gallery file decoded once for all queries
    plain = {"cosine": "cosine distance", "euclidean": "Euclidean distance", "neg_dot": "negative dot product"}
    distance = "k-reciprocal re-ranked distance" if rerank else plain[metric]  # the figure's title
    for i, qpath in enumerate(queries.paths):
        idx, dist = res.indices[i].tolist(), res.distances[i].tolist()
        shown = [gal.paths[j] for j in idx]
        png = None
        if ranklists is None or i < ranklists:
            png = str(search_figure(qpath, shown, dist, thumbs, distance).save(
                out / "ranklists" / f"{i:04d}_{Path(qpath).stem}.jpg"))
        records.append({"query": qpath, "ranklist": png,
                        "results": [{"path": p, "distance": d} for p, d in zip(shown, dist, strict=True)]})
    summary = {"format": SEARCH_FORMAT, "checkpoint": str(fx.checkpoint), "identity": fx.fingerprint, "model": fx.which,
               "distance": describe_distance(metric, rerank), "metric": metric, "reranked": rerank,
               "queries": len(queries.paths), "gallery": len(gal.paths), "extracted": extracted,
               "skipped": {**queries.skipped, **gal.skipped}, "topk": topk,
               "ranklists": len(queries.paths) if ranklists is None else min(ranklists, len(queries.paths))}
    write_text_atomic(out / "results.json", json.dumps({**summary, "ranked": records}, indent=2))
    return summary
