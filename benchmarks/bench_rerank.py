"""k-reciprocal re-ranking: dgnet against the classic dense numpy algorithm, and from features at
Market-1501 and MSMT17 scale.

- Dense interface, 1,000 queries x 5,000 gallery: ``dgnet.ops.re_ranking`` against
  ``re_ranking_reference`` (the classic vectorised-numpy algorithm) on the same distances; the ratio
  is printed (target >= 50x on CPU). Both results are compared (1e-4).
- From features at Market-1501 scale (3,368 x 19,732, 1,024-dim, clustered synthetic features):
  time and peak RSS of a fresh process (target < 30 s and < 4 GB on 2 CPU cores; < 0.5 s on an H100,
  timed with synchronisation).
- From features at MSMT17 scale (11,659 x 82,161, 1,024-dim): opt-in with DGNET_BENCH_MSMT=1 (minutes
  on 2 cores); time and peak RSS (target: fits 24 GiB; the classic code needs about 170 GB).

    .venv/bin/python -m pytest benchmarks/bench_rerank.py -p no:cacheprovider -s                 # CPU
    DGNET_BENCH_MSMT=1 .venv/bin/python -m pytest benchmarks/bench_rerank.py -p no:cacheprovider -s -k msmt
    python3 -m pytest -m gpu benchmarks/bench_rerank.py -p no:cacheprovider -s                   # GPU
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from machine import machine

from dgnet.ops import pairwise_distance, re_ranking, re_ranking_features, re_ranking_reference

MARKET = (3368, 19732, 1024)
MSMT = (11659, 82161, 1024)
DENSE = (1000, 5000, 256)


def reid_features(num: int, dim: int, seed: int = 0, per_id: int = 14) -> torch.Tensor:
    """Clustered, L2-normalised float32 features: about ``per_id`` images per identity around a random
    identity centre, like re-id embeddings (many k-reciprocal neighbours, realistic set sizes)."""
    g = torch.Generator().manual_seed(seed)
    ids = max(1, num // per_id)
    centres = torch.nn.functional.normalize(torch.randn(ids, dim, generator=g), dim=1)
    labels = torch.randint(0, ids, (num,), generator=g)
    x = torch.empty(num, dim)
    for s in range(0, num, 8192):  # chunks keep the temporary noise small at MSMT17 scale
        e = min(num, s + 8192)
        x[s:e] = centres[labels[s:e]] + (0.8 / dim**0.5) * torch.randn(e - s, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1)


# ---------------------------------------------------------------------------------------------
# Dense interface against the classic algorithm
# ---------------------------------------------------------------------------------------------


def test_dense_vs_classic_cpu(benchmark):
    nq, ng, dim = DENSE
    x = reid_features(nq + ng, dim, seed=1)
    q, g = x[:nq], x[nq:]
    blocks = [pairwise_distance(a, b).numpy() for a, b in ((q, g), (q, q), (g, g))]

    t0 = time.perf_counter()
    classic = re_ranking_reference(*blocks)
    classic_s = time.perf_counter() - t0

    out = benchmark.pedantic(re_ranking, args=tuple(blocks), rounds=5, iterations=1, warmup_rounds=1)
    np.testing.assert_allclose(out, classic, rtol=0, atol=1e-4)
    fast_s, fast_min = benchmark.stats.stats.median, benchmark.stats.stats.min
    ratio = classic_s / fast_s
    benchmark.extra_info.update(machine("cpu"), sizes=f"{nq}x{ng}", classic_s=classic_s, dgnet_s=fast_s,
                                dgnet_min_s=fast_min, speedup=ratio, load_avg=os.getloadavg()[0])
    print(f"\nre_ranking {nq}x{ng} CPU: classic numpy {classic_s:.2f} s, dgnet median {fast_s * 1e3:.1f} ms "
          f"(min {fast_min * 1e3:.1f} ms): {ratio:.0f}x on the median, {classic_s / fast_min:.0f}x on the min "
          f"(target >= 50x; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


@pytest.mark.gpu
def test_dense_gpu(benchmark):
    nq, ng, dim = DENSE
    x = reid_features(nq + ng, dim, seed=1).cuda()
    q, g = x[:nq], x[nq:]
    blocks = tuple(pairwise_distance(a, b) for a, b in ((q, g), (q, q), (g, g)))
    cpu = re_ranking(*(b.cpu() for b in blocks))

    def run():
        out = re_ranking(*blocks)
        torch.cuda.synchronize()
        return out

    out = benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    torch.testing.assert_close(out.cpu(), cpu, rtol=0, atol=1e-4)
    benchmark.extra_info.update(machine("cuda"), sizes=f"{nq}x{ng}")
    print(f"\nre_ranking {nq}x{ng} {torch.cuda.get_device_name()}: {benchmark.stats.stats.median * 1e3:.1f} ms")


# ---------------------------------------------------------------------------------------------
# From features, in a fresh process so its peak RSS is the re-ranking's own
# ---------------------------------------------------------------------------------------------


def _child(scale: str, device: str) -> None:
    """Run one re-ranking from features and print a JSON line with time and peak memory."""
    nq, ng, dim = MARKET if scale == "market" else MSMT
    x = reid_features(nq + ng, dim, seed=2)
    if device == "cuda":
        x = x.cuda()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    q, g = x[:nq], x[nq:]
    t0 = time.perf_counter()
    out = re_ranking_features(q, g)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    info = {"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "load_avg": os.getloadavg()[0],
            "shape": list(out.shape), "finite": bool(torch.isfinite(out).all())}
    if device == "cuda":
        info["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 2**30
        # A second run: the first one pays for CUDA/cuBLAS initialisation.
        t0 = time.perf_counter()
        re_ranking_features(q, g)
        torch.cuda.synchronize()
        info["seconds_warm"] = time.perf_counter() - t0
    print("RESULT " + json.dumps(info))


def _run_child(scale: str, device: str, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, __file__, scale, device], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _features_benchmark(benchmark, scale: str, device: str, timeout: float) -> dict:
    result = {}
    benchmark.pedantic(lambda: result.update(_run_child(scale, device, timeout)), rounds=1, iterations=1)
    nq, ng, dim = MARKET if scale == "market" else MSMT
    assert result["finite"] and result["shape"] == [nq, ng]
    benchmark.extra_info.update(machine(device), sizes=f"{nq}x{ng}x{dim}", **result)
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"\nre_ranking_features {scale} {nq}x{ng}x{dim} on {where}: " + json.dumps(result))
    return result


def test_features_market_cpu(benchmark):
    _features_benchmark(benchmark, "market", "cpu", timeout=1800)  # target < 30 s, < 4 GB


@pytest.mark.gpu
def test_features_market_gpu(benchmark):
    _features_benchmark(benchmark, "market", "cuda", timeout=600)  # target < 0.5 s warm on an H100


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DGNET_BENCH_MSMT") != "1", reason="opt-in: DGNET_BENCH_MSMT=1")
def test_features_msmt_cpu(benchmark):
    _features_benchmark(benchmark, "msmt", "cpu", timeout=7200)  # must fit 24 GiB


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DGNET_BENCH_MSMT") != "1", reason="opt-in: DGNET_BENCH_MSMT=1")
def test_features_msmt_gpu(benchmark):
    _features_benchmark(benchmark, "msmt", "cuda", timeout=1200)


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
