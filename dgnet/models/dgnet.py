"""DGNet: Ea, Es, G and D composed, plus the frozen-copy context the training step needs.

Readings of the spec where it is silent or ambiguous (each follows the reference implementation):
- Structure code: 128 x H/4 x W/4 (the spec's 128x64x32 at 256x128: two stride-2 convs in Es, two x2
  upsamples in G).
- ASPP: every conv has IN; LeakyReLU follows only the leading 1x1 conv of each dilated branch (the lone 1x1
  branch, the dilated 3x3 convs and the fusing 1x1 conv end without one). The spec's "LeakyReLU
  throughout" is read as Es's plain layers, since its ASPP line spells out the branches.
- Convs carry biases; Es, G and the AdaIN MLPs use the reference's ``kaiming`` init (normal, fan_in, zero
  biases); D uses N(0, 0.02) with zero biases.
- LayerNorm: ``(x - mean) / (std + eps)`` with the unbiased std, eps 1e-5 (MUNIT's LayerNorm).
- Re-id heads: BatchNorm1d keeps PyTorch's init (weight 1, bias 0): the reference's head init draws
  N(1, 0.02) only for InstanceNorm1d layers, which its heads do not have.
- ResNet-18 (demo only): 512 trunk channels, appearance code 2048, AdaIN MLP slices 512 wide.
- Reflect padding wider than a map (only at sizes below the spec's, e.g. the ASPP's dilation 9 on a 16x8
  code) mirrors repeatedly instead of failing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

from dgnet.config import ModelConfig
from dgnet.models.appearance import AppearanceEncoder
from dgnet.models.decoder import Decoder
from dgnet.models.discriminator import MultiScaleDiscriminator
from dgnet.models.structure import StructureEncoder, gray


class DGNet(nn.Module):
    """DG-Net's four networks under the paper's names.

    - ``Ea``: appearance encoder + re-id heads (``AppearanceEncoder``), ``Ea(x) -> (f, logits_primary, logits_fine)``;
    - ``Es``: structure encoder on ``gray(x)``, ``Es(gray(x)) -> s`` ``(N, 128, H/4, W/4)``;
    - ``G``: decoder incl. the AdaIN MLPs, ``G(s, f) -> image`` ``(N, 3, H, W)``;
    - ``D``: multi-scale discriminator, ``D(x) -> [per-scale patch maps]``.
    The optimiser groups follow this split: "gen" = Es + G, "dis" = D, "id" = Ea.
    ``fused``/``fold_upsample`` choose G's kernels (``dgnet.models.decoder.Decoder``), never its values; the
    optimisers and the training step read ``fused`` and ``compiled`` (set by ``compile_models``) from the model.
    """

    def __init__(self, cfg: ModelConfig, num_ids: int, fused: bool = False, fold_upsample: str = "auto") -> None:
        super().__init__()
        if num_ids < 1:
            raise ValueError(f"num_ids={num_ids}: expected a positive identity count")
        self.cfg = cfg
        self.num_ids = num_ids
        self.Ea = AppearanceEncoder(cfg, num_ids)
        self.Es = StructureEncoder(cfg)
        self.G = Decoder(cfg, self.Ea.code_dim, fused=fused, fold_upsample=fold_upsample)
        self.D = MultiScaleDiscriminator(cfg)
        self.compiled = False

    @property
    def fused(self) -> bool:
        """Whether the model, its optimisers and its training step run the fast paths (set when it is built)."""
        return self.G.fused

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` ``(N, 3, H, W)`` -> ``(f, s, logits_primary, logits_fine)``."""
        f, p1, p2 = self.Ea(x)
        return f, self.Es(gray(x)), p1, p2

    def decode(self, s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Image with the structure ``s`` and the appearance ``f``: ``x_ba = decode(s_b, f_a)``."""
        return self.G(s, f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``G(Es(gray(x)), Ea(x).f)``."""
        f, s, _, _ = self.encode(x)
        return self.decode(s, f)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block; every submodule gets its own mode back on exit."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield module.eval()
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def frozen(module: nn.Module, bn_batch_stats: bool = False, dropout: bool = False) -> Iterator[nn.Module]:
    """Run ``module`` as a frozen copy of itself: no parameter gradients, eval mode (dropout off), and
    with ``bn_batch_stats`` BatchNorm normalising with the batch's statistics without updating the
    running ones. With ``dropout`` its dropout layers stay active (train mode, drawing from torch's global
    RNG): the reference's teacher once its trainer is in train mode (``ModelConfig.teacher_dropout``).

    This is the reference's per-iteration ``deepcopy(...).eval()`` (plus ``train_bn``) without the copy:
    the weights cannot change between this forward and the backward (the optimiser steps after it), so
    the live weights with ``requires_grad`` off compute exactly what a copy would, and the copy's own
    running-statistics updates, which the reference throws away, are simply not made. Gradients still
    flow to the *input*. Modes and flags are restored on exit.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracking = [(m, m.track_running_stats) for m in bns]
    stats: list = []
    with eval_mode(module):
        try:
            for p in params:
                p.requires_grad_(False)
            if dropout:
                for m in module.modules():
                    if isinstance(m, nn.modules.dropout._DropoutNd):
                        m.train()
            if bn_batch_stats:
                for m in bns:
                    # training=True + track_running_stats=False: batch statistics, running buffers untouched.
                    m.train()
                    m.track_running_stats = False
            else:
                for m in bns:
                    # Normalise with a snapshot of the running statistics: the backward of this call reads
                    # them, and a later train-mode call of the live module in the same iteration (the teacher
                    # terms' Ea on detached fakes) updates the buffers in place, which autograd does not detect.
                    stats.append((m, m.running_mean, m.running_var))
                    if m.running_mean is not None:
                        m.running_mean, m.running_var = m.running_mean.clone(), m.running_var.clone()
            yield module
        finally:
            for m, mean, var in stats:
                m.running_mean, m.running_var = mean, var
            for p in params:
                p.requires_grad_(True)
            for m, t in tracking:
                m.track_running_stats = t


__all__ = ["DGNet", "eval_mode", "frozen", "gray"]
