"""``--compile`` (``dgnet.training.step.compile_models``): each compiled DG-Net iteration against eager ones from the
same weights, both held to a float64 eager reference.

At every iteration the eager models (float32 and float64) are loaded with the compiled model's current weights and
buffers and fed the same batches and random draws, so all three compute one step from one state; the learning rates
are 0 and every loss term is ramped in from the first iteration. Three iterations: the first compiles Ea's trunk
(live, frozen and under no_grad), Es and G; the second adds the teacher and fine-grained paths (a recompile), the
third reuses the graphs.

The tolerance comes from the arithmetic, measured on the machine that runs the test: float32 eager's own error
against float64 is the rounding this step's condition amplifies (Es and G sit behind an InstanceNorm or AdaIN after
every convolution, so their gradients carry a relative rounding of order 1e-2 even in eager float32). Compiled
kernels round the same arithmetic in another order (fused pointwise chains, reductions blocked differently), a draw
of the same size up to a small factor; ``ROUNDING_FACTOR`` allows for that. A wrong graph (stale weights, a missing
term, a wrong mode) is off by the order of the gradient itself. Because the bound is eager's error on the same CPU,
it follows the CPU's kernels (AVX2, AVX-512) instead of a fixed number measured on one of them; comparing two runs
whose weights had parted (as this test once did) measured how a chaotic step amplifies rounding instead.
The CUDA-graph path (``reduce-overhead``) is checked the same way under ``gpu``.
"""

from __future__ import annotations

import pytest
import torch
from torch._inductor import config as inductor_config

from dgnet.config import Config
from dgnet.models import DGNet, ReidBaseline
from dgnet.training.optim import build_optimizers
from dgnet.training.step import compile_models, dgnet_step

IDS = 6
NETWORKS = ("Ea.backbone", "Ea.head", "Es", "G", "D")
# Compiled float32 may round up to this many times worse than eager float32, both against float64.
ROUNDING_FACTOR = 8.0
# Floors for a term whose eager error happens to be 0: ~100 float32 ulps of the value (losses), and 1e-4 of a
# gradient's norm.
LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4


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


class _Run:
    """A DG-Net, its frozen teacher and its optimisers (learning rates 0) in one dtype."""

    def __init__(self, device: str, dtype: torch.dtype, fused: bool, compiled: bool, state=None, teacher_state=None):
        self.cfg, self.dtype = _cfg(), dtype
        torch.manual_seed(0)
        self.model = DGNet(self.cfg.model, IDS, fused=fused)
        self.teacher = ReidBaseline(self.cfg.model, IDS).eval()
        if state is not None:
            self.model.load_state_dict(state)
            self.teacher.load_state_dict(teacher_state)
        self.model.to(device, dtype)
        self.teacher.to(device, dtype)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if compiled:
            compile_models(self.model, torch.device(device))
        self.opts = build_optimizers(self.model, self.cfg.optim)
        for opt in self.opts.values():
            for group in opt.param_groups:
                group["lr"] = 0.0

    def step(self, a: dict, b: dict, i: int) -> tuple[dict, dict]:
        """One iteration; its losses and every parameter's gradient (float64)."""
        cast = lambda d: {k: v.to(self.dtype) if v.is_floating_point() else v for k, v in d.items()}
        for opt in self.opts.values():
            opt.zero_grad(set_to_none=True)
        torch.manual_seed(100 + i)  # dropout and the structure-branch coin draw the same in every run
        losses = dgnet_step(self.model, self.teacher, self.opts, cast(a), cast(b), i, self.cfg)
        grads = {n: p.grad.detach().double().cpu() for n, p in self.model.named_parameters() if p.grad is not None}
        return losses, grads


def _net_error(grads: dict, reference: dict, net: str) -> float:
    names = [n for n in reference if n.startswith(net)]
    ref = torch.cat([reference[n].flatten() for n in names])
    got = torch.cat([grads[n].flatten() for n in names])
    return ((got - ref).norm() / ref.norm()).item()


def _check(device: str, fused: bool, iterations: int) -> None:
    torch._dynamo.reset()
    comp = _Run(device, torch.float32, fused, compiled=True)
    for i, (a, b) in enumerate(_batches(device, iterations)):
        state = {k: v.detach().clone() for k, v in comp.model.state_dict().items()}
        teacher_state = comp.teacher.state_dict()
        # Inductor draws dropout masks from its own generator unless told to fall back to eager's: with the
        # fallback, every run sees the same masks.
        with inductor_config.patch(fallback_random=True):
            l_comp, g_comp = comp.step(a, b, i)
        l32, g32 = _Run(device, torch.float32, fused, False, state, teacher_state).step(a, b, i)
        l64, g64 = _Run(device, torch.float64, fused, False, state, teacher_state).step(a, b, i)

        assert g_comp.keys() == g64.keys(), f"iteration {i}: different parameters took a gradient"
        for k, ref in l64.items():
            bound = ROUNDING_FACTOR * abs(l32[k] - ref) + LOSS_RTOL * max(1.0, abs(ref))
            assert abs(l_comp[k] - ref) <= bound, (
                f"iteration {i}: {k}: compiled {l_comp[k]} eager float64 {ref} (eager float32 {l32[k]})")
        for net in NETWORKS:
            err, err32 = _net_error(g_comp, g64, net), _net_error(g32, g64, net)
            assert err <= ROUNDING_FACTOR * err32 + GRAD_RTOL, (
                f"iteration {i}: {net}'s compiled gradient is off float64's by {err:.2e} of its norm, "
                f"eager float32's by {err32:.2e}")
            assert err < 0.5, f"iteration {i}: {net}'s compiled gradient is off by {err:.2e} of its norm"

    eager = _Run(device, torch.float32, fused, compiled=False)
    assert list(comp.model.state_dict()) == list(eager.model.state_dict())  # checkpoints are the eager model's
    fresh = DGNet(_cfg().model, IDS)
    fresh.load_state_dict({k: v.cpu() for k, v in comp.model.state_dict().items()}, strict=True)


@pytest.mark.slow
def test_compiled_iterations_match_eager_on_cpu():
    _check("cpu", fused=True, iterations=3)


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [False, True])
def test_cuda_graph_iterations_match_eager(fused):
    _check("cuda", fused=fused, iterations=4)  # the later iterations replay the recorded graphs
