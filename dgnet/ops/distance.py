"""Pairwise distances between feature sets: the first step of retrieval (features -> distance).

``pairwise_distance`` runs the compiled ``torch.ops.dgnet.pairwise_distance`` (CPU: csrc/cpu/distance.cpp,
CUDA: csrc/cuda/distance.cu): one GEMM per chunk of rows written straight into the output, then a fused
per-element epilogue (csrc/include/dgnet/distance.h), so the only memory beyond the ``[M, N]`` output is
``O((M + N) * D)``. ``pairwise_distance_reference`` is the plain PyTorch definition the tests compare against.
"""

from __future__ import annotations

import math

import torch

from dgnet.ops._lib import extension_available, require_extension

METRICS: dict[str, int] = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2, "neg_dot": 3}
"""Metric names and their codes in the ``dgnet::pairwise_distance`` schema (csrc/ops.cpp)."""

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_inputs(x: object, y: object, metric: str, chunk_rows: int | None = None) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D [rows, dim] tensor, got shape {tuple(t.shape)}")
        if t.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), got {t.dtype}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y: feature dimensions differ, x is {tuple(x.shape)} and y is {tuple(y.shape)}")
    if x.device != y.device:
        raise ValueError(f"x and y: expected the same device, got {x.device} and {y.device}")
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {sorted(METRICS)}")
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"chunk_rows={chunk_rows!r}: expected None or an int >= 1")


def pairwise_distance_reference(x: torch.Tensor, y: torch.Tensor, metric: str = "euclidean") -> torch.Tensor:
    """Plain PyTorch definition of :func:`pairwise_distance`, computed in float64 (NaN and inf propagate).

    Returns:
        float32 ``[M, N]`` on the inputs' device.
    """
    _check_inputs(x, y, metric)
    xd, yd = x.double(), y.double()
    if metric == "neg_dot":
        return (-(xd @ yd.T)).float()
    if metric == "cosine":
        xn = xd / xd.norm(dim=1, keepdim=True).clamp_min(1e-12)
        yn = yd / yd.norm(dim=1, keepdim=True).clamp_min(1e-12)
        out = 1.0 - xn @ yn.T
    else:
        # Explicit difference form, not the GEMM expansion: no cancellation in the reference.
        out = torch.cdist(xd, yd, compute_mode="donot_use_mm_for_euclid_dist")
        if metric == "sqeuclidean":
            out = out.square()
    return out.float()


def _check_finite(name: str, t: torch.Tensor) -> None:
    """ValueError naming ``t`` and its count of rows holding NaN or inf. One read pass (min and max propagate
    NaN and are finite iff every entry is); the per-row count only when that fails."""
    if t.numel() == 0 or all(map(math.isfinite, (float(v) for v in torch.aminmax(t)))):
        return
    bad = int((~torch.isfinite(t)).any(dim=1).sum())
    raise ValueError(f"{name}: {bad} of {t.shape[0]} rows contain NaN or inf; expected finite features")


def pairwise_distance(
    x: torch.Tensor, y: torch.Tensor, metric: str = "euclidean", chunk_rows: int | None = None
) -> torch.Tensor:
    """Dense distance matrix between two sets of feature vectors.

    Args:
        x: ``[M, D]`` query features; float16, bfloat16, float32 or float64 (computed in float32), CPU or CUDA,
            any strides; finite.
        y: ``[N, D]`` gallery features, same device as ``x``; finite.
        metric: ``"euclidean"`` (``||x - y||``), ``"sqeuclidean"`` (``||x - y||^2``), ``"cosine"``
            (``1 - <x, y> / (||x|| ||y||)``; a zero vector has distance 1 to everything) or ``"neg_dot"``
            (``-<x, y>``: the test protocol's distance, the negative of its dot-product score; bit for bit
            ``-(x @ y.T)``, see below).
        chunk_rows: rows of ``x`` per GEMM call; ``None`` picks it from a budget of output bytes per call
            (128 MiB on CPU, 1 GiB on CUDA, at least 256 rows; all rows for ``"neg_dot"``; see
            csrc/include/dgnet/distance.h). The GEMM writes straight into the output, so the chunk bounds one
            call's size, not the extra memory.

    Returns:
        float32 ``[M, N]`` on the inputs' device.

    Raises:
        ValueError: naming ``x`` or ``y`` for bad shapes, dtypes or devices, and for NaN or inf features (with
            the number of such rows). Under ``torch.compile`` values are unknown when tracing, so that check is
            skipped there and the op propagates NaN into the affected rows and columns.

    Euclidean distances use the GEMM expansion ``||x||^2 + ||y||^2 - 2 <x, y>`` (like ``torch.cdist``'s
    default for large inputs), so distances much smaller than the norms carry float32 cancellation error.
    ``neg_dot`` is the GEMM itself, negated (exactly), in one call over all rows by default: float32 inputs
    give exactly the bits of ``-(x @ y.T)``, the same BLAS call. Splitting it (``chunk_rows < M``) changes
    results by about an ulp, as BLAS blocks the rows of each call differently.

    Example:
        >>> q, g = torch.randn(4, 16), torch.randn(10, 16)
        >>> pairwise_distance(q, g).shape
        torch.Size([4, 10])
    """
    _check_inputs(x, y, metric, chunk_rows)
    if not torch.compiler.is_compiling():
        _check_finite("x", x)
        _check_finite("y", y)
    require_extension()
    return torch.ops.dgnet.pairwise_distance(x, y, METRICS[metric], 0 if chunk_rows is None else chunk_rows)


if extension_available():

    @torch.library.register_fake("dgnet::pairwise_distance")
    def _pairwise_distance_fake(x: torch.Tensor, y: torch.Tensor, metric: int, chunk_rows: int) -> torch.Tensor:
        torch._check(x.dim() == 2 and y.dim() == 2, lambda: "pairwise_distance: x and y must be 2-D")
        torch._check(x.shape[1] == y.shape[1], lambda: "pairwise_distance: feature dimensions differ")
        torch._check(
            0 <= metric < len(METRICS),
            lambda: f"pairwise_distance: metric must be a code of {METRICS}, got {metric}",
        )
        return x.new_empty((x.shape[0], y.shape[0]), dtype=torch.float32)
