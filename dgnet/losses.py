"""DG-Net's loss terms as pure functions (the spec's table; the weights live in ``LossConfig``).

Every function computes in at least float32 whatever the dtype of its inputs (autocast's bf16/fp16 outputs
are promoted; float64 stays float64, so a float64 model is float64 end to end, as its exactness checks need).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_HALF = (torch.float16, torch.bfloat16)


def f32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: 16-bit floats become float32, float32 and float64 are returned unchanged."""
    return x.float() if x.dtype in _HALF else x


def recon_l1(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 reconstruction, ``mean |x - target|`` against a *detached* target (all reconstruction terms)."""
    return (f32(x) - f32(target.detach())).abs().mean()


def lsgan_gen(outs: list[torch.Tensor]) -> torch.Tensor:
    """Generator adversarial term for one batch of fakes: ``sum_scales 2 * mean((D(fake) - 1)^2)``."""
    return sum(2.0 * ((f32(o) - 1.0) ** 2).mean() for o in outs)


def lsgan_dis(outs_fake: list[torch.Tensor], outs_real: list[torch.Tensor]) -> torch.Tensor:
    """Discriminator LSGAN term: ``sum_scales mean(D(fake)^2) + mean((D(real) - 1)^2)``."""
    return sum(
        (f32(of) ** 2).mean() + ((f32(orl) - 1.0) ** 2).mean()
        for of, orl in zip(outs_fake, outs_real, strict=True)
    )


def r1_per_sample(outs_real: list[torch.Tensor], x_real: torch.Tensor, grad_scale: float | None = None) -> torch.Tensor:
    """Per-sample R1 penalty summed over scales: ``sum_k || d(sum D_k(real)) / d x_real ||^2``, shape ``(N,)``.

    ``x_real`` must require grad and be the tensor the outputs were computed from. The gradient graph is
    kept (``create_graph``) so the penalty trains D. D couples no samples (no normalisation), so the
    gradient of the batch sum w.r.t. sample n is sample n's own gradient. ``grad_scale`` (fp16 GradScaler's
    current scale) multiplies the outputs before differentiation and divides the gradient after, so small
    fp16 gradients do not underflow; the penalty itself is in float32. The batch mean times ``r1_w`` is the
    spec's term; callers average per stream.
    """
    total = x_real.new_zeros(x_real.shape[0], dtype=torch.promote_types(x_real.dtype, torch.float32))
    for o in outs_real:
        s = f32(o).sum()
        if grad_scale is not None:
            s = s * grad_scale
        (g,) = torch.autograd.grad(s, x_real, create_graph=True)
        g = f32(g)
        if grad_scale is not None:
            g = g / grad_scale
        total = total + g.pow(2).flatten(1).sum(1)
    return total


def id_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Identity cross-entropy (mean over the batch), in at least float32."""
    return F.cross_entropy(f32(logits), labels)


@torch.no_grad()
def teacher_soft_labels(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Teacher label: ``(softmax(teacher(x)) + softmax(teacher(flip_w x))) / 2``, no temperature. ``(N, ids)``."""
    p = F.softmax(f32(teacher(x)), dim=1)
    q = F.softmax(f32(teacher(torch.flip(x, dims=[3]))), dim=1)
    return (p + q) / 2


def teacher_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || student)`` summed over classes and samples, divided by the batch size:
    ``sum_n sum_c q_nc (log q_nc - log_softmax(z)_nc) / N`` (``0 log 0 = 0``)."""
    log_p = F.log_softmax(f32(student_logits), dim=1)
    return F.kl_div(log_p, f32(teacher_probs), reduction="sum") / student_logits.shape[0]
