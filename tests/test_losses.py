"""Each loss term against a hand-computed case or an explicit formula; the ramp schedule at chosen points."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dgnet.config import LossConfig
from dgnet.losses import (
    id_ce,
    lsgan_dis,
    lsgan_gen,
    r1_per_sample,
    recon_l1,
    teacher_kl,
    teacher_soft_labels,
)
from dgnet.training.step import ramp_weights


def test_recon_l1_hand_case_and_detached_target():
    x = torch.tensor([1.0, 2.0, -1.0, 0.5], requires_grad=True)
    t = torch.tensor([0.0, 4.0, -1.0, 0.0], requires_grad=True)
    loss = recon_l1(x, t)
    assert loss.item() == pytest.approx((1 + 2 + 0 + 0.5) / 4)
    loss.backward()
    assert t.grad is None  # target detached
    torch.testing.assert_close(x.grad, torch.tensor([0.25, -0.25, 0.0, 0.25]))


def test_recon_l1_fp32_on_half_inputs():
    x = torch.full((4,), 1.0009765625, dtype=torch.bfloat16)
    assert recon_l1(x, torch.ones(4)).dtype == torch.float32


def test_lsgan_gen_hand_case():
    outs = [torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0]]), torch.tensor([[3.0, 1.0, 1.0, 1.0]])]
    # 2 * mean((o - 1)^2) per scale: 2 * 1, 2 * 0, 2 * 4 / 4
    assert lsgan_gen(outs).item() == pytest.approx(2.0 + 0.0 + 2.0)


def test_lsgan_dis_hand_case():
    fake = [torch.tensor([0.5, -0.5]), torch.tensor([1.0])]
    real = [torch.tensor([0.5, 1.0]), torch.tensor([3.0])]
    # scale 0: mean(0.25, 0.25) + mean(0.25, 0) = 0.375 ; scale 1: 1 + 4
    assert lsgan_dis(fake, real).item() == pytest.approx(0.375 + 5.0)


class _TinyD(nn.Module):
    """Two-scale, per-sample discriminator with a nonlinearity (so R1 is not a constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(3, 4, 3, padding=1)
        self.h0 = nn.Conv2d(4, 1, 1)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.h1 = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        o0 = self.h0(torch.tanh(self.c0(x)))
        x1 = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return [o0, self.h1(torch.tanh(self.c1(x1)))]


def test_r1_matches_per_sample_autograd():
    torch.manual_seed(0)
    D = _TinyD().double()
    x = torch.randn(3, 3, 8, 6, dtype=torch.float64, requires_grad=True)
    got = r1_per_sample(D(x), x)
    expected = []
    for n in range(3):
        xn = x[n : n + 1].detach().requires_grad_(True)
        total = 0.0
        for o in D(xn):  # per scale: squared norm of d(sum D_k)/dx_n
            (g,) = torch.autograd.grad(o.sum(), xn)
            total += g.pow(2).sum().item()
        expected.append(total)
    torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-8)
    # the penalty trains D (create_graph) and a loss scale leaves the value unchanged
    (gw,) = torch.autograd.grad(got.mean(), D.c0.weight, retain_graph=True)
    assert gw.abs().sum() > 0
    scaled = r1_per_sample(D(x), x, grad_scale=1024.0)
    torch.testing.assert_close(scaled.double(), got.double(), rtol=1e-5, atol=1e-8)


def test_r1_of_linear_critic_is_weight_norm():
    """D(x) = <w, x>: the gradient is w for every sample, so R1 = ||w||^2 per scale."""
    w = torch.randn(1, 3, 4, 4)
    x = torch.randn(5, 3, 4, 4, requires_grad=True)
    outs = [(x * w).sum(dim=(1, 2, 3)), 2.0 * (x * w).sum(dim=(1, 2, 3))]
    got = r1_per_sample(outs, x)
    torch.testing.assert_close(got, torch.full((5,), 5.0 * w.pow(2).sum().item()))


def test_teacher_kl_explicit_formula():
    z = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    q = torch.tensor([[0.2, 0.8, 0.0], [0.5, 0.25, 0.25]])  # a zero entry: 0 log 0 = 0
    logp = z - torch.logsumexp(z, dim=1, keepdim=True)
    expected = 0.0
    for n in range(2):
        for c in range(3):
            if q[n, c] > 0:
                expected += q[n, c].item() * (math.log(q[n, c].item()) - logp[n, c].item())
    assert teacher_kl(z, q).item() == pytest.approx(expected / 2, rel=1e-6)


def test_teacher_soft_labels_average_of_image_and_flip():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 2, 5))
    x = torch.randn(2, 3, 4, 2)
    q = teacher_soft_labels(teacher, x)
    p1 = torch.softmax(teacher(x), 1)
    p2 = torch.softmax(teacher(x.flip(3)), 1)  # horizontal flip: the width axis
    torch.testing.assert_close(q, (p1 + p2) / 2)
    torch.testing.assert_close(q.sum(1), torch.ones(2))
    assert not q.requires_grad


def test_id_ce_explicit():
    z = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.bfloat16)
    expected = -(2.0 - math.log(math.exp(2.0) + 1.0 + math.exp(-1.0)))
    out = id_ce(z, torch.tensor([0]))
    assert out.dtype == torch.float32 and out.item() == pytest.approx(expected, rel=1e-3)


def test_ramp_weights_spec_schedule():
    lc = LossConfig()  # warm_iter 30000, warm_step 0.0005, caps s/f 1, cycle 2, teacher 2, B_w 0.2
    w0 = ramp_weights(0, lc)
    assert w0 == {"recon_s_w": 0.0, "recon_f_w": 0.0, "recon_x_cyc_w": 0.0, "teacher_w": 0.0, "fine_w": 0.0}
    assert ramp_weights(30_000, lc)["teacher_w"] == 0.0
    assert ramp_weights(30_001, lc)["recon_s_w"] == pytest.approx(0.0005)
    w = ramp_weights(31_000, lc)
    assert w["recon_s_w"] == pytest.approx(0.5) and w["teacher_w"] == pytest.approx(0.5)
    assert w["fine_w"] == pytest.approx(0.1)
    w = ramp_weights(32_500, lc)
    assert w["recon_s_w"] == w["recon_f_w"] == 1.0  # capped
    assert w["recon_x_cyc_w"] == pytest.approx(1.25) and w["teacher_w"] == pytest.approx(1.25)
    w = ramp_weights(100_000, lc)
    assert (w["recon_s_w"], w["recon_f_w"], w["recon_x_cyc_w"], w["teacher_w"]) == (1.0, 1.0, 2.0, 2.0)
    assert w["fine_w"] == pytest.approx(0.4)
    # monotone and stepwise
    seq = [ramp_weights(i, lc)["recon_x_cyc_w"] for i in range(29_990, 34_010, 7)]
    assert all(b >= a for a, b in zip(seq, seq[1:], strict=False))
    with pytest.raises(ValueError, match="iteration=-1"):
        ramp_weights(-1, lc)


def test_ramp_weights_follow_config():
    lc = LossConfig(warm_iter=10, warm_step=0.25, recon_s_w=0.5, teacher_w=1.0, B_w=0.5)
    w = ramp_weights(13, lc)
    assert w["recon_s_w"] == 0.5 and w["recon_f_w"] == 0.75 and w["teacher_w"] == 0.75
    assert w["fine_w"] == pytest.approx(0.375)
