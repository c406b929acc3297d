"""Ranking evaluation of person re-id retrieval: CMC, mAP and mINP under the Market-1501 protocol.

For each query (identity ``qp``, camera ``qc``), the gallery entries with identity ``qp`` seen by camera
``qc`` are removed (the same person in the same view is too easy), and so are the junk entries
(identity ``-1``). The remaining entries are ranked by distance, ties broken by gallery index (the order
of a stable argsort). The true matches are the kept entries with identity ``qp``. A query without any is
skipped, as torchreid skips it: it is excluded from every mean below. How many were skipped is
``RankResult.num_skipped``, and every evaluation that skips queries says so with a ``UserWarning``.
Distractors (identity ``0`` in Market-1501) are ordinary non-matching identities.

- CMC[k]: the fraction of valid queries whose first true match is within the top ``k + 1``.
- AP: mean over a query's true matches of the precision at the match's rank; mAP is its mean over valid
  queries (torchreid's and fast-reid's definition). mINP: mean over valid queries of
  ``#matches / rank of the last match`` (Ye et al., 2021).
- AP_trapz: the Market-1501 devkit's AP, which the DG-Net reference (and so the paper's tables) uses: the
  precision-recall curve integrated by the trapezoidal rule, i.e. each match contributes the mean of the
  precision at its rank and the precision one place before (1 before rank 1). It is never above AP: a
  match at rank ``r`` with ``n`` non-matches before it contributes ``n / (2 r (r - 1))`` less, so the two
  agree when the matches lead the list and part on hard queries. Quote it when comparing with DG-Net's
  published mAP. ``mAP_trapz`` is its mean over valid queries.

With no ``-1`` identities and no distance ties, ``evaluate_rank`` equals torchreid's ``eval_market1501``.
The fast path is the compiled op ``dgnet::evaluate_queries`` (:func:`dgnet.ops.evaluation.evaluate_queries`;
CPU: parallel over queries; CUDA: one block per query, on the distance matrix's device). It never sorts a
whole gallery row: the rank of a true match is one plus the number of kept entries ranked before it (see
csrc/include/dgnet/evaluation.h). ``evaluate_reference`` is the classic per-query argsort loop, kept as the
reference of the tests.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from dgnet.ops.evaluation import evaluate_queries

__all__ = ["RankResult", "evaluate", "evaluate_rank", "evaluate_rank_reference", "evaluate_reference"]

JUNK_PID = -1
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class RankResult:
    """Evaluation results.

    Attributes:
        cmc: float32 ``[min(max_rank, G)]``, the CMC curve (``cmc[0]`` is Rank@1).
        mAP: mean average precision over valid queries.
        mINP: mean inverse negative penalty over valid queries.
        ap: float64 ``[Q]``, each query's average precision; NaN for a query without a true match
            (such a query is skipped: excluded from every mean).
        valid: bool ``[Q]``, which queries have at least one true match (``num_valid`` of them; the other
            ``num_skipped`` are the skipped ones).
        mAP_trapz: mean over valid queries of ``ap_trapz``, the Market-1501 devkit's (trapezoidal) AP.
        ap_trapz: float64 ``[Q]``, each query's trapezoidal AP; NaN where ``ap`` is.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    ap: np.ndarray
    valid: np.ndarray
    mAP_trapz: float
    ap_trapz: np.ndarray

    @property
    def num_valid(self) -> int:
        """Queries with at least one true match: those every mean is over."""
        return int(self.valid.sum())

    @property
    def num_skipped(self) -> int:
        """Queries without a true match, excluded from every mean (torchreid's semantics)."""
        return int(self.valid.size - self.valid.sum())


# ---- input checking --------------------------------------------------------------------------------


def _as_distmat(distmat: object) -> torch.Tensor:
    if isinstance(distmat, np.ndarray):
        if distmat.dtype not in (np.float16, np.float32, np.float64):
            raise ValueError(f"distmat: expected a float16/32/64 array, got dtype {distmat.dtype}")
        distmat = torch.from_numpy(np.ascontiguousarray(distmat))  # no copy unless strided or reversed
    elif not isinstance(distmat, torch.Tensor):
        raise ValueError(f"distmat: expected a numpy array or torch.Tensor, got {type(distmat).__name__}")
    elif distmat.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"distmat: expected a floating dtype, got {distmat.dtype}")
    if distmat.dim() != 2:
        raise ValueError(f"distmat: expected a 2-D [num_query, num_gallery] matrix, got shape {tuple(distmat.shape)}")
    if distmat.shape[0] == 0 or distmat.shape[1] == 0:
        raise ValueError(f"distmat: empty query or gallery, got shape {tuple(distmat.shape)}")
    distmat = distmat.detach()
    # One read pass, no [Q, G] temporary: min and max propagate NaN, and are finite iff every entry is.
    if not bool(torch.isfinite(torch.stack(torch.aminmax(distmat))).all()):
        bad = int((~torch.isfinite(distmat)).sum())
        raise ValueError(f"distmat: contains {bad} NaN or infinite values; expected finite distances")
    return distmat


def _as_ids(name: str, ids: object, length: int, which: str, device: torch.device) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        t = ids.detach()
    else:
        arr = np.ascontiguousarray(ids)
        if arr.dtype == object:
            raise ValueError(f"{name}: expected integer ids, got objects")
        t = torch.from_numpy(arr) if arr.dtype.kind in "iub" else None
        if t is None:
            raise ValueError(f"{name}: expected an integer array, got dtype {arr.dtype}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name}: expected an integer dtype, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"{name}: expected shape [{length}] (the {which} size of distmat), got {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.int64).contiguous()


def _prepare(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank={max_rank!r}: expected an int >= 1")
    d = _as_distmat(distmat)
    nq, ng = d.shape
    return (
        d,
        _as_ids("q_pids", q_pids, nq, "query (row)", d.device),
        _as_ids("g_pids", g_pids, ng, "gallery (column)", d.device),
        _as_ids("q_camids", q_camids, nq, "query (row)", d.device),
        _as_ids("g_camids", g_camids, ng, "gallery (column)", d.device),
        int(max_rank),
    )


def _warn_skipped(fn: str, r: RankResult) -> None:
    if r.num_skipped:
        warnings.warn(
            f"{fn}: {r.num_skipped} of {r.valid.size} queries have no true match in the gallery (their identity "
            "is absent, or present only under the query's own camera or as junk -1) and are skipped: CMC, mAP "
            f"and mINP average the other {r.num_valid} (RankResult.valid, .num_skipped)",
            UserWarning,
            stacklevel=3,
        )


def _no_valid_query() -> ValueError:
    return ValueError(
        "q_pids: no query has a true match in the gallery (after removing same-camera matches and junk "
        "pid -1); check that the query identities appear in g_pids under other cameras"
    )


# ---- fast path -------------------------------------------------------------------------------------


def evaluate(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray | torch.Tensor,
    g_pids: np.ndarray | torch.Tensor,
    q_camids: np.ndarray | torch.Tensor,
    g_camids: np.ndarray | torch.Tensor,
    max_rank: int = 50,
) -> RankResult:
    """CMC, mAP, mINP and per-query AP under the Market-1501 protocol (see the module docstring).

    Queries without a true match are skipped (excluded from every mean); when there are any, a
    ``UserWarning`` says how many of how many, and ``RankResult.num_skipped`` counts them.

    Args:
        distmat: ``[Q, G]`` distances (smaller is closer), float16/bfloat16/float32/float64, numpy or
            torch on CPU or CUDA, any strides; computed on its device. Must be finite.
        q_pids, q_camids: ``[Q]`` integer identities and cameras of the queries (numpy or torch, any device
            and strides).
        g_pids, g_camids: ``[G]`` integer identities and cameras of the gallery; identity -1 is junk.
        max_rank: length of the CMC curve, capped at ``G``.

    Returns:
        :class:`RankResult` (numpy arrays and Python floats, on the host).

    Raises:
        ValueError: naming the argument, for bad shapes or dtypes, NaN/inf distances, an empty query or
            gallery, ``max_rank < 1``, or when no query has a true match.

    Example:
        >>> d = np.array([[0.1, 0.5, 0.3], [0.9, 0.2, 0.4]])
        >>> r = evaluate(d, [1, 2], [1, 2, 1], [0, 0], [1, 1, 1], max_rank=3)
        >>> r.cmc.tolist(), r.mAP
        ([1.0, 1.0, 1.0], 1.0)
    """
    r = _evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    _warn_skipped("evaluate", r)
    return r


def _evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank) -> RankResult:
    d, qp, gp, qc, gc, max_rank = _prepare(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    ap, inp, first, ap_trapz = evaluate_queries(d, qp, gp, qc, gc)
    valid = first > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise _no_valid_query()
    max_rank = min(max_rank, d.shape[1])
    # First-match ranks beyond max_rank land in an overflow bin that is cut off.
    hist = torch.bincount((first[valid] - 1).clamp(max=max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = (hist.cumsum(0).double() / num_valid).float()
    return RankResult(
        cmc=cmc.cpu().numpy(),
        mAP=float(ap[valid].mean()),
        mINP=float(inp[valid].mean()),
        ap=ap.cpu().numpy(),
        valid=valid.cpu().numpy(),
        mAP_trapz=float(ap_trapz[valid].mean()),
        ap_trapz=ap_trapz.cpu().numpy(),
    )


def evaluate_rank(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray | torch.Tensor,
    g_pids: np.ndarray | torch.Tensor,
    q_camids: np.ndarray | torch.Tensor,
    g_camids: np.ndarray | torch.Tensor,
    max_rank: int = 50,
) -> tuple[np.ndarray, float]:
    """``(cmc, mAP)`` under the Market-1501 protocol: torchreid's ``evaluate_rank`` signature and meaning.

    Arguments, errors and the warning about skipped queries as :func:`evaluate`. Returns ``cmc`` float32
    ``[min(max_rank, G)]`` and ``mAP`` a float.

    Example:
        >>> d = np.array([[0.1, 0.5, 0.3], [0.9, 0.2, 0.4]])
        >>> cmc, mAP = evaluate_rank(d, [1, 2], [1, 2, 1], [0, 0], [1, 1, 1], max_rank=3)
        >>> float(cmc[0]), mAP
        (1.0, 1.0)
    """
    r = _evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    _warn_skipped("evaluate_rank", r)
    return r.cmc, r.mAP


# ---- reference -------------------------------------------------------------------------------------


def evaluate_reference(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray | torch.Tensor,
    g_pids: np.ndarray | torch.Tensor,
    q_camids: np.ndarray | torch.Tensor,
    g_camids: np.ndarray | torch.Tensor,
    max_rank: int = 50,
) -> RankResult:
    """The classic loop: per query a stable argsort of the whole gallery row, then cumulative sums.

    Same arguments, result, errors and warning as :func:`evaluate`; slow (a full sort of every gallery row).
    """
    r = _evaluate_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    _warn_skipped("evaluate_reference", r)
    return r


def _evaluate_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank) -> RankResult:
    d, qp, gp, qc, gc, max_rank = _prepare(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    dist = (d if d.dtype == torch.float64 else d.float()).cpu().numpy()
    qp, gp, qc, gc = (t.cpu().numpy() for t in (qp, gp, qc, gc))
    num_q, num_g = dist.shape
    max_rank = min(max_rank, num_g)
    cmc_rows, aps, inps, traps = [], np.full(num_q, np.nan), np.full(num_q, np.nan), np.full(num_q, np.nan)
    for q in range(num_q):
        order = np.argsort(dist[q], kind="stable")
        pids, cams = gp[order], gc[order]
        keep = ~((pids == qp[q]) & (cams == qc[q])) & (pids != JUNK_PID)
        hits = pids[keep] == qp[q]
        if not hits.any():
            continue
        cum = np.cumsum(hits)
        row = np.ones(max_rank, dtype=np.float32)  # once the first match is in, every longer prefix has it
        row[: min(max_rank, int(np.argmax(hits)))] = 0.0
        cmc_rows.append(row)
        ranks = np.arange(1, len(hits) + 1)
        precision = cum / ranks
        aps[q] = precision[hits].sum() / hits.sum()
        # the devkit's loop: precision one place before each match (1 before the first place)
        before = np.concatenate([[1.0], cum[:-1] / ranks[:-1]])
        traps[q] = ((before + precision) / 2)[hits].sum() / hits.sum()
        inps[q] = hits.sum() / (np.flatnonzero(hits)[-1] + 1)
    if not cmc_rows:
        raise _no_valid_query()
    valid = ~np.isnan(aps)
    return RankResult(
        cmc=(np.stack(cmc_rows).sum(0) / len(cmc_rows)).astype(np.float32),
        mAP=float(np.mean(aps[valid])),
        mINP=float(np.mean(inps[valid])),
        ap=aps,
        valid=valid,
        mAP_trapz=float(np.mean(traps[valid])),
        ap_trapz=traps,
    )


def evaluate_rank_reference(
    distmat: np.ndarray | torch.Tensor,
    q_pids: np.ndarray | torch.Tensor,
    g_pids: np.ndarray | torch.Tensor,
    q_camids: np.ndarray | torch.Tensor,
    g_camids: np.ndarray | torch.Tensor,
    max_rank: int = 50,
) -> tuple[np.ndarray, float]:
    """``(cmc, mAP)`` of :func:`evaluate_reference`: the reference of :func:`evaluate_rank`."""
    r = _evaluate_reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    _warn_skipped("evaluate_rank_reference", r)
    return r.cmc, r.mAP

