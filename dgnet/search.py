"""``python -m dgnet.search --checkpoint CK --query IMG|DIR --gallery DIR|features.npz --out DIR``: rank a
gallery of your own images for each query image by the test protocol's distance (optionally k-reciprocal
re-ranking), with the same retrieval ops as ``dgnet.test``, on the same device (:mod:`dgnet.inference.gallery`).

Writes ``DIR/ranklists/<n>_<query name>.png`` (the query, then its top k with their distances) and
``DIR/results.json``. A gallery folder's features are cached (``$DGNET_CACHE``, default ``~/.cache/dgnet``), so
a second search over it extracts only new or changed images.
"""

from __future__ import annotations

import argparse
import sys

from dgnet.config import LOADER_CHOICES, positive_int
from dgnet.inference.extractor import FeatureExtractor
from dgnet.inference.gallery import search_to_folder


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dgnet.search", description="Search a gallery with query images.")
    p.add_argument("--checkpoint", required=True, help="dgnet.pt, teacher.pt or any checkpoint of a run")
    p.add_argument("--query", required=True, help="a query image, a folder of them or a .txt list")
    p.add_argument("--gallery", required=True, help="a folder of images, a .txt list, or a .npz from dgnet.extract")
    p.add_argument("--out", required=True, help="output folder (ranklists/*.png, results.json)")
    p.add_argument("--topk", type=positive_int, default=10, help="gallery images per query (default 10)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (the checkpoint's eval.k1/k2)")
    p.add_argument("--model", choices=("dgnet", "teacher"), default="dgnet", help="whose features (default dgnet)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--loader", choices=LOADER_CHOICES, help="image decoding (default: the checkpoint's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-cache", action="store_true", help="extract the gallery afresh and cache nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fx = FeatureExtractor(args.checkpoint, device=args.device, batch_size=args.batch_size, which=args.model,
                              loader=args.loader)
        summary = search_to_folder(fx, args.query, args.gallery, args.out, topk=args.topk, rerank=args.rerank,
                                   cache=not args.no_cache)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dgnet.search: error: {exc}", file=sys.stderr)
        return 2
    print(f"searched {summary['queries']} queries over {summary['gallery']} gallery images "
          f"({summary['extracted']} extracted now); wrote {args.out}/results.json and {summary['queries']} rank lists")
    return 0


if __name__ == "__main__":
    sys.exit(main())
