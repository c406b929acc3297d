"""Building blocks shared by Es, G and D: padded conv blocks, residual blocks, LayerNorm, init helpers.

The blocks follow the MUNIT-style ordering the DG-Net reference uses: pad -> conv -> norm -> activation.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgnet.losses import f32

LRELU_SLOPE = 0.2  # the reference's LeakyReLU slope, used throughout Es, G and D


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


class LayerNorm(nn.Module):
    """MUNIT/DG-Net LayerNorm: per-sample mean and std over (C, H, W), per-channel affine.

    ``y = (x - mean) / (std + eps) * gamma + beta`` with the unbiased std (the reference's ``Tensor.std``),
    ``gamma`` initialised uniform(0, 1) and ``beta`` 0 per the spec. Statistics in at least float32.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.empty(channels).uniform_())
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = f32(x)
        flat = xf.flatten(1)
        std, mean = torch.std_mean(flat, dim=1)
        y = (xf - mean[:, None, None, None]) / (std[:, None, None, None] + self.eps)
        y = y * self.gamma.to(xf.dtype)[None, :, None, None] + self.beta.to(xf.dtype)[None, :, None, None]
        return y.to(x.dtype)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=False)  # no running stats, eps 1e-5
    if kind == "ln":
        return LayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm={kind!r}: expected 'in', 'ln' or 'none'")


class ConvBlock(nn.Module):
    """Reflect pad -> Conv2d (bias) -> norm -> LeakyReLU(0.2) or nothing."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        pad: int = 0,
        dilation: int = 1,
        norm: str = "none",
        act: bool = True,
    ) -> None:
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, dilation=dilation, bias=True)
        self.norm = _norm(norm, cout)
        self.act = act

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        """Norm and activation of a conv output ``y``."""
        y = self.norm(y)
        return F.leaky_relu(y, LRELU_SLOPE) if self.act else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.conv(reflect_pad(x, self.pad)))


class ResBlock(nn.Module):
    """MUNIT residual block: conv3x3-norm-lrelu, conv3x3-norm, then add the input."""

    def __init__(self, dim: int, norm: str) -> None:
        super().__init__()
        self.block1 = ConvBlock(dim, dim, 3, 1, 1, norm=norm, act=True)
        self.block2 = ConvBlock(dim, dim, 3, 1, 1, norm=norm, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(self.block1(x))


def init_kaiming_fan_in(module: nn.Module) -> None:
    """The reference's ``init: kaiming`` for the generator side: Conv/Linear weights kaiming-normal
    (fan_in, gain sqrt(2)), biases 0. LayerNorm's gamma/beta are left at their spec init."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_gaussian(module: nn.Module, std: float = 0.02) -> None:
    """D's init per the spec: Conv/Linear weights N(0, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------------------------
# Nearest x2 upsample + reflect pad 2 + conv5x5: the decoder's two upsampling steps.
#
# Nearest upsampling repeats each input pixel over a 2x2 block, so on the upsampled grid the five taps of a 5x5
# kernel fall on only three input rows (and columns) for each output phase: (py, px) in {0, 1}^2. Folding the
# taps that meet the same input pixel gives four 3x3 kernels applied at the input resolution (36 instead of 100
# multiply-adds per input pixel and channel pair), interleaved by pixel_shuffle. Away from the border the
# upsampled image's reflect padding reads the same input pixels as a replicate padding of the input; only the
# first and last output row and column differ, and they are recomputed exactly from a five-pixel-wide strip.

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
    z = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, None if bias is None else bias.repeat_interleave(4))
    y = F.pixel_shuffle(z, 2)  # channel o * 4 + py * 2 + px -> pixel (2i + py, 2j + px)
    dev = x.device
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
