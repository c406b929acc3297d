"""``python -m dgnet.test``: a checkpoint's models under the spec's test protocol (:mod:`dgnet.evaluation.protocol`):
Rank-1/5/10, mAP (both definitions) and mINP, with and without k-reciprocal re-ranking.

Under torchrun the features are split across ranks and rank 0 evaluates.
"""

from __future__ import annotations

import argparse
import sys

import torch

from dgnet.checkpoints.runs import open_run
from dgnet.config import LOADER_CHOICES
from dgnet.distributed import destroy, init_from_env
from dgnet.evaluation.protocol import evaluate_models, format_table, parse_alphas
from dgnet.fileio import write_results


def _alphas(text: str) -> tuple:
    try:
        return parse_alphas(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dgnet.test", description="Evaluate a dgnet checkpoint.")
    p.add_argument("--checkpoint", required=True, help="teacher.pt, dgnet.pt or any checkpoint of a run")
    p.add_argument("--data-root", help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None,
                   help="also evaluate with k-reciprocal re-ranking (default: the run's eval.rerank)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--alpha", type=float, help="weight of the fine-grained half (default: eval.alpha, 0.5)")
    weights.add_argument("--alphas", type=_alphas, metavar="A,B,...",
                         help="one DG-Net row per weight, from one feature pass; 'fine' scores the fine-grained head "
                              "alone. '0,0.5,fine' prints the reference's three results (its published ones: 0.5)")
    p.add_argument("--loader", choices=LOADER_CHOICES)
    p.add_argument("--device", default="auto")
    p.add_argument("--model", choices=("all", "teacher", "dgnet"), default="all")
    p.add_argument("--output", help="JSON file for the results (default: next to the checkpoint)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    joined = not torch.distributed.is_initialized()
    rank = 0
    try:
        run = open_run(args.checkpoint, args.data_root, args.loader, args.device)
        ctx = init_from_env(run.device)  # torchrun: features split across ranks, rank 0 evaluates
        rank, run.device = ctx.rank, ctx.device
        ds = run.dataset(verbose=rank == 0)
        results = evaluate_models(run.models(args.model), ds, run.cfg, run.device, run.backend, rerank=args.rerank,
                                  alpha=args.alpha, alphas=args.alphas)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dgnet.test: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if joined:
            destroy()
    if rank != 0:
        return 0
    print(format_table(results))
    write_results(results, args.checkpoint, args.output, ".results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
