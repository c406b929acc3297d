"""AdaIN followed by an activation or a residual add: the decoder's per-block step.

``adain_reference`` is the plain PyTorch definition and the reference of every fast path.
The fused paths (Triton on CUDA, C++ on CPU) are added by the fused-kernel work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "relu", "lrelu")


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
    xf = x.float()
    var, mean = torch.var_mean(xf, dim=(2, 3), unbiased=False, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps) * scale.float()[:, :, None, None] + bias.float()[:, :, None, None]
    if activation == "relu":
        y = F.relu(y)
    elif activation == "lrelu":
        y = F.leaky_relu(y, negative_slope)
    elif activation is not None:
        raise ValueError(f"activation={activation!r}: expected one of {ACTIVATIONS}")
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)


def adain(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    activation: str | None = None,
    eps: float = 1e-5,
    negative_slope: float = 0.2,
    backend: str | None = None,
) -> torch.Tensor:
    """AdaIN + activation or residual, through the backend chosen (see module docstring)."""
    if backend not in (None, "torch"):
        raise ValueError(f"backend={backend!r}: only the 'torch' reference exists so far")
    return adain_reference(x, scale, bias, residual, activation, eps, negative_slope)
