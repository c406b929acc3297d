"""Triton forward and backward kernels of fused AdaIN (+ activation, + residual), with host launchers.

One program handles one row: the ``H*W`` elements of one ``(n, c)`` plane of a contiguous
``(N, C, H, W)`` tensor. Rows of up to ``MAX_BLOCK`` elements (the decoder's 64x32 and 128x64) are
held in registers, so x is read once forward and x, dy once backward. Longer rows loop over blocks:
the statistics merge per-block mean and M2 (Chan et al.), then a second loop writes the output.
Statistics are float32 whatever the I/O dtype and use ``tl.sum`` only (the interpreter runs custom
``tl.reduce`` combines element by element). Only the per-row mean and rstd are saved for the
backward, which recomputes ``xhat``. The scale/bias gradients of a row are sums within its program,
so there are no atomics and results are deterministic.

On a GPU the number of warps is autotuned per row length; under ``TRITON_INTERPRET=1`` (CPU tensors
in CI) a fixed configuration is used, as the autotuner misbehaves in the interpreter.

The launchers call the kernels through ``torch.library.wrap_triton`` so that the ``triton_op``
registration in ``dgnet.ops.adain`` lets ``torch.compile`` see and inline them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

#: Longest row held in registers by one program; longer rows take the looped path. 8192 covers
#: the decoder's 128x64 planes.
MAX_BLOCK = 8192

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Activation codes, shared with the C++ schema (csrc/include/dgnet/adain.h).
ACT_NONE, ACT_RELU, ACT_LRELU = 0, 1, 2


@triton.jit
def _activate(z, slope, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.where(z <= 0, 0.0, z)  # not `z > 0`: a NaN stays NaN, as in F.relu
    elif ACT == 2:
        z = tl.where(z > 0, z, z * slope)
    return z


@triton.jit
def _activation_grad(z, slope, ACT: tl.constexpr):
    # PyTorch's convention at z == 0: relu and leaky_relu backward test z > 0.
    if ACT == 1:
        d = tl.where(z <= 0, 0.0, 1.0)  # a NaN z passes the gradient, as PyTorch's relu backward does
    elif ACT == 2:
        d = tl.where(z > 0, 1.0, slope)
    else:
        d = tl.full(z.shape, 1.0, tl.float32)
    return d


@triton.jit
def _adain_fwd_kernel(
    X,  # *(rows, HW) input, contiguous; fp32, bf16 or fp16
    SCALE,  # *(N, C) per-row scale, any strides, any float dtype
    BIAS,  # *(N, C) per-row bias, any strides, any float dtype
    RES,  # *(rows, HW) residual in X's dtype; X itself (never read) when HAS_RES is False
    Y,  # *(rows, HW) output in X's dtype
    MEAN,  # *(rows,) float32 output: row mean
    RSTD,  # *(rows,) float32 output: 1 / sqrt(biased var + eps)
    HW,  # elements per row (H * W)
    C,  # channels: row = n * C + c
    stride_sn, stride_sc, stride_bn, stride_bc,  # strides of SCALE and BIAS (column slices need no copy)
    eps,  # variance epsilon
    slope,  # negative slope of the leaky relu
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 leaky relu
    HAS_RES: tl.constexpr,  # add RES after the activation
    BLOCK: tl.constexpr,  # elements per block, a power of two
    ONE_BLOCK: tl.constexpr,  # HW <= BLOCK: the row stays in registers
):
    row = tl.program_id(0)
    base = row.to(tl.int64) * HW
    s = tl.load(SCALE + (row // C) * stride_sn + (row % C) * stride_sc).to(tl.float32)
    b = tl.load(BIAS + (row // C) * stride_bn + (row % C) * stride_bc).to(tl.float32)
    cols = tl.arange(0, BLOCK)
    # Sums are shifted by the row's first element: a constant row gets exactly its value as mean (so
    # x - mean is exactly 0 where 1/sqrt(eps) would amplify rounding), and precision improves when
    # |mean| >> std.
    shift = tl.load(X + base).to(tl.float32)
    if ONE_BLOCK:
        mask = cols < HW
        x = tl.load(X + base + cols, mask=mask, other=0.0).to(tl.float32)
        mean = shift + tl.sum(tl.where(mask, x - shift, 0.0), axis=0) / HW
        d = tl.where(mask, x - mean, 0.0)
        # Two-pass variance from registers: exact for constant rows, no cancellation.
        rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / HW + eps)
        a = s * rstd
        y = _activate(d * a + b, slope, ACT)
        if HAS_RES:
            y += tl.load(RES + base + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + base + cols, y.to(Y.dtype.element_ty), mask=mask)
    else:
        # Merge per-block (count, mean, M2) so each block's statistics are two-pass exact.
        mean = 0.0
        m2 = 0.0
        count = 0.0
        for start in range(0, HW, BLOCK):
            offs = start + cols
            mask = offs < HW
            x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
            nb = tl.minimum(HW - start, BLOCK).to(tl.float32)
            bmean = shift + tl.sum(tl.where(mask, x - shift, 0.0), axis=0) / nb
            d = tl.where(mask, x - bmean, 0.0)
            bm2 = tl.sum(d * d, axis=0)
            total = count + nb
            delta = bmean - mean
            mean = mean + delta * (nb / total)
            m2 = m2 + bm2 + delta * delta * (count * nb / total)
            count = total
        rstd = 1.0 / tl.sqrt(tl.maximum(m2 / HW, 0.0) + eps)
        a = s * rstd
        for start in range(0, HW, BLOCK):
            offs = start + cols
            mask = offs < HW
            x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
            y = _activate((x - mean) * a + b, slope, ACT)
            if HAS_RES:
                y += tl.load(RES + base + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(Y + base + offs, y.to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _adain_bwd_kernel(
    DY,  # *(rows, HW) gradient of the output, contiguous, X's dtype
    X,  # *(rows, HW) forward input
    SCALE,  # *(N, C) per-row scale, any strides
    BIAS,  # *(N, C) per-row bias, any strides
    MEAN,  # *(rows,) float32 saved mean
    RSTD,  # *(rows,) float32 saved rstd
    DX,  # *(rows, HW) output: gradient of x in X's dtype
    DSCALE,  # *(rows,) output in scale's dtype: sum(g * xhat)
    DBIAS,  # *(rows,) output in bias's dtype: sum(g)
    HW,  # elements per row
    C,  # channels: row = n * C + c
    stride_sn, stride_sc, stride_bn, stride_bc,  # strides of SCALE and BIAS
    slope,  # negative slope of the leaky relu
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 leaky relu
    BLOCK: tl.constexpr,  # elements per block, a power of two
    ONE_BLOCK: tl.constexpr,  # HW <= BLOCK
):
    # With z = (x - mean) * a + bias, a = scale * rstd (as the forward computed it), g = dy * act'(z)
    # and xhat = (x - mean) * rstd:
    #   dbias = sum(g), dscale = sum(g * xhat), dx = rstd * scale * (g - mean(g) - xhat * mean(g * xhat)),
    # except dx = 0 on an exactly constant row, where every x equals the mean (the forward returns a constant row's
    # value exactly): such a row passes x no gradient (dgnet/ops/adain.py, "Constant channels"). A NaN row's sum of
    # |x - mean| is NaN, never 0.
    row = tl.program_id(0)
    base = row.to(tl.int64) * HW
    s = tl.load(SCALE + (row // C) * stride_sn + (row % C) * stride_sc).to(tl.float32)
    b = tl.load(BIAS + (row // C) * stride_bn + (row % C) * stride_bc).to(tl.float32)
    mean = tl.load(MEAN + row)
    rstd = tl.load(RSTD + row)
    a = s * rstd
    cols = tl.arange(0, BLOCK)
    if ONE_BLOCK:
        mask = cols < HW
        x = tl.load(X + base + cols, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + base + cols, mask=mask, other=0.0).to(tl.float32)
        g = dy * _activation_grad((x - mean) * a + b, slope, ACT)  # dy = 0 past the row: g = 0 there
        xhat = (x - mean) * rstd
        sum_g = tl.sum(g, axis=0)
        sum_gx = tl.sum(g * xhat, axis=0)
        constant = tl.sum(tl.where(mask, tl.abs(x - mean), 0.0), axis=0) == 0
        dx = tl.where(constant, 0.0, rstd * s * (g - sum_g / HW - xhat * (sum_gx / HW)))
        tl.store(DX + base + cols, dx.to(DX.dtype.element_ty), mask=mask)
    else:
        acc_g = tl.zeros((BLOCK,), tl.float32)
        acc_gx = tl.zeros((BLOCK,), tl.float32)
        acc_dev = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, HW, BLOCK):
            offs = start + cols
            mask = offs < HW
            x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + base + offs, mask=mask, other=0.0).to(tl.float32)
            g = dy * _activation_grad((x - mean) * a + b, slope, ACT)
            acc_g += g
            acc_gx += g * ((x - mean) * rstd)
            acc_dev += tl.where(mask, tl.abs(x - mean), 0.0)
        sum_g = tl.sum(acc_g, axis=0)
        sum_gx = tl.sum(acc_gx, axis=0)
        constant = tl.sum(acc_dev, axis=0) == 0
        for start in range(0, HW, BLOCK):
            offs = start + cols
            mask = offs < HW
            x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + base + offs, mask=mask, other=0.0).to(tl.float32)
            g = dy * _activation_grad((x - mean) * a + b, slope, ACT)
            xhat = (x - mean) * rstd
            dx = tl.where(constant, 0.0, rstd * s * (g - sum_g / HW - xhat * (sum_gx / HW)))
            tl.store(DX + base + offs, dx.to(DX.dtype.element_ty), mask=mask)
    tl.store(DSCALE + row, sum_gx.to(DSCALE.dtype.element_ty))
    tl.store(DBIAS + row, sum_g.to(DBIAS.dtype.element_ty))


def _warp_configs() -> list[triton.Config]:
    return [triton.Config({}, num_warps=w) for w in (2, 4, 8, 16, 32)]


# Autotuned twins for the GPU. BLOCK follows from the row length, so only the warp count is tuned,
# keyed on the row length (the autotuner adds the tensors' dtypes to the key itself).
_adain_fwd_tuned = triton.autotune(configs=_warp_configs(), key=["HW"])(_adain_fwd_kernel)
_adain_bwd_tuned = triton.autotune(configs=_warp_configs(), key=["HW"])(_adain_bwd_kernel)


def _block(hw: int) -> tuple[int, bool]:
    block = min(triton.next_power_of_2(hw), MAX_BLOCK)
    return block, hw <= block


def _launch(kernel, tuned, grid, traced, *args, **meta) -> None:
    # traced: called from the triton_op body, where wrap_triton lets torch.compile capture the launch;
    # eager callers launch directly and skip that layer's per-call cost.
    if INTERPRET:
        kernel, meta = kernel, {**meta, "num_warps": 4}
    else:
        kernel = tuned
    launch = (torch.library.wrap_triton(kernel) if traced else kernel)[grid]
    x = args[0]
    # Triton launches on the current device's stream, not the tensors': make x's device current when it
    # is not (a single process on cuda:1, say). The test is one cheap call on the common path.
    if x.is_cuda and x.device.index != torch.cuda.current_device():
        with torch.cuda.device(x.device):
            launch(*args, **meta)
    else:
        launch(*args, **meta)


def adain_forward(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None,
    activation: int,
    eps: float,
    negative_slope: float,
    traced: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward. ``x`` ``(N, C, H, W)``; ``scale``, ``bias`` ``(N, C)``; ``residual`` like x or None.

    Returns ``y`` (contiguous, x's dtype) and the float32 ``(N, C)`` ``mean`` and ``rstd``.
    Tensors are on one CUDA device, or on the CPU under ``TRITON_INTERPRET=1``. ``traced=True`` (inside
    a ``triton_op``) launches through ``torch.library.wrap_triton``; eager callers pass False.
    """
    n, c, h, w = x.shape
    hw = h * w
    xc = x.contiguous()
    y = torch.empty_like(xc)
    mean = torch.empty((n, c), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    res = residual.to(x.dtype).contiguous() if residual is not None else xc
    block, one_block = _block(hw)
    _launch(
        _adain_fwd_kernel, _adain_fwd_tuned, (n * c,), traced,
        xc, scale, bias, res, y, mean, rstd, hw, c, *scale.stride(), *bias.stride(), eps, negative_slope,
        ACT=activation, HAS_RES=residual is not None, BLOCK=block, ONE_BLOCK=one_block,
    )
    return y, mean, rstd


def adain_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    activation: int,
    negative_slope: float,
    traced: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward. Returns ``grad_x`` (contiguous, x's dtype), ``grad_scale`` and ``grad_bias``
    (``(N, C)`` in scale's and bias's dtypes). ``mean`` and ``rstd`` are the forward's float32 outputs."""
    n, c, h, w = x.shape
    hw = h * w
    xc = x.contiguous()
    dx = torch.empty_like(xc)
    # Written in the parameters' dtypes by the kernel: no conversion launches on the host.
    dscale = torch.empty((n, c), device=x.device, dtype=scale.dtype)
    dbias = torch.empty((n, c), device=x.device, dtype=bias.dtype)
    block, one_block = _block(hw)
    _launch(
        _adain_bwd_kernel, _adain_bwd_tuned, (n * c,), traced,
        grad_y.to(x.dtype).contiguous(), xc, scale, bias, mean.contiguous(), rstd.contiguous(), dx, dscale, dbias,
        hw, c, *scale.stride(), *bias.stride(), negative_slope,
        ACT=activation, BLOCK=block, ONE_BLOCK=one_block,
    )
    return dx, dscale, dbias
