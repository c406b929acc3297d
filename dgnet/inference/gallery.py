"""Your own images as feature files, and searching them: what ``python -m dgnet.extract`` and
``python -m dgnet.search`` do.

- :func:`list_images`: the images of a folder (recursively) or of a text file listing one path per line.
- :func:`extract_features`: the test protocol's features of image files (:class:`dgnet.FeatureExtractor`),
  after a decode check that skips, with a warning, the files that do not decode (listed in the result).
- :class:`FeatureSet`: features with their paths and the identity of the checkpoint that made them, saved as
  ``.npz`` (no pickles) and refused when loaded for another checkpoint.
- :func:`gallery_features`: a folder's features through a cache that a second search reuses (files that
  changed, or are new, are extracted again; removed ones are dropped).
- :func:`search`: distances on the features' device through ``dgnet.ops`` (the same ops as ``dgnet.test``),
  optionally k-reciprocal re-ranking, and each query's top k.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dgnet import __version__, ops
from dgnet.data import Sample
from dgnet.data.check import problems
from dgnet.data.layouts import IMAGE_EXTENSIONS, is_image_file
from dgnet.data.streams import load_images
from dgnet.data.transforms import denormalize
from dgnet.fileio import replace_atomic, write_text_atomic
from dgnet.generative.figures import BLUE, captioned_row
from dgnet.inference.extractor import FeatureExtractor

FORMAT = "dgnet-features"


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
        paths = [str(p) for p in sorted(src.rglob("*"))
                 if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(src).parts)]
    if not paths:
        raise ValueError(f"{src}: no image found; expected files ending in {', '.join(IMAGE_EXTENSIONS)}")
    return paths


@dataclass
class FeatureSet:
    """Features of images: ``features`` float32 ``(N, D)`` (on any device), their ``paths``, the ``identity`` of the
    checkpoint that made them (:func:`dgnet.inference.extractor.checkpoint_identity`), and the files ``skipped``
    (path -> why) because they do not decode."""

    features: torch.Tensor
    paths: list[str]
    identity: str
    skipped: dict[str, str] = field(default_factory=dict)
    stamps: list[tuple[int, int]] | None = None  # (size, mtime_ns) per path, when known: what a cache compares

    def save(self, path: str | Path) -> Path:
        """Write ``.npz`` (arrays and strings only: it loads without pickles) atomically."""

        stamps = np.asarray(self.stamps if self.stamps is not None else [(-1, -1)] * len(self.paths), np.int64)
        arrays = {"features": self.features.detach().float().cpu().numpy(), "paths": np.asarray(self.paths, str),
                  "skipped": np.asarray(list(self.skipped), str),
                  "reasons": np.asarray(list(self.skipped.values()), str), "stamps": stamps.reshape(-1, 2),
                  "meta": np.asarray(json.dumps({"format": FORMAT, "identity": self.identity,
                                                 "dgnet": __version__}))}
        return replace_atomic(Path(path), lambda fh: np.savez(fh, **arrays))

    @classmethod
    def load(cls, path: str | Path, identity: str | None = None) -> FeatureSet:
        """Read a file :meth:`save` wrote; with ``identity``, refuse features another checkpoint made.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: not a dgnet feature file, or made by another checkpoint (both identities named).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature file {str(path)!r} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                fs = cls(torch.from_numpy(z["features"]), [str(p) for p in z["paths"]], meta["identity"],
                         dict(zip([str(p) for p in z["skipped"]], [str(r) for r in z["reasons"]], strict=True)),
                         [tuple(int(v) for v in s) for s in z["stamps"]])
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a dgnet feature file ({type(exc).__name__}: {exc}); expected the .npz "
                             "that python -m dgnet.extract writes") from None
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if identity is not None and fs.identity != identity:
            raise ValueError(f"{path} holds features of checkpoint {fs.identity}, but this checkpoint is {identity}; "
                             "extract the gallery again with this checkpoint (features of two models do not compare)")
        return fs


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
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
    return FeatureSet(feats, good, fx.fingerprint, skipped, [_stamp(p) for p in good])


def _cache_path(folder: Path, identity: str, cache_dir: Path) -> Path:
    key = hashlib.sha256(f"{folder.resolve()}|{identity}".encode()).hexdigest()[:20]
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

    Returns ``(features, how many images were extracted now)``: 0 when every feature came from the cache.
    """
    src = Path(source)
    if src.suffix == ".npz":
        fs = FeatureSet.load(src, fx.fingerprint)
        return FeatureSet(fs.features.to(fx.device), fs.paths, fs.identity, fs.skipped, fs.stamps), 0
    paths = list_images(src)
    cache_file = _cache_path(src, fx.fingerprint, Path(cache_dir or default_cache_dir())) if cache else None
    known: dict[str, tuple[tuple[int, int], int]] = {}
    old = None
    if cache_file is not None and cache_file.is_file():
        try:
            old = FeatureSet.load(cache_file, fx.fingerprint)
            known = {p: (s, i) for i, (p, s) in enumerate(zip(old.paths, old.stamps or [], strict=False))}
        except ValueError:
            old = None  # an unreadable or foreign cache is only a lost speed-up
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
    fs = FeatureSet(feats, kept, fx.fingerprint, skipped, kept_stamps)
    if cache_file is not None and todo:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fs.save(cache_file)
    return fs, len(todo)


@dataclass
class SearchResult:
    """Each query's top ``k`` gallery entries: ``indices`` int64 ``(Q, k)`` and ``distances`` float32 ``(Q, k)``
    (ascending; host tensors), and whether they were re-ranked."""

    indices: torch.Tensor
    distances: torch.Tensor
    reranked: bool


def search(qf: torch.Tensor, gf: torch.Tensor, topk: int = 10, rerank: bool = False, k1: int = 20, k2: int = 6,
           lambda_value: float = 0.3) -> SearchResult:
    """Rank the gallery ``gf`` ``(G, D)`` for every query ``qf`` ``(Q, D)`` (test-protocol features on one device).

    The distance is the protocol's, the negative dot product (``ops.pairwise_distance(..., "neg_dot")``); with
    ``rerank``, k-reciprocal re-ranking (``ops.re_ranking_features``, parameters as ``eval.k1/k2/lambda_value``).
    Both run on the features' device; ties keep gallery order.
    """
    if topk < 1:
        raise ValueError(f"topk={topk}: expected an integer >= 1")
    if len(qf) == 0 or len(gf) == 0:
        raise ValueError(f"search: {len(qf)} query and {len(gf)} gallery features; expected at least one of each")
    if rerank:
        dist = ops.re_ranking_features(qf, gf, k1=k1, k2=k2, lambda_value=lambda_value, metric="euclidean")
    else:
        dist = ops.pairwise_distance(qf, gf, metric="neg_dot")
    k = min(topk, dist.shape[1])
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return SearchResult(order.cpu(), torch.gather(dist, 1, order).float().cpu(), rerank)


def search_to_folder(fx: FeatureExtractor, query: str | Path, gallery: str | Path, out: str | Path, topk: int = 10,
                     rerank: bool = False, cache: bool = True, progress: bool = True) -> dict:
    """What ``python -m dgnet.search`` does: the queries' and the gallery's features (the gallery through
    :func:`gallery_features`), :func:`search` with the checkpoint's ``eval`` re-ranking parameters, one rank-list
    PNG per query under ``out/ranklists/`` and ``out/results.json``. Returns a summary (counts)."""
    out = Path(out)
    queries = extract_features(fx, list_images(query), progress=False)
    if not queries.paths:
        raise ValueError(f"{query}: none of the query images decodes ({len(queries.skipped)} skipped)")
    gal, extracted = gallery_features(fx, gallery, cache=cache, progress=progress)
    if not gal.paths:
        raise ValueError(f"{gallery}: the gallery holds no image that decodes")
    e = fx.cfg.eval
    res = search(queries.features, gal.features, topk, rerank, e.k1, e.k2, e.lambda_value)
    (out / "ranklists").mkdir(parents=True, exist_ok=True)
    grey = (0.6, 0.6, 0.6)
    records = []

    sample = lambda p: Sample(p, -1, -1)  # noqa: E731
    for i, qpath in enumerate(queries.paths):
        idx, dist = res.indices[i].tolist(), res.distances[i].tolist()
        shown = [gal.paths[j] for j in idx]
        pixels = denormalize(load_images([sample(p) for p in [qpath, *shown]], fx.size, "torch", torch.device("cpu")))
        png = out / "ranklists" / f"{i:04d}_{Path(qpath).stem}.png"
        captioned_row(list(pixels), ["query", *(f"{d:.3f}" for d in dist)], [BLUE] + [grey] * len(shown)).save(png)
        records.append({"query": qpath, "ranklist": str(png),
                        "results": [{"path": p, "distance": d} for p, d in zip(shown, dist, strict=True)]})
    summary = {"checkpoint": str(fx.checkpoint), "identity": fx.fingerprint, "model": fx.which,
               "distance": "k-reciprocal re-ranking" if rerank else "negative dot product of test features",
               "queries": len(queries.paths), "gallery": len(gal.paths), "extracted": extracted,
               "skipped": {**queries.skipped, **gal.skipped}, "topk": topk}
    write_text_atomic(out / "results.json", json.dumps({**summary, "ranked": records}, indent=2))
    return summary
