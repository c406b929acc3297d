"""Pairwise distance: dgnet's chunked GEMM with fused epilogue vs torch.cdist (and the plain cosine and
negative dot product formulas).

Run: ``.venv/bin/python -m pytest benchmarks/bench_distance.py -p no:cacheprovider -s`` (GPU part: ``-m gpu``).
Records time, the dgnet/torch ratio and the peak memory beyond the [M, N] output of each.
CPU peak memory is measured in a fresh subprocess (peak RSS, reset through /proc/self/clear_refs just
before the call, minus RSS before it); CUDA peak memory with torch.cuda.max_memory_allocated.
Timings interleave dgnet and the baseline round by round, after the same two warm-up calls, and report the median
of the same number of samples (9 on the CPU) for each.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from machine import machine

from dgnet.ops import pairwise_distance

# Market-1501 query x gallery. CPU uses 512-d features so that a file run stays near a minute on 2 cores.
CPU_SIZE = (3368, 19732, 512)
GPU_SIZE = (3368, 19732, 1024)


def cosine_plain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T


def neg_dot_plain(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(x @ y.T)


BASELINES = {
    "euclidean": ("torch.cdist", torch.cdist),
    "cosine": ("1 - normalize(x) @ normalize(y).T", cosine_plain),
    "neg_dot": ("-(x @ y.T)", neg_dot_plain),
}

_CPU_PEAK_CHILD = """
import json, sys, torch
import dgnet.ops, torch.nn.functional as F
m, n, d, which, metric = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
g = torch.Generator().manual_seed(0)
x, y = torch.randn(m, d, generator=g), torch.randn(n, d, generator=g)
def kib(key):
    return int(next(ln for ln in open("/proc/self/status") if ln.startswith(key)).split()[1])
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
base = kib("VmRSS")
if which == "dgnet":
    out = dgnet.ops.pairwise_distance(x, y, metric)
elif metric == "euclidean":
    out = torch.cdist(x, y)
elif metric == "neg_dot":
    out = -(x @ y.T)
else:
    out = 1.0 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
print(json.dumps({"extra_bytes": max(0, (kib("VmHWM") - base) * 1024 - out.numel() * 4)}))
"""


def cpu_extra_memory(which: str, metric: str, size) -> int:
    """Peak bytes beyond the output, in a fresh process so earlier allocations do not hide it."""
    out = subprocess.run(
        [sys.executable, "-c", _CPU_PEAK_CHILD, *map(str, size), which, metric],
        capture_output=True, text=True, check=True, timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_bytes"]


def cuda_extra_memory(fn, x, y) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn(x, y)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()


def _once(fn, x, y, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn(x, y)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _run(benchmark, metric: str, device: str, size, rounds: int):
    m, n, d = size
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(m, d, generator=g).to(device), torch.randn(n, d, generator=g).to(device)
    base_name, base_fn = BASELINES[metric]

    def ours(a, b):
        return pairwise_distance(a, b, metric)

    def timed():
        out = ours(x, y)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    out = benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
    for _ in range(2):  # the same warm-up for both
        ours(x, y)
        base_fn(x, y)
    ours_t, plain_t = [], []
    for _ in range(rounds):  # interleaved, so load from other processes hits both alike; as many samples each
        ours_t.append(_once(ours, x, y, device))
        plain_t.append(_once(base_fn, x, y, device))
    fast, plain = statistics.median(ours_t), statistics.median(plain_t)
    ref = base_fn(x[:256], y)
    torch.testing.assert_close(out[:256], ref, atol=2e-3, rtol=1e-4)
    del out
    if device == "cuda":
        ours_mem, base_mem = cuda_extra_memory(ours, x, y), cuda_extra_memory(base_fn, x, y)
    else:
        ours_mem, base_mem = cpu_extra_memory("dgnet", metric, size), cpu_extra_memory("torch", metric, size)
    benchmark.extra_info.update(
        machine=machine(),
        device=device,
        metric=metric,
        sizes={"M": m, "N": n, "D": d},
        dgnet_s=fast,
        baseline=base_name,
        baseline_s=plain,
        ratio_baseline_over_dgnet=plain / fast,
        dgnet_extra_memory_mib=ours_mem / 2**20,
        baseline_extra_memory_mib=base_mem / 2**20,
        output_mib=m * n * 4 / 2**20,
    )
    print(
        f"\npairwise_distance {metric} {device} {m}x{n}x{d}: dgnet {fast * 1e3:.1f} ms, {base_name} "
        f"{plain * 1e3:.1f} ms -> {plain / fast:.2f}x; extra memory beyond the {m * n * 4 / 2**20:.0f} MiB output: "
        f"dgnet {ours_mem / 2**20:.1f} MiB, {base_name} {base_mem / 2**20:.1f} MiB"
    )


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "neg_dot"])
def test_pairwise_distance_cpu(benchmark, metric):
    _run(benchmark, metric, "cpu", CPU_SIZE, rounds=9)


@pytest.mark.gpu
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "neg_dot"])
def test_pairwise_distance_cuda(benchmark, metric):
    _run(benchmark, metric, "cuda", GPU_SIZE, rounds=20)
