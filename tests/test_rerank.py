"""k-reciprocal re-ranking: the compiled sparse paths against the plain dense numpy reference."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dgnet.ops.distance import METRICS
from dgnet.ops.rerank import re_ranking, re_ranking_features, re_ranking_reference

ATOL = 1e-4


def features(kind: str, n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """float32 features: ``random`` (isotropic Gaussian) or ``blobs`` (tight clusters of about 6,
    which makes many k-reciprocal sets and accepted expansions)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.normal(size=(n, dim)).astype(np.float32)
    centers = rng.normal(size=(max(1, n // 6), dim)) * 3.0
    labels = rng.integers(0, len(centers), size=n)
    return (centers[labels] + 0.5 * rng.normal(size=(n, dim))).astype(np.float32)


def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact (float64) euclidean distances, as a user's numpy code would pass them."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.sqrt(np.maximum(((a64[:, None, :] - b64[None, :, :]) ** 2).sum(-1), 0.0))


def blocks(q: np.ndarray, g: np.ndarray):
    return euclidean(q, g), euclidean(q, q), euclidean(g, g)


def torch_blocks(q: torch.Tensor, g: torch.Tensor, metric: str):
    code = METRICS[metric]
    d = lambda a, b: torch.ops.dgnet.pairwise_distance(a, b, code, 0)
    return d(q, g), d(q, q), d(g, g)


def run_isolated(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter, so that a crash (segfault, abort) fails the test instead of pytest."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600, env=env)


# ---------------------------------------------------------------------------------------------
# re_ranking == the classic algorithm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["random", "blobs"])
@pytest.mark.parametrize("shape", [(30, 80), (1, 50), (12, 41)])
@pytest.mark.parametrize(
    "k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.3), (7, 3, 0.0), (4, 2, 1.0), (11, 6, 0.5), (1, 1, 0.3)]
)
def test_re_ranking_matches_reference(kind, shape, k1, k2, lam):
    nq, ng = shape
    x = features(kind, nq + ng, seed=nq * 1000 + ng)
    args = blocks(x[:nq], x[nq:])
    expected = re_ranking_reference(*args, k1=k1, k2=k2, lambda_value=lam)
    got = re_ranking(*args, k1=k1, k2=k2, lambda_value=lam)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (nq, ng)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_re_ranking_changes_the_ranking_on_clusters():
    # Guards against a core that silently returns the original distances: on clustered data the
    # Jaccard term must move distances, and it must pull same-cluster pairs closer.
    x = features("blobs", 90, seed=3)
    qg, qq, gg = blocks(x[:20], x[20:])
    out = re_ranking(qg, qq, gg, k1=6, k2=3, lambda_value=0.0)
    assert np.abs(out - 1.0).max() > 0.5  # Jaccard distances are not all 1
    assert (out < 1.0).sum(1).min() >= 1  # every query overlaps some gallery sample


def test_re_ranking_torch_inputs_float32_and_float64():
    x = features("blobs", 70, seed=5)
    args = blocks(x[:15], x[15:])
    expected = re_ranking_reference(*args, k1=8, k2=4)
    for dtype in (torch.float64, torch.float32):
        got = re_ranking(*(torch.from_numpy(a).to(dtype) for a in args), k1=8, k2=4)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.device.type == "cpu"
        np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=ATOL)


def test_re_ranking_accepts_non_contiguous_inputs():
    x = features("random", 40, seed=6)
    qg, qq, gg = blocks(x[:10], x[10:])
    expected = re_ranking(qg, qq, gg, k1=5, k2=2)
    got = re_ranking(np.asfortranarray(qg), qq.T, gg.T, k1=5, k2=2)  # symmetric blocks, other layouts
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_re_ranking_asymmetric_blocks_follow_classic_normalisation():
    # The classic code divides each column of the block matrix by its maximum and transposes; with
    # asymmetric q_q / g_g (e.g. a learned, non-symmetric distance) that is not a row normalisation.
    rng = np.random.default_rng(7)
    qg, qq, gg = (rng.uniform(0.1, 2.0, size=s) for s in ((9, 31), (9, 9), (31, 31)))
    np.fill_diagonal(qq, 0.0)
    np.fill_diagonal(gg, 0.0)
    for k1, k2 in ((6, 3), (12, 1)):
        np.testing.assert_allclose(re_ranking(qg, qq, gg, k1=k1, k2=k2),
                                   re_ranking_reference(qg, qq, gg, k1=k1, k2=k2), rtol=0, atol=ATOL)


# ---------------------------------------------------------------------------------------------
# re_ranking_features == re_ranking of the same features' distances
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("kind", ["random", "blobs"])
@pytest.mark.parametrize("k1,k2,lam,block_rows", [(20, 6, 0.3, 7), (6, 1, 0.5, 32), (9, 4, 0.2, None)])
def test_features_match_dense(metric, kind, k1, k2, lam, block_rows):
    x = torch.from_numpy(features(kind, 100, dim=24, seed=11))
    q, g = x[:27], x[27:]
    expected = re_ranking(*torch_blocks(q, g, metric), k1=k1, k2=k2, lambda_value=lam)
    got = re_ranking_features(q, g, k1=k1, k2=k2, lambda_value=lam, metric=metric, block_rows=block_rows)
    assert got.dtype == torch.float32 and got.shape == (27, 73)
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_features_numpy_in_numpy_out_matches_reference():
    x = features("blobs", 60, seed=12)
    got = re_ranking_features(x[:10], x[10:], k1=7, k2=3, block_rows=16)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, re_ranking_reference(*blocks(x[:10], x[10:]), k1=7, k2=3), rtol=0, atol=ATOL)


def test_knn_matches_brute_force():
    x = torch.from_numpy(features("random", 53, dim=8, seed=13))
    for code in (METRICS[m] for m in ("euclidean", "sqeuclidean", "cosine")):
        for block in (5, 16, 1024):
            nbr, rowmax, qg = torch.ops.dgnet.rerank_knn(x, code, 9, block, 20)
            d = torch.ops.dgnet.pairwise_distance(x, x, code, 0).double()
            sq = d.square()
            torch.testing.assert_close(rowmax.double(), sq.amax(1), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(nbr, sq.topk(9, largest=False).indices)
            torch.testing.assert_close(qg.double(), sq[:20, 20:], rtol=1e-4, atol=1e-5)
            assert torch.equal(nbr[:, 0], torch.arange(53))  # each sample is its own nearest
    with pytest.raises(RuntimeError, match="neg_dot"):
        torch.ops.dgnet.rerank_knn(x, METRICS["neg_dot"], 9, 16, 20)


def test_expand_small_hand_case():
    # Four points on a line at 0, 1, 3, 10: with k1 = 1 each row's k1 + 1 nearest are itself and
    # its nearest neighbour; 0 and 1 are mutual, 2's nearest is 1 (not mutual), 3's nearest is 2.
    nbr = torch.tensor([[0, 1], [1, 0], [2, 1], [3, 2]])
    indptr, indices = torch.ops.dgnet.rerank_expand(nbr, 1)
    sets = [indices[indptr[i] : indptr[i + 1]].tolist() for i in range(4)]
    assert sets == [[0, 1], [0, 1], [2], [3]]


@pytest.mark.parametrize(
    "op,args",
    [
        ("rerank_knn", lambda x: (x, 0, 5, 8, 6)),
        ("rerank_expand", lambda x: (torch.ops.dgnet.rerank_knn(x, 0, 5, 8, 0)[0], 4)),
        ("rerank_dense_knn", lambda x: (torch.cdist(x[:5], x[5:]), torch.cdist(x[:5], x[:5]),
                                        torch.cdist(x[5:], x[5:]), 6)),
    ],
)
def test_opcheck(op, args):
    x = torch.from_numpy(features("random", 20, seed=14))
    torch.library.opcheck(getattr(torch.ops.dgnet, op), args(x), test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------------------------------------
# Memory safety and defined results on any finite input
# ---------------------------------------------------------------------------------------------

_HUGE_LOOP = """
import sys
import numpy as np
from dgnet.ops.rerank import re_ranking, re_ranking_reference
dtype = sys.argv[1]
rng = np.random.default_rng(0)
for scale in (1e19, 1e20):
    for _ in range(50):
        x = rng.normal(size=(26, 8))
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        unit = (d[:6, 6:], d[:6, :6], d[6:, 6:])
        out = re_ranking(*(np.asarray(b * scale, dtype=dtype) for b in unit), k1=5, k2=3)
        assert np.isfinite(out).all(), f"scale {scale}: non-finite output"
        # Re-ranking is scale-invariant: the classic result of the unscaled distances.
        np.testing.assert_allclose(out, re_ranking_reference(*unit, k1=5, k2=3), rtol=0, atol=1e-4)
print("ok")
"""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_distances_do_not_crash(dtype):
    # Reported: distances scaled by 1e19 or 1e20 crashed (exit 139 in rerank_expand, once an abort): their squares
    # overflow float32 to inf, inf never entered a row's top-k, and the unfilled slots' index -1 was read.
    proc = run_isolated(_HUGE_LOOP, dtype)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", f"exit {proc.returncode}\n{proc.stderr[-3000:]}"


def test_neighbour_tables_are_valid_when_every_value_overflows():
    # The kernels themselves, without the Python front's rescaling: every squared value is inf in float32, yet each
    # row of the table must name k distinct samples (ties in index order), never an unfilled slot.
    d = torch.full((9, 9), 1e30, dtype=torch.float64)
    nbr, colmax = torch.ops.dgnet.rerank_dense_knn(d[:3, 3:], d[:3, :3], d[3:, 3:], 9)
    assert torch.equal(nbr, torch.arange(9).expand(9, 9)) and torch.isinf(colmax).all()
    x = torch.full((7, 4), 3e38)
    nbr, rowmax, _ = torch.ops.dgnet.rerank_knn(x, 0, 7, 3, 2)
    assert ((nbr >= 0) & (nbr < 7)).all() and torch.equal(nbr.sort(1).values, torch.arange(7).expand(7, 7))


@pytest.mark.parametrize("block", ["q_q", "q_g", "g_g"])
def test_dense_knn_column_maxima_mark_every_nan(block):
    # re_ranking reads the column maxima instead of a pass of its own over the distances: a NaN anywhere must
    # make its columns' maxima NaN (the vector max of the scan drops NaN unless tracked), every other column's
    # maximum stays the largest square. q=5, g=21: vector blocks and scalar tails in both scans.
    q, g = 5, 21
    rng = np.random.default_rng(7)
    base = [torch.from_numpy(rng.uniform(0.5, 2.0, s).astype(np.float32)) for s in ((q, g), (q, q), (g, g))]
    which = {"q_g": 0, "q_q": 1, "g_g": 2}[block]
    rows, cols = base[which].shape
    for i in range(rows):
        for j in range(cols):
            mats = [m.clone() for m in base]
            mats[which][i, j] = float("nan")
            _, colmax = torch.ops.dgnet.rerank_dense_knn(mats[0], mats[1], mats[2], 3)
            hit = {"q_g": {i, q + j}, "q_q": {j}, "g_g": {q + j}}[block]
            full = torch.cat([torch.cat([mats[1], mats[0]], 1), torch.cat([mats[0].T, mats[2]], 1)], 0)
            want = full.square().amax(0)  # column c of the block matrix: qq/qg^T above, qg/gg below
            assert torch.isnan(colmax[sorted(hit)]).all(), (block, i, j)
            rest = [c for c in range(q + g) if c not in hit]
            assert torch.equal(colmax[rest], want[rest]), (block, i, j)


def test_sparse_ops_reject_out_of_range_indices():
    # Direct calls with a corrupt neighbour table or CSR raise instead of reading out of bounds.
    nbr = torch.tensor([[0, 1], [1, -1], [2, 1]])
    with pytest.raises(RuntimeError, match="nbr"):
        torch.ops.dgnet.rerank_expand(nbr, 1)
    with pytest.raises(RuntimeError, match="nbr"):
        torch.ops.dgnet.rerank_expand(nbr + 3, 1)
    good = torch.tensor([[0, 1], [1, 0], [2, 1]])
    indptr, indices = torch.ops.dgnet.rerank_expand(good, 1)
    out = torch.zeros(1, 2)
    dist = torch.zeros(indices.shape[0])
    with pytest.raises(RuntimeError, match="indices"):
        torch.ops.dgnet.rerank_jaccard_mix_(out, indptr, indices + 5, dist, good, 1, 0.3)
    with pytest.raises(RuntimeError, match="nbr"):
        torch.ops.dgnet.rerank_jaccard_mix_(out, indptr, indices, dist, good - 1, 2, 0.3)
    with pytest.raises(RuntimeError, match="indptr"):
        torch.ops.dgnet.rerank_jaccard_mix_(out, indptr.flip(0), indices, dist, good, 1, 0.3)


_F32_SCALES = [1e-30, 1e-20, 1e-10, 1.0, 1e10, 1e19, 1e20, 1e30]
_F64_SCALES = [1e-300, 1e-30, 1e20, 1e30, 1e150, 1e300]


@pytest.mark.parametrize(
    "dtype,scale", [(np.float32, s) for s in _F32_SCALES] + [(np.float64, s) for s in _F64_SCALES]
)
def test_re_ranking_any_scale(dtype, scale):
    x = features("blobs", 36, dim=8, seed=31)
    unit = blocks(x[:9], x[9:])
    args = [np.asarray(b * scale, dtype=dtype) for b in unit]
    assert all(np.isfinite(a).all() for a in args)
    got = re_ranking(*args, k1=6, k2=3)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, re_ranking_reference(*unit, k1=6, k2=3), rtol=0, atol=ATOL)
    got_t = re_ranking(*(torch.from_numpy(a) for a in args), k1=6, k2=3)
    np.testing.assert_allclose(got_t.numpy(), got, rtol=0, atol=0)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize(
    "dtype,scale", [(torch.float32, s) for s in (1e-30, 1e-12, 1e12, 1e19, 1e30)] + [(torch.float64, 1e-200),
                                                                                    (torch.float64, 1e200)]
)
def test_features_any_scale(metric, dtype, scale):
    x = torch.from_numpy(features("blobs", 40, dim=8, seed=32)).double()
    q, g = x[:10], x[10:]
    expected = re_ranking_features(q.float(), g.float(), k1=6, k2=3, metric=metric)
    got = re_ranking_features((q * scale).to(dtype), (g * scale).to(dtype), k1=6, k2=3, metric=metric)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("seed", range(3))
def test_ties_follow_index_order(seed):
    # Points on a small integer grid: many exactly equal distances (and coincident points). Both fast paths rank
    # equal distances by sample index, as the reference's stable argsort does.
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 3, size=(25, 2)).astype(np.float32)
    args = blocks(pts[:7], pts[7:])
    expected = re_ranking_reference(*args, k1=5, k2=3)
    np.testing.assert_allclose(re_ranking(*args, k1=5, k2=3), expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(re_ranking_features(pts[:7], pts[7:], k1=5, k2=3), expected, rtol=0, atol=ATOL)


def _equal_blocks(nq: int, ng: int, value: float, dtype=np.float64, zero_diagonal: bool = False):
    qg, qq, gg = (np.full(s, value, dtype=dtype) for s in ((nq, ng), (nq, nq), (ng, ng)))
    if zero_diagonal:
        np.fill_diagonal(qq, 0.0)
        np.fill_diagonal(gg, 0.0)
    return qg, qq, gg


@pytest.mark.parametrize("value", [0.0, 1e-40, 2.5, 7e25])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_equal_distances(value, dtype):
    # Every pair (the diagonal too) at one distance: the classic result of all-ones for every value > 0 (re-ranking
    # is scale-invariant), and, by that same rule, for all zeros, where the classic divides 0 by 0.
    expected = re_ranking_reference(*_equal_blocks(4, 9, 1.0), k1=4, k2=2)
    with np.errstate(invalid="ignore"):
        assert np.isnan(re_ranking_reference(*_equal_blocks(4, 9, 0.0), k1=4, k2=2)).all()  # the classic's 0 / 0
    got = re_ranking(*_equal_blocks(4, 9, value, dtype), k1=4, k2=2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_equidistant_points_match_reference():
    # Zero diagonal, one distance everywhere else (a regular simplex): the classic result is defined.
    args = _equal_blocks(5, 11, 3.0, zero_diagonal=True)
    np.testing.assert_allclose(re_ranking(*args, k1=4, k2=3), re_ranking_reference(*args, k1=4, k2=3), atol=ATOL)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_identical_features(metric):
    # Rows whose distances are exactly 0 in float32 (each row's norm is exact): all distances 0, as all-zero blocks.
    x = np.full((13, 4), 2.0, dtype=np.float32)
    expected = re_ranking(*_equal_blocks(4, 9, 0.0), k1=4, k2=2)
    got = re_ranking_features(x[:4], x[4:], k1=4, k2=2, metric=metric)
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    # Arbitrary identical rows: distances are float32 rounding noise around 0; the result must still be defined.
    y = np.tile(features("random", 1, dim=16, seed=33), (13, 1))
    out = re_ranking_features(y[:4], y[4:], k1=4, k2=2, metric=metric)
    assert np.isfinite(out).all() and (out >= -1e-6).all() and (out <= 1 + 1e-6).all()


@pytest.mark.parametrize("nq,ng", [(1, 1), (1, 2), (2, 1), (1, 6), (3, 2)])
@pytest.mark.parametrize("k1,k2", [(1, 1), (2, 2), (20, 6), (3, 64)])
def test_tiny_inputs_and_k_beyond_n(nq, ng, k1, k2):
    # k1 + 1 or k2 beyond Q + G: the classic code's slices then take all samples, and so do the fast paths.
    x = features("random", nq + ng, dim=3, seed=nq * 10 + ng)
    args = blocks(x[:nq], x[nq:])
    expected = re_ranking_reference(*args, k1=k1, k2=k2)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(re_ranking(*args, k1=k1, k2=k2), expected, rtol=0, atol=ATOL)
    np.testing.assert_allclose(re_ranking_features(x[:nq], x[nq:], k1=k1, k2=k2), expected, rtol=0, atol=ATOL)


def test_single_pair_at_distance_zero():
    # One query, one gallery sample, at the same place: every distance 0.
    z = np.zeros((1, 1))
    got = re_ranking(z, z, z, k1=3, k2=2)
    np.testing.assert_allclose(got, re_ranking_reference(np.ones((1, 1)), np.ones((1, 1)), np.ones((1, 1)), k1=3,
                                                         k2=2), rtol=0, atol=ATOL)


def test_non_contiguous_arguments():
    x = features("random", 40, seed=34)
    qg, qq, gg = blocks(x[:10], x[10:])
    expected = re_ranking_reference(qg, qq, gg, k1=5, k2=2)
    t_qg = torch.from_numpy(qg.T.copy()).T  # a transposed view, as a user's distmat.T would be
    t_qq, t_gg = torch.from_numpy(qq.T.copy()).T, torch.from_numpy(gg.T.copy()).T
    assert not t_qg.is_contiguous()
    np.testing.assert_allclose(re_ranking(t_qg, t_qq, t_gg, k1=5, k2=2).numpy(), expected, rtol=0, atol=ATOL)
    # numpy views with negative strides: the queries in reverse order give the rows in reverse order
    np.testing.assert_allclose(re_ranking(qg[::-1], qq[::-1, ::-1], gg, k1=5, k2=2), expected[::-1], atol=ATOL)
    wide = torch.from_numpy(np.repeat(x, 2, axis=1))[:, ::2]  # every other column: strided rows
    assert not wide.is_contiguous()
    np.testing.assert_allclose(re_ranking_features(wide[:10], wide[10:], k1=5, k2=2).numpy(), expected, atol=ATOL)
    np.testing.assert_allclose(re_ranking_features(x[:10][::-1], x[10:], k1=5, k2=2), expected[::-1], atol=ATOL)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _good():
    x = features("random", 30, seed=15)
    return blocks(x[:10], x[10:])


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: (a[0][:, :-1], a[1], a[2]), "g_g_dist"),
        (lambda a: (a[0], a[1][:-1], a[2]), "q_q_dist"),
        (lambda a: (a[0][None], a[1], a[2]), "q_g_dist"),
        (lambda a: (a[0].astype(np.int64), a[1], a[2]), "q_g_dist"),
        (lambda a: (a[0], np.where(np.eye(10) > 0, np.nan, a[1]), a[2]), "q_q_dist"),
        (lambda a: (a[0], a[1], np.full_like(a[2], np.inf)), "g_g_dist"),
        (lambda a: (a[0][:0], a[1][:0, :0], a[2]), "q_g_dist"),
        (lambda a: (torch.from_numpy(a[0]), a[1], a[2]), "not a mix"),
    ],
)
def test_re_ranking_bad_input(mutate, match):
    with pytest.raises(ValueError, match=match):
        re_ranking(*mutate(_good()))


@pytest.mark.parametrize(
    "kwargs,match",
    [({"k1": 0}, "k1=0"), ({"k2": 0}, "k2=0"), ({"k1": 2.5}, "k1=2.5"), ({"lambda_value": 1.5}, "lambda_value"),
     ({"k1": True}, "k1=True"), ({"lambda_value": float("nan")}, "lambda_value")],
)
def test_re_ranking_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        re_ranking(*_good(), **kwargs)


def test_features_bad_input():
    x = features("random", 30, seed=16)
    with pytest.raises(ValueError, match="gallery"):
        re_ranking_features(x[:10], x[10:, :5])
    with pytest.raises(ValueError, match="query"):
        re_ranking_features(x[:0], x[10:])
    with pytest.raises(ValueError, match="query"):
        re_ranking_features(x[:10].astype(np.int32), x[10:])
    with pytest.raises(ValueError, match="gallery"):
        re_ranking_features(x[:10], np.where(x[10:] > 1, np.nan, x[10:]))
    with pytest.raises(ValueError, match="metric"):
        re_ranking_features(x[:10], x[10:], metric="manhattan")
    with pytest.raises(ValueError, match="metric='neg_dot'.*non-negative"):
        re_ranking_features(x[:10], x[10:], metric="neg_dot")
    with pytest.raises(ValueError, match="k2=65"):
        re_ranking_features(x[:10], np.tile(x[10:], (4, 1)), k2=65)
    with pytest.raises(ValueError, match="query"):
        re_ranking_features(x[0], x[10:])


# ---------------------------------------------------------------------------------------------
# CUDA == CPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["random", "blobs"])
def test_cuda_re_ranking_matches_cpu(kind):
    x = features(kind, 200, dim=32, seed=21)
    args = [torch.from_numpy(a) for a in blocks(x[:40], x[40:])]
    expected = re_ranking(*args, k1=20, k2=6)
    got = re_ranking(*(a.cuda() for a in args), k1=20, k2=6)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=ATOL)


@pytest.mark.gpu
@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("k1,k2", [(20, 6), (7, 1)])
def test_cuda_features_match_cpu(metric, k1, k2):
    x = torch.from_numpy(features("blobs", 300, dim=32, seed=22))
    q, g = x[:50], x[50:]
    expected = re_ranking_features(q, g, k1=k1, k2=k2, metric=metric)
    got = re_ranking_features(q.cuda(), g.cuda(), k1=k1, k2=k2, metric=metric, block_rows=64)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=ATOL)


@pytest.mark.gpu
def test_cuda_ops_match_cpu():
    # Each op on the same inputs on both devices (GEMM rounding differs between devices, so the
    # neighbour tables are compared by the distances they select, then one table feeds both).
    x = torch.from_numpy(features("blobs", 150, dim=16, seed=23))
    nbr, rowmax, qg = torch.ops.dgnet.rerank_knn(x, 0, 21, 64, 40)
    nbr_c, rowmax_c, qg_c = torch.ops.dgnet.rerank_knn(x.cuda(), 0, 21, 64, 40)
    sq = torch.ops.dgnet.pairwise_distance(x, x, 1, 0)
    torch.testing.assert_close(sq.gather(1, nbr_c.cpu()), sq.gather(1, nbr), rtol=0, atol=1e-5)
    # GEMM accumulation order differs between devices: on an H100 the query-gallery block differed by
    # up to 1.7e-5 relative, so compare the GEMM-derived values at a GEMM-rounding tolerance.
    torch.testing.assert_close(rowmax_c.cpu(), rowmax, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(qg_c.cpu(), qg, rtol=1e-4, atol=1e-5)
    indptr, indices = torch.ops.dgnet.rerank_expand(nbr, 20)
    indptr_c, indices_c = torch.ops.dgnet.rerank_expand(nbr.cuda(), 20)
    assert torch.equal(indptr_c.cpu(), indptr) and torch.equal(indices_c.cpu(), indices)
    dist = torch.ops.dgnet.rerank_pair_dist(x, indptr, indices, rowmax, 0)
    dist_c = torch.ops.dgnet.rerank_pair_dist(x.cuda(), indptr.cuda(), indices.cuda(), rowmax.cuda(), 0)
    torch.testing.assert_close(dist_c.cpu(), dist, rtol=1e-4, atol=1e-5)
    for k2 in (1, 6):
        out = qg / rowmax[:40, None]
        out_c = out.cuda()
        torch.ops.dgnet.rerank_jaccard_mix_(out, indptr, indices, dist, nbr, k2, 0.3)
        torch.ops.dgnet.rerank_jaccard_mix_(out_c, indptr.cuda(), indices.cuda(), dist.cuda(), nbr.cuda(), k2, 0.3)
        torch.testing.assert_close(out_c.cpu(), out, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_cuda_dense_ops_match_cpu():
    x = features("random", 120, dim=16, seed=24)
    blocks_cpu = [torch.from_numpy(a) for a in blocks(x[:30], x[30:])]
    blocks_gpu = [b.cuda() for b in blocks_cpu]
    nbr, colmax = torch.ops.dgnet.rerank_dense_knn(*blocks_cpu, 21)
    nbr_c, colmax_c = torch.ops.dgnet.rerank_dense_knn(*blocks_gpu, 21)
    assert torch.equal(nbr_c.cpu(), nbr)  # same float64 inputs, same per-element code: no rounding gap
    torch.testing.assert_close(colmax_c.cpu(), colmax)
    indptr, indices = torch.ops.dgnet.rerank_expand(nbr, 20)
    vals = torch.ops.dgnet.rerank_dense_gather(*blocks_cpu, colmax, indptr, indices)
    vals_c = torch.ops.dgnet.rerank_dense_gather(*blocks_gpu, colmax.cuda(), indptr.cuda(), indices.cuda())
    torch.testing.assert_close(vals_c.cpu(), vals)
