"""The op front of ranking evaluation: ``dgnet::evaluate_queries``, the per-query kernel behind
:mod:`dgnet.evaluation.rank` (which holds the protocol, its checks, the CMC/mAP means and the reference).

The kernels (CPU: csrc/cpu/evaluation.cpp, queries in parallel; CUDA: csrc/cuda/evaluation.cu, one block per
query) share the per-query logic of csrc/include/dgnet/evaluation.h: no gallery row is sorted, the rank of a
true match is one plus the number of kept entries ranked before it. The fake kernel registered here lets the
op trace under ``torch.compile`` / FakeTensor and pass ``torch.library.opcheck``.
"""

from __future__ import annotations

import torch

from dgnet.ops._lib import extension_available, require_extension

__all__ = ["evaluate_queries"]


def evaluate_queries(
    distmat: torch.Tensor,
    q_pids: torch.Tensor,
    g_pids: torch.Tensor,
    q_camids: torch.Tensor,
    g_camids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-query results of the Market-1501 protocol (definitions: :mod:`dgnet.evaluation.rank`).

    Args:
        distmat: ``[Q, G]`` distances, smaller is closer; float16/bfloat16/float32 (ranked in float32, which
            is exact for the half types) or float64; CPU or CUDA, any strides. Values are not checked here:
            :func:`dgnet.evaluation.rank.evaluate` rejects NaN and inf first.
        q_pids, q_camids: int64 ``[Q]`` identities and cameras of the queries, on ``distmat``'s device.
        g_pids, g_camids: int64 ``[G]`` of the gallery (identity -1 is junk), on ``distmat``'s device.

    Returns:
        ``(ap, inp, first_rank, ap_trapz)`` on ``distmat``'s device: float64 ``[Q]`` average precision,
        float64 ``[Q]`` inverse negative penalty, int64 ``[Q]`` 1-based rank of the first true match, float64
        ``[Q]`` trapezoidal (Market-1501 devkit) AP. A query without a true match has ``first_rank`` 0 and NaN
        in the three others.

    Raises:
        RuntimeError: from the kernel, naming the argument, for a wrong shape, dtype or device.
    """
    require_extension()
    return torch.ops.dgnet.evaluate_queries(distmat, q_pids, g_pids, q_camids, g_camids)


if extension_available():

    @torch.library.register_fake("dgnet::evaluate_queries")
    def _evaluate_queries_fake(distmat, q_pids, g_pids, q_camids, g_camids):
        torch._check(distmat.dim() == 2, lambda: "evaluate_queries: distmat must be 2-D")
        torch._check(q_pids.shape == (distmat.shape[0],), lambda: "evaluate_queries: q_pids must be [Q]")
        torch._check(g_pids.shape == (distmat.shape[1],), lambda: "evaluate_queries: g_pids must be [G]")
        torch._check(q_camids.shape == (distmat.shape[0],), lambda: "evaluate_queries: q_camids must be [Q]")
        torch._check(g_camids.shape == (distmat.shape[1],), lambda: "evaluate_queries: g_camids must be [G]")
        nq = distmat.shape[0]
        return (
            distmat.new_empty((nq,), dtype=torch.float64),
            distmat.new_empty((nq,), dtype=torch.float64),
            distmat.new_empty((nq,), dtype=torch.int64),
            distmat.new_empty((nq,), dtype=torch.float64),
        )
