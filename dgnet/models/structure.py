"""Es: the structure encoder (grayscale in, 128-channel structure code at H/4 x W/4 out)."""

from __future__ import annotations

import torch
import torch.nn as nn

from dgnet.config import ModelConfig
from dgnet.models.layers import ConvBlock, ResBlock, init_kaiming_fan_in


def gray(x: torch.Tensor) -> torch.Tensor:
    """Structure input: the mean over RGB of the normalised image, ``(N, 3, H, W) -> (N, 1, H, W)``."""
    return x.mean(dim=1, keepdim=True)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling, 64 -> 128 (spec):

    a 1x1 branch and three [1x1, 3x3 dilated 3/6/9] branches, 32 channels each, concatenated to 128 and
    fused by a 1x1 conv with IN and no activation. Every conv has IN; as in the reference implementation,
    only the leading 1x1 conv of each dilated branch is followed by LeakyReLU: each branch ends linear,
    and so does the lone 1x1 branch.
    """

    def __init__(self, dim: int = 64, out_dim: int = 128, dilations: tuple[int, ...] = (3, 6, 9)) -> None:
        super().__init__()
        part = dim // 2
        self.branch1 = ConvBlock(dim, part, 1, norm="in", act=False)
        self.branches = nn.ModuleList(
            nn.Sequential(ConvBlock(dim, part, 1, norm="in"),
                          ConvBlock(part, part, 3, pad=d, dilation=d, norm="in", act=False))
            for d in dilations
        )
        self.fuse = ConvBlock(part * (1 + len(dilations)), out_dim, 1, norm="in", act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.branch1(x)] + [b(x) for b in self.branches], dim=1))


class StructureEncoder(nn.Module):
    """Es: ``(N, 1, H, W)`` grayscale -> structure code ``(N, 128, H/4, W/4)`` (128x64x32 at 256x128).

    Reflect padding, InstanceNorm (no affine), LeakyReLU 0.2: conv3x3 s2 1->16, conv3x3 16->32,
    conv3x3 32->32, conv3x3 s2 32->64, 4 residual blocks at 64, ASPP 64->128.
    Init: the reference's kaiming (fan_in) on every conv, zero biases.

    Flat codes (a deliberate deviation from the reference, for degenerate inputs only): a sample whose code
    is spatially constant in every channel, to within one unit of roundoff, or whose input is exactly constant
    (``_constant_samples``), is returned as exactly 0 and passes no gradient back. Every other sample is the
    plain layer stack's, bit for bit, forward and backward.

    Why: a constant image makes every InstanceNorm in Es constant, so the code is 0 whatever the weights and
    the true gradient of every Es parameter is 0; the plain backward instead multiplies by ``1 / sqrt(eps)`` at
    each of 15 INs and overflows to NaN in float32. Cutting the gradient here gives the true one. The
    measurements: docs/records.md, "Flat structure codes".
    """

    def __init__(self, cfg: ModelConfig, base_dim: int = 16, n_res: int = 4) -> None:
        super().__init__()
        d = base_dim
        self.model = nn.Sequential(
            ConvBlock(1, d, 3, 2, 1, norm="in"),
            ConvBlock(d, 2 * d, 3, 1, 1, norm="in"),
            ConvBlock(2 * d, 2 * d, 3, 1, 1, norm="in"),
            ConvBlock(2 * d, 4 * d, 3, 2, 1, norm="in"),
            *[ResBlock(4 * d, norm="in") for _ in range(n_res)],
            ASPP(4 * d, cfg.structure_dim),
        )
        self.out_dim = cfg.structure_dim
        init_kaiming_fan_in(self)

    def forward(self, x_gray: torch.Tensor) -> torch.Tensor:
        if x_gray.dim() != 4 or x_gray.shape[1] != 1:
            raise ValueError(
                f"Es input: expected (N, 1, H, W) grayscale (see dgnet.models.gray), got {tuple(x_gray.shape)}"
            )
        s = self.model(x_gray)
        # where, not a multiply by a mask: the gradient arriving for a flat sample may be inf (0 * inf = NaN)
        return torch.where(_flat_samples(s) | _constant_samples(x_gray), 0.0, s)


def _constant_samples(x: torch.Tensor) -> torch.Tensor:
    """``(N, 1, 1, 1)`` bool: samples of ``x`` that are exactly constant (a blank image). Their code is flat by the
    argument above, but whether the computed one is depends on the CPU's convolution kernel: in float64 on an
    AVX-512 EPYC the first conv of a constant image leaves 3e-13 of spread across its pixels, which the
    InstanceNorms (each dividing by ``sqrt(eps)``) amplify to a code of order 1. The input is checked exactly."""
    with torch.no_grad():
        lo, hi = x.flatten(1).aminmax(dim=-1)
        return (hi == lo)[:, None, None, None]


def _flat_samples(s: torch.Tensor) -> torch.Tensor:
    """``(N, 1, 1, 1)`` bool: samples of ``s`` ``(N, C, h, w)`` (an InstanceNorm output, unit scale) whose every
    channel's spread ``max - min`` is at most the unit roundoff of the statistics' dtype (float32 or float64).
    An ordinary sample's channels spread over several units; a NaN never counts as flat."""
    with torch.no_grad():
        lo, hi = s.flatten(2).aminmax(dim=-1)
        stats = torch.float64 if s.dtype == torch.float64 else torch.float32
        flat = (hi.to(stats) - lo.to(stats) <= torch.finfo(stats).eps).all(dim=1)
    return flat[:, None, None, None]
