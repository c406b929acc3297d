"""``python -m dgnet.search --checkpoint CK --query IMG|DIR --gallery DIR|features.npz --out DIR``: rank a
gallery of your own images for each query image by the test protocol's distance (optionally k-reciprocal
re-ranking), with the same retrieval ops as ``dgnet.test``, on the same device (:mod:`dgnet.inference.gallery`).

Writes ``DIR/results.json`` (every query's ranking) and ``DIR/ranklists/<n>_<query name>.jpg`` for the first
``--ranklists`` queries (default 50; ``all``): the query, then its top k with rank, distance and file name.
Distances: smaller is closer; cosine distance (``1 - cos``) by default, re-ranked distances in [0, 1] with
``--rerank`` (the checkpoint's ``eval.rerank`` by default); results.json says which. A gallery folder's features are
cached (``$DGNET_CACHE``, default ``~/.cache/dgnet``), so a second search over it extracts only new or changed
images.
"""

from __future__ import annotations

import argparse
import sys

from dgnet.config import LOADER_CHOICES, positive_int
from dgnet.evaluation.protocol import METRICS
from dgnet.fileio import unwritable
from dgnet.inference.extractor import FeatureExtractor
from dgnet.inference.gallery import RANKLISTS, search_to_folder


def _count_or_all(text: str) -> int | None:
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a count >= 0 or 'all'")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dgnet.search", description="Search a gallery with query images.")
    p.add_argument("--checkpoint", required=True, help="dgnet.pt, teacher.pt or any checkpoint of a run")
    p.add_argument("--query", required=True, help="a query image, a folder of them or a .txt list")
    p.add_argument("--gallery", required=True, help="a folder of images, a .txt list, or a .npz from dgnet.extract")
    p.add_argument("--out", required=True, help="output folder (ranklists/*.jpg, results.json)")
    p.add_argument("--topk", type=positive_int, default=10, help="gallery images per query (default 10)")
    p.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                   help="k-reciprocal re-ranking with the checkpoint's eval.k1/k2 (default: its eval.rerank); "
                        "re-ranked distances lie in [0, 1]")
    p.add_argument("--metric", choices=METRICS, default="cosine",
                   help="the distance: cosine (1 - cos, default: ranks as the test protocol's score), euclidean, or "
                        "neg_dot (the protocol's own, negative)")
    p.add_argument("--model", choices=("dgnet", "teacher"),
                   help="whose features (default: the checkpoint's DG-Net, or its teacher when it holds only one)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--loader", choices=LOADER_CHOICES, help="image decoding (default: the checkpoint's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-cache", action="store_true", help="extract the gallery afresh and cache nothing")
    p.add_argument("--ranklists", type=_count_or_all, default=RANKLISTS, metavar="N|all",
                   help=f"draw the rank lists of the first N queries (default {RANKLISTS}; 0: none; all: every "
                        "query); results.json holds every ranking either way")
    p.add_argument("--force", action="store_true", help="replace an earlier search's results in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fx = FeatureExtractor(args.checkpoint, device=args.device, batch_size=args.batch_size, which=args.model,
                              loader=args.loader)
        summary = search_to_folder(fx, args.query, args.gallery, args.out, topk=args.topk, rerank=args.rerank,
                                   cache=not args.no_cache, ranklists=args.ranklists, force=args.force,
                                   metric=args.metric)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"dgnet.search: error: {unwritable(exc, args.out, '--out') or exc}", file=sys.stderr)
        return 2
    print(f"searched {summary['queries']} queries over {summary['gallery']} gallery images "
          f"({summary['extracted']} extracted now); wrote {args.out}/results.json and {summary['ranklists']} rank lists"
          + (" (--ranklists all draws every query's)" if summary["ranklists"] < summary["queries"] else "")
          + f"\ndistances: {summary['distance']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
