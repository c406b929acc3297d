"""``python -m dgnet.study STUDY.yaml --out DIR``: an ablation study, arms x seeds of whole runs, resumable, with
its report (``study.md``, ``study.json``, ``study.png``). The study file and the folder it fills are described in
:mod:`dgnet.studies.runner`; what the built-in study asks, in docs/study.md."""

from __future__ import annotations

import argparse
import sys

from dgnet.fileio import DiskFull
from dgnet.studies.runner import run_study
from dgnet.training.preemption import Stopped, stop_on_signals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgnet.study",
                                description="Run an ablation study (arms x seeds) and write its report.")
    p.add_argument("study", help="the study file (YAML: config, seeds, arms, set; configs/studies/twocam.yaml)")
    p.add_argument("--out", required=True, help="the study folder (created; a second call continues it)")
    p.add_argument("--device", help="cpu, cuda or cuda:N for every run (default: the config's train.device)")
    p.add_argument("--report-only", action="store_true", help="write the report of the finished runs, run nothing")
    args = p.parse_args(argv)
    try:
        with stop_on_signals() as stop:  # SIGINT / SIGTERM: the run in progress saves, then the study stops
            res = run_study(args.study, args.out, args.device, args.report_only, stop=stop)
    except Stopped as exc:
        print(f"dgnet.study: {exc}; the same command continues the study", file=sys.stderr)
        return exc.exit_status
    except (ValueError, FileNotFoundError, DiskFull) as exc:
        print(f"dgnet.study: error: {exc}", file=sys.stderr)
        return 2
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
