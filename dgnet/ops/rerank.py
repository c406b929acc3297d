"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, CVPR 2017), exact and sparse.

Three entry points share one interface and one meaning, the classic one that torchreid and
fast-reid ship:

- ``re_ranking_reference``: the plain numpy algorithm over dense (Q+G) x (Q+G) matrices, written
  from the paper's description. It is the reference of the tests and the baseline of the benchmark.
- ``re_ranking``: the same from the three distance blocks, through the compiled sparse core.
- ``re_ranking_features``: the same from features, without any dense (Q+G) x (Q+G) matrix, so it
  fits MSMT17 (11,659 x 82,161) in memory.

The algorithm over N = Q + G samples (queries first):

1. Original distance: the square of the given distances, each row divided by its maximum.
   (The classic code divides each column by its maximum and transposes: the same for symmetric
   blocks; ``re_ranking`` follows the classic form exactly, also for asymmetric ones.)
2. Neighbour table: each row's nearest samples in ascending order (itself first).
3. Expansion set E(i): the k-reciprocal set R(i, k1) (the j among i's k1+1 nearest that have i
   among their k1+1 nearest), plus R(c, round(k1/2)) of every c in R(i, k1) sharing more than
   2/3 of its members with R(i, k1).
4. V[i, j] = exp(-d(i, j)) over j in E(i), normalised to sum 1 (every other entry is zero).
5. Local query expansion (if k2 != 1): V[i] becomes the mean of V over i's k2 nearest rows.
6. Jaccard distance 1 - s / (2 - s) with s = sum_j min(V[q, j], V[g, j]).
7. Final distance: jaccard * (1 - lambda) + original * lambda, the [Q, G] block.

``re_ranking`` and ``re_ranking_features`` differ only in steps 1-2 and in where d(i, j) of
step 4 comes from (a dense lookup or a dot product of features); steps 3-7 are the compiled ops
``dgnet::rerank_expand`` and ``dgnet::rerank_jaccard_mix_`` (per-row logic in
csrc/include/dgnet/rerank.h), the same code on CPU and CUDA.

Exactness: results equal the classic algorithm within 1e-4 when no two distances of a row tie
near its k1+1, round(k1/2)+1 or k2 boundary. Ties are ranked by sample index, as a stable sort
ranks them (the classic code's default argsort is unstable, so there its result depends on numpy;
``re_ranking_reference`` sorts stably). Local query expansion supports k2 <= 64.

Defined results on any finite input:

- Scale: re-ranking is invariant to scaling all distances (or all features) by one positive
  factor. Inputs whose squares would leave float32's range (distances beyond about 1e12 or below
  1e-12; features beyond 2^16 or below 2^-16) are first scaled by a power of two, which is exact,
  so the result is the classic one of the same distances at a representable scale. Inputs within
  the range are computed exactly as before.
- All-equal rows: a row of the normalised matrix whose maximum is 0 holds only zeros (identical
  samples, all-zero distances) and normalises to ones, like every constant row. So all-equal
  distances give one result at every scale: the classic result for any constant c > 0, also for
  c = 0, where the classic code divides 0 by 0 (NaN everywhere).
- k1 + 1 or k2 beyond N = Q + G: every sample is taken, as the classic code's slices do.
- Distances are squared, so they must be non-negative distances (euclidean- or cosine-like). A
  negative score such as ``pairwise_distance(..., "neg_dot")`` has no meaning here: squaring folds
  its order; ``re_ranking_features`` rejects that metric.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch

from dgnet.ops._lib import extension_available, require_extension
from dgnet.ops.distance import METRICS

Array = TypeVar("Array", np.ndarray, torch.Tensor)

MAX_K2 = 64  # kMaxQueryExpansion in csrc/include/dgnet/rerank.h
_RERANK_METRICS = ("euclidean", "sqeuclidean", "cosine")  # distances; METRICS' neg_dot is a score


# ---------------------------------------------------------------------------------------------
# Reference: the classic dense numpy algorithm.
# ---------------------------------------------------------------------------------------------


def re_ranking_reference(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Plain dense numpy k-reciprocal re-ranking: the reference of ``re_ranking``.

    Args:
        q_g_dist: ``[Q, G]`` query-gallery distances; q_q_dist ``[Q, Q]``; g_g_dist ``[G, G]``.
        k1, k2, lambda_value: the paper's parameters (20, 6, 0.3).
    Returns:
        ``[Q, G]`` float32 re-ranked distances. Memory is O((Q+G)^2): small inputs only. Where the
        classic computation overflows or divides 0 by 0 the result holds inf or NaN, as the classic's does.
    """
    q_g = np.asarray(q_g_dist)
    num_q, n = q_g.shape[0], q_g.shape[0] + q_g.shape[1]
    full = np.block([[np.asarray(q_q_dist), q_g], [q_g.T, np.asarray(g_g_dist)]])
    full = np.power(full, 2).astype(np.float32)
    # Each column divided by its maximum, then transposed: row i is divided by column i's maximum.
    dist = np.transpose(full / np.max(full, axis=0))
    rank = np.argsort(dist, axis=1, kind="stable")  # ties in index order (the classic's default sort is unstable)

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = rank[i, : k + 1]
        backward = rank[forward, : k + 1]
        return forward[(backward == i).any(axis=1)]

    half = int(np.around(k1 / 2.0))
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = reciprocal(i, k1)
        members = [r]
        for c in r:
            rc = reciprocal(c, half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3.0 * len(rc):
                members.append(rc)
        e = np.unique(np.concatenate(members))
        w = np.exp(-dist[i, e])
        v[i, e] = w / np.sum(w)

    if k2 != 1:
        expanded = np.zeros_like(v)
        for i in range(n):
            expanded[i] = np.mean(v[rank[i, :k2]], axis=0)
        v = expanded

    rows_with = [np.nonzero(v[:, c])[0] for c in range(n)]  # inverted index: column -> rows
    jaccard = np.zeros((num_q, n), dtype=np.float32)
    for i in range(num_q):
        s = np.zeros(n, dtype=np.float32)
        for c in np.nonzero(v[i])[0]:
            rows = rows_with[c]
            s[rows] += np.minimum(v[i, c], v[rows, c])
        jaccard[i] = 1.0 - s / (2.0 - s)
    final = jaccard * (1.0 - lambda_value) + dist[:num_q] * lambda_value
    return final[:, num_q:]


# ---------------------------------------------------------------------------------------------
# Validation.
# ---------------------------------------------------------------------------------------------


def _as_matrix(name: str, value: object) -> torch.Tensor:
    """A 2-D, non-empty, finite, floating tensor from an array or tensor, else ValueError."""
    if isinstance(value, np.ndarray):
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{name}: expected a floating array, got dtype {value.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor):
        t = value
    else:
        raise ValueError(f"{name}: expected a numpy array or a torch tensor, got {type(value).__name__}")
    t = t.detach()  # re-ranking is not differentiable: results carry no autograd history
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D matrix, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty matrix, got shape {tuple(t.shape)}")
    return t


def _max_abs(name: str, t: torch.Tensor) -> float:
    """The largest absolute value of ``t`` (one read pass, no temporary), or ValueError if any is NaN or inf."""
    lo, hi = (float(v) for v in torch.aminmax(t))  # NaN propagates into both
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name}: contains {bad} NaN or infinite values; expected finite values")
    return max(-lo, hi)


# Distances whose squares stay far inside float32's normal range (about 1.2e-38 to 3.4e38), and features
# whose squared distances do (also squared once more for sqeuclidean, over any realistic dimension).
_DIST_RANGE = (2.0**-40, 2.0**40)
_FEATURE_RANGE = (2.0**-16, 2.0**16)


def _scale_exponent(max_abs: float, safe: tuple[float, float]) -> int:
    """The e with ``max_abs / 2**e`` in [0.5, 1) when ``max_abs`` lies outside ``safe``; else 0 (no scaling)."""
    if max_abs == 0.0 or safe[0] <= max_abs <= safe[1]:
        return 0
    return math.frexp(max_abs)[1]


def _scale(t: torch.Tensor, e: int) -> torch.Tensor:
    """``t / 2**e``, exactly: steps of at most 2**60 keep each factor a normal float32 number, and the values
    move monotonically towards [0.5, 1), so no step overflows or underflows where the end result does not."""
    while e != 0:
        step = max(-60, min(60, e))
        t = t * 2.0**-step
        e -= step
    return t


def _check_params(k1: int, k2: int, lambda_value: float, n: int) -> int:
    """Validate the parameters; returns k2 as the classic code uses it, ``min(k2, n)`` rows (its slice)."""
    for name, k in (("k1", k1), ("k2", k2)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"{name}={k!r}: expected a positive integer")
    if min(k2, n) > MAX_K2:
        raise ValueError(f"k2={k2}: local query expansion over more than {MAX_K2} rows is not supported")
    if not (isinstance(lambda_value, (int, float)) and 0.0 <= float(lambda_value) <= 1.0):
        raise ValueError(f"lambda_value={lambda_value!r}: expected a number in [0, 1]")
    return int(min(k2, n))


def _same_kind(names: tuple[str, ...], values: tuple[object, ...]) -> bool:
    """True when every input is a numpy array, False when every one is a tensor, else ValueError."""
    kinds = {isinstance(v, np.ndarray) for v in values}
    if len(kinds) != 1:
        raise ValueError(f"{', '.join(names)}: pass all numpy arrays or all torch tensors, not a mix")
    return kinds.pop()


def _same_device(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...]) -> torch.device:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{', '.join(names)}: expected one device, got {sorted(map(str, devices))}")
    return devices.pop()


# ---------------------------------------------------------------------------------------------
# The shared sparse core: steps 3-7.
# ---------------------------------------------------------------------------------------------


def _sparse_core(nbr: torch.Tensor, pair_dist, out: torch.Tensor, k1: int, k2: int, lambda_value: float):
    """Expansion sets from the neighbour table, their distances from ``pair_dist(indptr, indices)``,
    then weights, query expansion, Jaccard and the mix into ``out`` (original distances on entry)."""
    indptr, indices = torch.ops.dgnet.rerank_expand(nbr, k1)
    dist = pair_dist(indptr, indices)
    torch.ops.dgnet.rerank_jaccard_mix_(out, indptr, indices, dist, nbr, k2, float(lambda_value))
    return out


def _neighbours_needed(k1: int, k2: int, n: int) -> int:
    # All n columns when k1 + 1 > n: rerank_expand then caps the sizes as the classic code's slices do.
    return int(min(max(k1 + 1, k2), n))


def _normalise_rows_(out: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
    """``out[i] / row_max[i]`` in place, a row of zeros (``row_max`` 0) becoming ones (dgnet::normalise)."""
    out.div_(row_max[:, None])
    zero = row_max == 0
    if bool(zero.any()):  # rare (identical samples): only then a second pass, over those rows
        out[zero] = 1.0
    return out


# ---------------------------------------------------------------------------------------------
# Public fast paths.
# ---------------------------------------------------------------------------------------------


def re_ranking(
    q_g_dist: Array,
    q_q_dist: Array,
    g_g_dist: Array,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> Array:
    """k-reciprocal re-ranking of query-gallery distances, the classic interface.

    Args:
        q_g_dist: ``[Q, G]`` non-negative distances from each query to each gallery sample (any float
            dtype, any strides; finite).
        q_q_dist: ``[Q, Q]`` distances among queries; g_g_dist ``[G, G]`` among the gallery.
            All three numpy arrays, or all three tensors on one device (CPU or CUDA).
        k1: size of the k-reciprocal neighbourhood (every sample when ``k1 + 1 > Q + G``); k2: rows averaged
            by local query expansion (1 turns it off; ``min(k2, Q + G)`` rows, at most 64);
            lambda_value: weight of the original distance, in [0, 1].
    Returns:
        ``[Q, G]`` float32 re-ranked distances in [0, 1]: a numpy array for numpy inputs, else a tensor on
        the inputs' device. Equals ``re_ranking_reference`` (and the classic code) within 1e-4 when the
        inputs have no distance ties, and is finite for every finite input (module docstring: scale,
        all-equal rows).
    Memory:
        The inputs, the output and sparse sets: the (Q+G)^2 block matrix is never built.

    Example:
        >>> q, g = torch.randn(3, 8), torch.randn(10, 8)
        >>> d = lambda a, b: torch.cdist(a, b)
        >>> re_ranking(d(q, g), d(q, q), d(g, g), k1=4, k2=2).shape
        torch.Size([3, 10])
    """
    names = ("q_g_dist", "q_q_dist", "g_g_dist")
    as_numpy = _same_kind(names, (q_g_dist, q_q_dist, g_g_dist))
    qg, qq, gg = (_as_matrix(nm, v) for nm, v in zip(names, (q_g_dist, q_q_dist, g_g_dist), strict=True))
    num_q, num_g = qg.shape
    if tuple(qq.shape) != (num_q, num_q):
        raise ValueError(f"q_q_dist: expected shape ({num_q}, {num_q}) from q_g_dist {tuple(qg.shape)}, "
                         f"got {tuple(qq.shape)}")
    if tuple(gg.shape) != (num_g, num_g):
        raise ValueError(f"g_g_dist: expected shape ({num_g}, {num_g}) from q_g_dist {tuple(qg.shape)}, "
                         f"got {tuple(gg.shape)}")
    _same_device(names, (qg, qq, gg))
    n = num_q + num_g
    k2 = _check_params(k1, k2, lambda_value, n)
    require_extension()

    # Steps 1-2 as the classic code, without building the (Q+G)^2 matrix: squares in the inputs'
    # dtype (float64 stays float64 until stored as float32), each row of the block matrix's
    # transpose divided by its maximum; only each row's nearest few are kept.
    wide = torch.float64 if torch.float64 in (qg.dtype, qq.dtype, gg.dtype) else torch.float32
    qg, qq, gg = qg.to(wide), qq.to(wide), gg.to(wide)
    k = _neighbours_needed(k1, k2, n)
    nbr, colmax = torch.ops.dgnet.rerank_dense_knn(qg, qq, gg, k)
    # The column maxima are the largest squared distance of each column, NaN where a NaN was read: every input
    # value is read, so their peak says what a pass of our own would (finite, and inside the range that needs
    # no scaling) without one. Outside that range (rare), the exact check, and the search again, scaled.
    peak = float(colmax.max())
    if not (_DIST_RANGE[0] ** 2 < peak < _DIST_RANGE[1] ** 2):  # False for NaN
        e = _scale_exponent(max(_max_abs(nm, t) for nm, t in zip(names, (qg, qq, gg), strict=True)), _DIST_RANGE)
        if e:
            qg, qq, gg = _scale(qg, e), _scale(qq, e), _scale(gg, e)
            nbr, colmax = torch.ops.dgnet.rerank_dense_knn(qg, qq, gg, k)

    def lookup(indptr: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return torch.ops.dgnet.rerank_dense_gather(qg, qq, gg, colmax, indptr, indices)

    # Contiguous whatever q_g_dist's layout: the core writes the result into it row by row.
    out = _normalise_rows_(qg.square().to(torch.float32).contiguous(), colmax[:num_q])
    _sparse_core(nbr, lookup, out, k1, k2, lambda_value)
    return out.numpy() if as_numpy else out


def _default_block_rows(n: int, device: torch.device) -> int:
    if device.type == "cpu":
        return 1024  # a 1024 x 1024 float32 block (4 MB) stays in cache while it is scanned
    return max(256, min(n, (1 << 28) // max(n, 1)))  # about 1 GB of distances per GEMM chunk


def re_ranking_features(
    query: Array,
    gallery: Array,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    metric: str = "euclidean",
    block_rows: int | None = None,
) -> Array:
    """k-reciprocal re-ranking from features, without any dense (Q+G) x (Q+G) matrix.

    Equal (within 1e-4, inputs without distance ties) to ``re_ranking`` applied to
    ``pairwise_distance`` of the same features with the same ``metric``.

    Args:
        query: ``[Q, D]`` features; gallery: ``[G, D]``. Both numpy arrays, or both tensors on one
            device (CPU or CUDA), any float dtype and strides (computed in float32); finite.
        k1, k2, lambda_value: as in ``re_ranking``.
        metric: ``"euclidean"``, ``"sqeuclidean"`` or ``"cosine"``: the distance that is squared.
            ``"neg_dot"`` is rejected: it is a negative score, not a distance.
        block_rows: rows per GEMM block of the neighbour search (default: by device).
    Returns:
        ``[Q, G]`` float32 re-ranked distances in [0, 1], numpy for numpy inputs, else a tensor on the
        inputs' device. Memory: the output plus O((Q+G) * (D + k1^2 * k2)) and one GEMM block.

    Example:
        >>> out = re_ranking_features(torch.randn(3, 8), torch.randn(10, 8), k1=4, k2=2)
        >>> out.shape, out.dtype
        (torch.Size([3, 10]), torch.float32)
    """
    names = ("query", "gallery")
    as_numpy = _same_kind(names, (query, gallery))
    q, g = _as_matrix("query", query), _as_matrix("gallery", gallery)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"gallery: expected feature dimension {q.shape[1]} like query, got {g.shape[1]}")
    device = _same_device(names, (q, g))
    if metric == "neg_dot":
        raise ValueError(
            "metric='neg_dot': re-ranking squares non-negative distances, and a negative score's order does not "
            "survive squaring; use 'euclidean' or 'cosine' (on L2-normalised features both rank as neg_dot does)"
        )
    if metric not in _RERANK_METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {sorted(_RERANK_METRICS)}")
    num_q, num_g = q.shape[0], g.shape[0]
    n = num_q + num_g
    k2 = _check_params(k1, k2, lambda_value, n)
    if block_rows is not None and (isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1):
        raise ValueError(f"block_rows={block_rows!r}: expected a positive integer")
    require_extension()
    code = METRICS[metric]

    x = torch.cat([q, g], 0)
    if x.dtype != torch.float64:
        x = x.to(torch.float32)  # exact; float64 is scaled first, as it may not fit float32
    e = _scale_exponent(max(_max_abs("query", q), _max_abs("gallery", g)), _FEATURE_RANGE)
    x = _scale(x, e).to(torch.float32)
    # One pass over all pairs (each GEMM block once per unordered pair on CPU): the neighbour table,
    # the row maxima, and the squared query-gallery distances, normalised in place into the output.
    nbr, rowmax, out = torch.ops.dgnet.rerank_knn(
        x, code, _neighbours_needed(k1, k2, n), block_rows or _default_block_rows(n, device), num_q
    )
    _normalise_rows_(out, rowmax[:num_q])

    def from_features(indptr: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return torch.ops.dgnet.rerank_pair_dist(x, indptr, indices, rowmax, code)

    _sparse_core(nbr, from_features, out, k1, k2, lambda_value)
    return out.numpy() if as_numpy else out


# ---------------------------------------------------------------------------------------------
# Fake kernels, so the ops trace under torch.compile / FakeTensor.
# ---------------------------------------------------------------------------------------------

if extension_available():

    @torch.library.register_fake("dgnet::rerank_knn")
    def _rerank_knn_fake(x, metric, k, block_rows, num_query):
        torch._check(x.dim() == 2, lambda: "rerank_knn: expected x [N, D]")
        torch._check(1 <= k <= x.shape[0], lambda: "rerank_knn: expected 1 <= k <= N")
        torch._check(0 <= num_query <= x.shape[0], lambda: "rerank_knn: expected 0 <= num_query <= N")
        n = x.shape[0]
        qg = x.new_empty((num_query, n - num_query if num_query > 0 else 0), dtype=torch.float32)
        return x.new_empty((n, k), dtype=torch.long), x.new_empty((n,), dtype=torch.float32), qg

    @torch.library.register_fake("dgnet::rerank_dense_knn")
    def _rerank_dense_knn_fake(q_g, q_q, g_g, k):
        n = q_g.shape[0] + q_g.shape[1]
        torch._check(1 <= k <= n, lambda: "rerank_dense_knn: expected 1 <= k <= N")
        return q_g.new_empty((n, k), dtype=torch.long), q_g.new_empty((n,), dtype=torch.float32)

    @torch.library.register_fake("dgnet::rerank_dense_gather")
    def _rerank_dense_gather_fake(q_g, q_q, g_g, colmax, indptr, indices):
        return q_g.new_empty(indices.shape, dtype=torch.float32)

    @torch.library.register_fake("dgnet::rerank_expand")
    def _rerank_expand_fake(nbr, k1):
        torch._check(
            nbr.dim() == 2 and (k1 + 1 <= nbr.shape[1] or nbr.shape[1] == nbr.shape[0]),
            lambda: "rerank_expand: needs K >= k1 + 1 columns or all K = N",
        )
        nnz = torch.library.get_ctx().new_dynamic_size()
        return nbr.new_empty((nbr.shape[0] + 1,)), nbr.new_empty((nnz,))

    @torch.library.register_fake("dgnet::rerank_pair_dist")
    def _rerank_pair_dist_fake(x, indptr, indices, rowmax, metric):
        return x.new_empty(indices.shape, dtype=torch.float32)

    @torch.library.register_fake("dgnet::rerank_jaccard_mix_")
    def _rerank_jaccard_mix_fake(out, indptr, indices, dist, nbr, k2, lambda_value):
        torch._check(out.dim() == 2 and out.dtype == torch.float32, lambda: "expected out [Q, G] float32")
        return None


__all__ = ["re_ranking", "re_ranking_features", "re_ranking_reference"]
