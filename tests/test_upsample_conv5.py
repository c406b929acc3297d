"""The folded upsample + conv5x5 (``dgnet.ops.upsample_conv5``) against an independent reference: outputs and
gradients.

The reference is written here from the definition, sharing nothing with dgnet: nearest x2 upsampling and a
reflect padding of 2 as one index gather whose indices numpy's ``np.pad(mode="reflect")`` computes, then
``F.conv2d``. Float64 tolerances come from the arithmetic, not from a measurement: every output (and gradient)
element is a sum of products, and a float sum of n terms is within ``n * u * sum|terms|`` of the exact sum
(u = 2^-53; the first-order bound of Higham's Accuracy and Stability of Numerical Algorithms, section 3.1),
whatever the order. The fast path and the reference each meet that bound, so they differ by at most twice it;
``sum|terms|`` is the same computation on absolute values, and n a count of the terms any of the two sums.
"""

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dgnet.ops.upsample_conv5 import upsample_conv5, upsample_conv5_reference

# The module, not the function of the same name that shadows it as an attribute of dgnet.ops.
module = importlib.import_module("dgnet.ops.upsample_conv5")

U64 = 2.0**-53


def independent_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(reflect_pad_2(upsample_nearest_x2(x)), w, b)`` with the padded upsampled grid as one gather."""
    h, wd = x.shape[-2:]
    rows = torch.from_numpy(np.pad(np.repeat(np.arange(h), 2), 2, mode="reflect"))
    cols = torch.from_numpy(np.pad(np.repeat(np.arange(wd), 2), 2, mode="reflect"))
    return F.conv2d(x[:, :, rows][:, :, :, cols], w, b)


def assert_within(got: torch.Tensor, want: torch.Tensor, n_terms: int, magnitude: torch.Tensor, what: str) -> None:
    bound = 2 * n_terms * U64 * magnitude
    excess = (got - want).abs() - bound
    assert excess.max() <= 0, f"{what}: |fast - reference| exceeds 2 n u sum|terms| by {excess.max():.3g}"


# H, W >= 2: the folded fast path (the smallest map, odd and uneven sizes); H or W of 1: its documented fallback.
FAST = [(2, 3, 2, 2), (1, 4, 3, 2), (2, 5, 7, 5), (1, 2, 2, 9)]
FALLBACK = [(1, 2, 1, 4), (1, 3, 3, 1)]


@pytest.mark.parametrize("shape", FAST + FALLBACK)
@pytest.mark.parametrize("with_bias", [True, False])
def test_upsample_conv5_matches_an_independent_reference(shape, with_bias, monkeypatch):
    torch.manual_seed(0)
    n, c, h, wd = shape
    co = 3
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(co, c, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(co, dtype=torch.float64, requires_grad=True) if with_bias else None
    if shape in FAST:  # these shapes must not reach the plain twin
        def no_twin(*args):
            raise AssertionError(f"{shape} fell back to upsample_conv5_reference")

        monkeypatch.setattr(module, "upsample_conv5_reference", no_twin)
    out = upsample_conv5(x, w, b)
    ref = independent_reference(x, w, b)
    assert out.shape == ref.shape == (n, co, 2 * h, 2 * wd)
    g = torch.randn_like(ref)
    inputs = (x, w) + ((b,) if with_bias else ())
    got = torch.autograd.grad(out, inputs, g)
    want = torch.autograd.grad(ref, inputs, g)

    # Magnitudes: the same sums on |x|, |w|, |b|, |g| (both maps are linear in each argument).
    xa, wa, ga = x.detach().abs(), w.detach().abs(), g.abs()
    ba = b.detach().abs() if with_bias else None
    y_mag = independent_reference(xa, wa, ba)
    xr, wr = xa.clone().requires_grad_(), wa.clone().requires_grad_()
    dx_mag, dw_mag = torch.autograd.grad(independent_reference(xr, wr, None), (xr, wr), ga)
    # Terms per element. y: 25 c products and the bias in the reference; the fast path sums up to 4 taps into
    # each folded weight, then 9 c products and the bias. dx: every input pixel is read by at most 4 x 4 padded
    # positions (upsampling and the reflection), each by 25 co products. dw and db: one product per output pixel.
    n_y = 25 * c + 4 + 1
    n_dx = 16 * (25 * co + 4)
    n_dw = n * 4 * h * wd + 16
    assert_within(out, ref, n_y, y_mag, "y")
    assert_within(got[0], want[0], n_dx, dx_mag, "grad x")
    assert_within(got[1], want[1], n_dw, dw_mag, "grad w")
    if with_bias:
        assert_within(got[2], want[2], n_dw, ga.sum(dim=(0, 2, 3)), "grad b")


def test_the_plain_twin_is_the_definition():
    """upsample_conv5_reference (the benchmark's baseline and the CUDA test's) equals the independent reference
    bit for bit where both are plain F.conv2d on the same padded tensor."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    w = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    b = torch.randn(2, dtype=torch.float64)
    assert torch.equal(upsample_conv5_reference(x, w, b), independent_reference(x, w, b))


@pytest.mark.gpu
def test_upsample_conv5_cuda_matches_reference():
    # Exactness on the device is checked in float64 (no TF32, no reduced-precision algorithms); fp32 and bf16
    # follow the style guide's rule: error against the float64 result at most twice plain PyTorch's + atol.
    # (A first H100 run compared fp32 gradients directly and saw ~2e-4 relative differences from cuDNN's
    # backward algorithms on both paths, which says nothing about the fold.)
    torch.manual_seed(0)
    x = torch.randn(4, 64, 32, 16, device="cuda", dtype=torch.float64, requires_grad=True)
    w = torch.randn(32, 64, 5, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    b = torch.randn(32, device="cuda", dtype=torch.float64, requires_grad=True)
    ref = upsample_conv5_reference(x, w, b)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (x, w, b), g)
    out = upsample_conv5(x, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for a, e in zip(torch.autograd.grad(out, (x, w, b), g), ref_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-9)

    def errors(fn, dtype):
        xs, ws, bs = (t.detach().to(dtype).requires_grad_() for t in (x, w, b))
        y = fn(xs, ws, bs)
        grads = torch.autograd.grad(y, (xs, ws, bs), g.to(dtype))
        return [(a.double() - e).abs().max().item() for a, e in zip((y, *grads), (ref, *ref_grads), strict=True)]

    for dtype in (torch.float32, torch.bfloat16):
        fast, plain = errors(upsample_conv5, dtype), errors(upsample_conv5_reference, dtype)
        for name, ef, ep, ref_t in zip(("y", "dx", "dw", "db"), fast, plain, (ref, *ref_grads), strict=True):
            atol = torch.finfo(dtype).eps * ref_t.abs().max().item()  # one unit of the dtype at the result's scale
            assert ef <= 2 * ep + atol, f"{dtype} {name}: fused error {ef:.3g} > 2 x plain {ep:.3g} + {atol:.3g}"
