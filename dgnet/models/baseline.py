"""The re-id baseline without generated data, which is also DG-Net's frozen teacher."""

from __future__ import annotations

import torch
import torch.nn as nn

from dgnet.config import ModelConfig
from dgnet.models.appearance import ClassBlock
from dgnet.models.weights import build_backbone


class ReidBaseline(nn.Module):
    """ResNet trunk (layer4 at ``cfg.last_stride``: 1 in the spec), global average pooling, one head
    Linear(C->512)-BN-Dropout(0.5)-Linear.

    ``forward(x)`` ``(N, 3, H, W)`` -> logits ``(N, num_ids)``; ``features(x)`` -> post-BN ``(N, 512)``
    (dropout off; call in eval mode for the test protocol). Same backbone and weights options as Ea.
    ``fused``: its optimiser and training step take the fast paths (``dgnet.training``); it changes no value.
    """

    def __init__(self, cfg: ModelConfig, num_ids: int, fused: bool = False) -> None:
        super().__init__()
        self.fused = fused
        self.model_cfg = cfg  # checkpoints record it (``arch``): a teacher's may differ from its student's
        self.backbone = build_backbone(cfg.backbone, cfg.backbone_weights, cfg.last_stride)
        self.num_ids = num_ids
        self.head = ClassBlock(self.backbone.out_channels, num_ids, cfg.dropout_primary, cfg.head_dim)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.embed(self.pooled(x))
