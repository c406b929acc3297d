"""Ranking evaluation at Market-1501 scale: dgnet's compiled evaluation against the evaluators users run.

- ``test_evaluate_rank_vs_fastreid_cython_cpu``: the baseline, fast-reid's Cython evaluator (``rank_cy.evaluate_cy``,
  what fast-reid and torchreid run when their extension is built), on the full query set, same warm-up (one call)
  and samples (median of 5) as dgnet, in one process. fast-reid is not a dependency and is never vendored: build
  its ``fastreid/evaluation/rank_cylib`` from a fast-reid checkout (``python setup.py build_ext --inplace`` there,
  with Cython) and point ``DGNET_FASTREID_RANK_CY`` at the folder holding the built ``rank_cy*.so``, or have
  ``fastreid`` importable; the test skips, saying so, otherwise.
- ``test_evaluate_rank_cpu``: against the classic pure-Python loop, timed on the first ``CLASSIC_QUERIES`` queries
  and scaled per query to the full query set (the full run takes minutes); recorded in ``extra_info``. A lower
  bound that nobody should use, kept for history.

Run: ``.venv/bin/python -m pytest benchmarks/bench_evaluation.py -p no:cacheprovider -s`` (GPU part: ``-m gpu``).
"""

from __future__ import annotations

import importlib
import os
import sys
import time

import numpy as np
import pytest
import torch
from machine import machine

from dgnet.evaluation.rank import evaluate_rank, evaluate_rank_reference

NUM_QUERY, NUM_GALLERY, NUM_IDS, NUM_CAMS = 3368, 19732, 751, 6  # Market-1501 test split
CLASSIC_QUERIES = 100


def market_like(kind: str, seed: int = 0):
    """A random Market-1501-sized problem: 751 identities over 6 cameras, 2,798 distractors (id 0) and
    3,820 junk images (id -1) in the gallery. ``kind="separated"`` makes true matches closer (mAP about
    0.7, like a trained model); ``kind="uniform"`` is pure noise, the worst case for dgnet's counting."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, NUM_IDS + 1)
    n_real = NUM_GALLERY - 2798 - 3820
    g_pids = np.concatenate([rng.choice(ids, n_real), np.zeros(2798, np.int64), np.full(3820, -1, np.int64)])
    g_cams = rng.integers(0, NUM_CAMS, NUM_GALLERY)
    q_pids, q_cams = rng.choice(ids, NUM_QUERY), rng.integers(0, NUM_CAMS, NUM_QUERY)
    dist = rng.random((NUM_QUERY, NUM_GALLERY), dtype=np.float32)
    if kind == "separated":
        same = q_pids[:, None] == g_pids[None, :]
        dist = np.where(same, 0.6 * dist, 0.4 + dist).astype(np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


def classic_python_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The classic evaluation loop (what torchreid runs without its Cython extension): argsort every row,
    then per query drop same-id-same-camera and junk entries and walk the ranked list in Python."""
    order = np.argsort(distmat, axis=1)
    cmc_sum, ap_sum, valid = np.zeros(max_rank), 0.0, 0
    for q in range(distmat.shape[0]):
        pids, cams = g_pids[order[q]], g_camids[order[q]]
        keep = ~((pids == q_pids[q]) & (cams == q_camids[q])) & (pids != -1)
        hits = (pids[keep] == q_pids[q]).tolist()
        if not any(hits):
            continue
        valid += 1
        found, precision_sum, first = 0, 0.0, None
        for pos, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precision_sum += found / pos
                first = pos if first is None else first
        cmc_sum[first - 1 :] += 1 if first <= max_rank else 0
        ap_sum += precision_sum / found
    return (cmc_sum / valid).astype(np.float32), ap_sum / valid


def _timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process over all threads) of one call."""
    t, c = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - t, time.process_time() - c


def _time_classic(case) -> tuple[tuple[float, float], tuple[float, float]]:
    """(wall, CPU) seconds per query of the classic loop and of dgnet's vectorised numpy reference, on a subset."""
    sub = (case[0][:CLASSIC_QUERIES], case[1][:CLASSIC_QUERIES], case[2], case[3][:CLASSIC_QUERIES], case[4])
    classic = _timed(classic_python_loop, *sub)
    numpy_ref = _timed(evaluate_rank_reference, *sub)
    return tuple(v / CLASSIC_QUERIES for v in classic), tuple(v / CLASSIC_QUERIES for v in numpy_ref)


def _run(benchmark, kind: str, case, device: str):
    dist, q_pids, g_pids, q_cams, g_cams = case
    if device == "cuda":
        dist_in = torch.from_numpy(dist).cuda()
        ids = [torch.from_numpy(a).cuda() for a in (q_pids, g_pids, q_cams, g_cams)]
        torch.cuda.synchronize()
    else:
        dist_in, ids = dist, [q_pids, g_pids, q_cams, g_cams]
    # The results come back to the host as numpy, so each timed call includes the device synchronisation.
    cmc, mAP = benchmark.pedantic(evaluate_rank, args=(dist_in, *ids), rounds=5, iterations=1, warmup_rounds=1)
    fast = benchmark.stats.stats.median

    # Same answer as the reference loop (stable ties), checked on a subset to keep the run short.
    n = CLASSIC_QUERIES
    sub = (dist[:n], q_pids[:n], g_pids, q_cams[:n], g_cams)
    cmc_sub, map_sub = evaluate_rank(*sub)
    cmc_ref, map_ref = evaluate_rank_reference(*sub)
    np.testing.assert_allclose(cmc_sub, cmc_ref, atol=1e-6)
    assert abs(map_sub - map_ref) < 1e-9

    # CPU seconds as well as wall seconds: on a shared machine the wall ratio moves with the load.
    fast_cpu = min(_timed(evaluate_rank, dist_in, *ids)[1] for _ in range(3))
    (classic_wall, classic_cpu), (numpy_wall, numpy_cpu) = _time_classic(case)
    classic_full, numpy_full = classic_wall * NUM_QUERY, numpy_wall * NUM_QUERY
    classic_cpu_full = classic_cpu * NUM_QUERY
    benchmark.extra_info.update(
        machine=machine(),
        device=device,
        sizes={"queries": NUM_QUERY, "gallery": NUM_GALLERY, "ids": NUM_IDS, "cameras": NUM_CAMS},
        distmat=kind,
        mAP=mAP,
        rank1=float(cmc[0]),
        dgnet_s=fast,
        classic_loop_s_estimated=classic_full,
        numpy_reference_s_estimated=numpy_full,
        classic_timing=f"classic loop timed on the first {CLASSIC_QUERIES} queries, scaled per query to {NUM_QUERY}",
        ratio_vs_classic_loop=classic_full / fast,
        ratio_vs_numpy_reference=numpy_full / fast,
        dgnet_cpu_s=fast_cpu,
        classic_loop_cpu_s_estimated=classic_cpu_full,
        cpu_time_ratio_vs_classic_loop=classic_cpu_full / fast_cpu,
    )
    print(
        f"\nevaluation {device} ({kind} distmat, {NUM_QUERY}x{NUM_GALLERY}): dgnet {fast * 1e3:.1f} ms, "
        f"classic python loop ~{classic_full:.1f} s (est.) -> {classic_full / fast:.0f}x, "
        f"vectorised numpy reference ~{numpy_full:.1f} s (est.) -> {numpy_full / fast:.0f}x; "
        f"mAP {mAP:.4f}, rank-1 {cmc[0]:.4f}; CPU time (all threads): dgnet {fast_cpu * 1e3:.1f} ms, "
        f"classic ~{classic_cpu_full:.1f} s -> {classic_cpu_full / fast_cpu:.0f}x"
    )


def fastreid_rank_cy():
    """fast-reid's compiled ``rank_cy`` module, or a skip naming how to provide it."""
    folder = os.environ.get("DGNET_FASTREID_RANK_CY")
    if folder:
        sys.path.insert(0, folder)
        try:
            return importlib.import_module("rank_cy")
        finally:
            sys.path.remove(folder)
    try:
        return importlib.import_module("fastreid.evaluation.rank_cylib.rank_cy")
    except ImportError:
        pytest.skip("fast-reid's Cython evaluator is not built: set DGNET_FASTREID_RANK_CY to the folder of a built "
                    "rank_cy*.so (this file's docstring)")


def test_evaluate_rank_vs_fastreid_cython_cpu(benchmark, market_case):
    kind, (dist, q_pids, g_pids, q_cams, g_cams) = market_case
    rank_cy = fastreid_rank_cy()
    args = (dist.astype(np.float32), q_pids.astype(np.int64), g_pids.astype(np.int64), q_cams.astype(np.int64),
            g_cams.astype(np.int64))
    cy_cmc, cy_ap, _ = rank_cy.evaluate_cy(*args, 50, False)  # warm-up, and the answer dgnet must give
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        rank_cy.evaluate_cy(*args, 50, False)
        samples.append(time.perf_counter() - t)
    cmc, m_ap = benchmark.pedantic(evaluate_rank, args=args, rounds=5, iterations=1, warmup_rounds=1)
    np.testing.assert_allclose(cmc, cy_cmc, atol=1e-6)
    assert abs(m_ap - float(np.mean(cy_ap))) < 1e-6
    fast, cython = benchmark.stats.stats.median, float(np.median(samples))
    benchmark.extra_info.update(machine=machine(), distmat=kind, baseline="fast-reid rank_cy.evaluate_cy",
                                dgnet_s=fast, fastreid_cython_s=cython, ratio_vs_fastreid_cython=cython / fast,
                                threads=torch.get_num_threads(), load_at_start=os.getloadavg()[0])
    print(f"\nevaluation cpu ({kind} distmat, {NUM_QUERY}x{NUM_GALLERY}), median of 5 after 1 warm-up: dgnet "
          f"{fast * 1e3:.1f} ms, fast-reid Cython evaluator {cython * 1e3:.1f} ms -> {cython / fast:.1f}x")


@pytest.fixture(scope="module", params=["separated", "uniform"])
def market_case(request):
    return request.param, market_like(request.param)


def test_evaluate_rank_cpu(benchmark, market_case):
    _run(benchmark, *market_case, "cpu")


@pytest.mark.gpu
def test_evaluate_rank_cuda(benchmark, market_case):
    _run(benchmark, *market_case, "cuda")
