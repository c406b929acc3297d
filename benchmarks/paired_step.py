"""``--fused`` against plain on the same threads, as alternating fresh processes: the figure for a whole DG-Net
iteration that one process's median of 9 (``bench_train_step``) cannot settle on a 2-core CPU, where an iteration's
cost drifts by 20% or more over a minute.

    .venv/bin/python benchmarks/paired_step.py --pairs 4 --iters 15            # plain, fused, plain, fused, ...
    .venv/bin/python benchmarks/paired_step.py --child fused --iters 15        # one process (what each pair runs)

Each process builds the demo-size step (``bench_train_step.make_step``: ResNet-18, 64x32, batch 4 per stream), runs
2 warm-up iterations and ``--iters`` timed ones on every core, and reports their median. Pairs run plain then fused
(the order alternates from pair to pair), and the ratio is taken within each pair, so a drift of the machine's speed
between pairs does not enter it. Prints each pair's medians and ratio, then the median and range of the ratios, the
CPU and the load at the start. Check the load first: a figure from a loaded machine is not evidence.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def child(variant: str, iters: int) -> None:
    import torch
    from bench_train_step import make_step

    step = make_step("resnet18", 64, 32, 4, "cpu", None, variant)
    step(0)
    step(1)
    times = []
    for i in range(iters):
        t0 = time.perf_counter()
        step(i + 2)
        times.append(time.perf_counter() - t0)
    print("RESULT " + json.dumps({"variant": variant, "median_s": statistics.median(times), "times": times,
                                  "threads": torch.get_num_threads()}))


def run_child(variant: str, iters: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", variant, "--iters", str(iters)],
                          capture_output=True, text=True, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--child", choices=("plain", "fused"), help="run one process's iterations and print them")
    a = p.parse_args(argv)
    if a.child:
        child(a.child, a.iters)
        return 0
    from machine import cpu_name

    print(f"{cpu_name()}, load at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ratios = []
    for k in range(a.pairs):
        order = ("plain", "fused") if k % 2 == 0 else ("fused", "plain")
        got = {v: run_child(v, a.iters) for v in order}
        r = got["plain"]["median_s"] / got["fused"]["median_s"]
        ratios.append(r)
        print(f"pair {k + 1}: plain {got['plain']['median_s']:.3f} s, fused {got['fused']['median_s']:.3f} s per "
              f"iteration ({got['fused']['threads']} threads), fused speed-up {r:.3f}x", flush=True)
    print(f"fused speed-up over plain on the same threads: median {statistics.median(ratios):.3f}x "
          f"[{min(ratios):.3f}, {max(ratios):.3f}] over {a.pairs} pairs, {a.iters} iterations each after 2 warm-ups; "
          f"load at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
