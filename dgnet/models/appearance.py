"""Ea: the appearance encoder, shared with re-id, and its two identity heads."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgnet.config import ModelConfig, check_alpha
from dgnet.models.weights import build_backbone


class ClassBlock(nn.Module):
    """Re-id head: Linear(C -> 512) -> BatchNorm1d(512) -> Dropout(p) -> Linear(512 -> num_ids). No ReLU.

    Init (spec): bottleneck Linear kaiming-normal fan_out, zero bias; classifier N(0, 0.001), zero bias.
    BatchNorm1d keeps PyTorch's init, weight 1 and bias 0, as in the reference (the spec does not say).
    """

    def __init__(self, in_dim: int, num_ids: int, dropout: float, bottleneck: int = 512) -> None:
        super().__init__()
        self.bottleneck = nn.Linear(in_dim, bottleneck)
        self.bn = nn.BatchNorm1d(bottleneck)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(bottleneck, num_ids)
        nn.init.kaiming_normal_(self.bottleneck.weight, a=0, mode="fan_out")
        nn.init.zeros_(self.bottleneck.bias)
        nn.init.normal_(self.classifier.weight, 0.0, 0.001)
        nn.init.zeros_(self.classifier.bias)

    def embed(self, v: torch.Tensor) -> torch.Tensor:
        """Post-BN bottleneck feature ``(N, 512)`` (dropout not applied): the test protocol's feature."""
        return self.bn(self.bottleneck(v))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(v)))


class AppearanceEncoder(nn.Module):
    """Ea: ResNet trunk (layer4 at ``cfg.last_stride``: 1 in the spec) -> appearance code and two re-id heads.

    ``forward(x)`` with ``x`` ``(N, 3, H, W)`` normalised float returns ``(f, logits_primary, logits_fine)``:
    - ``f``: appearance code ``(N, 4 * C)`` (8192 for ResNet-50), adaptive max-pool of the trunk map to
      (4, 1), flattened channel-major (index ``c * 4 + stripe``); detached when
      ``cfg.detach_appearance_code`` (parity: generation losses do not reach Ea through it);
    - logits ``(N, num_ids)`` of the primary (dropout 0.5) and fine-grained (dropout 0.75) heads, both fed
      by the global max-pool of the trunk map.
    """

    def __init__(self, cfg: ModelConfig, num_ids: int) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg.backbone, cfg.backbone_weights, cfg.last_stride)
        channels = self.backbone.out_channels
        self.pool_h = cfg.app_pool_h
        self.code_dim = channels * cfg.app_pool_h
        self.detach_code = cfg.detach_appearance_code
        self.head_primary = ClassBlock(channels, num_ids, cfg.dropout_primary, cfg.head_dim)
        self.head_fine = ClassBlock(channels, num_ids, cfg.dropout_fine, cfg.head_dim)

    def code(self, fmap: torch.Tensor) -> torch.Tensor:
        """Appearance code ``(N, C * pool_h)`` from a trunk map ``(N, C, h, w)`` (not detached here)."""
        return F.adaptive_max_pool2d(fmap, (self.pool_h, 1)).flatten(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fmap = self.backbone(x)
        f = self.code(fmap)
        if self.detach_code:
            f = f.detach()
        v = torch.amax(fmap, dim=(2, 3))
        return f, self.head_primary(v), self.head_fine(v)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Test-protocol features: each head's post-BN 512-d bottleneck, dropout off, not normalised.

        Call with the module in eval mode (BatchNorm running statistics). Returns two ``(N, 512)`` tensors.
        """
        v = torch.amax(self.backbone(x), dim=(2, 3))
        return self.head_primary.embed(v), self.head_fine.embed(v)

    def embed(self, x: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
        """The test protocol's feature (``dgnet.evaluation.protocol.embed``), torchreid's ``model.eval();
        model(x)`` habit: ``x`` ``(N, 3, H, W)`` normalised -> float32 ``(N, 2 * 512)``.

        Each head's post-BN feature of the image and of its mirror, each L2-normalised, summed and normalised
        again; the fine-grained half scaled by ``sqrt(alpha)`` (the checkpoint's ``eval.alpha``), so the dot
        product of two features is the score ``p . p' + alpha * f . f'``. Call in eval mode.
        """
        check_alpha(alpha)
        primary, fine = self.features(torch.cat([x, x.flip(3)]))  # image and mirror: one pass over the weights
        return torch.cat([mirror_sum(primary), mirror_sum(fine) * math.sqrt(alpha)], dim=1)


def mirror_sum(features: torch.Tensor) -> torch.Tensor:
    """``features`` ``(2n, D)`` of n images then their mirrors -> float32 ``(n, D)``: normalise each, add each
    image's to its mirror's, normalise the sum (the test protocol's flip augmentation). The halves are split by
    a reshape, not by slicing at ``n``, so that an exported graph keeps its batch size dynamic."""
    image, mirror = F.normalize(features.float(), dim=1).unflatten(0, (2, -1))
    return F.normalize(image + mirror, dim=1)
