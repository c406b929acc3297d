"""``python -m dgnet.data.synthetic --out DIR``: draw the embedded synthetic pedestrian dataset
(:mod:`dgnet.data.synthetic`) into a folder, optionally scoring the colour-histogram baseline on it."""

from __future__ import annotations

import argparse
import sys

from dgnet.data.layouts import load_dataset
from dgnet.data.synthetic import DEFAULTS, ensure_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgnet.data.synthetic",
                                description="Draw the embedded synthetic pedestrian re-id dataset.")
    p.add_argument("--out", required=True, help="output folder (created)")
    for k in ("ids", "cams", "height", "width", "seed"):
        p.add_argument(f"--{k}", type=int, default=DEFAULTS[k])
    p.add_argument("--train-cams", type=int, default=DEFAULTS["train_cams"],
                   help="cameras per training identity, exactly (default 0: 2..cams at random); the two-camera "
                        "regime of docs/study.md uses 2")
    p.add_argument("--per-cam", type=int, default=DEFAULTS["per_cam"],
                   help="images of a training identity under each of its cameras (default 0: 1..4 at random)")
    p.add_argument("--view-tie", type=float, default=DEFAULTS["view_tie"],
                   help="probability that an image shows its camera's own view (default 0: views independent)")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: up to 2)")
    p.add_argument("--baseline", action="store_true", help="also score the colour-histogram baseline")
    a = p.parse_args(argv)
    try:
        out = ensure_dataset(a.out, ids=a.ids, cams=a.cams, height=a.height, width=a.width, seed=a.seed,
                             workers=a.workers, train_cams=a.train_cams, per_cam=a.per_cam, view_tie=a.view_tie)
    except ValueError as exc:
        print(f"dgnet.data.synthetic: error: {exc}", file=sys.stderr)
        return 2
    if a.baseline:
        # Scoring imports torch; drawing the set does not, so the import waits until the baseline is asked for.
        from dgnet.evaluation.baselines import histogram_baseline

        print("colour-histogram baseline:", histogram_baseline(load_dataset("synthetic", out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
