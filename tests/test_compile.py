"""``--compile`` (``dgnet.training.step.compile_models``): compiled DG-Net iterations against eager ones.

The reference is the eager model built from the same seed and fed the same batches and random draws, with every
loss term ramped in from the first iteration and the learning rates at 0, so that every iteration is an exact
comparison: three iterations (the first compiles Ea's trunk live, frozen and under no_grad, Es and G; the later
ones add the teacher and fine-grained paths and reuse the graphs) give eager's losses to 1e-3 and the same
parameters a gradient, each network's gradient within 10% of its norm; the compiled model's weights keep the
eager model's names and load into one (checkpoints and resume see no difference).

Why these tolerances, measured on this set-up: the gradients of Es and G are sensitive to rounding (InstanceNorm
and AdaIN after every convolution; biases before them have a zero true gradient and pure-noise computed ones). Two
eager runs differing only in their thread count (1 vs 2) differ by 1e-7 (D) to 8e-3 (Es) of each network's
gradient norm; compiled against eager, by 1e-9 (D) to 6e-2 (Es, G). A wrong graph (stale weights, a missing
term, a wrong mode) is off by the order of the gradient itself. Losses of *learning* iterations are not compared:
the step amplifies rounding so much that the two eager thread counts already differ by 1% in a loss at the second
iteration and by 30% at the third.
The CUDA-graph path (``reduce-overhead``) is checked the same way under ``gpu``.
"""

from __future__ import annotations

import pytest
import torch

from dgnet.config import Config
from dgnet.models import DGNet, ReidBaseline
from dgnet.training.optim import build_optimizers
from dgnet.training.step import compile_models, dgnet_step

IDS = 6


def _cfg() -> Config:
    cfg = Config()
    cfg.model.backbone = "resnet18"
    cfg.model.backbone_weights = "none"
    cfg.data.height, cfg.data.width, cfg.data.batch_size = 64, 32, 2
    cfg.loss.warm_iter = 0
    cfg.loss.warm_step = 1.0  # every generator term (teacher and fine-grained included) from the first iteration
    return cfg


def _batches(device: str, n: int) -> list[tuple[dict, dict]]:
    g = torch.Generator().manual_seed(5)

    def one() -> dict:
        out = {k: torch.randn(2, 3, 64, 32, generator=g) for k in ("image", "positive", "image_erased",
                                                                     "positive_erased")}
        out["pid"] = torch.randint(0, IDS, (2,), generator=g)
        return {k: v.to(device) for k, v in out.items()}

    return [(one(), one()) for _ in range(n)]


def _train(compiled: bool, device: str, fused: bool, iterations: int):
    """``iterations`` DG-Net steps at learning rate 0; returns the model, each step's losses and each step's
    parameter gradients."""
    cfg = _cfg()
    torch.manual_seed(0)
    model = DGNet(cfg.model, IDS, fused=fused).to(device)
    teacher = ReidBaseline(cfg.model, IDS).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if compiled:
        compile_models(model, torch.device(device))
    opts = build_optimizers(model, cfg.optim)
    for opt in opts.values():
        for group in opt.param_groups:
            group["lr"] = 0.0
    losses, grads = [], []
    for i, (a, b) in enumerate(_batches(device, iterations)):
        torch.manual_seed(100 + i)  # dropout and the structure-branch coin draw the same in both runs
        losses.append(dgnet_step(model, teacher, opts, a, b, i, cfg))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    return model, losses, grads


def _compare_losses(eager: dict, compiled: dict, i: int, rtol: float) -> None:
    for k, v in eager.items():
        assert compiled[k] == pytest.approx(v, rel=rtol, abs=rtol), f"iteration {i}: {k}: {compiled[k]} vs eager {v}"


NETWORKS = ("Ea.backbone", "Ea.head", "Es", "G", "D")


def _compare_grads(eager: dict, compiled: dict, i: int, rtol: float) -> None:
    assert compiled.keys() == eager.keys(), f"iteration {i}: different parameters took a gradient"
    for net in NETWORKS:
        names = [n for n in eager if n.startswith(net)]
        e = torch.cat([eager[n].flatten() for n in names])
        c = torch.cat([compiled[n].flatten() for n in names])
        err = ((c - e).norm() / e.norm()).item()
        assert err < rtol, f"iteration {i}: {net}'s gradient differs from eager's by {err:.2e} of its norm"


def _check(device: str, fused: bool, iterations: int) -> None:
    # Inductor draws dropout masks from its own generator unless told to fall back to eager's: with the fallback,
    # both runs see the same masks and differ only by the compiled kernels' rounding.
    from torch._inductor import config as inductor_config

    torch._dynamo.reset()
    with inductor_config.patch(fallback_random=True):
        m_comp, l_comp, g_comp = _train(True, device, fused, iterations)
    m_eager, l_eager, g_eager = _train(False, device, fused, iterations)
    for i in range(iterations):
        _compare_losses(l_eager[i], l_comp[i], i, rtol=1e-3)
        _compare_grads(g_eager[i], g_comp[i], i, rtol=0.1)
    assert list(m_comp.state_dict()) == list(m_eager.state_dict())  # checkpoints are the eager model's
    fresh = DGNet(_cfg().model, IDS)
    fresh.load_state_dict({k: v.cpu() for k, v in m_comp.state_dict().items()}, strict=True)
    for (name, pe), pc in zip(m_eager.state_dict().items(), fresh.state_dict().values(), strict=True):
        # weights untouched (learning rate 0); BatchNorm running statistics moved alike
        torch.testing.assert_close(pc, pe.cpu(), rtol=1e-3, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.slow
def test_compiled_iterations_match_eager_on_cpu():
    _check("cpu", fused=True, iterations=3)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_graph_iterations_match_eager(fused):
    _check("cuda", fused=fused, iterations=4)  # the later iterations replay the recorded graphs
