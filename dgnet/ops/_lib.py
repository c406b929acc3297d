"""Loading of the compiled extension: importing ``dgnet._C`` registers ``torch.ops.dgnet.*`` (CPU, and CUDA
when built with it)."""

from __future__ import annotations

import functools

import torch

try:
    from dgnet import _C  # noqa: F401  (import registers the operators)

    _IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _IMPORT_ERROR = exc


def extension_available() -> bool:
    return _IMPORT_ERROR is None


def require_extension() -> None:
    """Raise a clear error when the compiled extension is missing."""
    if _IMPORT_ERROR is not None:
        raise RuntimeError(
            "dgnet._C is not built; run `pip install --no-build-isolation -e .` in the repository "
            f"(import failed with: {_IMPORT_ERROR})"
        )


@functools.cache
def cuda_kernels_built() -> bool:
    """True when dgnet._C was compiled with its CUDA kernels."""
    if not extension_available():
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("dgnet::pairwise_distance", "CUDA")
