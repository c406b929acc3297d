"""G: the decoder, with the MLPs that turn the appearance code into AdaIN parameters."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dgnet.config import FOLD_CHOICES, ModelConfig
from dgnet.models.layers import LRELU_SLOPE, ConvBlock, init_kaiming_fan_in
from dgnet.ops.adain import adain
from dgnet.ops.grouped_mlp import grouped_mlp
from dgnet.ops.padding import reflect_pad
from dgnet.ops.upsample_conv5 import upsample_conv5


def fold_applies(mode: str, device: torch.device | str) -> bool:
    """Whether ``--fused`` folds the upsample + conv5x5 on ``device`` under ``train.fold_upsample=mode``.

    ``"auto"`` (default): on CPU only. On CUDA the fold saves multiply-adds but adds small ops to an iteration
    that is host-bound there, so CUDA keeps the plain upsample + conv until the fold is measured on its own
    (``benchmarks/bench_upsample_conv5.py -m gpu``; docs/records.md). ``"on"``/``"off"``: every device / none.
    """
    if mode not in FOLD_CHOICES:
        raise ValueError(f"fold_upsample={mode!r}: expected one of {FOLD_CHOICES}")
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cpu")


class MLP(nn.Module):
    """AdaIN parameter MLP: Linear(in -> 512) lrelu, Linear(512 -> 512) lrelu, Linear(512 -> out)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.fc1(x), LRELU_SLOPE)
        x = F.leaky_relu(self.fc2(x), LRELU_SLOPE)
        return self.fc3(x)


class AdaINResBlock(nn.Module):
    """MUNIT residual block with AdaIN: conv3x3 -> AdaIN -> lrelu; conv3x3 -> AdaIN -> + input.

    Both AdaIN steps go through ``dgnet.ops.adain``, each with its activation or residual add folded in: the
    plain reference, or with ``fused`` the fused kernel of the tensors' device (C++ on CPU, Triton on CUDA).
    """

    def __init__(self, dim: int, fused: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, bias=True)
        self.conv2 = nn.Conv2d(dim, dim, 3, bias=True)
        self.fused = fused

    def forward(
        self, x: torch.Tensor, scale1: torch.Tensor, bias1: torch.Tensor, scale2: torch.Tensor, bias2: torch.Tensor
    ) -> torch.Tensor:
        backend = "fused" if self.fused else "torch"
        h = adain(self.conv1(reflect_pad(x, 1)), scale1, bias1, activation="lrelu", negative_slope=LRELU_SLOPE,
                  backend=backend)
        return adain(self.conv2(reflect_pad(h, 1)), scale2, bias2, residual=x, backend=backend)


class Decoder(nn.Module):
    """G: structure code ``s`` ``(N, 128, h, w)`` + appearance code ``f`` ``(N, code_dim)`` -> image
    ``(N, 3, 4h, 4w)`` in normalised space (no tanh).

    - AdaIN parameters: ``f`` is cut into ``n_res`` (4) equal slices of ``code_dim / 4`` (2048 for ResNet-50,
      512 for the demo's ResNet-18); slice k feeds ``mlp_w[k]`` (scales) and ``mlp_b[k]`` (biases), each
      ``slice -> 512 -> 512 -> 2 * 128``; the concatenated outputs are handed out 128 per AdaIN layer in module
      order, so slice k drives residual block k (its two AdaIN layers). Used directly as scale and bias.
      With ``fused`` the eight MLPs run batched (``dgnet.ops.grouped_mlp``, same parameters).
    - 4 AdaIN residual blocks at 128; twice [nearest x2 upsample, conv5x5 halving channels, LayerNorm, lrelu];
      conv3x3 32->32 lrelu, conv3x3 32->32 lrelu, conv1x1 32->3. With ``fused``, where
      :func:`fold_applies` (``fold_upsample``; by default on CPU), each upsample + conv5x5 runs as
      ``dgnet.ops.upsample_conv5`` (folded 3x3 phase kernels at the input resolution), same parameters.
    - ``fused`` and ``fold_upsample`` (``train.fused``, ``train.fold_upsample``) are attributes set when the model
      is built: they choose kernels, never values (the fused paths equal the plain ones up to float rounding).
    Init: the reference's kaiming (fan_in) on convs and linears, zero biases; LayerNorm gamma U(0,1), beta 0.
    """

    def __init__(self, cfg: ModelConfig, code_dim: int, fused: bool = False, fold_upsample: str = "auto") -> None:
        super().__init__()
        fold_applies(fold_upsample, "cpu")  # a bad mode fails here, not at the first forward
        self.fused = fused
        self.fold_upsample = fold_upsample
        dim = cfg.structure_dim
        n_res = cfg.decoder_res_blocks
        if code_dim % n_res:
            raise ValueError(f"appearance code width {code_dim} is not divisible by decoder_res_blocks={n_res}")
        self.dim = dim
        self.n_res = n_res
        self.slice_dim = code_dim // n_res
        self.mlp_w = nn.ModuleList(MLP(self.slice_dim, 2 * dim, cfg.mlp_dim) for _ in range(n_res))
        self.mlp_b = nn.ModuleList(MLP(self.slice_dim, 2 * dim, cfg.mlp_dim) for _ in range(n_res))
        self.blocks = nn.ModuleList(AdaINResBlock(dim, fused) for _ in range(n_res))
        up = []
        d = dim
        for _ in range(2):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), ConvBlock(d, d // 2, 5, 1, 2, norm="ln")]
            d //= 2
        up += [ConvBlock(d, d, 3, 1, 1), ConvBlock(d, d, 3, 1, 1), ConvBlock(d, 3, 1, act=False)]
        self.up = nn.Sequential(*up)
        init_kaiming_fan_in(self)

    def adain_params(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and biases ``(N, 2 * n_res * 128)`` from the code ``f`` ``(N, code_dim)``; AdaIN layer j
        reads columns ``[128 j, 128 (j + 1))``."""
        slices = f.split(self.slice_dim, dim=1)
        scales = torch.cat([m(z) for m, z in zip(self.mlp_w, slices, strict=True)], dim=1)
        biases = torch.cat([m(z) for m, z in zip(self.mlp_b, slices, strict=True)], dim=1)
        return scales, biases

    def layer_params(self, f: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(scale, bias)``, each ``(N, 128)``, of every AdaIN layer in module order: the columns ``[128 j,
        128 (j + 1))`` of :meth:`adain_params`. With ``fused`` the eight MLPs run as one
        ``grouped_mlp``; otherwise each MLP runs on its own, as :meth:`adain_params` does."""
        if not self.fused:
            scales, biases = self.adain_params(f)
            return list(zip(scales.split(self.dim, dim=1), biases.split(self.dim, dim=1), strict=True))
        n = f.shape[0]
        z = f.reshape(n, self.n_res, self.slice_dim).transpose(0, 1)  # (n_res, N, slice): slice k feeds MLP k
        # Rows 2k, 2k + 1: the scales of block k's two AdaIN layers; rows 2 n_res + 2k, + 1: their biases.
        mlps = [*self.mlp_w, *self.mlp_b]
        fcs = [[getattr(m, name) for m in mlps] for name in ("fc1", "fc2", "fc3")]
        weights = [([fc.weight for fc in layer], [fc.bias for fc in layer]) for layer in fcs]
        out = grouped_mlp(weights, z.repeat(2, 1, 1), out_chunks=2, negative_slope=LRELU_SLOPE).unbind(0)
        layers = 2 * self.n_res
        return [(out[j], out[layers + j]) for j in range(layers)]

    def forward(self, s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        params = self.layer_params(f)
        x = s
        for k, block in enumerate(self.blocks):
            x = block(x, *params[2 * k], *params[2 * k + 1])
        if not (self.fused and fold_applies(self.fold_upsample, x.device)):
            return self.up(x)
        # Each [upsample, conv5x5 block] pair runs as the folded upsample_conv5 (same parameters).
        mods = list(self.up)
        i = 0
        while i < len(mods):
            if isinstance(mods[i], nn.Upsample):
                blk = mods[i + 1]
                x = blk.finish(upsample_conv5(x, blk.conv.weight, blk.conv.bias))
                i += 2
            else:
                x = mods[i](x)
                i += 1
        return x
