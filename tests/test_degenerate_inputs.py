"""Blank (constant) images through Es, G and D, and DG-Net iterations on batches that hold them.

A constant image makes every InstanceNorm in Es see an exactly constant channel. Es's output is then 0
whatever its weights, so the true gradient of any loss with respect to Es's parameters is exactly zero:
these tests hold the model to that value, not merely to "finite".
"""

from __future__ import annotations

import pytest
import torch

from dgnet.config import Config, ModelConfig
from dgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dgnet.models import DGNet, ReidBaseline, gray
from dgnet.models.layers import LayerNorm
from dgnet.training.optim import build_optimizers
from dgnet.training.step import dgnet_step

H, W = 32, 16  # the smallest size every module accepts: these tests run full backward passes


pytestmark = pytest.mark.usefixtures("one_thread")


def _normalised(rgb: tuple[float, float, float]) -> torch.Tensor:
    """A constant image of the 0..1 colour ``rgb`` in the pipelines' normalised space, ``(3, H, W)``."""
    v = [(c - m) / s for c, m, s in zip(rgb, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    return torch.tensor(v).view(3, 1, 1).expand(3, H, W).clone()


WHITE = _normalised((1.0, 1.0, 1.0))
BLACK = _normalised((0.0, 0.0, 0.0))
# 0.1 gives a normalised grey whose mean over a channel is not exactly representable: the plain IN's
# ``x - mean`` is then a rounding residue, not 0
GREY = _normalised((0.1, 0.1, 0.1))


def _net(seed: int = 0, dtype: torch.dtype = torch.float32, fused: bool = False) -> DGNet:
    torch.manual_seed(seed)
    return DGNet(ModelConfig(backbone="resnet18", backbone_weights="none"), num_ids=5, fused=fused).to(dtype).train()


def _param_grads(module: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(module.parameters()), retain_graph=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("image", [WHITE, BLACK, GREY], ids=["white", "black", "grey"])
def test_es_blank_image_zero_parameter_gradients(image, dtype):
    net = _net(dtype=dtype)
    x = image.to(dtype)[None].requires_grad_()
    s = net.Es(gray(x))
    # the property behind the expected gradient: another Es, other weights, the same (zero) code
    other = _net(seed=1, dtype=dtype).Es(gray(x))
    assert s.abs().max() <= 1e-6 and other.abs().max() <= 1e-6
    g = torch.randn_like(s)
    grads = _param_grads(net.Es, (s * g).sum())
    for (name, _), grad in zip(net.Es.named_parameters(), grads, strict=True):
        assert torch.isfinite(grad).all(), name
        assert grad.abs().max() == 0, (name, grad.abs().max().item())
    (gx,) = torch.autograd.grad((s * g).sum(), x)
    assert torch.isfinite(gx).all()


def test_es_mixed_batch_equals_the_normal_images_alone():
    """Blank images in a batch change nothing for the others: outputs and Es's parameter gradients of a
    batch [blank, normal, blank, normal] equal those of the two normal images alone (the blank ones
    contribute their true gradient, zero)."""
    net = _net()
    torch.manual_seed(5)
    normal = torch.randn(2, 3, H, W)
    mixed = torch.stack([WHITE, normal[0], GREY, normal[1]])
    g = torch.randn(4, 128, H // 4, W // 4)
    s_mixed = net.Es(gray(mixed))
    s_alone = net.Es(gray(normal))
    torch.testing.assert_close(s_mixed[1::2], s_alone, rtol=0, atol=0)
    assert s_mixed[0::2].abs().max() <= 1e-6
    got = _param_grads(net.Es, (s_mixed * g).sum())
    want = _param_grads(net.Es, (s_alone * g[1::2]).sum())
    for (name, _), a, b in zip(net.Es.named_parameters(), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def _checkerboard() -> torch.Tensor:
    """A pixel checkerboard: not constant, but every window of Es's stride-2 first conv (reflect-padded) sees
    the same pattern, so that conv's output is constant and the rest of Es degenerates as for a blank image."""
    i = torch.arange(H)[:, None] + torch.arange(W)[None, :]
    return torch.where(i % 2 == 0, WHITE, BLACK)


def test_es_degenerate_without_a_constant_image():
    net = _net()
    x = _checkerboard()[None]
    s = net.Es(gray(x))
    assert torch.equal(s, torch.zeros_like(s))
    grads = _param_grads(net.Es, (s * torch.randn_like(s)).sum())
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_es_ordinary_images_are_the_plain_stack_bit_for_bit(dtype):
    """On ordinary images Es is its plain layer stack (the reference's), forward and backward, bit for bit,
    also with a dead channel (zero weights: a constant channel inside Es) whose plain gradient is kept."""
    net = _net(dtype=dtype)
    with torch.no_grad():
        net.Es.model[5].block1.conv.weight[3] = 0
    torch.manual_seed(2)
    x = torch.randn(3, 1, H, W, dtype=dtype)
    g = torch.randn(3, 128, H // 4, W // 4, dtype=dtype)
    s, s_plain = net.Es(x), net.Es.model(x)
    assert torch.equal(s, s_plain)
    got, want = _param_grads(net.Es, (s * g).sum()), _param_grads(net.Es, (s_plain * g).sum())
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert got[list(dict(net.Es.named_parameters())).index("model.5.block1.conv.weight")][3].abs().max() > 0


def test_layernorm_zero_std_backward_is_the_limit():
    """LayerNorm on an exactly constant sample: y = beta and dy/dx is the limit (I - 1/n) gamma / eps (the
    std's own derivative, 0/0 there, is multiplied by x - mean = 0)."""
    torch.manual_seed(0)
    ln = LayerNorm(4).double()
    x = torch.full((2, 4, 3, 3), 2.5, dtype=torch.float64, requires_grad=True)
    y = ln(x)
    torch.testing.assert_close(y, ln.beta.detach().view(1, 4, 1, 1).expand_as(y))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    gg = g * ln.gamma.detach().view(1, 4, 1, 1)
    torch.testing.assert_close(gx, (gg - gg.mean(dim=(1, 2, 3), keepdim=True)) / ln.eps)


@pytest.mark.parametrize("mixed", [False, True], ids=["all_blank", "mixed"])
def test_generator_and_discriminator_on_blank_images(mixed):
    """G on the code of blank images, D (with its R1 double backward) on blank images: finite outputs,
    finite gradients for every parameter and input."""
    net = _net()
    torch.manual_seed(3)
    x = torch.stack([WHITE, BLACK, torch.randn(3, H, W) if mixed else GREY]).requires_grad_()
    f = net.Ea(x)[0]
    y = net.G(net.Es(gray(x)), f)
    assert torch.isfinite(y).all()
    loss = (y - x.detach()).abs().mean()
    for part in ("G", "Es"):
        for (name, _), grad in zip(getattr(net, part).named_parameters(),
                                   _param_grads(getattr(net, part), loss), strict=True):
            assert torch.isfinite(grad).all(), (part, name)
    (gx,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(gx).all()

    real = torch.stack([WHITE, GREY, BLACK]).requires_grad_()
    outs = net.D(real)
    assert all(torch.isfinite(o).all() for o in outs)
    (r1,) = torch.autograd.grad(sum(o.sum() for o in outs), real, create_graph=True)
    loss_d = sum(((o - 1) ** 2).mean() for o in outs) + 0.01 * r1.flatten(1).square().sum(1).mean()
    for (name, _), grad in zip(net.D.named_parameters(), _param_grads(net.D, loss_d), strict=True):
        assert torch.isfinite(grad).all(), name


def _batch(seed: int, blanks: dict[int, torch.Tensor], ids: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(2, 3, H, W, generator=g) for k in ("image", "positive", "image_erased", "positive_erased")}
    for i, img in blanks.items():
        for k in out:
            out[k][i] = img
    out["pid"] = torch.randint(0, ids, (2,), generator=g)
    out["camid"] = torch.zeros(2, dtype=torch.long)
    out["index"] = torch.arange(2)
    return out


def test_dgnet_steps_on_batches_with_blank_images_stay_finite():
    """The reported failure: a blank training image sent Es's parameters to NaN within two iterations."""
    cfg = Config()
    cfg.model.backbone = "resnet18"
    cfg.model.backbone_weights = "none"
    cfg.loss.warm_iter = 0
    cfg.loss.warm_step = 0.5  # every ramped term (structure and cycle codes included) on from the start
    cfg.loss.structure_live_p = 0.5
    ids = 5
    torch.manual_seed(0)
    model = DGNet(cfg.model, ids)
    teacher = ReidBaseline(cfg.model, ids).requires_grad_(False)
    opts = build_optimizers(model, cfg.optim)
    for it in range(3):
        a = _batch(10 + it, {0: WHITE}, ids)
        b = _batch(20 + it, {1: GREY} if it % 2 else {0: BLACK, 1: WHITE}, ids)
        out = dgnet_step(model, teacher, opts, a, b, it, cfg)
        assert all(v == v and abs(v) != float("inf") for k, v in out.items() if k.startswith("loss")), (it, out)
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        assert not bad, (it, bad[:5])


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_generator_blank_code_true_gradient(dtype, fused):
    """A blank image's code is 0, so every residual block of G sees channel-constant maps: each AdaIN removes
    a block conv's whole response to its weights (a constant per channel), and their true gradient is 0. (It was
    1e6 (float64) to 1e15 (float32) of rounding: AdaIN passed such a channel scale / sqrt(eps) times the upstream
    gradient.)"""
    net = _net(dtype=dtype, fused=fused)
    s = torch.zeros(1, 128, H // 4, W // 4, dtype=dtype)
    f = torch.randn(1, net.G.slice_dim * 4, dtype=dtype)
    # The premise: every conv of the blocks returns an exactly channel-constant map for a constant input. That
    # holds where the CPU's convolution sums every output position in one order (float32 here, float64 with
    # AVX-512); a float64 convolution whose order differs by position (seen on an AVX2 CPU) leaves a few ulps of
    # spread, which AdaIN, like F.instance_norm, amplifies by 1/sqrt(eps) block after block (docs/testing.md).
    spreads = []
    convs = [m for m in net.G.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = [m.register_forward_hook(lambda m, i, o: spreads.append((o.flatten(2).amax(-1) - o.flatten(2).amin(-1))
                                                                    .max().item())) for m in convs]
    y = net.G(s, f)
    for h in hooks:
        h.remove()
    if any(spreads):
        pytest.skip(f"this CPU's {dtype} convolution of a constant map is not constant (spreads {spreads[:3]}...)")
    blocks = list(net.G.blocks.parameters())
    grads = torch.autograd.grad((y * torch.randn_like(y)).sum(), blocks)
    assert max(g.abs().max().item() for g in grads) == 0
