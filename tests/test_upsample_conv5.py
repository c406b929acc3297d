"""The folded upsample + conv5x5 (``dgnet.ops.upsample_conv5``) against its plain twin: outputs and gradients."""

import pytest
import torch

from dgnet.ops.upsample_conv5 import upsample_conv5, upsample_conv5_reference


@pytest.mark.parametrize("shape", [(2, 3, 2, 2), (1, 4, 3, 2), (2, 5, 7, 5), (1, 2, 1, 4)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_upsample_conv5_matches_reference(shape, with_bias):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, shape[1], 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True) if with_bias else None
    ref = upsample_conv5_reference(x, w, b)
    out = upsample_conv5(x, w, b)
    assert out.shape == (shape[0], 3, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    inputs = (x, w) + ((b,) if with_bias else ())
    for a, e in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


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
