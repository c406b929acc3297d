"""Fused AdaIN kernels (C++ CPU, Triton) against the plain PyTorch reference: outputs and all gradients.

Accuracy rule (flash-attention's): a fused result passes when its error against a float64 ground
truth is at most twice the error of the plain PyTorch reference run in the same dtype, plus atol.
Triton runs under TRITON_INTERPRET=1 on CPU (set by conftest.py) on a few small fp32 shapes; the
device checks of Triton, including bf16/fp16 and the decoder's shapes, are marked ``gpu``.
"""

from __future__ import annotations

import importlib
import os

import _optional
import pytest
import torch
import torch.nn.functional as F

from dgnet.ops import adain, adain_reference

ACTS = [None, "relu", "lrelu"]
ATOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2, torch.float16: 2e-3}
# The module, not the function dgnet.ops.adain that shadows it as an attribute of dgnet.ops.
adain_module = importlib.import_module("dgnet.ops.adain")
NAMES = ("y", "grad_x", "grad_scale", "grad_bias", "grad_residual")


def make_inputs(shape, dtype=torch.float32, device="cpu", residual=True, constant_rows=False, seed=0):
    """x, scale, bias, residual (or None) and an upstream gradient dy, all in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    n, c = shape[:2]
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5
    if constant_rows:  # every other (n, c) plane constant: zero variance
        x.view(n * c, -1)[::2] = torch.randn(n * c, 1, generator=g, dtype=torch.float64)[::2]
    scale = torch.randn(n, c, generator=g, dtype=torch.float64) + 1
    bias = torch.randn(n, c, generator=g, dtype=torch.float64)
    res = torch.randn(shape, generator=g, dtype=torch.float64) if residual else None
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)
    return cast(x), cast(scale), cast(bias), cast(res), cast(dy)


def forward_backward(fn, x, scale, bias, res, dy, **kw):
    """Output and gradients w.r.t. x, scale, bias (and residual) of ``fn`` at fresh leaves."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, scale, bias, res) if t is not None]
    y = fn(*leaves[:3], residual=leaves[3] if res is not None else None, **kw)
    grads = torch.autograd.grad(y, leaves, dy)
    return [y.detach(), *grads]


def check_against_reference(backend, x, scale, bias, res, dy, activation, atol=None):
    """The flash-attention rule on the output and every gradient."""
    as_double = (t.double() if t is not None else None for t in (x, scale, bias, res, dy))
    truth = forward_backward(adain_reference, *as_double, activation=activation)
    plain = forward_backward(adain_reference, x, scale, bias, res, dy, activation=activation)
    fused = forward_backward(adain, x, scale, bias, res, dy, activation=activation, backend=backend)
    atol = ATOL[x.dtype] if atol is None else atol
    for name, t, p, f in zip(NAMES, truth, plain, fused, strict=False):
        assert f.dtype == p.dtype and f.shape == p.shape, name
        assert torch.isfinite(f).all(), f"{name}: not finite"
        # Scale by the magnitude so atol is relative to the values a gradient sums over.
        mag = max(1.0, t.abs().max().item())
        err_fused = (f.double() - t).abs().max().item()
        err_plain = (p.double() - t).abs().max().item()
        assert err_fused <= 2 * err_plain + atol * mag, (
            f"{backend} {name}: error {err_fused:.3g} vs plain PyTorch's {err_plain:.3g} (atol {atol * mag:.3g})"
        )


# ---- C++ CPU kernel -------------------------------------------------------------------------------

CPU_SHAPES = [(1, 1, 1, 1), (1, 1, 1, 7), (2, 3, 5, 7), (1, 128, 4, 4), (2, 4, 64, 32), (1, 2, 91, 91), (1, 1, 13, 1)]


@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_cpu_kernel_matches_reference_fp32(shape, activation, residual):
    check_against_reference("cpu", *make_inputs(shape, residual=residual), activation)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("activation", ACTS)
def test_cpu_kernel_low_and_double_precision(dtype, activation):
    for shape in [(2, 3, 5, 7), (1, 4, 64, 32)]:
        check_against_reference("cpu", *make_inputs(shape, dtype=dtype), activation)


@pytest.mark.parametrize("activation", ACTS)
def test_cpu_kernel_constant_rows_stay_finite(activation):
    x, scale, bias, res, dy = make_inputs((2, 3, 6, 5), constant_rows=True)
    check_against_reference("cpu", x, scale, bias, res, dy, activation)
    y = adain(x, scale, bias, activation=activation, backend="cpu")
    # A constant plane normalises to 0 (up to the rounding of its mean, amplified by 1/sqrt(eps)),
    # so its output is act(bias).
    act = {None: lambda t: t, "relu": torch.relu, "lrelu": lambda t: F.leaky_relu(t, 0.2)}[activation]
    torch.testing.assert_close(y[0, 0], act(bias[0, 0]).expand_as(y[0, 0]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_cpu_kernel_gradcheck_float64(activation, residual):
    x, scale, bias, res, _ = make_inputs((2, 3, 4, 5), dtype=torch.float64, residual=residual)
    inputs = [t.requires_grad_(True) for t in (x, scale, bias, res) if t is not None]

    def fn(*args):
        return adain(args[0], args[1], args[2], residual=args[3] if residual else None, activation=activation,
                     backend="cpu")

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_cpu_kernel_handles_strided_inputs():
    x, scale, bias, res, dy = make_inputs((2, 3, 8, 6))
    params = torch.cat([scale, bias], dim=1)  # the decoder slices scale and bias out of one MLP output
    x_t = x.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous x with the same values
    got = adain(x_t, params[:, :3], params[:, 3:], residual=res, activation="lrelu", backend="cpu")
    torch.testing.assert_close(got, adain_reference(x, scale, bias, res, "lrelu"), rtol=1e-5, atol=1e-5)


def test_cpu_ops_pass_opcheck():
    x, scale, bias, res, dy = make_inputs((2, 3, 5, 7))
    for r in (res, None):
        for code in (0, 1, 2):
            args = (x.requires_grad_(True), scale.requires_grad_(True), bias, r, code, 1e-5, 0.2)
            torch.library.opcheck(torch.ops.dgnet.adain_forward.default, args)
    y, mean, rstd = torch.ops.dgnet.adain_forward(x.detach(), scale.detach(), bias, res, 2, 1e-5, 0.2)
    torch.library.opcheck(torch.ops.dgnet.adain_backward.default, (dy, x.detach(), scale.detach(), bias, mean, rstd,
                                                                  2, 0.2))


def test_cpu_kernel_under_torch_compile_fullgraph():
    """A residual block's two AdaIN steps compile as one graph (fake kernels and autograd traced)."""
    x, scale, bias, res, dy = make_inputs((2, 4, 6, 5), residual=False)

    def block(x, scale, bias):
        h = adain(x, scale, bias, activation="lrelu", backend="cpu")
        return adain(h * 2, scale, bias, residual=x, backend="cpu")

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    want = forward_backward(lambda x, s, b, residual: block(x, s, b), x, scale, bias, None, dy)
    got = forward_backward(lambda x, s, b, residual: compiled(x, s, b), x, scale, bias, None, dy)
    for name, w, g in zip(NAMES, want, got, strict=False):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, msg=name)


# ---- Triton kernels under the interpreter (CPU, fp32, small) ----------------------------------------

# Skipped where Triton is not installed (outside CI) or where conftest.py leaves the interpreter off (a GPU is
# visible); a Triton that is installed but fails to import runs these tests, which then fail (tests/_optional.py).
needs_interpreter = pytest.mark.skipif(
    (_optional.not_installed("triton") and not _optional.in_ci()) or os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs triton, and the interpreter (TRITON_INTERPRET=1, set by conftest.py where no GPU is visible)",
)


@needs_interpreter
@pytest.mark.parametrize(
    "shape,activation,residual",
    [
        ((1, 1, 1, 1), "relu", True),
        ((2, 3, 5, 7), None, False),
        ((2, 3, 5, 7), "relu", True),
        ((1, 128, 2, 3), "lrelu", True),
        ((1, 2, 64, 32), "lrelu", False),  # the decoder's plane, one block
        ((1, 2, 91, 91), "lrelu", True),  # 8281 > MAX_BLOCK: the looped reduction, not a power of two
    ],
    ids=str,
)
def test_triton_interpreted_matches_reference(shape, activation, residual):
    check_against_reference("triton", *make_inputs(shape, residual=residual), activation)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=needs_interpreter)])
@pytest.mark.parametrize("activation", ACTS)
def test_nan_propagates_like_the_reference(backend, activation):
    """A NaN in one (n, c) plane makes that plane NaN, and only that one, as in the reference: a diverged
    channel must show, not turn into zeros (a `z > 0 ? z : 0` relu did that)."""
    x, scale, bias, res, _ = make_inputs((2, 3, 4, 5))
    x[1, 2, 3, 4] = float("nan")
    want = adain_reference(x, scale, bias, res, activation)
    got = adain(x, scale, bias, res, activation, backend=backend)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and int(torch.isnan(got).sum()) == 20
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), atol=1e-5, rtol=1e-5)


@needs_interpreter
def test_triton_interpreted_through_the_op(monkeypatch):
    """Eager calls use an autograd.Function; this checks the triton_op path torch.compile takes."""
    monkeypatch.setattr(adain_module, "_EAGER_AUTOGRAD_FUNCTION", False)
    check_against_reference("triton", *make_inputs((2, 3, 5, 7)), "lrelu")


@needs_interpreter
def test_triton_interpreted_looped_path_and_constant_rows(monkeypatch):
    from dgnet.kernels import adain as kernels

    # A small block forces the looped reduction on small rows, including a partial last block.
    monkeypatch.setattr(kernels, "MAX_BLOCK", 16)
    for activation in ACTS:
        check_against_reference("triton", *make_inputs((2, 2, 7, 5), constant_rows=True), activation)


@needs_interpreter
def test_triton_interpreted_reads_strided_scale_and_bias():
    """The decoder hands each AdaIN column slices of one MLP output: the kernels read them through their
    strides (no copy launches), and the gradients land in the right columns of the parent."""
    x, scale, bias, res, dy = make_inputs((2, 3, 5, 4))
    parent = torch.cat([scale, torch.zeros_like(scale), bias], dim=1)  # (N, 3C): scale, unused, bias

    def run(backend):
        p = parent.clone().requires_grad_(True)
        s, b = p[:, :3], p[:, 6:]
        assert not s.is_contiguous() and not b.is_contiguous()
        y = adain(x, s, b, residual=res, activation="lrelu", backend=backend)
        return y, torch.autograd.grad(y, p, dy)[0]

    (y_t, g_t), (y_r, g_r) = run("triton"), run("torch")
    torch.testing.assert_close(y_t, y_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_t, g_r, rtol=1e-5, atol=1e-5)
    assert (g_t[:, 3:6] == 0).all()
    # An expanded (stride-0) scale: one value per channel shared by the batch.
    per_channel = scale[:1].expand(2, 3)
    torch.testing.assert_close(adain(x, per_channel, bias, backend="triton"),
                               adain_reference(x, per_channel, bias), rtol=1e-5, atol=1e-5)


@needs_interpreter
def test_triton_ops_pass_opcheck():
    x, scale, bias, res, dy = make_inputs((1, 2, 3, 5))
    args = (x.requires_grad_(True), scale.requires_grad_(True), bias, res, 2, 1e-5, 0.2)
    torch.library.opcheck(torch.ops.dgnet.adain_triton_forward.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    y, mean, rstd = torch.ops.dgnet.adain_triton_forward(x.detach(), scale.detach(), bias, res, 1, 1e-5, 0.2)
    torch.library.opcheck(torch.ops.dgnet.adain_triton_backward.default,
                          (dy, x.detach(), scale.detach(), bias, mean, rstd, 1, 0.2),
                          test_utils=("test_schema", "test_faketensor"))


# ---- dispatch and bad input ---------------------------------------------------------------------------


def test_default_backend_is_the_reference_and_fused_picks_the_device_kernel():
    """No process-wide switch: ``backend`` alone decides. The default is the plain reference; ``"fused"`` is the
    fused kernel of x's device (C++ for CPU tensors)."""
    x, scale, bias, res, _ = make_inputs((2, 3, 5, 7))
    assert torch.equal(adain(x, scale, bias, res), adain_reference(x, scale, bias, res))
    want = torch.ops.dgnet.adain_forward(x, scale, bias, res, 0, 1e-5, 0.2)[0]
    assert torch.equal(adain(x, scale, bias, res, backend="fused"), want)
    assert adain_module.fused_backend(torch.device("cpu")) == "cpu"
    assert adain_module.fused_backend(torch.device("cuda", 0)) == "triton"
    with pytest.raises(RuntimeError, match="no fused AdaIN kernel for device meta"):
        adain_module.fused_backend(torch.device("meta"))


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    if _optional.not_installed("triton") and not _optional.in_ci():
        pytest.skip("triton is not installed")
    monkeypatch.setattr(adain_module._triton_kernels, "INTERPRET", False)
    x, scale, bias, _, _ = make_inputs((1, 2, 3, 3))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        adain(x, scale, bias, backend="triton")


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(x=torch.zeros(2, 3, 4)), "x must be a"),
        (dict(scale=torch.zeros(2, 4)), "scale must be"),
        (dict(bias=torch.zeros(3, 3)), "bias must be"),
        (dict(residual=torch.zeros(2, 3, 4, 5)), "residual must"),
        (dict(activation="gelu"), "activation='gelu'"),
        (dict(backend="cuda"), "backend='cuda'"),
        (dict(x=torch.zeros(2, 3, 0, 4)), "H\\*W > 0"),
        (dict(x=torch.zeros(2, 3, 4, 4, dtype=torch.int64)), "floating point"),
    ],
)
def test_bad_input_is_a_clear_error(change, match):
    kwargs = dict(x=torch.zeros(2, 3, 4, 4), scale=torch.ones(2, 3), bias=torch.zeros(2, 3), residual=None,
                  activation=None, backend="cpu")
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        adain(**kwargs)


# ---- GPU: Triton on the device -------------------------------------------------------------------------

GPU_SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (8, 128, 64, 32), (4, 128, 128, 64), (2, 3, 129, 67), (1, 128, 33, 17)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("activation,residual", [("lrelu", False), (None, True), ("relu", True)], ids=str)
def test_triton_gpu_matches_reference(shape, dtype, activation, residual):
    inputs = make_inputs(shape, dtype=dtype, device="cuda", residual=residual, constant_rows=shape[1] == 3)
    check_against_reference("triton", *inputs, activation)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_gpu_through_the_op(monkeypatch, dtype):
    monkeypatch.setattr(adain_module, "_EAGER_AUTOGRAD_FUNCTION", False)
    check_against_reference("triton", *make_inputs((2, 128, 64, 32), dtype=dtype, device="cuda"), "relu")


@pytest.mark.gpu
def test_triton_gpu_ops_pass_opcheck():
    x, scale, bias, res, dy = make_inputs((2, 8, 16, 12), device="cuda")
    for r in (res, None):
        args = (x.requires_grad_(True), scale.requires_grad_(True), bias, r, 2, 1e-5, 0.2)
        torch.library.opcheck(torch.ops.dgnet.adain_triton_forward.default, args)
    y, mean, rstd = torch.ops.dgnet.adain_triton_forward(x.detach(), scale.detach(), bias, res, 2, 1e-5, 0.2)
    torch.library.opcheck(torch.ops.dgnet.adain_triton_backward.default,
                          (dy, x.detach(), scale.detach(), bias, mean, rstd, 2, 0.2))


@pytest.mark.gpu
def test_triton_gpu_under_torch_compile():
    x, scale, bias, _, dy = make_inputs((4, 16, 64, 32), device="cuda", residual=False)

    def block(x, scale, bias):  # backend="fused" must pick Triton for CUDA tensors
        h = adain(x, scale, bias, activation="lrelu", backend="fused")
        return adain(h * 2, scale, bias, residual=x, backend="fused")

    compiled = torch.compile(block, fullgraph=True)
    want = forward_backward(lambda x, s, b, residual: block(x, s, b), x, scale, bias, None, dy)
    got = forward_backward(lambda x, s, b, residual: compiled(x, s, b), x, scale, bias, None, dy)
    for name, w, g in zip(NAMES, want, got, strict=False):
        # Inductor autotunes the kernels itself: another warp count sums rows in another order.
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * max(1.0, w.abs().max().item()), msg=name)


@pytest.mark.gpu
def test_triton_gpu_is_deterministic():
    x, scale, bias, res, dy = make_inputs((8, 128, 64, 32), device="cuda")
    first = forward_backward(adain, x, scale, bias, res, dy, activation="lrelu", backend="triton")
    second = forward_backward(adain, x, scale, bias, res, dy, activation="lrelu", backend="triton")
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


# ---- Independent reference: F.instance_norm + affine ----------------------------------------------------
#
# adain_reference (the plain path) is itself under test here: every backend, the plain one included, is held to
# torch.nn.functional.instance_norm (ATen's batch-norm kernels, no code shared with dgnet) followed by the affine
# map, the activation and the residual. Ground truth: that formula in float64. Rule (flash-attention's): a path
# passes when its error against the float64 truth is at most twice the error of the F.instance_norm formula run
# in the same dtype, plus atol = 8 * u * sqrt(H*W) * max(1, max|truth|) with u the dtype's unit roundoff. Why that
# atol: every output and gradient goes through sums over a row of H*W elements (mean, variance, sum(g),
# sum(g * xhat)); summed in another order, such a sum's rounding differs by about u * sqrt(H*W) of the
# magnitude (the statistical bound for a sum of H*W roundings), and 8 covers the few sums chained per value. A
# result off by 1e-3 relative (a wrong formula, a lost term) fails it by orders of magnitude.

INDEPENDENT_SHAPES = [(2, 3, 5, 7), (1, 128, 4, 4), (2, 4, 64, 32), (1, 2, 91, 91)]


def instance_norm_affine(x, scale, bias, residual=None, activation=None, eps=1e-5, negative_slope=0.2):
    """The independent formula: F.instance_norm, then scale and bias per (n, c), the activation, the residual."""
    y = F.instance_norm(x, eps=eps) * scale[:, :, None, None] + bias[:, :, None, None]
    if activation == "relu":
        y = F.relu(y)
    elif activation == "lrelu":
        y = F.leaky_relu(y, negative_slope)
    return y if residual is None else y + residual


def check_against_instance_norm(fn, x, scale, bias, res, dy, activation):
    """The rule above on the output and every gradient of ``fn`` (an AdaIN callable)."""
    as_double = (t.double() if t is not None else None for t in (x, scale, bias, res, dy))
    truth = forward_backward(instance_norm_affine, *as_double, activation=activation)
    plain = forward_backward(instance_norm_affine, x, scale, bias, res, dy, activation=activation)
    got = forward_backward(fn, x, scale, bias, res, dy, activation=activation)
    u = torch.finfo(x.dtype).eps / 2
    hw = x.shape[2] * x.shape[3]
    for name, t, p, f in zip(NAMES, truth, plain, got, strict=False):
        assert f.dtype == x.dtype and f.shape == t.shape, name
        assert torch.isfinite(f).all(), f"{name}: not finite"
        atol = 8 * u * hw**0.5 * max(1.0, t.abs().max().item())
        err, err_plain = (f.double() - t).abs().max().item(), (p.double() - t).abs().max().item()
        assert err <= 2 * err_plain + atol, f"{name}: error {err:.3g} vs F.instance_norm's {err_plain:.3g} + {atol:.3g}"


def _backend_fn(backend):
    return lambda *a, **kw: adain(*a, **kw, backend=backend)


@pytest.mark.parametrize("shape", INDEPENDENT_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_matches_instance_norm_affine(backend, residual, activation, dtype, shape):
    check_against_instance_norm(_backend_fn(backend), *make_inputs(shape, dtype=dtype, residual=residual), activation)


def test_adain_reference_itself_matches_instance_norm_affine():
    """The function every fast path's own tests compare with, called directly (not through the dispatcher)."""
    for dtype in (torch.float32, torch.float64):
        for activation in ACTS:
            check_against_instance_norm(adain_reference, *make_inputs((2, 4, 64, 32), dtype=dtype), activation)


@needs_interpreter
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 64, 32), (1, 2, 91, 91)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("activation,residual", [(None, False), ("relu", True), ("lrelu", True)], ids=str)
def test_triton_interpreted_matches_instance_norm_affine(shape, activation, residual):
    """Triton has no float64: float32 only (91x91 takes the looped path)."""
    check_against_instance_norm(_backend_fn("triton"), *make_inputs(shape, residual=residual), activation)


# ---- Exactly constant channels: output act(bias) [+ residual], no gradient to x ---------------------------

CONSTANT_BACKENDS = ["torch", "cpu", pytest.param("triton", marks=needs_interpreter)]


@pytest.mark.parametrize("backend", CONSTANT_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("value", [0.1, 2.0, -3.7], ids=str)
def test_constant_channel_is_bias_and_passes_no_gradient_to_x(backend, dtype, activation, value):
    """A channel that is exactly constant carries no signal: its output is exactly ``act(bias) [+ residual]`` (its
    normalised value is 0, not a rounding residue of the mean times 1/sqrt(eps); 0.1 is a value whose mean over a
    row is not exact in binary) and x receives no gradient there (the plain formula's gradient there is the
    linearisation about a degenerate point, 1/sqrt(eps) = 316 times the upstream, whose projection on a constant
    change is 0: what any layer feeding the channel a constant would receive in exact arithmetic, and what its
    rounding turned into up to 1e15 in G, tests/test_degenerate_inputs.py). The other channels are untouched:
    their output and gradients are those of the same rows computed without the constant ones."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("Triton has no float64")
    x, scale, bias, res, dy = make_inputs((2, 4, 6, 5), dtype=dtype)
    flat = torch.zeros(2, 4, dtype=torch.bool)
    flat[0, 1] = flat[1, 3] = True
    x[flat] = torch.tensor(value, dtype=dtype)
    y, gx, gs, gb, gr = forward_backward(_backend_fn(backend), x, scale, bias, res, dy, activation=activation)
    act = {None: lambda t: t, "relu": torch.relu, "lrelu": lambda t: F.leaky_relu(t, 0.2)}[activation]
    want_y = act(bias[flat][:, None, None].expand(-1, 6, 5)) + res[flat]
    assert torch.equal(y[flat], want_y)
    assert torch.equal(gx[flat], torch.zeros_like(gx[flat]))
    assert torch.equal(gs[flat], torch.zeros_like(gs[flat]))  # sum(g * xhat) with xhat = 0
    g = dy[flat] * {None: 1.0, "relu": (want_y - res[flat] > 0).to(dtype),
                    "lrelu": torch.where(want_y - res[flat] > 0, 1.0, 0.2).to(dtype)}[activation]
    torch.testing.assert_close(gb[flat], g.sum(dim=(1, 2)))
    assert torch.equal(gr, dy)
    # The ordinary channels: the same as computing them alone (one sample at a time keeps rows whole).
    for n in range(2):
        keep = ~flat[n]
        alone = forward_backward(_backend_fn(backend), x[n:n + 1, keep], scale[n:n + 1, keep], bias[n:n + 1, keep],
                                 res[n:n + 1, keep], dy[n:n + 1, keep], activation=activation)
        for name, whole, part in zip(NAMES[:4], (y, gx, gs, gb), alone, strict=False):
            torch.testing.assert_close(whole[n:n + 1, keep], part, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("backend", CONSTANT_BACKENDS)
def test_constant_channel_gives_a_conv_feeding_it_zero_gradient(backend):
    """A conv on a constant input feeds AdaIN a constant per channel whatever its weights: the true gradient of
    its weights and bias is exactly 0, and so is the computed one (it was the rounding of sum(dx) times
    scale / sqrt(eps))."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    x = torch.full((2, 3, 8, 6), 0.1)
    scale, bias = torch.randn(2, 4) * 3, torch.randn(2, 4)
    y = adain(conv(x), scale, bias, activation="lrelu", backend=backend)
    grads = torch.autograd.grad((y * torch.randn_like(y)).sum(), list(conv.parameters()))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
