"""``python -m dgnet.extract --checkpoint CK --images DIR|LIST.txt --out features.npz``: the test protocol's
features of your own images (:mod:`dgnet.inference.gallery`), with their paths and the checkpoint's identity.

Images that do not decode are skipped with a warning and listed in the file. On a CUDA device the images are
decoded on the GPU by DALI (``--loader auto``, where DALI imports), on the CPU otherwise.
"""

from __future__ import annotations

import argparse
import sys

from dgnet.config import LOADER_CHOICES, positive_int
from dgnet.inference.extractor import FeatureExtractor
from dgnet.inference.gallery import extract_features, list_images


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dgnet.extract", description="Features of images from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="dgnet.pt, teacher.pt or any checkpoint of a run")
    p.add_argument("--images", required=True, help="a folder of images (searched recursively) or a .txt list")
    p.add_argument("--out", required=True, help="the .npz to write (features, paths, skipped files)")
    p.add_argument("--model", choices=("dgnet", "teacher"), default="dgnet", help="whose features (default dgnet)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--loader", choices=LOADER_CHOICES, help="image decoding (default: the checkpoint's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-check", action="store_true", help="skip the decode check (faster; a bad file then stops "
                   "the run)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fx = FeatureExtractor(args.checkpoint, device=args.device, batch_size=args.batch_size, which=args.model,
                              loader=args.loader)
        fs = extract_features(fx, list_images(args.images), check=not args.no_check, progress=True)
        fs.save(args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dgnet.extract: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(fs.paths)} features of dimension {fx.dim} to {args.out}"
          + (f" ({len(fs.skipped)} image(s) skipped: they do not decode)" if fs.skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
