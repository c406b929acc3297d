"""The ResNet trunk shared by Ea and the re-id baseline, and the loading of its weights.

``build_backbone(name, weights)``:
- ``name``: ``resnet50`` (the spec) or ``resnet18`` (demo-only: 512 trunk channels, so Ea's appearance
  code is 4 * 512 = 2048 wide and the decoder's AdaIN MLPs read 512-wide slices; every dimension downstream
  derives from ``Backbone.out_channels``).
- ``weights``: ``imagenet`` (torchvision's weights API, from its cache or downloaded; never a silent random
  init), ``none`` (torchvision's random init) or a path to a local ``state_dict`` file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

from dgnet.config import LAST_STRIDE_CHOICES
from dgnet.fileio import load_weights_only

BACKBONES = ("resnet50", "resnet18")

# Set DGNET_OFFLINE=1 to never try a download (tests, air-gapped machines): a missing cache then fails at once.
OFFLINE_ENV = "DGNET_OFFLINE"


def _torchvision_weights(name: str):
    if name == "resnet50":
        return torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    return torchvision.models.ResNet18_Weights.IMAGENET1K_V1


class Backbone(nn.Module):
    """ResNet trunk (conv1 .. layer4, no pooling, no fc) with layer4's first block at ``last_stride``.

    Input ``(N, 3, H, W)`` float, normalised; output ``(N, out_channels, H/16, W/16)`` at ``last_stride`` 1 (16x8
    at 256x128, the spec), ``(H/32, W/32)`` at 2. Parameter names are torchvision's (``conv1.weight``,
    ``layer4.0.conv2.weight``...), so torchvision state_dicts load as they are. The stride changes no parameter.
    """

    def __init__(self, name: str, last_stride: int = 1) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"backbone={name!r}: expected one of {BACKBONES}")
        if last_stride not in LAST_STRIDE_CHOICES:
            raise ValueError(f"last_stride={last_stride!r}: expected one of {LAST_STRIDE_CHOICES}")
        net = getattr(torchvision.models, name)(weights=None)
        self.name = name
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        # Stride 1 in layer4 (spec): the stride-2 conv of the first block (conv2 in Bottleneck, conv1 in
        # BasicBlock) and its downsample shortcut. Teachers trained by Person_reID_baseline_pytorch keep
        # torchvision's stride 2 unless trained with --stride 1.
        if last_stride == 1:
            block = self.layer4[0]
            for conv in (block.conv1, block.conv2, block.downsample[0]):
                conv.stride = (1, 1)
        self.last_stride = last_stride
        self.out_channels: int = net.fc.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    weights = _torchvision_weights(name)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    how = (
        f"To provide it offline, copy {os.path.basename(weights.url)} (from {weights.url}) to {cache} "
        f"(torchvision's cache; TORCH_HOME moves it), or pass --backbone-weights PATH with a local "
        f"state_dict file, or --backbone-weights none for a random init."
    )
    if not cache.is_file() and os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise RuntimeError(f"backbone_weights='imagenet': {cache} is missing and {OFFLINE_ENV} is set. {how}")
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError)
        raise RuntimeError(
            f"backbone_weights='imagenet': could not load {name} ImageNet weights ({type(exc).__name__}: {exc}). {how}"
        ) from exc


def _file_state_dict(path: str) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"backbone_weights={path!r}: no such file; expected 'imagenet', 'none' or a path to a state_dict file"
        )
    state = load_weights_only(p, "backbone_weights")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"backbone_weights={path!r}: expected a state_dict (name -> tensor), got {type(state)}")
    # Checkpoints saved from DataParallel/DDP carry a "module." prefix.
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_state(backbone: Backbone, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` (torchvision naming; ``fc.*`` ignored) into ``backbone``, strictly otherwise.

    BatchNorm's ``num_batches_tracked`` counters may be absent: torchvision's ImageNet files were saved
    before the counters existed, and BatchNorm's own loader starts them at 0.
    """
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = backbone.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"backbone weights {source}: do not match {backbone.name} "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''})"
        )
    bad = [k for k in state if own[k].shape != state[k].shape]
    if bad:
        raise ValueError(
            f"backbone weights {source}: shape mismatch for {bad[:5]} "
            f"(e.g. {bad[0]}: file {tuple(state[bad[0]].shape)}, model {tuple(own[bad[0]].shape)})"
        )
    backbone.load_state_dict(state, strict=True)


def build_backbone(name: str, weights: str, last_stride: int = 1) -> Backbone:
    """Build the ResNet trunk ``name`` (layer4 at ``last_stride``) and load ``weights`` (imagenet | none | PATH)."""
    backbone = Backbone(name, last_stride)
    if weights == "none":
        return backbone
    if weights == "imagenet":
        load_backbone_state(backbone, _imagenet_state_dict(name), f"imagenet ({name})")
        return backbone
    load_backbone_state(backbone, _file_state_dict(weights), repr(weights))
    return backbone
