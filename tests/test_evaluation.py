"""dgnet.evaluation.rank (compiled fast path) against the classic per-query argsort loop and hand-computed cases."""

import math
import warnings

import numpy as np
import pytest
import torch

from dgnet.evaluation.rank import evaluate, evaluate_rank, evaluate_rank_reference, evaluate_reference

# The random cases include queries without a true match on purpose; the warning that reports them is checked
# in test_skipped_queries_are_counted_and_reported.
pytestmark = pytest.mark.filterwarnings("ignore:.*queries have no true match:UserWarning")


def random_case(seed, nq=40, ng=300, n_ids=25, n_cams=4, ties=False, dtype=np.float32):
    """Random distances with realistic id structure: junk (-1), distractors (0), queries without matches."""
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, n_ids, ng)
    g_pids[rng.random(ng) < 0.08] = -1
    q_pids = rng.integers(1, n_ids + 5, nq)  # ids >= n_ids never appear in the gallery
    q_cams, g_cams = rng.integers(0, n_cams, nq), rng.integers(0, n_cams, ng)
    if ties:
        dist = rng.integers(0, 6, (nq, ng)).astype(dtype)  # few distinct values: many exact ties
    else:
        dist = rng.random((nq, ng)).astype(dtype)
    return dist, q_pids, g_pids, q_cams, g_cams


def assert_same(fast, ref):
    np.testing.assert_array_equal(fast.valid, ref.valid)
    np.testing.assert_allclose(fast.cmc, ref.cmc, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast.ap, ref.ap, rtol=0, atol=1e-12)  # NaN positions must agree too
    assert math.isclose(fast.mAP, ref.mAP, rel_tol=0, abs_tol=1e-12)
    assert math.isclose(fast.mINP, ref.mINP, rel_tol=0, abs_tol=1e-12)
    np.testing.assert_allclose(fast.ap_trapz, ref.ap_trapz, rtol=0, atol=1e-12)
    assert math.isclose(fast.mAP_trapz, ref.mAP_trapz, rel_tol=0, abs_tol=1e-12)
    assert fast.num_skipped == ref.num_skipped == int((~ref.valid).sum())


def devkit_ap(row, q_pid, q_cam, g_pids, g_cams):
    """The Market-1501 devkit's compute_AP loop, as written there: walk the ranked list, skip junk, and add
    (recall - old_recall) * (old_precision + precision) / 2 at every kept place; NaN without a match."""
    order = np.argsort(row, kind="stable")
    good = [j for j in order if g_pids[j] == q_pid and g_cams[j] != q_cam and g_pids[j] != -1]
    if not good:
        return math.nan
    ap, old_recall, old_precision, found, place = 0.0, 0.0, 1.0, 0, 0
    for j in order:
        if g_pids[j] == -1 or (g_pids[j] == q_pid and g_cams[j] == q_cam):
            continue
        place += 1
        found += g_pids[j] == q_pid
        recall, precision = found / len(good), found / place
        ap += (recall - old_recall) * (old_precision + precision) / 2
        old_recall, old_precision = recall, precision
    return ap


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference_on_random_cases(seed, ties, dtype):
    case = random_case(seed, ties=ties, dtype=dtype)
    fast, ref = evaluate(*case, max_rank=20), evaluate_reference(*case, max_rank=20)
    assert 0 < fast.num_valid < len(case[1])  # the case really has valid and invalid queries
    assert_same(fast, ref)
    dist, qp, gp, qc, gc = case
    devkit = [devkit_ap(dist[q], qp[q], qc[q], gp, gc) for q in range(len(qp))]
    np.testing.assert_allclose(fast.ap_trapz, devkit, rtol=0, atol=1e-12)
    assert not np.allclose(fast.ap[fast.valid], fast.ap_trapz[fast.valid])  # two definitions, really
    assert (fast.ap_trapz[fast.valid] <= fast.ap[fast.valid] + 1e-12).all()  # the devkit's never exceeds AP


def test_hand_computed_case():
    # Gallery:    g0       g1      g2      g3        g4            g5      g6
    g_pids = [1, 2, 1, -1, 0, 1, 3]
    g_cams = [0, 1, 1, 1, 2, 2, 0]
    q_pids, q_cams = [1, 2, 4, 3], [0, 0, 1, 0]
    dist = np.array(
        [
            # q0 (id 1, cam 0): g0 removed (same id+cam), g3 junk. Kept order g1, g2*, g4, g6, g5*.
            [0.05, 0.10, 0.20, 0.15, 0.30, 0.40, 0.35],
            # q1 (id 2, cam 0): g3 junk. Kept order g0, g2, g5, g1*, g4, g6.
            [0.10, 0.50, 0.20, 0.05, 0.60, 0.30, 0.70],
            # q2 (id 4): not in the gallery -> invalid.
            [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
            # q3 (id 3, cam 0): its only gallery image g6 is in the same camera -> invalid.
            [0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
        ]
    )
    # q0: matches at ranks 2 and 5 -> AP (1/2 + 2/5) / 2 = 0.45, INP 2/5. q1: rank 4 -> AP 1/4, INP 1/4.
    # Trapezoidal: q0 ((0/1 + 1/2) / 2 + (1/4 + 2/5) / 2) / 2 = 0.2875; q1 (0/3 + 1/4) / 2 = 0.125.
    expected_ap = [0.45, 0.25, math.nan, math.nan]
    expected_trapz = [0.2875, 0.125, math.nan, math.nan]
    expected_cmc = [0.0, 0.5, 0.5, 1.0, 1.0]
    for fn in (evaluate, evaluate_reference):
        r = fn(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
        np.testing.assert_allclose(r.ap, expected_ap, atol=1e-12)
        np.testing.assert_allclose(r.cmc, expected_cmc, atol=1e-7)
        assert r.valid.tolist() == [True, True, False, False]
        assert math.isclose(r.mAP, 0.35) and math.isclose(r.mINP, (0.4 + 0.25) / 2)
        np.testing.assert_allclose(r.ap_trapz, expected_trapz, atol=1e-12)
        assert math.isclose(r.mAP_trapz, (0.2875 + 0.125) / 2)
    cmc, mAP = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    assert cmc.dtype == np.float32 and cmc.shape == (5,) and math.isclose(mAP, 0.35)


def test_ties_break_by_gallery_index():
    # All four at the same distance: the stable order g0, g1*, g2*, g3 puts the matches at ranks 2 and 3;
    # moving a match to index 0 puts it first.
    dist = np.full((1, 4), 0.5, dtype=np.float32)
    r = evaluate(dist, [1], [2, 1, 1, 2], [0], [1, 1, 1, 1], max_rank=4)
    assert math.isclose(r.mAP, (1 / 2 + 2 / 3) / 2) and r.cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    r = evaluate(dist, [1], [1, 2, 1, 2], [0], [1, 1, 1, 1], max_rank=4)
    assert math.isclose(r.mAP, (1 / 1 + 2 / 3) / 2) and r.cmc.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_rank_reference_signature_and_torch_inputs():
    dist, qp, gp, qc, gc = random_case(7)
    cmc_ref, map_ref = evaluate_rank_reference(dist, qp, gp, qc, gc, max_rank=10)
    cmc, mAP = evaluate_rank(torch.from_numpy(dist), torch.from_numpy(qp).int(), gp.tolist(), qc, gc, max_rank=10)
    np.testing.assert_allclose(cmc, cmc_ref, atol=1e-6)
    assert math.isclose(mAP, map_ref, abs_tol=1e-12)


def test_strided_and_reversed_inputs():
    dist, qp, gp, qc, gc = random_case(4)
    # numpy views with negative strides (which torch.from_numpy refuses) and a column-major tensor
    expected = evaluate_reference(dist[:, ::-1].copy(), qp, gp[::-1].copy(), qc, gc[::-1].copy())
    assert_same(evaluate(dist[:, ::-1], qp, gp[::-1], qc, gc[::-1]), expected)
    column_major = torch.from_numpy(dist).T.contiguous().T
    assert_same(evaluate(column_major, qp, gp, qc, gc), evaluate_reference(dist, qp, gp, qc, gc))


def test_half_precision_distmat_ranks_as_float32():
    dist, qp, gp, qc, gc = random_case(3)
    d16 = torch.from_numpy(dist).half()
    assert_same(evaluate(d16, qp, gp, qc, gc), evaluate_reference(d16.float(), qp, gp, qc, gc))


def test_max_rank_is_capped_at_gallery_size():
    dist, qp, gp, qc, gc = random_case(1, nq=10, ng=30, n_ids=5)
    r = evaluate(dist, qp, gp, qc, gc, max_rank=100)
    assert r.cmc.shape == (30,) and r.cmc[-1] == 1.0
    assert_same(r, evaluate_reference(dist, qp, gp, qc, gc, max_rank=100))


@pytest.mark.parametrize("ties", [False, True])
def test_many_matches_per_query(ties):
    # One identity fills most of the gallery (R in the hundreds: the CPU kernel's binary-search path).
    rng = np.random.default_rng(5)
    gp = np.where(rng.random(2000) < 0.6, 1, rng.integers(2, 50, 2000))
    dist = rng.integers(0, 20, (6, 2000)).astype(np.float32) if ties else rng.random((6, 2000))
    case = (dist, np.array([1, 1, 1, 2, 3, 1]), gp, rng.integers(0, 3, 6), rng.integers(0, 3, 2000))
    assert_same(evaluate(*case), evaluate_reference(*case))


def test_opcheck():
    # Every query valid: opcheck compares outputs without treating the NaN of invalid queries as equal.
    dist = torch.rand(8, 40, generator=torch.Generator().manual_seed(0))
    qp, gp = torch.arange(8) % 6, torch.arange(40) % 6
    torch.library.opcheck(torch.ops.dgnet.evaluate_queries.default, (dist, qp, gp, torch.zeros(8).long(), gp * 0 + 1))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"q_pids": np.zeros(3, dtype=np.int64)}, r"q_pids: expected shape \[4\]"),
        ({"g_camids": np.zeros(9, dtype=np.int64)}, r"g_camids: expected shape \[10\]"),
        ({"q_camids": np.zeros(4)}, "q_camids: expected an integer"),
        ({"g_pids": torch.zeros(10, dtype=torch.bool)}, "g_pids: expected an integer dtype"),
        ({"distmat": np.zeros((4, 10), dtype=np.int64)}, "distmat: expected a float16/32/64"),
        ({"distmat": torch.zeros(4, 10, dtype=torch.int32)}, "distmat: expected a floating dtype"),
        ({"distmat": np.zeros(10)}, "distmat: expected a 2-D"),
        ({"distmat": np.zeros((0, 10)), "q_pids": [], "q_camids": []}, "distmat: empty query or gallery"),
        ({"distmat": np.zeros((4, 0)), "g_pids": [], "g_camids": []}, "distmat: empty query or gallery"),
        ({"max_rank": 0}, "max_rank=0"),
        ({"max_rank": 2.5}, "max_rank=2.5"),
    ],
)
def test_bad_input(change, match):
    args = {
        "distmat": np.random.default_rng(0).random((4, 10)),
        "q_pids": np.arange(4),
        "g_pids": np.arange(10) % 4,
        "q_camids": np.zeros(4, dtype=np.int64),
        "g_camids": np.ones(10, dtype=np.int64),
    }
    args.update(change)
    for fn in (evaluate, evaluate_rank, evaluate_reference):
        with pytest.raises(ValueError, match=match):
            fn(**args)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_distances_rejected(bad):
    dist, qp, gp, qc, gc = random_case(0)
    dist[3, 7] = bad
    with pytest.raises(ValueError, match="distmat: contains 1 NaN or infinite"):
        evaluate(dist, qp, gp, qc, gc)


def test_no_valid_query_is_an_error():
    dist = np.random.default_rng(0).random((2, 3))
    # Query ids 5 and 6 are absent; id 1's gallery images are all in the query's camera.
    for fn in (evaluate, evaluate_reference):
        with pytest.raises(ValueError, match="q_pids: no query has a true match"):
            fn(dist, [5, 6], [1, 1, 2], [0, 0], [0, 0, 0])
        with pytest.raises(ValueError, match="q_pids: no query has a true match"):
            fn(dist[:1], [1], [1, 1, -1], [0], [0, 0, 1])


# A query without a true match (id 7): two valid queries, one skipped.
SKIP_CASE = (
    np.array([[0.1, 0.5, 0.3], [0.9, 0.2, 0.4], [0.3, 0.3, 0.3]]),
    [1, 2, 7],  # q_pids
    [1, 2, 1],  # g_pids
    [0, 0, 0],  # q_camids
    [1, 1, 0],  # g_camids: g2 is id 1 under query 0's own camera, removed for it
)


@pytest.mark.parametrize("fn", [evaluate, evaluate_reference])
def test_skipped_queries_are_counted_and_reported(fn):
    with pytest.warns(UserWarning, match=rf"^{fn.__name__}: 1 of 3 queries have no true match") as record:
        r = fn(*SKIP_CASE, max_rank=3)
    assert record[0].filename == __file__  # points at the caller
    assert r.num_valid == 2 and r.num_skipped == 1 and r.valid.tolist() == [True, True, False]
    assert r.mAP == 1.0 and r.cmc.tolist() == [1.0, 1.0, 1.0]  # the means are over the two valid queries
    assert math.isnan(r.ap[2])


@pytest.mark.parametrize("fn", [evaluate_rank, evaluate_rank_reference])
def test_rank_functions_report_skipped_queries(fn):
    with pytest.warns(UserWarning, match=rf"^{fn.__name__}: 1 of 3 queries .* average the other 2"):
        cmc, mAP = fn(*SKIP_CASE, max_rank=3)
    assert mAP == 1.0


def test_no_warning_when_every_query_is_valid():
    dist, qp, gp, qc, gc = SKIP_CASE
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = evaluate(dist[:2], qp[:2], gp, qc[:2], gc, max_rank=3)
        evaluate_rank(dist[:2], qp[:2], gp, qc[:2], gc, max_rank=3)
    assert r.num_skipped == 0 and r.num_valid == 2


@pytest.mark.parametrize(
    "dtype,scale",
    [(np.float32, s) for s in (1e-40, 1e-30, 1e-10, 1e10, 1e30)] + [(np.float64, s) for s in (1e-300, 1e300)],
)
def test_any_scale_matches_reference(dtype, scale):
    dist, qp, gp, qc, gc = random_case(8)
    d = np.asarray(dist.astype(np.float64) * scale, dtype=dtype)
    assert np.isfinite(d).all()
    fast = evaluate(d, qp, gp, qc, gc, max_rank=20)
    assert np.isfinite(fast.ap[fast.valid]).all() and np.isfinite([fast.mAP, fast.mINP, fast.mAP_trapz]).all()
    assert_same(fast, evaluate_reference(d, qp, gp, qc, gc, max_rank=20))


@pytest.mark.parametrize("value", [0.0, 0.25, 3e38])
def test_all_equal_distances_rank_by_gallery_index(value):
    dist, qp, gp, qc, gc = random_case(9)
    d = np.full(dist.shape, value, dtype=np.float32)
    assert_same(evaluate(d, qp, gp, qc, gc), evaluate_reference(d, qp, gp, qc, gc))


def test_single_query_single_gallery():
    r = evaluate(np.array([[0.5]]), [1], [1], [0], [1])
    assert r.cmc.tolist() == [1.0] and r.mAP == 1.0 and r.mINP == 1.0 and r.num_skipped == 0
    with pytest.raises(ValueError, match="q_pids: no query has a true match"):
        evaluate(np.array([[0.5]]), [1], [1], [0], [0])  # its only gallery image is under its own camera


def test_non_contiguous_ids():
    dist, qp, gp, qc, gc = random_case(10)
    expected = evaluate_reference(dist, qp, gp, qc, gc)
    strided = [torch.from_numpy(np.repeat(a, 2))[::2] for a in (qp, gp, qc, gc)]
    assert not any(t.is_contiguous() for t in strided)
    assert_same(evaluate(torch.from_numpy(dist).T.contiguous().T, *strided), expected)
    reversed_q = (dist[::-1], qp[::-1], gp, qc[::-1], gc)  # numpy views with negative strides
    assert_same(evaluate(*reversed_q), evaluate_reference(*(np.ascontiguousarray(a) for a in reversed_q)))


def test_evaluate_queries_wrapper_is_the_op():
    from dgnet.ops.evaluation import evaluate_queries

    dist, qp, gp, qc, gc = random_case(12)
    args = (torch.from_numpy(dist), *(torch.from_numpy(a) for a in (qp, gp, qc, gc)))
    for a, b in zip(evaluate_queries(*args), torch.ops.dgnet.evaluate_queries(*args), strict=True):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("ties", [False, True])
def test_cuda_matches_cpu(ties):
    dist, qp, gp, qc, gc = random_case(11, nq=200, ng=3000, n_ids=60, ties=ties)
    gp[:800] = 7  # one identity with hundreds of images: the sort step loops over several matches per thread
    qp[:10] = 7
    cpu = evaluate(dist, qp, gp, qc, gc)
    d = torch.from_numpy(dist).cuda()
    gpu = evaluate(d, torch.from_numpy(qp).cuda(), gp, qc, gc)
    assert_same(gpu, cpu)
    assert_same(gpu, evaluate_reference(dist, qp, gp, qc, gc))
    qp, gp = torch.arange(8, device="cuda") % 6, torch.arange(40, device="cuda") % 6
    args = (d[:8, :40].contiguous(), qp, gp, torch.zeros_like(qp), torch.ones_like(gp))
    torch.library.opcheck(torch.ops.dgnet.evaluate_queries.default, args)
