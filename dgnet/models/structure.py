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
        return self.model(x_gray)
