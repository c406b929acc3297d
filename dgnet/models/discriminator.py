"""D: the multi-scale PatchGAN discriminator (LSGAN)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgnet.config import ModelConfig
from dgnet.models.layers import ConvBlock, ResBlock, init_gaussian


def _scale_net(dim: int, n_res: int) -> nn.Sequential:
    # conv1x1 3->32; conv3x3 s1; conv3x3 s2; conv3x3 s1; conv3x3 s2 32->64; 4 res blocks; conv1x1 64->1.
    return nn.Sequential(
        ConvBlock(3, dim, 1),
        ConvBlock(dim, dim, 3, 1, 1),
        ConvBlock(dim, dim, 3, 2, 1),
        ConvBlock(dim, dim, 3, 1, 1),
        ConvBlock(dim, 2 * dim, 3, 2, 1),
        *[ResBlock(2 * dim, norm="none") for _ in range(n_res)],
        nn.Conv2d(2 * dim, 1, 1),
    )


class MultiScaleDiscriminator(nn.Module):
    """D: ``x`` ``(N, 3, H, W)`` -> list of ``dis_scales`` patch maps ``(N, 1, H / 4 / 2^k, W / 4 / 2^k)``.

    Scale k sees the image average-pooled (3x3, stride 2, pad 1, count_include_pad False) k times.
    LeakyReLU 0.2, reflect padding, no normalisation, init N(0, 0.02) (spec). No batch coupling: every
    sample's outputs depend on that sample only, so fakes and reals can share one forward.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.nets = nn.ModuleList(_scale_net(cfg.dis_dim, cfg.dis_res_blocks) for _ in range(cfg.dis_scales))
        init_gaussian(self, 0.02)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for k, net in enumerate(self.nets):
            if k:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outs.append(net(x))
        return outs
