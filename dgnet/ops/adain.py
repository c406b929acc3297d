"""AdaIN followed by an activation or a residual add: the decoder's per-block step.

``y = act(scale * (x - mean_hw) / sqrt(var_hw + eps) + bias) [+ residual]``

Backends of :func:`adain`:

* ``"torch"``: :func:`adain_reference`, plain PyTorch and the reference of every fast path;
* ``"cpu"``: the fused C++ kernel ``torch.ops.dgnet.adain_forward`` / ``adain_backward``
  (csrc/cpu/adain.cpp; schemas in csrc/ops.cpp);
* ``"triton"``: the fused Triton kernels (kernels/adain.py) as ``torch.ops.dgnet.adain_triton_forward`` /
  ``adain_triton_backward``, declared here with ``torch.library.triton_op`` so ``torch.compile`` sees
  the kernels; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (Triton's own switch: it must be set
  before the process imports dgnet, and ``dgnet.kernels.adain.INTERPRET`` records it once, at import);
* ``"fused"``: the fused kernel of x's device (``"cpu"`` for CPU tensors, ``"triton"`` for CUDA tensors): what
  a model built with ``fused=True`` (``--fused``) asks for. It never falls back silently: a missing kernel
  raises.

Fused ops save only the per-row mean and rstd for the backward; gradients flow to x, scale, bias and
residual. Fake (meta) kernels and autograd are registered here, so every op works under
``torch.compile(fullgraph=True)`` and passes ``torch.library.opcheck``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dgnet.ops._lib import extension_available, require_extension

ACTIVATIONS = (None, "relu", "lrelu")
BACKENDS = ("torch", "cpu", "triton", "fused")
# Activation codes of the op schemas (csrc/include/dgnet/adain.h, kernels/adain.py).
_ACT_CODE = {None: 0, "relu": 1, "lrelu": 2}
# Eager Triton calls go through _TritonAdain rather than the triton_op (tests flip this to check both).
_EAGER_AUTOGRAD_FUNCTION = True

try:
    from dgnet.kernels import adain as _triton_kernels

    _TRITON_ERROR: Exception | None = None
except ImportError as exc:  # triton is absent on some CPU-only installs
    _triton_kernels = None
    _TRITON_ERROR = exc


def adain_reference(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    activation: str | None = None,
    eps: float = 1e-5,
    negative_slope: float = 0.2,
) -> torch.Tensor:
    """``act(scale * (x - mean_hw) / sqrt(var_hw + eps) + bias) [+ residual]``.

    Args:
        x: ``(N, C, H, W)``, any float dtype; statistics are computed in float32.
        scale, bias: ``(N, C)``, per-sample AdaIN parameters.
        residual: optional ``(N, C, H, W)`` added after the activation.
        activation: ``None``, ``"relu"`` or ``"lrelu"`` (slope ``negative_slope``).
    Returns:
        ``(N, C, H, W)`` in the dtype of ``x``.
    """
    xf = x.float() if x.dtype != torch.float64 else x
    sf = scale.to(xf.dtype)[:, :, None, None]
    bf = bias.to(xf.dtype)[:, :, None, None]
    var, mean = torch.var_mean(xf, dim=(2, 3), unbiased=False, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps) * sf + bf
    if activation == "relu":
        y = F.relu(y)
    elif activation == "lrelu":
        y = F.leaky_relu(y, negative_slope)
    elif activation is not None:
        raise ValueError(f"activation={activation!r}: expected one of {ACTIVATIONS}")
    if residual is not None:
        y = y + residual.to(xf.dtype)
    return y.to(x.dtype)


# ---- C++ kernels (CPU): fake kernels and autograd for the schemas of csrc/ops.cpp -------------------


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fake_forward(x, scale, bias, residual, activation, eps, negative_slope):
    torch._check(x.dim() == 4, lambda: f"adain: x must be (N, C, H, W), got {tuple(x.shape)}")
    torch._check(scale.shape == x.shape[:2], lambda: f"adain: scale must be (N, C), got {tuple(scale.shape)}")
    torch._check(bias.shape == x.shape[:2], lambda: f"adain: bias must be (N, C), got {tuple(bias.shape)}")
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    mean = x.new_empty(x.shape[:2], dtype=_stats_dtype(x))
    return y, mean, torch.empty_like(mean)


def _fake_backward(grad_y, x, scale, bias, mean, rstd, activation, negative_slope):
    torch._check(grad_y.shape == x.shape, lambda: "adain_backward: grad_y must have x's shape")
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    return dx, torch.empty_like(scale, memory_format=torch.contiguous_format), torch.empty_like(
        bias, memory_format=torch.contiguous_format
    )


def _setup_context(ctx, inputs, output):
    x, scale, bias, residual, activation, _eps, negative_slope = inputs
    _y, mean, rstd = output
    # mean and rstd never receive gradients: without this, autograd would launch two zero fills per call
    # to stand in for them (grads that are not computed arrive as None instead).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, scale, bias, mean, rstd)
    ctx.activation = activation
    ctx.negative_slope = negative_slope
    ctx.residual_dtype = residual.dtype if residual is not None else None


def _make_backward(backward_op):
    def backward(ctx, grad_y, _grad_mean, _grad_rstd):
        # mean and rstd are saved statistics, not differentiable outputs: their gradients are ignored.
        if grad_y is None:  # y itself unused by the loss
            return None, None, None, None, None, None, None
        x, scale, bias, mean, rstd = ctx.saved_tensors
        grad_x, grad_scale, grad_bias = backward_op(
            grad_y, x, scale, bias, mean, rstd, ctx.activation, ctx.negative_slope
        )
        grad_res = grad_y.to(ctx.residual_dtype) if ctx.residual_dtype is not None else None
        return grad_x, grad_scale, grad_bias, grad_res, None, None, None

    return backward


if extension_available():
    torch.library.register_fake("dgnet::adain_forward")(_fake_forward)
    torch.library.register_fake("dgnet::adain_backward")(_fake_backward)
    torch.library.register_autograd(
        "dgnet::adain_forward", _make_backward(torch.ops.dgnet.adain_backward), setup_context=_setup_context
    )


# ---- Triton kernels: triton_op registration ------------------------------------------------------

if _triton_kernels is not None:

    @torch.library.triton_op("dgnet::adain_triton_forward", mutates_args=())
    def adain_triton_forward(
        x: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor,
        residual: torch.Tensor | None,
        activation: int,
        eps: float,
        negative_slope: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Triton twin of ``dgnet::adain_forward``: ``(y, mean, rstd)``, statistics float32."""
        return _triton_kernels.adain_forward(x, scale, bias, residual, activation, eps, negative_slope)

    @torch.library.triton_op("dgnet::adain_triton_backward", mutates_args=())
    def adain_triton_backward(
        grad_y: torch.Tensor,
        x: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor,
        mean: torch.Tensor,
        rstd: torch.Tensor,
        activation: int,
        negative_slope: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Triton twin of ``dgnet::adain_backward``: ``(grad_x, grad_scale, grad_bias)``."""
        return _triton_kernels.adain_backward(grad_y, x, scale, bias, mean, rstd, activation, negative_slope)

    adain_triton_forward.register_autograd(
        _make_backward(torch.ops.dgnet.adain_triton_backward), setup_context=_setup_context
    )

    if _triton_kernels.INTERPRET:
        # triton_op's own fake kernel runs the function body with the launches turned into no-ops, but
        # interpreted kernels are launched as plain Python and would touch fake data: declare the
        # output metadata instead (statistics are always float32 here).
        @adain_triton_forward.register_fake
        def _(x, scale, bias, residual, activation, eps, negative_slope):
            y, mean, _rstd = _fake_forward(x, scale, bias, residual, activation, eps, negative_slope)
            mean = mean.to(torch.float32)
            return y, mean, torch.empty_like(mean)

        @adain_triton_backward.register_fake
        def _(grad_y, x, scale, bias, mean, rstd, activation, negative_slope):
            return _fake_backward(grad_y, x, scale, bias, mean, rstd, activation, negative_slope)


class _TritonAdain(torch.autograd.Function):
    """Eager twin of the ``adain_triton_forward`` op: the same launchers and backward, without the
    custom-op layers, whose per-call cost (tens of microseconds each way) is comparable to a kernel's
    time at the decoder's 64x32 shapes. ``torch.compile`` goes through the op instead."""

    @staticmethod
    def forward(ctx, x, scale, bias, residual, activation, eps, negative_slope):
        y, mean, rstd = _triton_kernels.adain_forward(
            x, scale, bias, residual, activation, eps, negative_slope, traced=False
        )
        _setup_context(ctx, (x, scale, bias, residual, activation, eps, negative_slope), (y, mean, rstd))
        return y

    @staticmethod
    def backward(ctx, grad_y):
        if grad_y is None:  # y unused by the loss (gradients are not materialised, see _setup_context)
            return None, None, None, None, None, None, None
        x, scale, bias, mean, rstd = ctx.saved_tensors
        grad_x, grad_scale, grad_bias = _triton_kernels.adain_backward(
            grad_y, x, scale, bias, mean, rstd, ctx.activation, ctx.negative_slope, traced=False
        )
        grad_res = grad_y.to(ctx.residual_dtype) if ctx.residual_dtype is not None else None
        return grad_x, grad_scale, grad_bias, grad_res, None, None, None


# ---- dispatch ----------------------------------------------------------------------------------------


def _check_args(x, scale, bias, residual, activation, backend) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"adain: x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"adain: x must be floating point, got dtype {x.dtype}")
    n, c, h, w = x.shape
    if h * w == 0:
        raise ValueError(f"adain: x must have H*W > 0, got shape {tuple(x.shape)}")
    for name, t in (("scale", scale), ("bias", bias)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n, c):
            raise ValueError(f"adain: {name} must be (N, C) = ({n}, {c}), got {getattr(t, 'shape', type(t))}")
        if t.device != x.device:
            raise ValueError(f"adain: {name} is on {t.device} but x is on {x.device}")
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.shape != x.shape:
            raise ValueError(
                f"adain: residual must have x's shape {tuple(x.shape)}, got {getattr(residual, 'shape', None)}"
            )
        if residual.device != x.device:
            raise ValueError(f"adain: residual is on {residual.device} but x is on {x.device}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"adain: activation={activation!r}: expected one of {ACTIVATIONS}")
    if backend not in BACKENDS:
        raise ValueError(f"adain: backend={backend!r}: expected one of {BACKENDS}")


def fused_backend(device: torch.device) -> str:
    """The fused AdaIN kernel for tensors on ``device``: ``"cpu"`` (C++) or ``"triton"`` (CUDA)."""
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu":
        return "cpu"
    raise RuntimeError(f"adain: backend='fused' but there is no fused AdaIN kernel for device {device}")


def triton_available(device: torch.device | str) -> bool:
    """True when the Triton backend can run on ``device`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)."""
    if _triton_kernels is None:
        return False
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and _triton_kernels.INTERPRET)


def adain(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    activation: str | None = None,
    eps: float = 1e-5,
    negative_slope: float = 0.2,
    backend: str = "torch",
) -> torch.Tensor:
    """``act(scale * (x - mean_hw) / sqrt(var_hw + eps) + bias) [+ residual]``, differentiable.

    Args:
        x: ``(N, C, H, W)`` float32, bfloat16 or float16 (float64 on the ``"cpu"`` and ``"torch"``
            backends); statistics are float32 (float64 for float64 x).
        scale, bias: ``(N, C)`` on x's device, any float dtype.
        residual: optional tensor of x's shape and device, added after the activation.
        activation: ``None``, ``"relu"`` or ``"lrelu"`` (slope ``negative_slope``).
        eps: added to the biased variance.
        backend: ``"torch"`` (default), ``"cpu"``, ``"triton"`` or ``"fused"`` (see the module docstring).
    Returns:
        ``(N, C, H, W)`` in x's dtype on x's device (contiguous for the fused backends).
    Raises:
        ValueError: bad shapes, devices, activation or backend name.
        RuntimeError: the chosen fused kernel is unavailable (extension not built, no Triton,
            Triton on CPU without ``TRITON_INTERPRET=1``).
    """
    _check_args(x, scale, bias, residual, activation, backend)
    if backend == "fused":
        backend = fused_backend(x.device)
    if backend == "torch":
        return adain_reference(x, scale, bias, residual, activation, eps, negative_slope)
    code = _ACT_CODE[activation]
    if backend == "cpu":
        require_extension()
        if x.device.type != "cpu":
            raise ValueError(f"adain: backend='cpu' needs CPU tensors, x is on {x.device}")
        return torch.ops.dgnet.adain_forward(x, scale, bias, residual, code, eps, negative_slope)[0]
    # backend == "triton"
    if _triton_kernels is None:
        raise RuntimeError(f"adain: backend='triton' but triton cannot be imported ({_TRITON_ERROR})")
    if not triton_available(x.device):
        raise RuntimeError(
            f"adain: backend='triton' needs CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
            f"dgnet is imported; x is on {x.device}, interpreter {'on' if _triton_kernels.INTERPRET else 'off'}"
        )
    if x.dtype == torch.float64:
        raise ValueError("adain: backend='triton' supports float32, bfloat16 and float16 x, got float64")
    if torch.compiler.is_compiling() or not _EAGER_AUTOGRAD_FUNCTION:
        return torch.ops.dgnet.adain_triton_forward(x, scale, bias, residual, code, eps, negative_slope)[0]
    return _TritonAdain.apply(x, scale, bias, residual, code, eps, negative_slope)
