"""``python -m dgnet.train``: stage 1 trains the teacher (the re-id baseline), stage 2 trains DG-Net, then both
are evaluated (the run and its output folder are described in :mod:`dgnet.training.loop`).

With no arguments it runs the ``demo`` preset end to end on the embedded synthetic set. ``--iterations N``
caps both stages at N; ``--resume`` continues exactly from the newest checkpoint in the output folder.

Exit status: 0 done; 2 a bad input or setting (one line naming it); 3 a collective with the other ranks failed;
130 (SIGINT) or 143 (SIGTERM): stopped by that signal after saving a checkpoint, resumable with ``--resume``
(docs/reliability.md).
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
from typing import Any

from dgnet.config import AMP_CHOICES, LOADER_CHOICES, PRESETS, parse_set, resolve_config
from dgnet.distributed import CollectiveFailure
from dgnet.fileio import DiskFull
from dgnet.training.loop import NonFiniteLoss, train
from dgnet.training.preemption import Stopped, stop_on_signals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dgnet.train",
        description="Train the teacher (re-id baseline) and DG-Net, then evaluate both. "
        "No arguments: the demo preset on the embedded synthetic set.",
    )
    p.add_argument("--config", default="demo", help=f"a preset ({', '.join(PRESETS)}) or a YAML file (default: demo)")
    p.add_argument("--data-root", help="dataset folder (data.root)")
    p.add_argument("--output", help="output folder (train.output; default outputs/<preset>)")
    p.add_argument(
        "--fused", action="store_true", default=None,
        help="fast paths: fused AdaIN kernels, batched AdaIN MLPs, fused optimisers, deferred BatchNorm counters",
    )
    p.add_argument(
        "--compile", action="store_true", default=None,
        help="torch.compile Ea's trunk, Es and G (CUDA graphs on a GPU); for GPUs, not small CPUs "
        "(docs/training-speed.md)",
    )
    p.add_argument("--amp", choices=AMP_CHOICES, help="mixed precision (default: off, i.e. fp32 as the reference, in "
                   "the market1501/dukemtmc/msmt17 presets; auto elsewhere: bf16 on GPUs that support it, fp16 with "
                   "gradient scaling on others, off on CPU)")
    p.add_argument("--loader", choices=LOADER_CHOICES, help="input pipeline (auto: DALI where it imports)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--iterations", type=int, help="cap both stages at N iterations (a smoke run)")
    p.add_argument("--teacher", help="a trained teacher (teacher.pt or any dgnet checkpoint): skips stage 1")
    p.add_argument("--resume", action="store_true", help="continue exactly from the newest checkpoint in --output")
    p.add_argument("--auto-resume", action="store_true", help="--resume when --output holds a checkpoint, else start "
                   "afresh: one command line for the first start and torchrun's restarts (--max-restarts)")
    p.add_argument("--init-from", metavar="CHECKPOINT", help="start DG-Net from the dgnet weights of this checkpoint "
                   "(e.g. one made by dgnet.convert), with fresh optimisers and schedule: a fine-tune "
                   "(model.init_from)")
    p.add_argument("--backbone-weights", help="imagenet | none | teacher | PATH (model.backbone_weights; teacher: "
                   "Ea's trunk starts from the stage-1 teacher's)")
    p.add_argument("--skip-corrupt", action="store_true", default=None, help="skip unreadable images instead of "
                   "stopping")
    p.add_argument("--stage", choices=("all", "teacher", "dgnet"), default="all",
                   help="train both stages (default), only the teacher, or only DG-Net (needs a teacher)")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key, e.g. --set optim.gen_lr=2e-4 (repeatable)")
    return p


def args_to_overrides(args: argparse.Namespace) -> dict:
    """The flags as a nested override mapping (flags left out do not override)."""
    o: dict[str, dict[str, Any]] = parse_set(args.set)
    flags = {
        ("data", "root"): args.data_root,
        ("train", "output"): args.output,
        ("train", "fused"): args.fused,
        ("train", "compile"): args.compile,
        ("train", "amp"): args.amp,
        ("data", "loader"): args.loader,
        ("train", "device"): args.device,
        ("train", "max_iterations"): args.iterations,
        ("train", "teacher"): args.teacher,
        ("model", "backbone_weights"): args.backbone_weights,
        ("model", "init_from"): args.init_from,
        ("data", "skip_corrupt"): args.skip_corrupt,
    }
    for (section, key), value in flags.items():
        if value is not None:
            o.setdefault(section, {})[key] = value
    return o


def resume_hint(argv: list[str]) -> str:
    """How to continue a stopped run: the same command line with ``--resume``."""
    if "--resume" in argv or "--auto-resume" in argv:
        return "run the same command again to continue"
    if "WORLD_SIZE" in os.environ:
        return "continue with the same torchrun command line plus --resume"
    return f"continue with: python -m dgnet.train {shlex.join([*argv, '--resume'])}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        with stop_on_signals() as stop:
            cfg = resolve_config(args.config, args_to_overrides(args))
            train(cfg, resume="auto" if args.auto_resume else args.resume, stage=args.stage,
                  evaluate=not args.no_eval, stop=stop)
    except Stopped as exc:
        hint = resume_hint(argv) if exc.checkpoint is not None else "start it again to train"
        print(f"dgnet.train: {exc}; {hint}", file=sys.stderr)
        return exc.exit_status
    except (ValueError, FileNotFoundError, FileExistsError, NonFiniteLoss, DiskFull) as exc:
        print(f"dgnet.train: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder made read-only during the run, or an input this user cannot read
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        print(f"dgnet.train: error: {exc.strerror}: {exc.filename or ''}", file=sys.stderr)
        return 2
    except CollectiveFailure as exc:
        print(f"dgnet.train: error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
