"""Counting what a step dispatches: the figure the fused paths are held to on a machine without a GPU."""

from __future__ import annotations

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
