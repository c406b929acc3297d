"""``python -m dgnet.generate``: a generated re-id dataset (cross-identity images) from a trained DG-Net.

The images and their manifest are described in :mod:`dgnet.generative.dataset`.
"""

from __future__ import annotations

import argparse
import sys

from dgnet.checkpoints.runs import open_run
from dgnet.config import LOADER_CHOICES, positive_int
from dgnet.generative.dataset import generate_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgnet.generate",
                                description="Write a generated re-id training set from a DG-Net checkpoint.")
    p.add_argument("--checkpoint", required=True, help="dgnet.pt (or a dgnet_*.pt checkpoint)")
    p.add_argument("--out", required=True, help="output folder (created; must not hold a generated set)")
    p.add_argument("--count", type=positive_int, default=1000, help="images to generate (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair draw")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--data-root", help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--loader", choices=LOADER_CHOICES)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        run = open_run(args.checkpoint, args.data_root, args.loader, args.device)
        rows = generate_dataset(run.model("dgnet"), run.dataset(preflight=False),
                                (run.cfg.data.height, run.cfg.data.width), args.out, args.count, args.seed,
                                run.device, run.backend, args.quality, args.batch_size)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dgnet.generate: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(rows)} images of {len({r.pid for r in rows})} identities to {args.out} (manifest.csv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
