"""One DG-Net iteration on CPU at a tiny size: finite losses, gradient routing per the spec, updates,
determinism, the ramp, optimiser groups, and the stage-1 teacher step."""

from __future__ import annotations

import math

import pytest
import torch

from dgnet.config import Config
from dgnet.models import DGNet, ReidBaseline
from dgnet.training.optim import (
    build_optimizers,
    build_schedulers,
    build_teacher_optimizer,
    build_teacher_scheduler,
)
from dgnet.training.step import (
    GEN_TERMS,
    dgnet_step,
    discriminator_losses,
    generator_losses,
    ramp_weights,
    shared_forward,
    teacher_step,
)

H, W, B, IDS = 64, 32, 2, 5
SMALL = (32, 16)  # gradient-routing tests backpropagate once per term: smallest size every module accepts


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**loss) -> Config:
    cfg = Config()
    cfg.model.backbone = "resnet18"
    cfg.model.backbone_weights = "none"
    cfg.loss.warm_iter = 0
    cfg.loss.warm_step = 0.5  # every ramped term active from iteration 1 on
    for k, v in loss.items():
        setattr(cfg.loss, k, v)
    return cfg


def _batch(seed: int, hw: tuple[int, int] = (H, W)) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(B, 3, *hw, generator=g) for k in ("image", "positive", "image_erased", "positive_erased")}
    out["pid"] = torch.randint(0, IDS, (B,), generator=g)
    out["camid"] = torch.zeros(B, dtype=torch.long)
    out["index"] = torch.arange(B)
    return out


def _build(cfg: Config, seed: int = 0, fused: bool = False):
    torch.manual_seed(seed)
    model = DGNet(cfg.model, IDS, fused=fused)
    teacher = ReidBaseline(cfg.model, IDS)
    return model, teacher, build_optimizers(model, cfg.optim)


def _groups(model: DGNet, teacher) -> dict[str, list[torch.nn.Parameter]]:
    return {
        "G": list(model.G.parameters()),
        "Es": list(model.Es.parameters()),
        "Ea_backbone": list(model.Ea.backbone.parameters()),
        "Ea_primary": list(model.Ea.head_primary.parameters()),
        "Ea_fine": list(model.Ea.head_fine.parameters()),
        "D": list(model.D.parameters()),
        "teacher": list(teacher.parameters()),
    }


def _reached(loss: torch.Tensor, groups) -> set[str]:
    """Groups that receive a nonzero gradient from ``loss``."""
    if not loss.requires_grad:
        return set()
    names = list(groups)
    flat = [p for n in names for p in groups[n] if p.requires_grad]
    grads = torch.autograd.grad(loss, flat, retain_graph=True, allow_unused=True)
    hit, i = set(), 0
    for n in names:
        for p in groups[n]:
            if not p.requires_grad:
                continue
            g = grads[i]
            i += 1
            if g is not None and g.abs().sum() > 0:
                hit.add(n)
    return hit


@pytest.mark.parametrize("live", [True, False])
def test_gradient_routing_per_term(live):
    cfg = _cfg(structure_live_p=1.0 if live else 0.0)
    model, teacher, _ = _build(cfg)
    model.train()
    teacher.requires_grad_(False)
    w = ramp_weights(5, cfg.loss)
    assert all(v > 0 for v in w.values())
    fwd = shared_forward(model, _batch(1, SMALL), _batch(2, SMALL))
    model.D.requires_grad_(False)
    terms, images, drawn = generator_losses(model, teacher, fwd, w, cfg)
    assert drawn is live and set(images) == {"x_aba", "x_bab"}
    groups = _groups(model, teacher)
    gen = {"G", "Es"}
    expected = {
        "loss_gen_adv": gen,
        "loss_gen_recon_x": gen,
        "loss_gen_recon_xp": gen,
        # live Es on the detached fakes; else a frozen Es on the live fakes (gradient to G and to the Es that
        # made s_a, not through the re-encoding)
        "loss_gen_recon_s": {"Es"} if live else gen,
        "loss_gen_recon_f": set(),  # parity: both codes detached
        "loss_gen_cycrecon_x": gen,
        "loss_gen_recon_id": gen,  # frozen Ea copy: nothing reaches Ea
        "loss_id": {"Ea_backbone", "Ea_primary", "Ea_fine"},
        "loss_pid": {"Ea_backbone", "Ea_primary"},
        "loss_teacher": {"Ea_backbone", "Ea_primary"},
        "loss_fine": {"Ea_backbone", "Ea_fine"},
    }
    assert set(expected) == set(GEN_TERMS)
    for name, want in expected.items():
        assert torch.isfinite(terms[name]), name
        assert _reached(terms[name], groups) == want, name
    assert not terms["loss_gen_recon_f"].requires_grad
    model.D.requires_grad_(True)

    # D's loss reaches D only (fakes detached), and its R1 term is trained too
    dis = discriminator_losses(model.D, fwd, cfg.loss)
    assert _reached(dis["loss_dis_total"], groups) == {"D"}
    assert _reached(dis["loss_dis_r1"], groups) == {"D"}


def _bf16_terms():
    cfg = _cfg(structure_live_p=0.0)
    model, teacher, _ = _build(cfg)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fwd = shared_forward(model, _batch(1, SMALL), _batch(2, SMALL))
        model.D.requires_grad_(False)
        terms, _, _ = generator_losses(model, teacher, fwd, ramp_weights(5, cfg.loss), cfg)
    return terms, _groups(model, teacher)


@pytest.mark.xfail(strict=False, reason="intermittent on a loaded CPU, also in a fresh process: under bf16 autocast "
                   "recon_id sometimes sends no gradient to Es and G (docs/testing.md, open question)")
def test_gradient_routing_under_bf16_autocast():
    """Autocast caches low-precision weight casts; the frozen copies must not pick up cached casts that
    carry gradient to the live weights."""
    terms, groups = _bf16_terms()
    assert _reached(terms["loss_gen_recon_id"], groups) == {"G", "Es"}
    assert _reached(terms["loss_gen_recon_s"], groups) == {"G", "Es"}
    assert _reached(terms["loss_teacher"], groups) == {"Ea_backbone", "Ea_primary"}
    assert _reached(terms["loss_gen_adv"], groups) == {"G", "Es"}


def test_appearance_code_gradient_when_not_detached():
    """The deviation switch: with a live code, the reconstruction also trains Ea's backbone."""
    cfg = _cfg()
    cfg.model.detach_appearance_code = False
    model, teacher, _ = _build(cfg)
    model.train()
    fwd = shared_forward(model, _batch(1, SMALL), _batch(2, SMALL))
    model.D.requires_grad_(False)
    terms, _, _ = generator_losses(model, teacher, fwd, ramp_weights(5, cfg.loss), cfg)
    groups = _groups(model, teacher)
    assert _reached(terms["loss_gen_recon_x"], groups) == {"G", "Es", "Ea_backbone"}
    # the appearance-code loss now reaches the fakes through the frozen Ea copy (its own weights take
    # nothing), hence G, Es and, through f_a inside x_ba, the live Ea that made the code
    assert _reached(terms["loss_gen_recon_f"], groups) == {"G", "Es", "Ea_backbone"}


def _snapshot(mod: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in mod.state_dict().items()}


def test_one_iteration_updates_finite_and_frozen_parts():
    cfg = _cfg()
    model, teacher, opts = _build(cfg)
    scheds = build_schedulers(opts, cfg.optim)
    assert set(scheds) == {"gen", "dis", "id"}
    before = {n: _snapshot(getattr(model, n)) for n in ("Ea", "Es", "G", "D")}
    t_before = _snapshot(teacher)

    # D's gradients are those of the D step only: snapshot them when its optimiser steps
    seen = {}
    real_step = opts["dis"].step

    def spy_step(*a, **k):
        seen.update({id(p): p.grad.clone() for p in model.D.parameters()})
        return real_step(*a, **k)

    opts["dis"].step = spy_step
    out = dgnet_step(model, teacher, opts, _batch(1), _batch(2), iteration=3, cfg=cfg, return_images=True)
    for k in [*GEN_TERMS, "loss_gen_total", "loss_dis_total", "loss_dis_r1"]:
        assert isinstance(out[k], float) and out[k] == out[k] and abs(out[k]) < float("inf"), k
    assert out["loss_teacher"] > 0 and out["loss_fine"] > 0 and out["loss_gen_cycrecon_x"] > 0
    w = ramp_weights(3, cfg.loss)
    for k, v in w.items():
        assert out[k] == v
    for k in ("x_ab", "x_ba", "x_a_recon", "x_b_recon", "x_a_recon_p", "x_b_recon_p", "x_aba", "x_bab"):
        assert out["images"][k].shape == (B, 3, H, W) and not out["images"][k].requires_grad
    for p in model.D.parameters():
        assert torch.equal(p.grad, seen[id(p)])  # the generator step added nothing to D
        assert p.requires_grad
    # every trained group changed; the teacher (weights and BN statistics) did not
    for name, snap in before.items():
        now = getattr(model, name).state_dict()
        changed = [k for k in snap if not torch.equal(snap[k], now[k])]
        params = [k for k, _ in getattr(model, name).named_parameters()]
        assert set(params) <= set(changed), (name, sorted(set(params) - set(changed))[:5])
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.requires_grad for p in teacher.parameters())


def test_deterministic_given_seed():
    cfg = _cfg(structure_live_p=0.5)
    results = []
    for _ in range(2):
        model, teacher, opts = _build(cfg, seed=7)
        torch.manual_seed(11)
        outs = [
            dgnet_step(model, teacher, opts, _batch(3 + i, SMALL), _batch(5 + i, SMALL), 2 + i, cfg) for i in range(2)
        ]
        results.append((outs, _snapshot(model)))
    (o1, s1), (o2, s2) = results
    assert o1 == o2
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k


def test_fused_step_matches_plain():
    """--fused (AdaIN kernels, grouped AdaIN MLPs, folded upsample+conv5x5, fused optimisers) gives the plain
    path's losses and updates."""
    cfg = _cfg(structure_live_p=0.5)
    results = []
    for fused in (False, True):
        model, teacher, opts = _build(cfg, seed=3, fused=fused)
        assert all(bool(g.get("fused")) is fused for o in opts.values() for g in o.param_groups)
        torch.manual_seed(5)
        out = dgnet_step(model, teacher, opts, _batch(1, SMALL), _batch(2, SMALL), 4, cfg)
        counters = {n: b.item() for n, b in model.named_buffers() if n.endswith("num_batches_tracked")}
        results.append((out, model.G.up[1].conv.weight.detach().clone(), counters))
    (o1, w1, c1), (o2, w2, c2) = results
    assert c1 == c2 and set(c1.values()) != {0}  # BatchNorm counters: deferred under --fused, same counts
    for k in [*GEN_TERMS, "loss_dis_total"]:
        assert o2[k] == pytest.approx(o1[k], rel=1e-3, abs=1e-4), k
    # Adam with beta1 = 0 moves each weight by about lr * sign(grad) on its first step, so where a gradient
    # is ~0 float rounding may flip the sign: bounded by 2 lr, and rare.
    diff = (w2 - w1).abs()
    assert diff.max() <= 2 * cfg.optim.gen_lr * 1.01 and (diff > 1e-6).float().mean() < 0.01


def test_fused_sgd_matches_the_loop_when_a_head_starts_late():
    """Ea's SGD under --fused: a parameter whose first gradient arrives after the others' took steps (a head
    before its loss ramps in) gets the loop's first step (momentum buffer = gradient), over a resume too."""
    from dgnet.checkpoints.format import load_optimizer_state
    from dgnet.training.optim import _sgd_two_groups

    cfg = Config().optim

    def run(fused, resume_fused=None):
        torch.manual_seed(0)
        trunk, head, late = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        heads = [*head.parameters(), *late.parameters()]  # one group, like Ea's primary and fine-grained heads
        build = lambda f: _sgd_two_groups(trunk, heads, 0.1, 0.5, cfg, {"fused": True} if f else {})
        opt = build(fused)
        for step in range(5):
            if step == 3 and resume_fused is not None:  # checkpoint and resume in the other mode
                state = opt.state_dict()
                opt = build(resume_fused)
                load_optimizer_state(opt, state)
            x = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            h = trunk(x)
            loss = h.square().mean() + head(h).square().mean()
            if step >= 2:  # the second head's loss ramps in
                loss = loss + late(h).square().mean()
            loss.backward()
            opt.step()
        return [p.detach() for p in (*trunk.parameters(), *heads)]

    want = run(False)
    for got in (run(True), run(True, resume_fused=False), run(False, resume_fused=True)):
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_deferred_bn_counts_is_exact(momentum):
    """Train-mode BatchNorm calls inside deferred_bn_counts: the same outputs and running statistics, bit for
    bit, and the same num_batches_tracked on exit (also when the block raises), with none of the per-call
    counter adds; eval-mode and frozen batch-statistics calls count nothing, as in PyTorch."""
    from dgnet.models import frozen
    from dgnet.profiling import host_op_count
    from dgnet.training.step import deferred_bn_counts

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=momentum), torch.nn.ReLU(),
            torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4, momentum=momentum),
        )

    x = torch.randn(2, 3, 9, 9)

    def calls(net):
        net.train()
        outs = [net(x), net(x * 2)]
        with frozen(net, bn_batch_stats=True):
            outs.append(net(x))
        net.eval()
        outs.append(net(x))
        net.train()
        outs.append(net(x - 1))
        return outs

    plain, deferred = make(), make()
    want = calls(plain)
    net = make()
    ops_plain = host_op_count(lambda: calls(net))
    with deferred_bn_counts(deferred):
        got = calls(deferred)
    net = make()
    ops_after = host_op_count(lambda: calls(net))  # outside the block: the plain count again
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    for (name, a), b in zip(plain.named_buffers(), deferred.buffers(), strict=True):
        assert torch.equal(a, b), name
    assert [b.item() for n, b in deferred.named_buffers() if n.endswith("num_batches_tracked")] == [3, 3]
    assert ops_after == ops_plain

    net = make()
    with deferred_bn_counts(net):
        ops_inside = host_op_count(lambda: calls(net))
    # 3 train-mode calls x 2 BatchNorms: 6 adds saved when deferring is possible (momentum set)
    assert ops_plain - ops_inside == (6 if momentum is not None else 0)

    # torch's SyncBatchNorm (sync_bn on GPUs) requires its counter: it keeps counting for itself.
    torch.manual_seed(0)
    mixed = torch.nn.Sequential(torch.nn.BatchNorm2d(3), torch.nn.SyncBatchNorm(3)).train()
    with deferred_bn_counts(mixed):
        mixed(x)
        mixed(x)
    assert [m.num_batches_tracked.item() for m in mixed] == [2, 2]

    net = make()
    with pytest.raises(RuntimeError, match="boom"), deferred_bn_counts(net):
        net(x)
        raise RuntimeError("boom")
    assert [m.num_batches_tracked.item() for m in (net[1], net[4])] == [1, 1]


@pytest.mark.parametrize("dropout", [False, True], ids=["teacher-eval", "teacher-dropout"])
def test_teacher_dropout_switch(dropout):
    """``model.teacher_dropout``: the teacher's soft labels of the fakes vary with the RNG when on (the reference's
    teacher in train mode) and not when off; the same RNG state gives the same labels (what an exact resume
    restores); the teacher's running statistics and modes are untouched either way."""
    from dgnet.training.step import GeneratorInputs

    cfg = _cfg()
    cfg.model.teacher_dropout = dropout
    model, teacher, _ = _build(cfg)
    teacher.eval().requires_grad_(False)
    buffers = {k: v.clone() for k, v in teacher.named_buffers()}
    fwd = shared_forward(model, _batch(1), _batch(2))
    weights = ramp_weights(5, cfg.loss)

    def labels() -> torch.Tensor:
        (_, _, q_ba), (_, _, q_ab) = GeneratorInputs(model, teacher, fwd, weights, cfg).student
        return torch.cat([q_ba, q_ab])

    state = torch.get_rng_state()
    first, second = labels(), labels()
    torch.set_rng_state(state)
    assert torch.equal(labels(), first)
    assert torch.equal(first, second) != dropout
    torch.testing.assert_close(first.sum(1), torch.ones(2 * B))  # still distributions
    assert not any(m.training for m in teacher.modules())
    assert all(torch.equal(v, buffers[k]) for k, v in teacher.named_buffers())


def test_before_warmup_ramped_terms_are_off():
    cfg = _cfg()
    cfg.loss.warm_iter = 100
    model, _, opts = _build(cfg)
    out = dgnet_step(model, None, opts, _batch(1), _batch(2), iteration=0, cfg=cfg, return_images=True)
    for k in ("recon_s_w", "recon_f_w", "recon_x_cyc_w", "teacher_w", "fine_w"):
        assert out[k] == 0.0
    # no teacher needed, no cycle, no teacher/fine terms; the always-on terms are there
    assert out["loss_teacher"] == out["loss_fine"] == out["loss_gen_cycrecon_x"] == out["loss_gen_recon_s"] == 0.0
    assert "x_aba" not in out["images"]
    assert out["loss_gen_recon_x"] > 0 and out["loss_gen_recon_id"] > 0 and out["loss_id"] > 0
    assert out["loss_gen_recon_f"] > 0  # reported even at weight 0 (the copy runs for the identity loss)
    with pytest.raises(ValueError, match="no teacher"):
        dgnet_step(model, None, opts, _batch(1), _batch(2), iteration=101, cfg=cfg)


def test_bf16_autocast_step_is_finite():
    cfg = _cfg()
    model, teacher, opts = _build(cfg)
    out = dgnet_step(model, teacher, opts, _batch(1), _batch(2), 3, cfg, amp_dtype=torch.bfloat16)
    assert all(out[k] == out[k] for k in GEN_TERMS)


@pytest.mark.slow  # fp16 convolutions have no fast CPU kernels: ~30 s even at 32x16
def test_fp16_gradscaler_step_cpu():
    """fp16 autocast with one GradScaler shared by the three optimisers: finite losses, parameters move
    when no overflow was found, and the scale is updated once per iteration."""
    cfg = _cfg()
    model, teacher, opts = _build(cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**6, growth_interval=1)
    before = model.Es.model[0].conv.weight.detach().clone()
    out = dgnet_step(model, teacher, opts, _batch(1, SMALL), _batch(2, SMALL), 3, cfg, scaler, torch.float16)
    assert all(out[k] == out[k] for k in GEN_TERMS)
    # growth_interval=1: a clean iteration doubles the scale, an overflow halves it; either way one update
    assert scaler.get_scale() in (2.0**5, 2.0**7)
    if scaler.get_scale() == 2.0**7:
        assert not torch.equal(before, model.Es.model[0].conv.weight)


def test_bad_batches():
    cfg = _cfg()
    model, teacher, opts = _build(cfg)
    bad = _batch(1)
    del bad["positive_erased"]
    with pytest.raises(ValueError, match="batch_a: missing keys \\['positive_erased'\\]"):
        dgnet_step(model, teacher, opts, bad, _batch(2), 0, cfg)
    bad = _batch(1)
    bad["pid"] = torch.tensor([0, IDS])
    with pytest.raises(ValueError, match=r"batch_a\['pid'\]: labels must lie in \[0, 5\)"):
        dgnet_step(model, teacher, opts, bad, _batch(2), 0, cfg)
    bad = _batch(2)
    bad["image"] = bad["image"][:, :1]
    with pytest.raises(ValueError, match=r"batch_b\['image'\]: expected float \(B, 3, H, W\)"):
        dgnet_step(model, teacher, opts, _batch(1), bad, 0, cfg)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_optimizer_groups_follow_spec():
    cfg = _cfg()
    model, _, opts = _build(cfg)
    o = cfg.optim
    gen, dis, ident = opts["gen"], opts["dis"], opts["id"]
    assert isinstance(gen, torch.optim.Adam) and isinstance(dis, torch.optim.Adam)
    for opt, lr in ((gen, o.gen_lr), (dis, o.dis_lr)):
        g = opt.param_groups[0]
        assert (g["lr"], g["betas"], g["weight_decay"]) == (lr, (0.0, 0.999), 5e-4)
    assert isinstance(ident, torch.optim.SGD)
    assert [g["lr"] for g in ident.param_groups] == [0.002, 0.02]
    assert all(g["nesterov"] and g["momentum"] == 0.9 and g["weight_decay"] == 5e-4 for g in ident.param_groups)
    ids = lambda ps: {id(p) for p in ps}
    assert ids(p for g in gen.param_groups for p in g["params"]) == ids([*model.Es.parameters(), *model.G.parameters()])
    assert ids(dis.param_groups[0]["params"]) == ids(model.D.parameters())
    assert ids(ident.param_groups[0]["params"]) == ids(model.Ea.backbone.parameters())
    heads = [*model.Ea.head_primary.parameters(), *model.Ea.head_fine.parameters()]
    assert ids(ident.param_groups[1]["params"]) == ids(heads)
    # schedules: x0.1 at each milestone
    cfg.optim.milestones = (2, 4)
    sch = build_schedulers(opts, cfg.optim)
    lrs = []
    for _ in range(5):
        lrs.append(ident.param_groups[1]["lr"])
        for s in sch.values():
            s.step()
    assert lrs == pytest.approx([0.02, 0.02, 0.002, 0.002, 0.0002])


def test_teacher_step_trains_on_erased_images():
    cfg = _cfg()
    torch.manual_seed(0)
    teacher = ReidBaseline(cfg.model, IDS)
    opt = build_teacher_optimizer(teacher, cfg.optim)
    assert [g["lr"] for g in opt.param_groups] == [cfg.optim.teacher_lr_backbone, cfg.optim.teacher_lr_heads]
    sched = build_teacher_scheduler(opt, cfg.optim)
    assert sched.milestones == {m: 1 for m in cfg.optim.teacher_milestones}
    batch = _batch(1)
    batch["image"] = torch.full_like(batch["image"], float("nan"))  # only the erased copy may be read
    before = teacher.backbone.conv1.weight.detach().clone()
    out = teacher_step(teacher, opt, batch)
    assert out["loss_id"] == pytest.approx(torch.log(torch.tensor(float(IDS))).item(), abs=0.5)
    assert 0.0 <= out["accuracy"] <= 1.0
    assert not torch.equal(before, teacher.backbone.conv1.weight)
    with pytest.raises(ValueError, match="image_erased"):
        teacher_step(teacher, opt, {"pid": batch["pid"]})


def _steps(device: torch.device, fused: bool, amp_dtype=None, scaler: bool = False, steps: int = 1,
           hw: tuple[int, int] = (H, W)):
    """``steps`` iterations from the same seeded weights and batches on ``device``: each step's losses (checked
    finite, as every parameter after it) and G's first upsampling conv weight after the first step."""
    cfg = _cfg(structure_live_p=0.5)
    model, teacher, _ = _build(cfg, seed=3, fused=fused)
    model.to(device)
    teacher.to(device)
    opts = build_optimizers(model, cfg.optim)  # the model's fused choice picks the implementation
    grad_scaler = torch.amp.GradScaler(device.type) if scaler else None
    to = lambda b: {k: v.to(device) for k, v in b.items()}
    outs, weight = [], None
    for i in range(steps):
        torch.manual_seed(5 + i)
        scale_before = grad_scaler.get_scale() if grad_scaler is not None else None
        out = dgnet_step(model, teacher, opts, to(_batch(1 + 2 * i, hw)), to(_batch(2 + 2 * i, hw)), 4 + i, cfg,
                         grad_scaler, amp_dtype)
        bad = [k for k in (*GEN_TERMS, "loss_dis_total") if not math.isfinite(out[k])]
        # D's loss holds the R1 penalty of gradients scaled by the GradScaler: an overflow there is the scaler's
        # to handle (it skips the step and halves the scale), and only there
        skipped = grad_scaler is not None and grad_scaler.get_scale() < scale_before
        assert not bad or (bad == ["loss_dis_total"] and skipped), (fused, amp_dtype, i, bad, scale_before)
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        assert not bad, (fused, amp_dtype, i, bad[:5])
        outs.append(out)
        if i == 0:
            weight = model.G.up[1].conv.weight.detach().cpu().clone()
    return outs, weight, cfg


def _assert_losses_close(got: dict, want: dict, rel: float, abs_: float, what: str) -> None:
    for k in [*GEN_TERMS, "loss_dis_total"]:
        if k == "loss_dis_total" and not math.isfinite(got[k]):
            continue  # a GradScaler overflow, checked in _steps
        assert got[k] == pytest.approx(want[k], rel=rel, abs=abs_), (what, k, got[k], want[k])


def _assert_adam_first_steps_close(got: torch.Tensor, want: torch.Tensor, lr: float) -> None:
    # Adam with beta1 = 0 moves each weight by about lr * sign(grad) on its first step, so where a gradient is ~0
    # rounding may flip the sign: bounded by 2 lr, and rare (test_fused_step_matches_plain).
    diff = (got - want).abs()
    assert diff.max() <= 2 * lr * 1.01 and (diff > 1e-6).float().mean() < 0.01


# An autocast step's losses against the fp32 step's on the same weights and batch. Autocast runs convolutions and
# matmuls in the amp dtype (unit roundoff u: 2^-8 bfloat16, 2^-11 float16) with fp32 accumulation; the losses come
# through two chained networks (G's images go through Ea and Es again), and each layer adds a few u of relative
# error, so the plain amp step is held to 32u relative (plus 32u absolute for terms near 0): it catches a broken
# cast or a lost term, not rounding (measured on CPU at this size: 0.43% at most for float16, under 32u = 1.6%).
# The fused amp step is held to the plain amp step's own error by flash-attention's rule: its distance to the fp32
# losses at most twice the plain amp step's, plus 8u of the loss's magnitude.
AMP_U = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def _assert_amp_losses(plain: dict, fused: dict, want: dict, u: float, what: str) -> None:
    _assert_losses_close(plain, want, 32 * u, 32 * u, f"plain {what}")
    for k in [*GEN_TERMS, "loss_dis_total"]:
        if not (math.isfinite(fused[k]) and math.isfinite(plain[k])):
            continue  # a GradScaler overflow in D's R1 term, checked in _steps
        err, err_plain = abs(fused[k] - want[k]), abs(plain[k] - want[k])
        assert err <= 2 * err_plain + 8 * u * max(1.0, abs(want[k])), (f"fused {what}", k, fused[k], plain[k], want[k])


@pytest.mark.gpu
def test_cuda_steps_match_the_plain_fp32_step():
    """On CUDA: the --fused step (Triton AdaIN, grouped MLPs, fused optimisers) gives the plain step's losses and
    updates in fp32 (TF32 off, so both are fp32 arithmetic); bf16 autocast and fp16 with the GradScaler, plain
    and fused, give the fp32 step's losses within the amp dtype's rounding (_assert_amp_losses), and stay finite
    for two steps."""
    dev = torch.device("cuda")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        (want, *_), w_plain, cfg = _steps(dev, fused=False)
        (got, *_), w_fused, _ = _steps(dev, fused=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    _assert_losses_close(got, want, 1e-3, 1e-4, "fused fp32")  # test_fused_step_matches_plain's bound
    _assert_adam_first_steps_close(w_fused, w_plain, cfg.optim.gen_lr)
    for amp, scaler in ((torch.bfloat16, False), (torch.float16, True)):
        plain, _, _ = _steps(dev, False, amp, scaler, steps=2)
        fused, _, _ = _steps(dev, True, amp, scaler, steps=2)
        _assert_amp_losses(plain[0], fused[0], want, AMP_U[amp], str(amp))
