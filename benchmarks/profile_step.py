"""Where one DG-Net training iteration spends its time: host (Python, dispatcher, autograd, launches) or device.

    .venv/bin/python benchmarks/profile_step.py --device cuda --variant plain fused fused-fold [--amp bf16]
    .venv/bin/python benchmarks/profile_step.py --device cpu --size demo

For each variant (``bench_train_step.VARIANTS``) it times a few iterations of ``dgnet.training.step.dgnet_step`` at
the spec's size (ResNet-50, 256x128, batch 8 per stream) or the demo's, then profiles one more with
``torch.profiler`` and prints:
- wall seconds per iteration, the number of operator calls (``host_op_count``: about one launch each on a
  GPU) and, on CUDA, of kernel launches;
- on CUDA, the device's busy time (sum of kernel times): far below the wall time means the iteration is
  host-bound, and fewer, larger launches (not faster kernels) are what would speed it up;
- the operators with the most host (self CPU) time and, on CUDA, the kernels with the most device time.
With ``--families`` it also splits the profiled iterations by operator family (``dgnet.profiling.FAMILIES``:
convolutions forward and backward, BatchNorm, the other norms and AdaIN, linear layers, losses, elementwise, D's
R1 gradient and double backward, optimisers, the autograd engine, and the rest of the wall time: Python and
dispatch) and prints one markdown table with a column per variant, the table in docs/training-speed.md.
With ``--trace DIR`` it also writes a Chrome trace per variant. Not a pytest file: a diagnosis tool whose
output goes into the notes next to ``bench_train_step``'s ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import VARIANTS, make_step  # noqa: E402
from machine import cpu_name  # noqa: E402

import dgnet.training.step as step_module  # noqa: E402
from dgnet.profiling import R1_REGION, host_op_count, operator_families  # noqa: E402

SIZES = {"spec": ("resnet50", 256, 128, 8), "demo": ("resnet18", 64, 32, 4)}


def _r1_marked(fn):
    """``r1_per_sample`` inside a profiler region, so its gradient graph's ops count as D's R1."""

    def wrapped(*args, **kwargs):
        with torch.profiler.record_function(R1_REGION):
            return fn(*args, **kwargs)

    return wrapped


def family_split(variant: str, size: str, device: str, iters: int) -> tuple[float, list[tuple[str, float]]]:
    """Median unprofiled wall seconds of ``iters`` iterations after 2 warm-ups, and the mean per-family split of
    ``iters`` profiled ones (``operator_families``)."""
    from torch.profiler import ProfilerActivity, profile

    original = step_module.r1_per_sample
    step_module.r1_per_sample = _r1_marked(original)
    try:
        step = make_step(*SIZES[size], device, None, variant)
        for i in range(2):
            step(i)
        walls = []
        for i in range(iters):
            t0 = time.perf_counter()
            step(i)
            walls.append(time.perf_counter() - t0)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for i in range(iters):
                step(i)
            profiled = (time.perf_counter() - t0) / iters
    finally:
        step_module.r1_per_sample = original
    rows = [(f, s / iters) for f, s in operator_families(prof.events(), profiled * iters)]
    return sorted(walls)[len(walls) // 2], rows


def print_family_table(results: dict[str, tuple[float, list[tuple[str, float]]]], threads: int) -> None:
    names = list(results)
    print(f"\nOne DG-Net iteration by operator family, ms per iteration (share of the profiled wall), "
          f"{threads} thread(s), {cpu_name()}, load at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| family | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    totals = {n: sum(s for _, s in results[n][1]) for n in names}
    for r, (family, _) in enumerate(results[names[0]][1]):
        secs = {n: results[n][1][r][1] for n in names}
        cells = [f"{secs[n] * 1e3:.0f} ({100 * secs[n] / totals[n]:.0f}%)" for n in names]
        print(f"| {family} | " + " | ".join(cells) + " |")
    print("| **profiled wall** | " + " | ".join(f"{totals[n] * 1e3:.0f}" for n in names) + " |")
    print("| **unprofiled wall, median** | " + " | ".join(f"{results[n][0] * 1e3:.0f}" for n in names) + " |")


def profile_variant(variant: str, size: str, device: str, amp: str, iters: int, top: int, trace: Path | None) -> None:
    from torch.profiler import ProfilerActivity, profile

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    step = make_step(*SIZES[size], device, amp_dtype, variant)
    for i in range(2):  # warm-up: allocator, algorithm choice, Triton compilation and autotuning
        step(i)
    t0 = time.perf_counter()
    for i in range(iters):
        step(i)
    wall = (time.perf_counter() - t0) / iters
    ops = host_op_count(lambda: step(0))
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        step(0)
    events = prof.key_averages()
    op_calls = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CPU)
    print(f"\n=== {variant} ({size}, {device}, amp {amp}) ===")
    print(f"wall {wall * 1e3:.1f} ms/iteration ({1 / wall:.2f} it/s), {op_calls} host events in the profiled one")
    print(f"{ops} operator calls per iteration, views and allocations left out (dgnet.profiling.host_op_count)")
    if device == "cuda":
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in kernels) / 1e3
        launches = sum(e.count for e in kernels)
        print(f"device busy {busy:.1f} ms ({100 * busy / (wall * 1e3):.0f}% of wall), {launches} kernels")
        print(events.table(sort_by="self_cuda_time_total", row_limit=top))
    print(events.table(sort_by="self_cpu_time_total", row_limit=top))
    if trace is not None:
        trace.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace / f"{variant}_{size}_{device}_{amp}.json"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=tuple(SIZES), default=None, help="default: spec on CUDA, demo on CPU")
    p.add_argument("--variant", nargs="+", choices=tuple(VARIANTS), default=list(VARIANTS))
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: steady on a shared CPU)")
    p.add_argument("--trace", type=Path, help="write Chrome traces here")
    p.add_argument("--families", action="store_true", help="only the per-family table (CPU, fp32), --iters each")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    size = a.size or ("spec" if a.device.startswith("cuda") else "demo")
    if a.families:
        results = {v: family_split(v, size, a.device, a.iters) for v in a.variant}
        print_family_table(results, torch.get_num_threads())
        return 0
    for v in a.variant:
        profile_variant(v, size, a.device, a.amp, a.iters, a.top, a.trace)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
