"""``python -m dgnet.convert``: checkpoints of the DG-Net reference implementation and of its teacher's re-id
baseline as dgnet checkpoints (the formats: :mod:`dgnet.checkpoints.reference`).

    python -m dgnet.convert reference --checkpoints outputs/latest/checkpoints --teacher models/best/net_last.pth \\
        --num-ids 751 --out dgnet.pt
    python -m dgnet.convert baseline --weights models/best/net_last.pth --out teacher.pt

Exit status 2 on a missing or unusable input, with the file and what was expected.
"""

from __future__ import annotations

import argparse
import sys

from dgnet.checkpoints.format import save_atomic
from dgnet.checkpoints.reference import import_baseline, import_reference
from dgnet.config import PRESETS, parse_set, positive_int
from dgnet.fileio import DiskFull


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dgnet.convert",
                                description="Import NVlabs/DG-Net or Person_reID_baseline_pytorch checkpoints.")
    sub = p.add_subparsers(dest="source", required=True)
    ref = sub.add_parser("reference", help="a DG-Net reference run: its newest gen_/id_/dis_XXXXXXXX.pt")
    ref.add_argument("--checkpoints", required=True, metavar="DIR",
                     help="the run's checkpoints folder (or the run folder holding checkpoints/ and config.yaml)")
    ref.add_argument("--teacher", metavar="NET_LAST_PTH",
                     help="the run's teacher, a Person_reID_baseline_pytorch net_last.pth (opts.yaml beside it gives "
                          "its stride): stored with DG-Net, so dgnet.train --teacher can take the same file")
    ref.add_argument("--num-ids", type=positive_int,
                     help="train identities (default: ID_class of the run's config.yaml; needed without one)")
    baseline = sub.add_parser("baseline", help="a Person_reID_baseline_pytorch ft_net (net_last.pth) as a teacher")
    baseline.add_argument("--weights", required=True, metavar="NET_LAST_PTH",
                          help="the state dict file; the stride is read from opts.yaml beside it (2 when absent)")
    for q in (ref, baseline):
        q.add_argument("--out", required=True, help="the dgnet checkpoint to write")
        q.add_argument("--config", help=f"the dgnet preset ({', '.join(PRESETS)}) or YAML the result is evaluated "
                       "and fine-tuned with (default: the real-dataset preset with that many identities)")
        q.add_argument("--data-root", help="dataset folder stored in the result (data.root)")
        q.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config key, e.g. --set model.last_stride=2 (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_set(args.set)
        if args.data_root:
            overrides.setdefault("data", {})["root"] = args.data_root
        if args.source == "reference":
            state = import_reference(args.checkpoints, args.num_ids, args.teacher, args.config, overrides)
        else:
            state = import_baseline(args.weights, args.config, overrides)
        save_atomic(state, args.out)
    except (ValueError, FileNotFoundError, DiskFull) as exc:
        print(f"dgnet.convert: error: {exc}", file=sys.stderr)
        return 2
    models = " and ".join(sorted(state["models"]))
    test = f"python -m dgnet.test --checkpoint {args.out} --data-root DATA"
    print(f"wrote {args.out}: {models}, {state['num_ids']} identities, config {state['config']['name']} "
          f"({test}{' --alphas 0,0.5,fine' if 'dgnet' in state['models'] else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
