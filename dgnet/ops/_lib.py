"""Loading of the compiled extension and the process-wide fast-path switch.

Importing ``dgnet._C`` registers ``torch.ops.dgnet.*`` (CPU, and CUDA when built with it).
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger("dgnet")

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


_FUSED = False
_SAID: set[str] = set()


def set_fused(enabled: bool) -> None:
    """Turn the fused fast paths on or off for ops called with ``backend=None``."""
    global _FUSED
    _FUSED = bool(enabled)


def fused_enabled() -> bool:
    return _FUSED


FOLD_MODES = ("auto", "on", "off")
_FOLD = "auto"


def set_fold_upsample(mode: str) -> None:
    """Where ``--fused`` also folds the decoder's upsample + conv5x5 (``dgnet.models.layers.upsample_conv5``).

    ``"auto"`` (default): on CPU tensors only. On CUDA the fold trades 64% of the convolution's
    multiply-adds for about 20 more small ops forward and 40 backward per call, and the one whole-iteration
    GPU measurement (H100, spec size, batch 8) was host-bound with ``--fused`` slower than plain; until the
    fold is measured on its own there (``benchmarks/bench_train_step.py -m gpu``), CUDA keeps the plain
    upsample + conv. ``"on"``/``"off"``: every device / none.
    """
    global _FOLD
    if mode not in FOLD_MODES:
        raise ValueError(f"fold_upsample={mode!r}: expected one of {FOLD_MODES}")
    _FOLD = mode


def fold_upsample_enabled(device: torch.device) -> bool:
    """True when fused mode is on and the fold applies to tensors on ``device`` (see ``set_fold_upsample``)."""
    if not _FUSED or _FOLD == "off":
        return False
    return _FOLD == "on" or device.type == "cpu"


# Operators that only make views or allocate: no kernel runs, so they are left out of host_op_count.
_FREE_OPS = frozenset(
    "view _unsafe_view t transpose permute expand unsqueeze squeeze slice select split split_with_sizes unbind "
    "as_strided alias detach empty empty_like empty_strided".split()
)


def host_op_count(fn) -> int:
    """Run ``fn()`` and return how many operators it dispatched, views and allocations left out: about one
    kernel launch each on a GPU. A step that is host-bound there gets faster with fewer of them, so this is
    the figure the fused paths are held to on a machine without a GPU (tests, ``benchmarks/profile_step.py``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    count = 0

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal count
            count += func.overloadpacket.__name__ not in _FREE_OPS
            return func(*args, **(kwargs or {}))

    with _Count():
        fn()
    return count


def say_once(key: str, message: str) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key not in _SAID:
        _SAID.add(key)
        log.warning(message)
