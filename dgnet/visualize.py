"""``python -m dgnet.visualize``: the paper's generation figures and torchreid-style rank lists, as PNG grids.

Modes (``x_ab = G(s_a, f_b)``: structure of a, appearance of b; the rows are built in :mod:`dgnet.generative.figures`):
``swap``, ``rainbow``, ``interpolate-appearance``, ``interpolate-structure`` and ``ranklist``.

Images come from ``--images`` (paths) or, by default, the first image of each of the first query
identities of the checkpoint's dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dgnet.config import LOADER_CHOICES, positive_int
from dgnet.generative.figures import MODES as FIGURE_MODES
from dgnet.generative.figures import figure_from_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dgnet.visualize", description="PNG grids from a dgnet checkpoint.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--mode", choices=FIGURE_MODES, required=True)
    p.add_argument("--images", nargs="*", help="image files (default: query images of distinct identities)")
    p.add_argument("--num", type=positive_int, default=6,
                   help="images (or queries for ranklist) when --images is not given")
    p.add_argument("--steps", type=positive_int, default=6, help="interpolation steps")
    p.add_argument("--model", choices=("dgnet", "teacher"), default="dgnet", help="ranklist: whose features")
    p.add_argument("--data-root")
    p.add_argument("--loader", choices=LOADER_CHOICES)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", help="PNG file (default: <checkpoint folder>/visuals/<mode>.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        path = figure_from_checkpoint(args.checkpoint, args.mode, images=args.images, num=args.num, steps=args.steps,
                         which=args.model, data_root=args.data_root, loader=args.loader, device=args.device,
                         output=Path(args.output) if args.output else None)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dgnet.visualize: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
