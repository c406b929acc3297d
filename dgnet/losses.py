"""DG-Net's loss terms: the spec's table of generator-side terms (:data:`GENERATOR_TERMS`) and the pure
functions they are made of.

:data:`GENERATOR_TERMS` is the one place a term is defined: its reported name, the name and spec value of
its weight, whether the weight ramps in, and the function computing it. ``LossConfig``'s weight keys, the
ramped set (``dgnet.training.step.ramp_weights``) and the weighted total (``dgnet.training.step.generator_total``)
are all derived from it, so a new term is one entry plus its function.

Every function computes in at least float32 whatever the dtype of its inputs (autocast's bf16/fp16 outputs
are promoted; float64 stays float64, so a float64 model is float64 end to end, as its exactness checks need).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


# --------------------------------------------------------------------------------------------------------------------
# The generator-side terms of one DG-Net iteration. Each reads what it needs from ``t``, the iteration's
# intermediate results (``dgnet.training.step.GeneratorInputs``): ``t.fwd`` (the shared forward), ``t.weights`` (this
# iteration's weights), and results computed once on first use and shared between terms: ``t.d_fakes`` (D on
# x_ba and x_ab), ``t.structure_recon`` (Es on the fakes), ``t.generated`` (the frozen Ea copy on the fakes),
# ``t.cycle`` (G on those codes) and ``t.student`` (live Ea and the frozen teacher on the detached fakes).


def adversarial(t: Any) -> torch.Tensor:
    """``loss_gen_adv``: LSGAN generator term of x_ba and x_ab, through D (whose parameters are frozen)."""
    ba, ab = t.d_fakes
    return lsgan_gen(ba) + lsgan_gen(ab)


def image_reconstruction(t: Any) -> torch.Tensor:
    """``loss_gen_recon_x``: ``L1(G(s_a, f_a), x_a) + (b)``, self-reconstruction."""
    f = t.fwd
    return recon_l1(f.x_a_recon, f.x_a) + recon_l1(f.x_b_recon, f.x_b)


def positive_reconstruction(t: Any) -> torch.Tensor:
    """``loss_gen_recon_xp``: ``L1(G(s_a, f_pos(a)), x_a) + (b)``, reconstruction from a same-identity code."""
    f = t.fwd
    return recon_l1(f.x_a_recon_p, f.x_a) + recon_l1(f.x_b_recon_p, f.x_b)


def structure_reconstruction(t: Any) -> torch.Tensor:
    """``loss_gen_recon_s``: ``L1(Es(gray(x_ab)), s_a) + (ba, b)``."""
    s_a, s_b = t.structure_recon
    return recon_l1(s_a, t.fwd.s_a) + recon_l1(s_b, t.fwd.s_b)


def appearance_reconstruction(t: Any) -> torch.Tensor:
    """``loss_gen_recon_f``: ``L1(Ea(x_ba), f_a) + (ab, b)`` through the frozen Ea copy."""
    (f_a, _), (f_b, _) = t.generated
    return recon_l1(f_a, t.fwd.f_a) + recon_l1(f_b, t.fwd.f_b)


def cycle_reconstruction(t: Any) -> torch.Tensor:
    """``loss_gen_cycrecon_x``: ``L1(G(Es(x_ab), Ea(x_ba)), x_a) + (b)``."""
    x_aba, x_bab = t.cycle
    return recon_l1(x_aba, t.fwd.x_a) + recon_l1(x_bab, t.fwd.x_b)


def identity(t: Any) -> torch.Tensor:
    """``loss_id``: primary cross-entropy of the erased real images, plus the fine-grained head on their own
    labels at weight ``fine_w`` once it is above 0 (the reference's ``loss_id``)."""
    f = t.fwd
    loss = id_ce(f.p_a, f.y_a) + id_ce(f.p_b, f.y_b)
    fine_w = t.weights["fine_w"]
    if fine_w > 0:
        loss = loss + fine_w * (id_ce(f.pf_a, f.y_a) + id_ce(f.pf_b, f.y_b))
    return loss


def positive_identity(t: Any) -> torch.Tensor:
    """``loss_pid``: primary cross-entropy of the erased same-identity positives."""
    f = t.fwd
    return id_ce(f.pp_a, f.y_a) + id_ce(f.pp_b, f.y_b)


def generated_identity(t: Any) -> torch.Tensor:
    """``loss_gen_recon_id``: x_ba keeps a's identity and x_ab b's, judged by the frozen Ea copy."""
    (_, p_a), (_, p_b) = t.generated
    return id_ce(p_a, t.fwd.y_a) + id_ce(p_b, t.fwd.y_b)


def teacher_distillation(t: Any) -> torch.Tensor:
    """``loss_teacher``: KL from the teacher's soft labels of the detached fakes to Ea's primary logits."""
    (st_ba, _, q_ba), (st_ab, _, q_ab) = t.student
    return teacher_kl(st_ba, q_ba) + teacher_kl(st_ab, q_ab)


def fine_grained(t: Any) -> torch.Tensor:
    """``loss_fine``: the fine-grained head on the detached fakes, labelled with the structure provider."""
    (_, sf_ba, _), (_, sf_ab, _) = t.student
    return id_ce(sf_ba, t.fwd.y_b) + id_ce(sf_ab, t.fwd.y_a)


@dataclass(frozen=True)
class Term:
    """One generator-side term.

    ``weight`` names its weight: a ``LossConfig`` key whose spec value is ``default`` (a ramped weight's cap),
    or, with ``default=None``, a weight derived from others (:data:`DERIVED_WEIGHTS`). A ``ramped`` weight is 0
    until ``loss.warm_iter`` and then grows by ``loss.warm_step`` per iteration up to its cap. An ``optional``
    term is not computed while its weight is 0 (reported as 0), as in the reference: those whose inputs cost
    forwards of their own (the structure re-encoding, the cycle, the teacher's and Ea's passes on the fakes).
    """

    name: str
    weight: str
    default: float | None
    ramped: bool
    compute: Callable[[Any], torch.Tensor]
    optional: bool = False


# The spec's table, in the order the weighted total sums the terms (the reference's order).
GENERATOR_TERMS: tuple[Term, ...] = (
    Term("loss_gen_adv", "gan_w", 1.0, False, adversarial),
    Term("loss_gen_recon_x", "recon_x_w", 5.0, False, image_reconstruction),
    Term("loss_gen_recon_xp", "recon_xp_w", 5.0, False, positive_reconstruction),
    Term("loss_gen_recon_s", "recon_s_w", 1.0, True, structure_reconstruction, optional=True),
    Term("loss_gen_recon_f", "recon_f_w", 1.0, True, appearance_reconstruction),
    Term("loss_gen_cycrecon_x", "recon_x_cyc_w", 2.0, True, cycle_reconstruction, optional=True),
    Term("loss_id", "id_w", 1.0, False, identity),
    Term("loss_pid", "pid_w", 1.0, False, positive_identity),
    Term("loss_gen_recon_id", "recon_id_w", 0.5, False, generated_identity),
    Term("loss_teacher", "teacher_w", 2.0, True, teacher_distillation, optional=True),
    Term("loss_fine", "fine_w", None, True, fine_grained, optional=True),
)

# Weights derived from others: ``fine_w = teacher_w * B_w`` (the fine-grained terms follow the teacher's ramp).
DERIVED_WEIGHTS: dict[str, tuple[str, str]] = {"fine_w": ("teacher_w", "B_w")}
