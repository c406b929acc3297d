"""Nearest x2 upsample + reflect pad 2 + conv5x5 in one: the decoder's two upsampling steps under ``--fused``.

Nearest upsampling repeats each input pixel over a 2x2 block, so on the upsampled grid the five taps of a 5x5
kernel fall on only three input rows (and columns) for each output phase: (py, px) in {0, 1}^2. Folding the
taps that meet the same input pixel gives four 3x3 kernels applied at the input resolution (36 instead of 100
multiply-adds per input pixel and channel pair), interleaved by pixel_shuffle. Away from the border the
upsampled image's reflect padding reads the same input pixels as a replicate padding of the input; only the
first and last output row and column differ, and they are recomputed exactly from a five-pixel-wide strip.

:func:`upsample_conv5` is the fast path; :func:`upsample_conv5_reference` its plain twin and the reference of
its tests (``tests/test_upsample_conv5.py``) and benchmark (``benchmarks/bench_upsample_conv5.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dgnet.ops.padding import reflect_pad

# _FOLD[p, k, d]: tap d of the 5x5 kernel lands on input offset k - 1 for output phase p.
_FOLD = (
    ((1.0, 1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 1.0, 1.0, 0.0), (0.0, 0.0, 0.0, 0.0, 1.0)),
    ((1.0, 0.0, 0.0, 0.0, 0.0), (0.0, 1.0, 1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0, 1.0)),
)


_FOLD_CACHE: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def _fold(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # cached per device: building it from a Python list each call would be a host-to-device copy per forward
    key = (dtype, device)
    if key not in _FOLD_CACHE:
        _FOLD_CACHE[key] = torch.tensor(_FOLD, dtype=dtype, device=device)
    return _FOLD_CACHE[key]


def upsample_conv5_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Plain twin: ``conv2d(reflect_pad(upsample_nearest_x2(x), 2), weight, bias)``.

    ``x`` ``(N, C, H, W)``, ``weight`` ``(Co, C, 5, 5)`` -> ``(N, Co, 2H, 2W)``.
    """
    return F.conv2d(reflect_pad(F.interpolate(x, scale_factor=2, mode="nearest"), 2), weight, bias)


def _up_reflect_index(n: int, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Input index read at positions ``[start, stop)`` of ``reflect_pad(upsample_x2(.), 2)`` along a dim of size n."""
    q = torch.arange(start - 2, stop - 2, device=device)
    m = 2 * n
    q = torch.where(q < 0, -q, q)
    q = torch.where(q > m - 1, 2 * (m - 1) - q, q)
    return torch.div(q, 2, rounding_mode="floor")


def upsample_conv5(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Fast path of ``upsample_conv5_reference`` (same values up to float rounding, same gradients).

    ``x`` ``(N, C, H, W)`` with H, W >= 2 (smaller inputs take the reference), any device and float dtype.
    """
    n, c, h, w = x.shape
    if h < 2 or w < 2:
        return upsample_conv5_reference(x, weight, bias)
    co = weight.shape[0]
    fold = _fold(weight.dtype, weight.device)
    # k[o, py, px, c, i, j] = sum_{d, e} fold[py, i, d] * weight[o, c, d, e] * fold[px, j, e]
    k = torch.einsum("pid,ocde,qje->opqcij", fold, weight, fold).reshape(co * 4, c, 3, 3)
    dev = x.device
    # Replicate padding by one pixel, as clamped gathers: F.pad(mode="replicate")'s backward has a fake kernel whose
    # strides disagree with the real one's on a channels-last input, which torch.compile (--compile) gives it.
    padded = x.index_select(2, torch.arange(-1, h + 1, device=dev).clamp_(0, h - 1))
    padded = padded.index_select(3, torch.arange(-1, w + 1, device=dev).clamp_(0, w - 1))
    z = F.conv2d(padded, k, None if bias is None else bias.repeat_interleave(4))
    y = F.pixel_shuffle(z, 2)  # channel o * 4 + py * 2 + px -> pixel (2i + py, 2j + px)
    # First and last output rows: the five padded rows each reads, across the full padded width.
    rows = torch.cat([_up_reflect_index(h, 0, 5, dev), _up_reflect_index(h, 2 * h - 1, 2 * h + 4, dev)])
    strip = x.index_select(2, rows).index_select(3, _up_reflect_index(w, 0, 2 * w + 4, dev))
    strip = strip.view(n, c, 2, 5, 2 * w + 4).transpose(1, 2).reshape(2 * n, c, 5, 2 * w + 4)
    r = F.conv2d(strip, weight, bias).view(n, 2, co, 2 * w)
    cols = torch.cat([_up_reflect_index(w, 0, 5, dev), _up_reflect_index(w, 2 * w - 1, 2 * w + 4, dev)])
    strip = x.index_select(3, cols).index_select(2, _up_reflect_index(h, 0, 2 * h + 4, dev))
    strip = strip.view(n, c, 2 * h + 4, 2, 5).permute(0, 3, 1, 2, 4).reshape(2 * n, c, 2 * h + 4, 5)
    s = F.conv2d(strip, weight, bias).view(n, 2, co, 2 * h)
    y[:, :, 0, :] = r[:, 0]
    y[:, :, -1, :] = r[:, 1]
    y[:, :, :, 0] = s[:, 0]
    y[:, :, :, -1] = s[:, 1]
    return y
