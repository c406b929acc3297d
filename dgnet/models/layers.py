"""Building blocks shared by Es, G and D: padded conv blocks, residual blocks, LayerNorm, init helpers.

The blocks follow the MUNIT-style ordering the DG-Net reference uses: pad -> conv -> norm -> activation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgnet.losses import f32
from dgnet.ops.padding import reflect_pad

LRELU_SLOPE = 0.2  # the reference's LeakyReLU slope, used throughout Es, G and D


class LayerNorm(nn.Module):
    """MUNIT/DG-Net LayerNorm: per-sample mean and std over (C, H, W), per-channel affine.

    ``y = (x - mean) / (std + eps) * gamma + beta`` with the unbiased std (the reference's ``Tensor.std``),
    ``gamma`` initialised uniform(0, 1) and ``beta`` 0 per the spec. Statistics in at least float32.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.empty(channels).uniform_())
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = f32(x)
        flat = xf.flatten(1)
        std, mean = torch.std_mean(flat, dim=1)
        y = (xf - mean[:, None, None, None]) / (std[:, None, None, None] + self.eps)
        y = y * self.gamma.to(xf.dtype)[None, :, None, None] + self.beta.to(xf.dtype)[None, :, None, None]
        return y.to(x.dtype)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=False)  # no running stats, eps 1e-5
    if kind == "ln":
        return LayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm={kind!r}: expected 'in', 'ln' or 'none'")


class ConvBlock(nn.Module):
    """Reflect pad -> Conv2d (bias) -> norm -> LeakyReLU(0.2) or nothing."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        pad: int = 0,
        dilation: int = 1,
        norm: str = "none",
        act: bool = True,
    ) -> None:
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, dilation=dilation, bias=True)
        self.norm = _norm(norm, cout)
        self.act = act

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """Norm and activation of a conv output ``y``."""
        y = self.norm(y)
        return F.leaky_relu(y, LRELU_SLOPE) if self.act else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.conv(reflect_pad(x, self.pad)))


class ResBlock(nn.Module):
    """MUNIT residual block: conv3x3-norm-lrelu, conv3x3-norm, then add the input."""

    def __init__(self, dim: int, norm: str) -> None:
        super().__init__()
        self.block1 = ConvBlock(dim, dim, 3, 1, 1, norm=norm, act=True)
        self.block2 = ConvBlock(dim, dim, 3, 1, 1, norm=norm, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(self.block1(x))


def init_kaiming_fan_in(module: nn.Module) -> None:
    """The reference's ``init: kaiming`` for the generator side: Conv/Linear weights kaiming-normal
    (fan_in, gain sqrt(2)), biases 0. LayerNorm's gamma/beta are left at their spec init."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_gaussian(module: nn.Module, std: float = 0.02) -> None:
    """D's init per the spec: Conv/Linear weights N(0, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
