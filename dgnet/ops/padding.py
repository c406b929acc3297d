"""Reflect padding that also works where a map is smaller than the padding (the models' every padded conv).

Plain PyTorch (no kernel of its own): it lives with the ops because both the models and the fast
``upsample_conv5``'s reference use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a symmetric (reflect, edge not repeated) padding of length ``pad`` on each side.

    Valid for any ``pad``, including ``pad >= n`` where ``F.pad(mode="reflect")`` refuses: the mirror
    is simply repeated, period ``2 * (n - 1)``.
    """
    i = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    j = torch.remainder(i, period)
    return torch.where(j >= n, period - j, j)


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad the last two dims of ``x`` (N, C, H, W) by ``pad`` on every side.

    Equal to ``F.pad(x, (pad,) * 4, mode="reflect")`` wherever that is defined (pad < H and pad < W,
    every size the spec uses). Smaller maps (the ASPP's dilation-9 branch at the 64x32 test size sees a
    16x8 map) fall back to a repeated mirror instead of failing: a documented small-size extension.
    """
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    if pad < h and pad < w:
        return F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = x.index_select(-2, _reflect_index(h, pad, x.device))
    return x.index_select(-1, _reflect_index(w, pad, x.device))
