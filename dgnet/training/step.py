"""One training iteration of DG-Net (stage 2) and of the re-id baseline / teacher (stage 1).

The training loop (``dgnet.train``) owns data, schedules, logging and checkpoints; this module owns what
happens inside one iteration, in the spec's order:

    schedulers (stepped by the caller, before ``dgnet_step``) -> one shared forward ->
    D step on detached fakes -> G + Es + Ea step with one backward.

State lives only in the models, optimisers, the optional GradScaler and torch's global RNG (dropout and the
p=0.5 structure-branch draw), and the ramped loss weights are a pure function of the iteration index
(``ramp_weights``), so a checkpoint of those plus the RNG states resumes exactly.

Mixed precision: forwards run under ``torch.autocast(amp_dtype)`` when ``amp_dtype`` is given; every loss is
computed in float32. fp16 needs a ``torch.amp.GradScaler``: one scaler is shared by the three optimisers
(``scale`` per backward, ``step`` per optimiser, one ``update`` per iteration, at the end of ``dgnet_step``),
so an overflow in either step skips that step and lowers the one scale. bf16 needs no scaler.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn as nn

from dgnet.config import Config, LossConfig
from dgnet.losses import (
    DERIVED_WEIGHTS,
    GENERATOR_TERMS,
    id_ce,
    lsgan_dis,
    r1_per_sample,
    teacher_soft_labels,
)
from dgnet.models import DGNet, ReidBaseline, frozen, gray

# Names of the float losses ``dgnet_step`` returns (the reference's names, summed over the a and b streams), and
# the config weights that ramp in: both from the spec's table, dgnet.losses.GENERATOR_TERMS.
GEN_TERMS = tuple(t.name for t in GENERATOR_TERMS)
RAMPED = tuple(t.weight for t in GENERATOR_TERMS if t.ramped and t.default is not None)


# --------------------------------------------------------------------------------------------- schedules
def ramp_weights(iteration: int, loss_cfg: LossConfig) -> dict[str, float]:
    """The ramped loss weights at 0-based ``iteration`` (iterations completed before this one).

    Each of ``recon_s_w``, ``recon_f_w``, ``recon_x_cyc_w`` and ``teacher_w`` is
    ``min(cap, max(0, iteration - warm_iter) * warm_step)`` with the cap its ``LossConfig`` value: 0 up to
    and including ``warm_iter``, then ``warm_step`` more per iteration (the reference adds ``warm_scale``
    when ``iteration > warm_iter``, before using the weight). ``fine_w = teacher_w * B_w`` is the weight of
    the fine-grained terms. ``primary_on`` off zeroes ``teacher_w`` alone (the paper's fine-grained-only ablation).
    A pure function of the iteration: resume restores the ramps by construction.
    """
    if iteration < 0:
        raise ValueError(f"iteration={iteration}: expected >= 0")
    steps = max(0, iteration - loss_cfg.warm_iter)
    w = {k: min(float(getattr(loss_cfg, k)), steps * loss_cfg.warm_step) for k in RAMPED}
    for name, (base, factor) in DERIVED_WEIGHTS.items():
        w[name] = w[base] * getattr(loss_cfg, factor)
    if not loss_cfg.primary_on:  # after the derived weights: fine_w keeps the teacher's ramp (LossConfig.primary_on)
        w["teacher_w"] = 0.0
    return w


def compile_models(model: DGNet, device: torch.device) -> None:
    """``--compile`` (``train.compile``): ``torch.compile`` Ea's trunk, Es and G in place.

    - Each part compiles its forward and, through AOTAutograd, its backward; names and ``state_dict`` keys are
      unchanged (``nn.Module.compile``), so checkpoints and resume are those of the eager model.
    - On CUDA the mode is ``reduce-overhead``: the fixed-shape graphs replay as CUDA graphs, so an iteration
      stops paying the host's per-operator cost (DG-Net's is host-bound on a GPU). It sets ``model.compiled``,
      so ``dgnet_step`` marks each iteration's start for the graphs' memory reuse.
    - D stays eager: its R1 penalty takes the gradient of D's output with a graph and differentiates it again,
      and compiled graphs do not support a double backward.
    - Ea's trunk (its ResNet, where its compute is), not its heads: a compiled graph gives every parameter it
      holds a gradient, zeros for an unused output's, and the fine-grained head is unused until its ramp
      starts. Eager leaves those gradients ``None``, so the optimiser skips the head (no weight decay, no
      momentum); a zero gradient would decay it.
    - The trunk runs live and frozen (``frozen``: gradients off, BatchNorm as configured) and under
      ``no_grad``; each is its own compiled graph (a guard recompiles once per state), as is each batch shape.
    Values equal eager's to rounding, a larger rounding than a thread count's (``tests/test_compile.py`` gives
    how far); a first iteration pays the compile.
    """
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    for part in (model.Ea.backbone, model.Es, model.G):
        part.compile(mode=mode, dynamic=False)
    model.compiled = True


# ------------------------------------------------------------------------------------------------- helpers
def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _scaling(scaler) -> bool:
    return scaler is not None and scaler.is_enabled()


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if _scaling(scaler) else loss).backward()


@contextlib.contextmanager
def deferred_bn_counts(module: nn.Module, enabled: bool = True):
    """Inside, train-mode BatchNorm forwards in ``module`` skip their ``num_batches_tracked.add_(1)``; on exit,
    one multi-tensor add applies every count.

    Each of those adds is a kernel launch on a GPU, hundreds per DG-Net iteration (every train-mode call of
    every BatchNorm in Ea), in a step that is host-bound there. With a ``momentum`` set (dgnet's and PyTorch's
    default) the counter is only bookkeeping, so deferring it changes nothing else, and the counts after the
    block equal the plain path's (also when the block raises). A BatchNorm with ``momentum=None`` reads its
    counter in every forward, so then nothing is deferred; ``nn.SyncBatchNorm`` requires its counter and is
    left to count as usual.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    # torch's SyncBatchNorm (multi-GPU sync_bn) insists on its counter, so it keeps counting for itself.
    bns = [
        m
        for m in module.modules()
        if isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm) and m.num_batches_tracked is not None
    ]
    if not enabled or not bns or any(m.momentum is None for m in bns):
        yield
        return
    counters = [m.num_batches_tracked for m in bns]
    counts = [0] * len(bns)

    def counter(i: int):
        def hook(m: nn.Module, _inputs) -> None:
            counts[i] += m.training and m.track_running_stats

        return hook

    handles = [m.register_forward_pre_hook(counter(i)) for i, m in enumerate(bns)]
    for m in bns:
        m.num_batches_tracked = None
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m, c in zip(bns, counters, strict=True):
            m.num_batches_tracked = c
        moved = [(c, n) for c, n in zip(counters, counts, strict=True) if n]
        if moved:
            torch._foreach_add_([c for c, _ in moved], [n for _, n in moved])


def _step(opt: torch.optim.Optimizer, scaler) -> None:
    if _scaling(scaler):
        scaler.step(opt)
    else:
        opt.step()


def _check_labels(pid: torch.Tensor, num_ids: int, name: str) -> None:
    if pid.dtype != torch.int64 or pid.dim() != 1:
        raise ValueError(f"{name}['pid']: expected a 1-D int64 tensor, got {pid.dtype} {tuple(pid.shape)}")
    if pid.device.type == "cpu" and pid.numel() and (int(pid.min()) < 0 or int(pid.max()) >= num_ids):
        raise ValueError(
            f"{name}['pid']: labels must lie in [0, {num_ids}) (the model's num_ids), got "
            f"[{int(pid.min())}, {int(pid.max())}]"
        )


def _check_batch(batch: dict, name: str, keys: tuple[str, ...], num_ids: int) -> None:
    missing = [k for k in keys + ("pid",) if k not in batch]
    if missing:
        raise ValueError(f"{name}: missing keys {missing}; expected a train_stream batch with {keys + ('pid',)}")
    for k in keys:
        x = batch[k]
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"{name}[{k!r}]: expected float (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")
    _check_labels(batch["pid"], num_ids, name)


def _split(t: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    return tuple(t.split(sizes, dim=0))


# ---------------------------------------------------------------------------------------- shared forward
@dataclass
class Forward:
    """Everything the shared forward produces (a and b streams; ``x_ba = G(s_b, f_a)``)."""

    x_a: torch.Tensor
    x_b: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    s_a: torch.Tensor
    s_b: torch.Tensor
    f_a: torch.Tensor
    f_b: torch.Tensor
    p_a: torch.Tensor  # primary logits of the erased x_a
    p_b: torch.Tensor
    pf_a: torch.Tensor  # fine-grained logits of the erased x_a
    pf_b: torch.Tensor
    pp_a: torch.Tensor  # primary logits of the erased positive of a
    pp_b: torch.Tensor
    x_ba: torch.Tensor
    x_ab: torch.Tensor
    x_a_recon: torch.Tensor
    x_b_recon: torch.Tensor
    x_a_recon_p: torch.Tensor
    x_b_recon_p: torch.Tensor


def shared_forward(model: DGNet, batch_a: dict, batch_b: dict) -> Forward:
    """Encode both streams and decode every swap and reconstruction (the reference's ``forward``).

    - Es runs once on ``gray([x_a; x_b])`` and G once on the six (structure, appearance) pairs stacked:
      both are per-sample (InstanceNorm, AdaIN, LayerNorm), so stacking changes no value and uses bigger
      kernels. Ea runs per stream and per input kind, as the reference does, because its BatchNorm uses the
      statistics of each call's batch.
    - Appearance codes come from the un-erased images; logits from the randomly erased copies (spec).
      When the code is detached (parity), the code forwards carry no gradient and run under ``no_grad``
      (same values and BatchNorm updates, no graph).
    """
    Ea = model.Ea
    x_a, x_b = batch_a["image"], batch_b["image"]
    n_a, n_b = x_a.shape[0], x_b.shape[0]
    s_a, s_b = _split(model.Es(gray(torch.cat([x_a, x_b]))), [n_a, n_b])

    code_ctx = torch.no_grad() if Ea.detach_code else contextlib.nullcontext()
    with code_ctx:
        f_a = Ea(x_a)[0]
        f_b = Ea(x_b)[0]
        fp_a = Ea(batch_a["positive"])[0]
        fp_b = Ea(batch_b["positive"])[0]
    _, p_a, pf_a = Ea(batch_a["image_erased"])
    _, p_b, pf_b = Ea(batch_b["image_erased"])
    _, pp_a, _ = Ea(batch_a["positive_erased"])
    _, pp_b, _ = Ea(batch_b["positive_erased"])

    s_all = torch.cat([s_b, s_a, s_a, s_b, s_a, s_b])
    f_all = torch.cat([f_a, f_b, f_a, f_b, fp_a, fp_b])
    x_ba, x_ab, x_a_recon, x_b_recon, x_a_recon_p, x_b_recon_p = _split(
        model.G(s_all, f_all), [n_b, n_a, n_a, n_b, n_a, n_b]
    )
    return Forward(
        x_a, x_b, batch_a["pid"], batch_b["pid"], s_a, s_b, f_a, f_b, p_a, p_b, pf_a, pf_b, pp_a, pp_b,
        x_ba, x_ab, x_a_recon, x_b_recon, x_a_recon_p, x_b_recon_p,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- D step
def discriminator_losses(
    D: nn.Module, fwd: Forward, loss_cfg: LossConfig, grad_scale: float | None = None
) -> dict[str, torch.Tensor]:
    """D's loss on (detached x_ba, real x_a) and (detached x_ab, real x_b), spec:
    per scale ``mean(D(fake)^2) + mean((D(real) - 1)^2)``, plus ``r1_w`` times the per-stream batch mean of
    R1; ``loss_dis_total = gan_w * (dis_a + dis_b)`` as in the reference. One D forward takes all four
    batches (D couples no samples). Returns tensors ``loss_dis_total`` and ``loss_dis_r1`` (weighted).
    """
    fakes = [fwd.x_ba.detach(), fwd.x_ab.detach()]
    reals = torch.cat([fwd.x_a, fwd.x_b]).detach().requires_grad_(True)
    sizes = [t.shape[0] for t in fakes] + [fwd.x_a.shape[0], fwd.x_b.shape[0]]
    outs = [_split(o, sizes) for o in D(torch.cat([*fakes, reals]))]
    # stream a pairs x_ba with x_a, stream b pairs x_ab with x_b
    adv = lsgan_dis([o[0] for o in outs], [o[2] for o in outs]) + lsgan_dis([o[1] for o in outs], [o[3] for o in outs])
    r1_n = r1_per_sample([torch.cat([o[2], o[3]]) for o in outs], reals, grad_scale)
    r1_a, r1_b = _split(r1_n, sizes[2:])
    r1 = loss_cfg.r1_w * (r1_a.mean() + r1_b.mean())
    return {"loss_dis_total": loss_cfg.gan_w * (adv + r1), "loss_dis_r1": r1}


# --------------------------------------------------------------------------------------- G + Es + Ea step
class GeneratorInputs:
    """What the generator terms of one iteration read (``dgnet.losses.GENERATOR_TERMS``), each intermediate
    result computed once, on first use, and shared by the terms that need it.

    The structure-branch coin is drawn when this is built, every iteration, so the RNG stream does not
    depend on which terms run. The results that consume random numbers or update BatchNorm statistics
    (``student``: the live Ea in train mode) are the last the table asks for, in the reference's order.
    """

    def __init__(self, model: DGNet, teacher: nn.Module | None, fwd: Forward, weights: dict[str, float],
                 cfg: Config) -> None:
        self.model, self.teacher, self.fwd, self.weights, self.cfg = model, teacher, fwd, weights, cfg
        self.live = bool(torch.rand(()) < cfg.loss.structure_live_p)
        self.n_a, self.n_b = fwd.x_a.shape[0], fwd.x_b.shape[0]

    @functools.cached_property
    def d_fakes(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """D's per-scale outputs for x_ba and for x_ab, from one D forward."""
        outs = [_split(o, [self.n_b, self.n_a]) for o in self.model.D(torch.cat([self.fwd.x_ba, self.fwd.x_ab]))]
        return [o[0] for o in outs], [o[1] for o in outs]

    @functools.cached_property
    def structure_recon(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Es(gray(x_ab)), Es(gray(x_ba)))``: the live Es on the detached fakes, or a frozen Es on the live ones."""
        Es, x_ab, x_ba = self.model.Es, self.fwd.x_ab, self.fwd.x_ba
        if self.live:
            s_rec = Es(gray(torch.cat([x_ab.detach(), x_ba.detach()])))
        else:
            with frozen(Es):
                s_rec = Es(gray(torch.cat([x_ab, x_ba])))
        return _split(s_rec, [self.n_a, self.n_b])

    @functools.cached_property
    def generated(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``((f, primary logits) of x_ba, (f, logits) of x_ab)`` from the frozen copy of Ea on the live fakes."""
        Ea = self.model.Ea
        with frozen(Ea, bn_batch_stats=self.cfg.model.bn_train_on_generated):
            f_a, p_a, _ = Ea(self.fwd.x_ba)
            f_b, p_b, _ = Ea(self.fwd.x_ab)
        return (f_a, p_a), (f_b, p_b)

    @functools.cached_property
    def cycle(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_aba, x_bab)``: G on the re-encoded structure and the frozen Ea's appearance of the fakes."""
        s_a, s_b = self.structure_recon
        (f_a, _), (f_b, _) = self.generated
        return _split(self.model.G(torch.cat([s_a, s_b]), torch.cat([f_a, f_b])), [self.n_a, self.n_b])

    @functools.cached_property
    def student(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """``((primary, fine logits, teacher labels) of x_ba, (...) of x_ab)``: the live Ea (train mode) and the
        frozen teacher on the detached fakes; the teacher's dropout is on with ``model.teacher_dropout`` (its
        masks drawn from the global RNG after Ea's, so a checkpoint's RNG state resumes them exactly)."""
        if self.teacher is None:
            raise ValueError("teacher_w > 0 at this iteration but no teacher was given to dgnet_step")
        Ea, teacher, m = self.model.Ea, self.teacher, self.cfg.model
        out = []
        for x in (self.fwd.x_ba.detach(), self.fwd.x_ab.detach()):
            _, st, sf = Ea(x)
            with frozen(teacher, bn_batch_stats=m.bn_train_on_generated, dropout=m.teacher_dropout):
                out.append((st, sf, teacher_soft_labels(teacher, x)))
        return out[0], out[1]


def generator_losses(
    model: DGNet,
    teacher: nn.Module | None,
    fwd: Forward,
    weights: dict[str, float],
    cfg: Config,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], bool]:
    """Every term of the generator + Ea step, unweighted, as float32 scalar tensors (see ``GEN_TERMS``).

    Gradient routing (spec):
    - adversarial: through D (whose parameters the caller freezes) to G and Es;
    - structure code: ``L1(Es(gray(x_ab)), s_a) + (ba, b)``; one ``torch.rand`` draw from the global RNG
      picks, with p ``structure_live_p``, the live Es on the detached images, else a frozen Es on the live
      images (gradient to G and the Es of the shared forward);
    - appearance code and identity of generated: a frozen copy of Ea (``frozen``: no parameter gradients,
      dropout off, BatchNorm on batch statistics when ``bn_train_on_generated``) sees the live fakes, so
      ``loss_gen_recon_id`` trains G and Es only; in parity both codes of ``loss_gen_recon_f`` are detached;
    - teacher KL and fine-grained mining: live Ea on the detached fakes (Ea only); the teacher is frozen,
      no gradient, BatchNorm per ``bn_train_on_generated``, dropout per ``teacher_dropout``.
    Optional terms (``dgnet.losses.Term``) whose ramped weight is 0 are not computed (reported 0), as in the
    reference, and neither is what only they need (``GeneratorInputs``): the structure re-encoding when
    ``recon_s_w`` and ``recon_x_cyc_w`` are both 0, the cycle when ``recon_x_cyc_w`` is 0, the teacher term
    when ``teacher_w`` is 0 and the fine-grained one when ``fine_w`` is 0.
    Returns ``(terms, images, structure_live)``; ``images`` holds ``x_aba``/``x_bab`` when the cycle ran,
    ``structure_live`` says which structure branch was drawn.
    """
    inputs = GeneratorInputs(model, teacher, fwd, weights, cfg)
    zero = fwd.x_a.new_zeros((), dtype=torch.float32)
    terms = {t.name: t.compute(inputs) if not t.optional or weights[t.weight] > 0 else zero for t in GENERATOR_TERMS}
    images = dict(zip(("x_aba", "x_bab"), inputs.cycle, strict=True)) if "cycle" in vars(inputs) else {}
    return terms, images, inputs.live


def generator_total(terms: dict[str, torch.Tensor], weights: dict[str, float], loss_cfg: LossConfig) -> torch.Tensor:
    """The weighted sum the G + Es + Ea step backpropagates (one backward), in the table's order: ramped and
    derived weights from ``weights`` (:func:`ramp_weights`), fixed ones from ``loss_cfg``."""
    total = None
    for t in GENERATOR_TERMS:
        part = (weights[t.weight] if t.weight in weights else getattr(loss_cfg, t.weight)) * terms[t.name]
        total = part if total is None else total + part
    return total


# ------------------------------------------------------------------------------- one call per backward (DDP)
class _Aux:
    """What the generator step returns besides its loss. A plain object on purpose: DDP searches a forward's
    outputs (tensors, lists, tuples, dicts, dataclasses) for the graph of used parameters, and must find only
    the loss (the fine-grained logits, say, are computed but unused before their ramp starts)."""

    def __init__(self, fwd: Forward, dis: dict, terms: dict, images: dict, live: bool) -> None:
        self.fwd, self.dis, self.terms, self.images, self.live = fwd, dis, terms, images, live


class GenerationStep(nn.Module):
    """The shared forward, the D step and the G + Es + Ea losses of one iteration as one module call.

    DG-Net calls Ea up to twelve times (two of them as the frozen copy) and Es twice before the one backward
    of the G + Es + Ea step.
    DistributedDataParallel prepares its gradient reduction per wrapper call, so this module is what DDP
    wraps (``wrap_ddp``): one forward, one backward, every Ea/Es/G parameter reduced exactly once. D is
    excluded from this wrapper (it has its own, used once per iteration by the D step, which runs inside
    this forward on detached fakes, between the shared forward and the generator losses, as the spec
    orders). ``forward`` leaves ``model.D.requires_grad`` off; the caller turns it back on after backward.
    Returns ``(total loss, _Aux)``.
    """

    def __init__(self, model: DGNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, teacher, batch_a, batch_b, weights, cfg, amp_dtype, dis_step):  # noqa: D102
        device = batch_a["image"].device
        with _autocast(device, amp_dtype):
            fwd = shared_forward(self.model, batch_a, batch_b)
        dis = dis_step(fwd)
        self.model.D.requires_grad_(False)
        with _autocast(device, amp_dtype):
            terms, images, live = generator_losses(self.model, teacher, fwd, weights, cfg)
        total = generator_total(terms, weights, cfg.loss)
        return total, _Aux(fwd, dis, terms, images, live)


@dataclass
class DDPModels:
    """The DDP wrappers of one DG-Net: ``gen`` around ``GenerationStep`` (Ea with its heads, Es, G), ``dis``
    around D. The teacher and the frozen Ea copy (``frozen``, the live Ea with gradients off) are not
    wrapped: they take no gradient, so there is nothing to reduce."""

    gen: nn.Module
    dis: nn.Module


def wrap_ddp(model: DGNet, device: torch.device) -> DDPModels:
    """Wrap ``model`` for ``dgnet_step(..., ddp=...)`` in an initialised process group.

    - ``find_unused_parameters=True`` on ``gen``: terms whose ramped weight is 0 are not computed, so the
      fine-grained head (and Es's re-encoding path) take no gradient before the ramps start; DDP then
      marks them ready instead of waiting for them forever. Skipping depends only on the iteration, so a
      parameter is unused on every rank or on none, and DDP leaves its gradient ``None`` like a
      single-process run.
    - ``broadcast_buffers=False``: with ``train.sync_bn`` the BatchNorm statistics are already equal on every
      rank; without it each rank keeps its own running statistics (rank 0's are saved), as the batch
      statistics differ by construction.
    - D is used once per D step with every parameter, so its wrapper needs no unused-parameter search.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device] if device.type == "cuda" else None
    step = GenerationStep(model)
    DDP._set_params_and_buffers_to_ignore_for_model(step, [f"model.D.{n}" for n, _ in model.D.named_parameters()]
                                                    + [f"model.D.{n}" for n, _ in model.D.named_buffers()])
    gen = DDP(step, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False)
    dis = DDP(model.D, device_ids=ids, broadcast_buffers=False)
    return DDPModels(gen, dis)


# ------------------------------------------------------------------------------------------- iterations
_IMAGE_KEYS = ("image", "positive", "image_erased", "positive_erased")


def dgnet_step(
    model: DGNet,
    teacher: nn.Module | None,
    optimizers: dict[str, torch.optim.Optimizer],
    batch_a: dict,
    batch_b: dict,
    iteration: int,
    cfg: Config,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    return_images: bool = False,
    ddp: DDPModels | None = None,
) -> dict:
    """One DG-Net iteration: shared forward, D step on detached fakes, then G + Es + Ea with one backward.

    Args:
        model: ``DGNet`` (put in train mode here).
        teacher: the frozen stage-1 ``ReidBaseline`` (may be ``None`` only while ``teacher_w`` is 0).
        optimizers: ``build_optimizers(model, cfg.optim)`` (keys gen, dis, id).
        batch_a, batch_b: ``train_stream`` batches on the model's device: ``image``, ``positive``,
            ``image_erased``, ``positive_erased`` float32 ``(B, 3, H, W)`` normalised; ``pid`` int64 ``(B,)``
            train labels in ``[0, num_ids)``.
        iteration: 0-based index of this iteration (drives ``ramp_weights``).
        scaler: a GradScaler for fp16 (shared by the three optimisers, updated once at the end).
        amp_dtype: ``torch.bfloat16`` / ``torch.float16`` to run forwards under autocast, ``None`` for fp32.
        ddp: the DistributedDataParallel wrappers of ``wrap_ddp`` when training with several processes.
        return_images: also return detached ``x_ab``, ``x_ba``, ``x_a_recon``, ``x_b_recon``,
            ``x_a_recon_p``, ``x_b_recon_p``, ``x_aba``, ``x_bab`` (cycle ones once the cycle weight is > 0).
    The choices come from the model: ``model.fused`` (``--fused``) adds Ea's BatchNorm counters once per step
    (:func:`deferred_bn_counts`); ``model.compiled`` (``compile_models``) marks, on CUDA, the start of an
    iteration for its CUDA graphs (outputs of the previous iteration's replays may then be overwritten).

    Returns:
        ``{loss name: float}`` for every ``GEN_TERMS`` entry, ``loss_gen_total``, ``loss_dis_total``,
        ``loss_dis_r1``; the ramped weights (``recon_s_w``, ``recon_f_w``, ``recon_x_cyc_w``, ``teacher_w``,
        ``fine_w``); ``structure_live`` (1.0 when the live Es branch was drawn); and ``images`` when asked.
    """
    for name, batch in (("batch_a", batch_a), ("batch_b", batch_b)):
        _check_batch(batch, name, _IMAGE_KEYS, model.num_ids)
    weights = ramp_weights(iteration, cfg.loss)
    device = batch_a["image"].device
    if model.compiled and device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()
    grad_scale = float(scaler.get_scale()) if _scaling(scaler) else None
    model.train()
    gen_opt, dis_opt, id_opt = optimizers["gen"], optimizers["dis"], optimizers["id"]
    gen_call = ddp.gen if ddp is not None else GenerationStep(model)
    dis_call = ddp.dis if ddp is not None else model.D

    def dis_step(fwd: Forward) -> dict[str, torch.Tensor]:
        # D step on detached fakes (one D forward and backward: one all-reduce of D's gradients under DDP).
        dis_opt.zero_grad(set_to_none=True)
        with _autocast(device, amp_dtype):
            dis = discriminator_losses(dis_call, fwd, cfg.loss, grad_scale)
        _backward(dis["loss_dis_total"], scaler)
        _step(dis_opt, scaler)
        return dis

    # G + Es + Ea step: D is a fixed critic here, so its parameters take no gradient (and cost none).
    try:
        with deferred_bn_counts(model, model.fused):
            total, aux = gen_call(teacher, batch_a, batch_b, weights, cfg, amp_dtype, dis_step)
        gen_opt.zero_grad(set_to_none=True)
        id_opt.zero_grad(set_to_none=True)
        _backward(total, scaler)
    finally:
        model.D.requires_grad_(True)
    fwd, dis, terms, cyc_images, live = aux.fwd, aux.dis, aux.terms, aux.images, aux.live
    _step(gen_opt, scaler)
    _step(id_opt, scaler)
    if _scaling(scaler):
        scaler.update()

    names = [*GEN_TERMS, "loss_gen_total", "loss_dis_total", "loss_dis_r1"]
    values = torch.stack([*(terms[k] for k in GEN_TERMS), total, dis["loss_dis_total"], dis["loss_dis_r1"]])
    out: dict = dict(zip(names, values.detach().float().cpu().tolist(), strict=True))  # one device sync
    out.update(weights)
    out["structure_live"] = float(live)
    if return_images:
        imgs = {
            "x_a": fwd.x_a, "x_b": fwd.x_b, "x_ab": fwd.x_ab, "x_ba": fwd.x_ba,
            "x_a_recon": fwd.x_a_recon, "x_b_recon": fwd.x_b_recon,
            "x_a_recon_p": fwd.x_a_recon_p, "x_b_recon_p": fwd.x_b_recon_p, **cyc_images,
        }  # fmt: skip
        out["images"] = {k: v.detach().float() for k, v in imgs.items()}
    return out


def teacher_step(
    teacher: ReidBaseline,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    ddp: nn.Module | None = None,
) -> dict[str, float]:
    """One stage-1 iteration of the re-id baseline / teacher: cross-entropy on the randomly erased image.

    ``batch``: ``image_erased`` float32 ``(B, 3, H, W)`` and ``pid`` int64 ``(B,)`` on the model's device.
    The caller steps the scheduler (``build_teacher_scheduler``). ``ddp``: the teacher's
    DistributedDataParallel wrapper under torchrun (one forward, every parameter used). ``teacher.fused``:
    BatchNorm counters added once per step (:func:`deferred_bn_counts`). Returns ``loss_id`` and ``accuracy`` (training
    accuracy of this batch).
    """
    _check_batch(batch, "batch", ("image_erased",), teacher.num_ids)
    x, y = batch["image_erased"], batch["pid"]
    teacher.train()
    optimizer.zero_grad(set_to_none=True)
    with _autocast(x.device, amp_dtype), deferred_bn_counts(teacher, teacher.fused):
        logits = (ddp if ddp is not None else teacher)(x)
    loss = id_ce(logits, y)
    _backward(loss, scaler)
    _step(optimizer, scaler)
    if _scaling(scaler):
        scaler.update()
    acc = (logits.detach().argmax(1) == y).float().mean()
    loss_v, acc_v = torch.stack([loss.detach(), acc]).cpu().tolist()
    return {"loss_id": loss_v, "accuracy": acc_v}
