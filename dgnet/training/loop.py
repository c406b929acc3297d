"""Training: stage 1 trains the teacher (the re-id baseline), stage 2 trains DG-Net, then both are evaluated.

:func:`train` is the whole run that ``python -m dgnet.train`` starts. With the ``demo`` preset it generates
the synthetic set if absent, trains both stages, evaluates the teacher and DG-Net with and without
re-ranking, and writes everything under the run's output folder::

    <output>/config.yaml          the resolved config (loadable with --config)
    <output>/metrics.jsonl        one line per logged iteration (losses, ramped weights, lrs, it/s)
    <output>/tb/                  TensorBoard events (the same scalars, plus image grids)
    <output>/images/*.png         fixed samples: real a, real b, reconstruction, cycle, swaps
    <output>/checkpoints/*.pt     full checkpoints (last K per stage) for --resume
    <output>/teacher.pt, dgnet.pt final weights (for --teacher, dgnet.test, dgnet.visualize)
    <output>/results.json, results.md   the evaluation table

``train.max_iterations`` (``--iterations N``) caps both stages of this invocation at N. A resume continues
from the newest checkpoint in the output folder exactly where it stopped (models, optimisers, schedulers,
grad scaler, all RNG states, the data streams' positions; the ramps are a function of the iteration), in the
stage it stopped in.

Several processes (one per GPU, ``torchrun --nproc_per_node N -m dgnet.train ...``; see
``dgnet.distributed``): DistributedDataParallel, each rank reads a disjoint shard of every epoch, only
rank 0 logs, draws grids, writes checkpoints and evaluates; checkpoints hold every rank's RNG state, so a
resume on the same world size is exact; on another world size it works and says what is not exact.
The batch and learning-rate rule is documented at ``TrainConfig.sync_bn`` / ``scale_lr``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dgnet.checkpoints.format import (
    CheckpointManager,
    NonFiniteWeights,
    arch_only,
    build_state,
    check_compatible,
    check_finite,
    gather_rng,
    load_checkpoint,
    restore_rank,
    save_atomic,
)
from dgnet.checkpoints.runs import (
    TEACHER_WEIGHTS,
    init_dgnet_from,
    load_teacher,
    prepare_dataset,
    require_init_from,
    teacher_from,
    with_data_ids,
)
from dgnet.config import Config, save_config
from dgnet.data import drop_singletons, resolve_backend, train_stream
from dgnet.data.streams import load_images
from dgnet.distributed import (
    all_gather_objects,
    as_collective_failure,
    convert_sync_batchnorm,
    destroy,
    init_from_env,
    world,
)
from dgnet.evaluation.protocol import evaluate_models, format_table
from dgnet.fileio import remove_stale_temporaries, write_text_atomic
from dgnet.generative.figures import training_figure
from dgnet.models import DGNet, ReidBaseline
from dgnet.models.decoder import fold_applies
from dgnet.runlock import LockHeld, acquire
from dgnet.runtime import Amp, resolve_amp, resolve_device, seed_everything, seed_rank, set_determinism, set_threads
from dgnet.training.logger import RunLogger
from dgnet.training.optim import build_optimizers, build_schedulers, build_teacher_optimizer, build_teacher_scheduler
from dgnet.training.preemption import Stopped, StopRequest
from dgnet.training.step import compile_models, dgnet_step, ramp_weights, teacher_step, wrap_ddp

STAGES = ("all", "teacher", "dgnet")


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or inf: training stops, the last good checkpoint is kept and named."""


# --------------------------------------------------------------------------------------------------------------------
# loop pieces


def _stop(mgr: CheckpointManager, stage: str, what: str, good_before: int) -> NonFiniteLoss:
    """The error that stops a run on a non-finite loss or weights: it names the newest checkpoint of this stage
    whose weights are finite and gave a finite loss (iteration below ``good_before``), setting newer ones aside.

    A checkpoint at iteration m holds the weights that iteration m + 1 computes its loss with: when the loss of
    iteration j is not finite, the checkpoint at j - 1 is suspect too (its weights may be finite but huge) and
    is renamed ``.nonfinite`` so that --resume does not start from it.
    """
    rank, _ = world()
    kept, aside = "no checkpoint had been written yet", []
    if rank == 0:
        for p in mgr.list(stage):
            if int(p.stem.rsplit("_", 1)[1]) >= good_before:
                aside.append(mgr.set_aside(p, "nonfinite", f"its weights led to the {what}").name)
        last, _ = mgr.newest_intact(before=good_before, stage=stage)
        if last is None and stage == "dgnet":
            last, _ = mgr.newest_intact(stage="teacher")
        if last is not None:
            kept = f"the last good checkpoint, {last}, is kept (finite weights that gave a finite loss)"
    moved = f" (set aside, never resumed from: {', '.join(aside)})" if aside else ""
    return NonFiniteLoss(
        f"{stage}: {what}; training stopped, {kept}{moved}. "
        "If fp16 overflowed, resume with --resume --amp bf16 (or off); lower learning rates or loss weights "
        "change the run's fingerprint, so they need a new run (another --output)."
    )


def _check_finite(out: dict[str, Any], stage: str, iteration: int, mgr: CheckpointManager) -> None:
    bad = {k: v for k, v in out.items() if isinstance(v, float) and k.startswith("loss") and not math.isfinite(v)}
    if bad:
        names = ", ".join(f"{k} = {v}" for k, v in bad.items())
        # the weights after `iteration` updates gave it: checkpoints at `iteration` and later are suspect
        raise _stop(mgr, stage, f"non-finite loss at iteration {iteration + 1}: {names}", good_before=iteration)


def _check_weights(mgr: CheckpointManager, models: dict[str, torch.nn.Module], stage: str, iteration: int) -> None:
    """Before a save, on every rank (their parameters are equal under DDP, so all stop together): stop when the
    update of ``iteration`` made a parameter or buffer non-finite. Its loss was finite, so the checkpoint before
    it is good."""
    try:
        check_finite({"models": {k: m.state_dict() for k, m in models.items()}}, f"{stage} iteration {iteration}")
    except NonFiniteWeights as exc:
        raise _stop(mgr, stage, f"the update of iteration {iteration} made weights non-finite ({exc})",
                    good_before=iteration) from None


def _next_batch(batches: Any) -> dict:
    """The next batch, leaving torch's global RNG as it was.

    The training steps draw dropout and the structure-branch coin from the global RNG, and a torch
    DataLoader draws its base seed from it whenever its iterator is (re)created, which a resumed
    stream does at a different iteration than an uninterrupted one; fetching data must not shift the
    steps' random numbers, or resume would not be exact.
    """
    with torch.random.fork_rng(devices=[]):
        return next(batches)


def _lrs(optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
    out = {}
    for name, opt in optimizers.items():
        for i, g in enumerate(opt.param_groups):
            out[f"lr_{name}" + (f"_{i}" if len(opt.param_groups) > 1 else "")] = float(g["lr"])
    return out


def _scale_lrs(optimizers: dict[str, torch.optim.Optimizer], cfg: Config) -> None:
    """``train.scale_lr``: every learning rate x world size (before the schedulers capture them)."""
    _, size = world()
    if cfg.train.scale_lr and size > 1:
        for opt in optimizers.values():
            for g in opt.param_groups:
                g["lr"] *= size


def _stream_kwargs(cfg: Config, device: torch.device, seed: int, batch_size: int) -> dict:
    rank, size = world()
    return dict(batch_size=batch_size, size=(cfg.data.height, cfg.data.width), device=device, seed=seed,
                pad=cfg.data.pad, erasing_p=cfg.data.erasing_p, rank=rank, world_size=size,
                workers=cfg.data.workers)


def _seed_this_rank(seed: int) -> None:
    seed_rank(seed, *world())


def stage_iterations(cfg: Config, stage: str) -> int:
    """Iterations ``stage`` ("teacher" or "dgnet") trains for: its schedule, capped by ``--iterations``."""
    total = cfg.optim.teacher_iterations if stage == "teacher" else cfg.optim.iterations
    return min(total, cfg.train.max_iterations) if cfg.train.max_iterations else total


def sched_step(*schedulers: Any) -> None:
    """Step schedulers at the start of an iteration, as the reference does (spec: Optimisation)."""
    with warnings.catch_warnings():
        # torch warns when a scheduler steps before the first optimiser step; that order is the spec's.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        for s in schedulers:
            s.step()


def _stop_agreed(stop: StopRequest | None, device: torch.device) -> int:
    """The signal that asked this run to stop (0: none). Every rank calls it at the same points (a collective)."""
    return stop.agreed(device) if stop is not None else 0


def _stopped(signum: int, where: str, checkpoint: Path | None) -> Stopped:
    name = signal.Signals(signum).name
    saved = f"the checkpoint to resume from is {checkpoint}" if checkpoint is not None else \
        "no checkpoint had been written yet, so there is nothing to resume"
    return Stopped(f"stopped by {name} {where}; {saved}", signum, checkpoint)


def _final_weights(path: Path, stage: str, iteration: int, cfg: Config, models: dict) -> None:
    save_atomic(build_state(stage=stage, iteration=iteration, cfg=cfg, num_ids=cfg.model.num_ids, models=models),
                path)


def _ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """The stage-1 teacher's DDP wrapper under torchrun (``None`` in a single process)."""
    _, size = world()
    if size == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)


def fast_paths(cfg: Config, device: torch.device) -> str:
    """One line saying which fast paths this run's models and steps use (``train.fused``, ``fold_upsample``)."""

    threads = f"; {torch.get_num_threads()} CPU threads" if device.type == "cpu" else ""
    compiled = ""
    if cfg.train.compile:
        compiled = "; --compile: Ea's trunk, Es and G compiled" + (" with CUDA graphs" if device.type == "cuda" else "")
    if not cfg.train.fused:
        return f"plain PyTorch (--fused for the fast paths){compiled}{threads}"
    adain = "C++" if device.type == "cpu" else "Triton"
    fold = "folded upsample + conv5x5" if fold_applies(cfg.train.fold_upsample, device) else "plain upsampling"
    return (f"--fused: {adain} AdaIN kernels, grouped AdaIN MLPs, fused optimisers, deferred BatchNorm counters, "
            f"{fold} (train.fold_upsample={cfg.train.fold_upsample}){compiled}{threads}")


# --------------------------------------------------------------------------------------------------------------------
# stage 1: the teacher


def train_teacher(cfg: Config, ds, device: torch.device, backend: str, mgr: CheckpointManager,
                  resume: dict | None, amp: Amp, out: Path, stop: StopRequest | None = None) -> torch.nn.Module:
    """Train the re-id baseline (the teacher) for ``optim.teacher_iterations`` (capped); returns it in eval mode.

    ``stop`` (a signal's request, :mod:`dgnet.training.preemption`): checked after every iteration; when set, the
    iteration is saved and :class:`~dgnet.training.preemption.Stopped` raised."""
    rank, _ = world()
    total = stage_iterations(cfg, "teacher")
    seed_everything(cfg.train.seed)
    num_ids = cfg.model.num_ids
    scratch = resume is not None or cfg.model.backbone_weights == TEACHER_WEIGHTS  # the teacher itself starts anew
    teacher = ReidBaseline(arch_only(cfg.model) if scratch else cfg.model, num_ids, fused=cfg.train.fused).to(device)
    opt = build_teacher_optimizer(teacher, cfg.optim)
    _scale_lrs({"teacher": opt}, cfg)
    sched = build_teacher_scheduler(opt, cfg.optim)
    ddp = _ddp(teacher, device)
    stream = train_stream(ds.train, backend, mode="pk", augment=True,
                          **_stream_kwargs(cfg, device, cfg.train.seed, cfg.data.teacher_batch_size))
    start = 0
    _seed_this_rank(cfg.train.seed)
    if resume is not None:
        restore_rank(resume, "teacher", {"train": stream}, models={"teacher": teacher}, optimizers={"teacher": opt},
                     schedulers={"teacher": sched}, scaler=amp.scaler, scale_lr=cfg.train.scale_lr)
        start = resume["iteration"]
    log = RunLogger(out, "teacher", total, start=start, enabled=rank == 0)
    if start >= total:
        log.write(f"teacher: already trained ({start} iterations)")
    batches = iter(stream)

    def save(it: int) -> None:
        _check_weights(mgr, {"teacher": teacher}, "teacher", it)
        rngs = gather_rng()
        if rank == 0:
            mgr.save(build_state(stage="teacher", iteration=it, cfg=cfg, num_ids=num_ids, models={"teacher": teacher},
                                 optimizers={"teacher": opt}, schedulers={"teacher": sched}, scaler=amp.scaler,
                                 streams={"train": stream}, rng_ranks=rngs), "teacher", it)

    teacher.train()
    try:
        for it in range(start, total):
            sched_step(sched)
            batch = _next_batch(batches)
            o = teacher_step(teacher, opt, batch, amp.scaler, amp.dtype, ddp=ddp)
            _check_finite(o, "teacher", it, mgr)
            done = it + 1
            log.step(postfix={k: v for k, v in o.items() if k.startswith("loss")})
            if done % cfg.train.log_every == 0 or done == total:
                log.scalars(done, {**o, **_lrs({"teacher": opt}), "it_per_s": log.its_per_second(done)})
            saved = done % cfg.train.checkpoint_every == 0 or done == total
            if saved:
                save(done)
            signum = _stop_agreed(stop, device) if done < total else 0
            if signum:
                if not saved:
                    save(done)
                raise _stopped(signum, f"after teacher iteration {done} of {total}", mgr.path("teacher", done))
    finally:
        log.close()
    if rank == 0 and total > 0:
        _final_weights(out / "teacher.pt", "teacher", max(start, total), cfg, {"teacher": teacher})
    teacher.eval()
    return teacher


# --------------------------------------------------------------------------------------------------------------------
# stage 2: DG-Net


def fixed_grid_batches(ds, cfg: Config, backend: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of fixed train images of different identities (a: ids 0..n-1, b: the next n), for the grids.

    Read through the test pipeline (no augmentation, no random state consumed), so grids at the
    same iteration of a resumed and an uninterrupted run show the same inputs.
    """

    n = cfg.train.grid_samples
    first: dict[int, Any] = {}
    for s in ds.train:
        first.setdefault(s.pid, s)
        if len(first) >= 2 * n:
            break
    picks = list(first.values())
    if len(picks) < 2:
        raise ValueError("the train split needs at least 2 identities for image grids")
    half = max(1, len(picks) // 2)
    x = load_images(picks[:half] + picks[half : 2 * half], (cfg.data.height, cfg.data.width), backend, device)
    return x[:half], x[half : 2 * half]


def build_dgnet(cfg: Config, teacher: torch.nn.Module, device: torch.device, resume: dict | None) -> DGNet:
    """Stage 2's DGNet on ``device``: its starting weights (``model.init_from``, the teacher's trunk, or the
    config's), SyncBatchNorm under ``train.sync_bn`` with several processes, compiled under ``train.compile``."""
    rank, size = world()
    num_ids = cfg.model.num_ids
    # model.init_from (a fine-tune) gives every DG-Net weight, so it overrides backbone_weights; a resume has its own.
    init = cfg.model.init_from if resume is None else ""
    from_teacher = cfg.model.backbone_weights == TEACHER_WEIGHTS and not init
    model = DGNet(arch_only(cfg.model) if resume is not None or from_teacher or init else cfg.model, num_ids,
                  fused=cfg.train.fused, fold_upsample=cfg.train.fold_upsample).to(device)
    if init:
        init_dgnet_from(model, init, cfg.model, num_ids)
        if rank == 0:
            print(f"dgnet: DG-Net starts from the weights of {init} (model.init_from), with fresh optimisers and "
                  "schedule")
    elif from_teacher and resume is None:
        try:
            model.Ea.backbone.load_state_dict(teacher.backbone.state_dict())
        except RuntimeError as exc:
            raise ValueError(f"model.backbone_weights=teacher: the teacher's trunk does not fit Ea's "
                             f"({cfg.model.backbone}): {exc}") from None
    if size > 1 and cfg.train.sync_bn:
        model.Ea = convert_sync_batchnorm(model.Ea, device).to(device)
    if cfg.train.compile:
        compile_models(model, device)  # after the weights are in; the first iteration compiles
    return model


def dgnet_streams(ds, cfg: Config, device: torch.device, backend: str) -> dict[str, Any]:
    """The two streams of image pairs, a and b, that each DG-Net iteration draws one batch from."""
    kw = _stream_kwargs(cfg, device, 0, cfg.data.batch_size)
    pairs, _ = drop_singletons(ds.train)  # an identity with one image has no positive to pair with
    return {
        "a": train_stream(pairs, backend, mode="pairs", augment=True, **{**kw, "seed": cfg.train.seed + 11}),
        "b": train_stream(pairs, backend, mode="pairs", augment=True, **{**kw, "seed": cfg.train.seed + 23}),
    }


def train_dgnet(cfg: Config, ds, teacher: torch.nn.Module, device: torch.device, backend: str,
                mgr: CheckpointManager, resume: dict | None, amp: Amp, out: Path,
                stop: StopRequest | None = None) -> torch.nn.Module:
    """Joint training (spec: Losses, Optimisation) for ``optim.iterations`` (capped); returns DGNet in eval mode.

    ``stop``: as in :func:`train_teacher`."""
    rank, size = world()
    total = stage_iterations(cfg, "dgnet")
    # Stage 2 seeds itself, so it is the same whether stage 1 ran in this process or was loaded.
    seed_everything(cfg.train.seed + 1)
    num_ids = cfg.model.num_ids
    model = build_dgnet(cfg, teacher, device, resume)
    opts = build_optimizers(model, cfg.optim)
    _scale_lrs(opts, cfg)
    scheds = build_schedulers(opts, cfg.optim)
    ddp = wrap_ddp(model, device) if size > 1 else None
    streams = dgnet_streams(ds, cfg, device, backend)
    start = 0
    _seed_this_rank(cfg.train.seed + 1)
    if resume is not None:
        restore_rank(resume, "dgnet", streams, models={"dgnet": model}, optimizers=opts, schedulers=scheds,
                     scaler=amp.scaler, scale_lr=cfg.train.scale_lr)
        start = resume["iteration"]
    grid_a = grid_b = None
    if rank == 0:
        with torch.random.fork_rng(devices=[]):  # reading the grid images must not shift the training RNG
            grid_a, grid_b = fixed_grid_batches(ds, cfg, backend, device)
    log = RunLogger(out, "dgnet", total, start=start, enabled=rank == 0)
    if start >= total:
        log.write(f"dgnet: already trained ({start} iterations)")
    it_a, it_b = iter(streams["a"]), iter(streams["b"])

    def save(it: int, ramps: dict) -> None:
        _check_weights(mgr, {"dgnet": model}, "dgnet", it)
        rngs = gather_rng()
        if rank == 0:
            mgr.save(build_state(stage="dgnet", iteration=it, cfg=cfg, num_ids=num_ids,
                                 models={"dgnet": model, "teacher": teacher}, optimizers=opts, schedulers=scheds,
                                 scaler=amp.scaler, streams=streams, ramps=ramps, rng_ranks=rngs), "dgnet", it)

    model.train()
    try:
        for it in range(start, total):
            sched_step(*scheds.values())
            batch_a, batch_b = _next_batch(it_a), _next_batch(it_b)
            o = dgnet_step(model, teacher, opts, batch_a, batch_b, it, cfg, scaler=amp.scaler, amp_dtype=amp.dtype,
                           ddp=ddp)
            _check_finite(o, "dgnet", it, mgr)
            done = it + 1
            ramps = ramp_weights(it, cfg.loss)
            log.step(postfix={k: o[k] for k in ("loss_gen_total", "loss_dis_total") if k in o})
            if done % cfg.train.log_every == 0 or done == total:
                # ``o`` already holds the ramped weights of this iteration (dgnet_step reports them)
                log.scalars(done, {**o, **_lrs(opts), "it_per_s": log.its_per_second(done)})
            if rank == 0 and (done % cfg.train.image_every == 0 or done == total):
                with torch.random.fork_rng(devices=[]):  # grids never touch the training RNG streams
                    log.grid(done, training_figure(model, grid_a, grid_b, f"DG-Net iteration {done}"))
            saved = done % cfg.train.checkpoint_every == 0 or done == total
            if saved:
                save(done, ramps)
            signum = _stop_agreed(stop, device) if done < total else 0
            if signum:
                if not saved:
                    save(done, ramps)
                raise _stopped(signum, f"after DG-Net iteration {done} of {total}", mgr.path("dgnet", done))
    finally:
        log.close()
    if rank == 0 and total > 0:
        _final_weights(out / "dgnet.pt", "dgnet", max(start, total), cfg, {"dgnet": model, "teacher": teacher})
    model.eval()
    return model


# --------------------------------------------------------------------------------------------------------------------
# the whole run


def _stop_before(stop: StopRequest | None, device: torch.device, mgr: CheckpointManager, where: str) -> None:
    """Between stages: a stop asked for in set-up or at a stage's last iteration stops here, with what is saved."""
    signum = _stop_agreed(stop, device)
    if signum:
        raise _stopped(signum, where, mgr.latest())


def _check_teacher_finished(mgr: CheckpointManager, cfg: Config) -> None:
    """Refuse to continue DG-Net when its teacher stopped short of this run's teacher schedule.

    ``--iterations`` caps both stages and may change on resume. A run capped at N and resumed with a larger
    cap would otherwise go on training DG-Net against an N-iteration teacher (and an Ea started from it).
    """
    done = mgr.latest_iteration("teacher")
    target = stage_iterations(cfg, "teacher")
    if done is not None and done < target:
        raise ValueError(
            f"--resume: the teacher stopped at {done} of {target} iterations (an earlier --iterations cap) and "
            f"DG-Net has trained against it since, so DG-Net cannot continue under a longer schedule. Resume with "
            f"--iterations {done} to keep the capped schedule, or start a new run (another --output)"
        )


def train(cfg: Config, resume: bool | str = False, stage: str = "all", evaluate: bool = True,
          verbose: bool = True, stop: StopRequest | None = None) -> dict:
    """Train (and evaluate) per ``cfg``; returns ``{"results": {...}, "output": str, "seconds": float}``.

    ``resume="auto"``: resume when the output folder holds a checkpoint, else start afresh. ``stage``: ``all``,
    ``teacher`` (stage 1 only) or ``dgnet`` (stage 2 only, with ``train.teacher`` or the run's ``teacher.pt``).
    ``stop``: a :class:`~dgnet.training.preemption.StopRequest` (``stop_on_signals``): once set, the iteration in
    progress finishes, is saved, and :class:`~dgnet.training.preemption.Stopped` is raised.
    Under torchrun (``WORLD_SIZE`` set) joins the process group first (``dgnet.distributed.init_from_env``)
    and leaves it at the end. The output folder is locked for the run (``dgnet.runlock``): a second run into it
    is refused (:class:`~dgnet.runlock.LockHeld`) while this one lives.
    """

    if stage not in STAGES:
        raise ValueError(f"stage={stage!r}: expected one of {STAGES}")
    out = Path(cfg.train.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {str(out)!r} (train.output) is an existing file; expected a folder (the run "
                         "writes config.yaml, checkpoints/ and its results into it)")
    joined = not torch.distributed.is_initialized()
    ctx = init_from_env(resolve_device(cfg.train.device))
    try:
        with _hold_output(out):
            return _train(cfg, ctx.device, resume, stage, evaluate, verbose, stop)
    except RuntimeError as exc:
        failure = as_collective_failure(exc, ctx.rank, str(out / "checkpoints"))
        if failure is None or ctx.world_size < 2:
            raise
        raise failure from exc
    finally:
        if joined:
            destroy()


@contextlib.contextmanager
def _hold_output(out: Path) -> Iterator[None]:
    """One writer per run folder: rank 0 holds ``out``'s lock for the whole run, and every rank learns whether it
    got it (so all stop together when another run holds it). A folder this user cannot write is named."""
    rank, size = world()
    with contextlib.ExitStack() as stack:
        refusal: Exception | None = None
        if rank == 0:
            try:
                stack.enter_context(acquire(out, "dgnet.train"))
            except LockHeld as exc:
                refusal = exc
            except OSError as exc:  # not writable, a read-only file system, a file where a parent folder should be
                where = f": {exc.filename}" if exc.filename else ""
                refusal = ValueError(f"--output {str(out)!r} (train.output): cannot write there ({exc.strerror or exc}"
                                     f"{where}); choose a folder this user can write")
        if size > 1:
            told = all_gather_objects(None if refusal is None else str(refusal))[0]
            if told is not None and refusal is None:
                refusal = LockHeld(told)
        if refusal is not None:
            raise refusal
        yield


def _check_resume_settings(ckpt: dict, cfg: Config, path: Path) -> Config:
    """Settings the fingerprint leaves out that a resume must still keep: ``train.teacher`` (the teacher DG-Net
    trains against), and on a DG-Net resume ``model.init_from`` (where its weights started). Left out on the
    command line, the run's own value is taken (so config.yaml stays true); another value is refused, naming both.
    """
    theirs = ckpt["config"]
    keep = [("train", "teacher", "--teacher")]
    if ckpt["stage"] == "dgnet":
        keep.append(("model", "init_from", "--init-from"))
    for section, key, flag in keep:
        was = str(theirs.get(section, {}).get(key, "") or "")
        now = str(getattr(getattr(cfg, section), key) or "")
        if not now and was:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{key: was})})
            continue
        if now != was and not (now and was and Path(now).resolve() == Path(was).resolve()):
            had = f"{section}.{key}={was!r}" if was else f"no {section}.{key}"
            raise ValueError(
                f"--resume: {path} was trained with {had} ({flag}), this command gives {flag} {now or '(none)'!r}; "
                f"a resumed run keeps its {flag.lstrip('-')}: drop {flag} (or give the same one), or start a new run "
                "(another --output)")
    return cfg


def _set_up(cfg: Config, device: torch.device, stage: str, verbose: bool) -> tuple[Config, Any, Amp, str]:
    """The process and the data: precision, determinism, threads, the input pipeline, the dataset (generated
    by rank 0 when absent) and the identity count it gives; returns ``(cfg, ds, amp, backend)``."""
    rank, size = world()
    # The data root the run read, absolute in the saved config: its checkpoints find their data from anywhere.
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(Path(cfg.data.root).resolve())))
    amp = resolve_amp(cfg.train.amp, device)
    set_determinism(cfg.train.deterministic)
    set_threads(cfg.train.threads)
    backend = resolve_backend(cfg.data.loader, device)
    if size > 1 and rank != 0:
        torch.distributed.barrier()  # rank 0 generates the synthetic set (if absent) before anyone reads it
    ds = prepare_dataset(cfg, verbose=verbose and rank == 0)
    if size > 1 and rank == 0:
        torch.distributed.barrier()
    cfg = with_data_ids(cfg, ds)
    if stage in ("all", "dgnet"):
        if not drop_singletons(ds.train)[0]:
            raise ValueError(
                f"every train identity of {cfg.data.root} has a single image: DG-Net trains on pairs of images of "
                "one identity (and its positives), so it needs identities with at least 2 images (--stage teacher "
                "trains the re-id baseline alone)")
    return cfg, ds, amp, backend


def _checkpoint_to_resume(mgr: CheckpointManager, cfg: Config, resume: bool | str,
                          device: torch.device) -> tuple[dict | None, Config]:
    """The checkpoint ``--resume`` continues from (the newest intact one, as rank 0 found it), or ``None``, and
    the config with the settings a resume keeps (:func:`_check_resume_settings`); refuses to start afresh over an
    existing run's checkpoints."""
    rank, size = world()
    latest = mgr.latest()
    if resume == "auto":
        resume = latest is not None
    if not resume:
        if latest is not None:
            raise FileExistsError(
                f"{mgr.folder} already holds checkpoints (newest {latest.name}); pass --resume to continue that "
                "run, or choose another --output"
            )
        return None, cfg
    if latest is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {mgr.folder}; start without --resume")
    if rank == 0:
        latest, _ = mgr.newest_intact()  # a torn or non-finite newest one is set aside, with a warning
    if size > 1:
        latest = all_gather_objects(latest)[0]  # every rank resumes from the checkpoint rank 0 found intact
    if latest is None:
        raise FileNotFoundError(f"--resume: no intact checkpoint in {mgr.folder} (the damaged ones were set "
                                "aside); start a new run (another --output)")
    ckpt = load_checkpoint(latest, map_location=device)
    check_compatible(ckpt, cfg, latest)
    cfg = _check_resume_settings(ckpt, cfg, latest)
    if rank == 0:
        print(f"dgnet: resuming from {latest} (stage {ckpt['stage']}, iteration {ckpt['iteration']})")
    return ckpt, cfg


def _teacher(cfg: Config, ds, device: torch.device, backend: str, mgr: CheckpointManager, ckpt: dict | None,
             stage: str, amp: Amp, out: Path, stop: StopRequest | None = None) -> torch.nn.Module:
    """Stage 1, or the teacher it made: from a DG-Net checkpoint being resumed, from ``train.teacher``, trained
    here, or the run's ``teacher.pt`` (``--stage dgnet``). Frozen."""
    resumed_stage = ckpt["stage"] if ckpt else None
    init = cfg.model.init_from
    if init and resumed_stage != "dgnet" and stage in ("all", "dgnet"):
        require_init_from(init)  # before stage 1, which may take hours
    if resumed_stage == "dgnet" and not cfg.train.teacher:
        _check_teacher_finished(mgr, cfg)
    if resumed_stage == "dgnet":
        teacher = teacher_from(ckpt, cfg.model.num_ids, device)
    elif cfg.train.teacher:
        teacher, _ = load_teacher(cfg.train.teacher, cfg.model.num_ids, device)
    elif stage in ("all", "teacher"):
        _stop_before(stop, device, mgr, "before the teacher's training started")
        teacher = train_teacher(cfg, ds, device, backend, mgr, ckpt if resumed_stage == "teacher" else None, amp, out,
                                stop)
    else:
        found = out / "teacher.pt"
        if not found.exists():
            raise FileNotFoundError(f"--stage dgnet needs a teacher: pass --teacher PATH (no {found})")
        teacher, _ = load_teacher(found, cfg.model.num_ids, device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _evaluate(models: dict[str, torch.nn.Module], ds, cfg: Config, device: torch.device, backend: str,
              out: Path) -> dict:
    """The test protocol on every trained model; rank 0 writes ``results.json`` and ``results.md``."""
    # every rank embeds its share of query and gallery (collectives); rank 0 alone gets the metrics
    results = evaluate_models(models, ds, cfg, device, backend)
    if world()[0] == 0:
        table = format_table(results)
        write_text_atomic(out / "results.json", json.dumps(results, indent=2))
        write_text_atomic(out / "results.md", table + "\n")
        print(table)
    return results


def _train(cfg: Config, device: torch.device, resume: bool | str, stage: str, evaluate: bool, verbose: bool,
           stop: StopRequest | None = None) -> dict:
    t0 = time.perf_counter()
    rank, _ = world()
    out = Path(cfg.train.output)
    mgr = CheckpointManager(out / "checkpoints", keep=cfg.train.keep_checkpoints)
    if rank == 0:
        # before anything is written: a killed write's temporary can fill the disk. The run folder's own (config.yaml,
        # results) too: under the folder's lock no other writer can be mid-write there.
        for stale in mgr.sweep() + remove_stale_temporaries(out):
            print(f"dgnet: removed {stale}, the temporary file of a write that was interrupted")
    cfg, ds, amp, backend = _set_up(cfg, device, stage, verbose)
    ckpt, cfg = _checkpoint_to_resume(mgr, cfg, resume, device)
    if rank == 0:
        save_config(cfg, out / "config.yaml")
        if verbose:
            print(f"dgnet: device {device}, amp {amp}, loader {backend}, output {out}")
            print(f"dgnet: {fast_paths(cfg, device)}")
    teacher = _teacher(cfg, ds, device, backend, mgr, ckpt, stage, amp, out, stop)
    models = {"teacher": teacher}
    if stage in ("all", "dgnet"):
        _stop_before(stop, device, mgr, "before DG-Net's training started")
        resumed = ckpt if ckpt is not None and ckpt["stage"] == "dgnet" else None
        models["dgnet"] = train_dgnet(cfg, ds, teacher, device, backend, mgr, resumed, amp, out, stop)
    if evaluate:
        _stop_before(stop, device, mgr, "after training, before the evaluation (--resume evaluates)")
    results = _evaluate(models, ds, cfg, device, backend, out) if evaluate else {}
    seconds = time.perf_counter() - t0
    if rank == 0 and verbose:
        print(f"dgnet: finished in {seconds / 60:.1f} min; outputs in {out}")
    return {"results": results, "output": str(out), "seconds": seconds}
