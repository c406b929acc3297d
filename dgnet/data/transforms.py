"""The spec's image transforms as plain torch tensor ops, shared by both pipelines where they meet.

The torch pipeline runs :func:`augment_uint8` per image in its workers; both pipelines finish on the device
with :func:`normalize` (DALI normalises inside its graph with the same constants) and both apply random
erasing with :func:`apply_erasing` on the device, on the boxes the sampler drew: erasing exists once.
:func:`denormalize` undoes the normalisation for display.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_uint8(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a ``[3, h, w]`` (or ``[B, 3, h, w]``) uint8 image to ``size`` (H, W), uint8.

    Antialiased bicubic like PIL's (which the DG-Net reference uses), so downscaling does not alias; computed
    in float and rounded once, where PIL rounds to uint8 between its two passes, so some pixels differ from
    PIL's by a few levels (DALI's resize agrees with this one to a level). A no-op when the size matches.
    """
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    batched = img.dim() == 4
    x = img if batched else img[None]
    y = F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
    y = y.round_().clamp_(0, 255).to(torch.uint8)
    return y if batched else y[0]


def pad_crop(img: torch.Tensor, offset: tuple[int, int], pad: int) -> torch.Tensor:
    """Edge-mode pad by ``pad`` then crop back to the input size at ``offset`` = (y, x) in ``0..2*pad``.

    Done as a clamped gather, which is exactly replicate padding followed by the crop. ``[..., H, W]``.
    """
    H, W = img.shape[-2:]
    oy, ox = int(offset[0]) - pad, int(offset[1]) - pad
    if oy == 0 and ox == 0:
        return img
    rows = (torch.arange(H) + oy).clamp_(0, H - 1)
    cols = (torch.arange(W) + ox).clamp_(0, W - 1)
    return img.index_select(-2, rows).index_select(-1, cols)


def augment_uint8(img: torch.Tensor, size: tuple[int, int], flip: bool, offset: tuple[int, int], pad: int):
    """The spec's training transform up to normalisation, on one ``[3, h, w]`` uint8 image -> ``[3, H, W]`` uint8:
    horizontal flip, bicubic resize to ``size``, edge pad ``pad`` + crop at ``offset``."""
    if flip:
        img = img.flip(-1)
    return pad_crop(resize_uint8(img, size), offset, pad)


_STATS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` uint8 (0..255) -> float32 ImageNet-normalised, on the batch's device."""
    dev = batch.device
    if dev not in _STATS:
        mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1) * 255
        _STATS[dev] = (mean, 1 / std)
    mean, inv_std = _STATS[dev]
    return (batch.float() - mean) * inv_std


def apply_erasing(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Random erasing with fill 0 (the mean, in normalised space) on a copy of ``images``.

    Args:
        images: ``[B, C, H, W]`` float, any device.
        boxes: ``[B, 4]`` int64 ``(y, x, h, w)``; ``h == 0`` leaves an image untouched.

    Returns:
        a new ``[B, C, H, W]`` tensor; built with one mask, no per-image loop or host sync.
    """
    if images.dim() != 4 or boxes.shape != (images.shape[0], 4):
        raise ValueError(f"apply_erasing: images {tuple(images.shape)} and boxes {tuple(boxes.shape)}; "
                         f"expected [B, C, H, W] and [B, 4]")
    H, W = images.shape[-2:]
    b = boxes.to(images.device, non_blocking=True)
    ys = torch.arange(H, device=images.device).view(1, H, 1)
    xs = torch.arange(W, device=images.device).view(1, 1, W)
    y0, x0, h, w = (b[:, i].view(-1, 1, 1) for i in range(4))
    mask = (ys >= y0) & (ys < y0 + h) & (xs >= x0) & (xs < x0 + w)
    return images.masked_fill(mask[:, None], 0.0)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3|1, H, W)`` normalised images -> float32 in [0, 1] on the CPU (grayscale is repeated to RGB)."""
    x = x.detach().float().cpu()
    if x.shape[1] == 1:
        return (x * 0.5 + 0.5).clamp(0, 1).repeat(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def blank_like(x: torch.Tensor) -> torch.Tensor:
    """A white image in normalised space, shaped like one image of ``x`` ``(N, 3, H, W)``: ``(1, 3, H, W)``."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return ((1 - mean) / std).expand(1, 3, *x.shape[-2:]).to(x.dtype)
