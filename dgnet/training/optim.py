"""The optimisers and learning-rate schedules of both stages (spec: Optimisation).

Each builder reads ``fused`` from the model it is given (set when the model is built): under ``--fused`` every
optimiser runs PyTorch's fused update (:func:`optimizer_impl`), the same update up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dgnet.config import OptimConfig
from dgnet.models import DGNet, ReidBaseline


def optimizer_impl(fused: bool) -> dict[str, bool]:
    """Keyword arguments choosing how an optimiser runs its update: ``{"fused": True}`` (one fused kernel
    per step over all parameters, CPU and CUDA) under ``--fused``, else ``{}`` (PyTorch's default: a loop
    over parameters on CPU, ``foreach`` on CUDA), which is the plain twin. Same update either way, up to
    float rounding."""
    return {"fused": True} if fused else {}


def build_optimizers(model: DGNet, cfg: OptimConfig) -> dict[str, torch.optim.Optimizer]:
    """The three optimisers of the spec (implementation per :func:`optimizer_impl` of ``model.fused``).

    - ``gen``: Es + G (decoder and AdaIN MLPs), Adam lr ``gen_lr``, betas ``adam_betas``, ``weight_decay``;
    - ``dis``: D, Adam lr ``dis_lr``, same betas and decay;
    - ``id``: Ea, SGD momentum ``momentum`` Nesterov, ``weight_decay``; param group 0 = backbone
      (``id_lr_backbone``), group 1 = both heads (``id_lr_heads``).
    """
    impl = optimizer_impl(model.fused)
    gen_params = list(model.Es.parameters()) + list(model.G.parameters())
    betas = tuple(cfg.adam_betas)
    gen = torch.optim.Adam(gen_params, lr=cfg.gen_lr, betas=betas, weight_decay=cfg.weight_decay, **impl)
    dis = torch.optim.Adam(model.D.parameters(), lr=cfg.dis_lr, betas=betas, weight_decay=cfg.weight_decay, **impl)
    ident = _sgd_two_groups(
        model.Ea.backbone,
        [*model.Ea.head_primary.parameters(), *model.Ea.head_fine.parameters()],
        cfg.id_lr_backbone,
        cfg.id_lr_heads,
        cfg,
        impl,
    )
    return {"gen": gen, "dis": dis, "id": ident}


def _sgd_two_groups(
    backbone: nn.Module, heads: list, lr_backbone: float, lr_heads: float, cfg: OptimConfig, impl: dict[str, bool]
):
    opt = torch.optim.SGD(
        [{"params": list(backbone.parameters()), "lr": lr_backbone}, {"params": heads, "lr": lr_heads}],
        lr=lr_backbone,
        momentum=cfg.momentum,
        nesterov=True,
        weight_decay=cfg.weight_decay,
        **impl,
    )
    if impl.get("fused"):
        opt.register_step_pre_hook(_seed_momentum_buffers)
    return opt


def _seed_momentum_buffers(opt: torch.optim.Optimizer, _args, _kwargs) -> None:
    """Give every parameter about to take its first SGD step a zero momentum buffer.

    PyTorch's fused SGD takes a "first step" only for a whole group at once and fails when a parameter's
    first gradient comes later than the others' (Ea's fine-grained head before its ramp, for one). With
    dampening 0 (SGD's default, which ``_sgd_two_groups`` keeps) a zero buffer gives exactly the loop's first
    step: ``buf = momentum * 0 + grad = grad``.
    """
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is not None and opt.state[p].get("momentum_buffer") is None:
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def build_schedulers(
    optimizers: dict[str, torch.optim.Optimizer], cfg: OptimConfig
) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
    """MultiStepLR (``milestones``, x ``gamma``) for every optimiser, keyed like ``optimizers``.

    Step them once per iteration *before* ``dgnet_step`` (the spec's order; torch warns once about the
    order on the first call, which is expected here).
    """
    return {
        k: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
        for k, opt in optimizers.items()
    }


def build_teacher_optimizer(teacher: ReidBaseline, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Stage 1: SGD Nesterov, backbone ``teacher_lr_backbone``, head ``teacher_lr_heads`` (see
    :func:`optimizer_impl` of ``teacher.fused``)."""
    return _sgd_two_groups(
        teacher.backbone,
        list(teacher.head.parameters()),
        cfg.teacher_lr_backbone,
        cfg.teacher_lr_heads,
        cfg,
        optimizer_impl(teacher.fused),
    )


def build_teacher_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stage 1: MultiStepLR at ``teacher_milestones``, x ``gamma``."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.teacher_milestones), gamma=cfg.gamma)
