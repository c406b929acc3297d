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


# Operator families of a training iteration, for the profile table (benchmarks/profile_step.py --families).
# A profiled event's self time goes to the first family that claims it: a region it runs inside (R1, the
# optimisers), then the operator's own name; names that are not operators (autograd nodes such as
# ``ConvolutionBackward0``, the engine's ``evaluate_function`` wrappers) are the autograd engine's own time.
R1_REGION = "dgnet::r1"
FAMILIES = (
    "convolution forward",
    "convolution backward",
    "BatchNorm",
    "instance / layer norms, AdaIN",
    "linear (MLPs, classifiers)",
    "pooling, upsampling",
    "losses",
    "elementwise, reductions",
    "copies, allocation",
    "D's R1 (gradient + double backward)",
    "optimisers",
    "autograd engine",
)
_FAMILY_OPS = {
    "convolution forward": "conv2d convolution _convolution mkldnn_convolution _mkldnn_convolution "
    "_slow_conv2d_forward thnn_conv2d _nnpack_spatial_convolution conv_transpose2d",
    "convolution backward": "convolution_backward mkldnn_convolution_backward _slow_conv2d_backward "
    "convolution_backward_overrideable",
    "BatchNorm": "batch_norm _batch_norm_impl_index native_batch_norm native_batch_norm_backward "
    "_native_batch_norm_legit _native_batch_norm_legit_no_training _batch_norm_with_update batch_norm_backward "
    "_batch_norm_no_update batch_norm_update_stats cudnn_batch_norm cudnn_batch_norm_backward",
    "instance / layer norms, AdaIN": "instance_norm layer_norm native_layer_norm native_layer_norm_backward "
    "group_norm native_group_norm native_group_norm_backward var_mean",
    "linear (MLPs, classifiers)": "linear addmm mm bmm matmul",
    "pooling, upsampling": "max_pool2d max_pool2d_with_indices max_pool2d_with_indices_backward avg_pool2d "
    "avg_pool2d_backward adaptive_avg_pool2d _adaptive_avg_pool2d _adaptive_avg_pool2d_backward "
    "upsample_nearest2d upsample_nearest2d_backward _upsample_nearest_exact2d",
    "losses": "l1_loss mse_loss cross_entropy_loss log_softmax _log_softmax _log_softmax_backward_data "
    "nll_loss nll_loss_forward nll_loss_backward nll_loss_nd kl_div softmax _softmax _softmax_backward_data "
    "binary_cross_entropy_with_logits",
    "copies, allocation": "copy_ clone cat stack fill_ zero_ zeros zeros_like ones ones_like full full_like to "
    "_to_copy contiguous new_zeros new_empty new_full resize_ empty_strided index index_select gather scatter_ "
    "flip narrow_copy",
}
_OP_FAMILY = {op: fam for fam, ops in _FAMILY_OPS.items() for op in ops.split()}


def operator_family(name: str) -> str:
    """The family of a profiled operator's name (``aten::mkldnn_convolution``, ``dgnet::adain_forward``)."""
    ns, _, op = name.rpartition("::")
    if ns == "dgnet":
        if "adain" in op or "norm" in op:
            return "instance / layer norms, AdaIN"
        if "upsample" in op:
            return "pooling, upsampling"
        return "elementwise, reductions"
    if ns != "aten":
        return "autograd engine"
    if op.startswith(("_foreach_", "_fused_adam", "_fused_sgd")):
        return "optimisers"
    return _OP_FAMILY.get(op, "elementwise, reductions")


def family_of_event(event) -> str:
    """The family of a ``torch.profiler`` FunctionEvent: a region it runs in, else its own name."""
    parent = event
    while parent is not None:
        if parent.name == R1_REGION or "BackwardBackward" in parent.name:
            return "D's R1 (gradient + double backward)"
        if parent.name.startswith("Optimizer.") or parent.name.startswith("Optimizer#"):
            return "optimisers"
        parent = parent.cpu_parent
    return operator_family(event.name)


def operator_families(events, wall_s: float) -> list[tuple[str, float]]:
    """Split a profiled iteration's ``wall_s`` by family: ``[(family, seconds)]`` in ``FAMILIES`` order, then
    ``"Python, dispatch (unprofiled)"``, the wall time no event's self time accounts for. ``events``:
    ``prof.events()`` of a CPU profile of one iteration, run on the calling thread (the intra-op threads' work
    is inside each operator's time)."""
    seconds = dict.fromkeys(FAMILIES, 0.0)
    for e in events:
        seconds[family_of_event(e)] += e.self_cpu_time_total / 1e6
    rows = [(f, seconds[f]) for f in FAMILIES]
    rows.append(("Python, dispatch (unprofiled)", max(0.0, wall_s - sum(seconds.values()))))
    return rows
