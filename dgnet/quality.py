"""``python -m dgnet.quality``: disentanglement of a DG-Net checkpoint on the synthetic set, measured with the set's
true factors (the measures are described in :mod:`dgnet.generative.disentanglement`)."""

from __future__ import annotations

import argparse
import sys

from dgnet.fileio import write_results
from dgnet.generative.disentanglement import format_table, measure_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgnet.quality",
                                description="Disentanglement of a DG-Net checkpoint on the synthetic set.")
    p.add_argument("--checkpoint", required=True, help="dgnet.pt (or a dgnet_*.pt checkpoint) of a synthetic run")
    p.add_argument("--teacher", help="checkpoint holding the teacher (default: --checkpoint, which holds it)")
    p.add_argument("--data-root", help="synthetic set folder (default: the one the checkpoint was trained on)")
    p.add_argument("--pairs", type=int, default=200, help="cross-identity pairs (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair draw")
    p.add_argument("--device", default="auto")
    p.add_argument("--output", help="JSON file (default: next to the checkpoint, <name>.quality.json)")
    args = p.parse_args(argv)

    try:
        res = measure_checkpoint(args.checkpoint, args.teacher, args.data_root, args.pairs, args.seed, args.device)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dgnet.quality: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(res["rows"]))
    print(f"{res['pairs']} pairs over {res['query_images']} query images; chance of any one identity "
          f"{100 / res['identities']:.2f} %")
    write_results(res, args.checkpoint, args.output, ".quality.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
