"""``python -m dgnet.train``: stage 1 trains the teacher (the re-id baseline), stage 2 trains DG-Net.

With no arguments it runs the ``demo`` preset end to end: generates the synthetic set if absent,
trains both stages, evaluates the teacher and DG-Net with and without re-ranking, prints the table
and writes everything under ``outputs/demo/``::

    outputs/<run>/config.yaml          the resolved config (loadable with --config)
    outputs/<run>/metrics.jsonl        one line per logged iteration (losses, ramped weights, lrs, it/s)
    outputs/<run>/tb/                  TensorBoard events (the same scalars, plus image grids)
    outputs/<run>/images/*.png         fixed samples: real a, real b, reconstruction, cycle, swaps
    outputs/<run>/checkpoints/*.pt     full checkpoints (last K per stage) for --resume
    outputs/<run>/teacher.pt, dgnet.pt final weights (for --teacher, dgnet.test, dgnet.visualize)
    outputs/<run>/results.json, results.md   the evaluation table

``--iterations N`` caps both stages of this invocation at N. ``--resume`` continues from the newest
checkpoint in the output folder exactly where it stopped (models, optimisers, schedulers, grad
scaler, all RNG states, the data streams' positions; the ramps are a function of the iteration),
in the stage it stopped in.

Several processes (one per GPU, ``torchrun --nproc_per_node N -m dgnet.train ...``; see
``dgnet.distributed``): DistributedDataParallel, each rank reads a disjoint shard of every epoch, only
rank 0 logs, draws grids, writes checkpoints and evaluates; checkpoints hold every rank's RNG state, so a
resume on the same world size is exact; on another world size it works and says what is not exact.
The batch and learning-rate rule is documented at ``TrainConfig.sync_bn`` / ``scale_lr``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgnet.checkpoint import (
    CheckpointManager,
    arch_only,
    build_state,
    check_compatible,
    load_checkpoint,
    model_config_of,
    restore_state,
    save_atomic,
)
from dgnet.config import Config, resolve_config, save_config
from dgnet.distributed import CollectiveFailure
from dgnet.fileio import write_text_atomic
from dgnet.logging_utils import RunLogger

# ``model.backbone_weights: teacher`` starts Ea's trunk from the trained teacher's (stage 1) instead of ImageNet.
# The synthetic presets use it: without ImageNet weights, the teacher is the only pre-trained trunk there is,
# and Ea trained from scratch at the spec's trunk rate (0.002) stayed at chance level through the demo.
TEACHER_WEIGHTS = "teacher"


class NonFiniteLoss(RuntimeError):
    """A loss became NaN or inf: training stops, the last good checkpoint is kept and named."""


# --------------------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dgnet.train",
        description="Train the teacher (re-id baseline) and DG-Net, then evaluate both. "
        "No arguments: the demo preset on the embedded synthetic set.",
    )
    p.add_argument("--config", default="demo", help="a preset (demo, synthetic, market1501, dukemtmc, msmt17) "
                   "or a YAML file (default: demo)")
    p.add_argument("--data-root", help="dataset folder (data.root)")
    p.add_argument("--output", help="output folder (train.output; default outputs/<preset>)")
    p.add_argument(
        "--fused", action="store_true", default=None,
        help="fast paths: fused AdaIN kernels, batched AdaIN MLPs, fused optimisers, deferred BatchNorm counters",
    )
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), help="mixed precision (default auto: bf16 on "
                   "GPUs that support it, fp16 with gradient scaling on others, off on CPU)")
    p.add_argument("--loader", choices=("auto", "dali", "torch"), help="input pipeline (auto: DALI where it imports)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--iterations", type=int, help="cap both stages at N iterations (a smoke run)")
    p.add_argument("--teacher", help="a trained teacher (teacher.pt or any dgnet checkpoint): skips stage 1")
    p.add_argument("--resume", action="store_true", help="continue exactly from the newest checkpoint in --output")
    p.add_argument("--auto-resume", action="store_true", help="--resume when --output holds a checkpoint, else start "
                   "afresh: one command line for the first start and torchrun's restarts (--max-restarts)")
    p.add_argument("--backbone-weights", help="imagenet | none | teacher | PATH (model.backbone_weights; teacher: "
                   "Ea's trunk starts from the stage-1 teacher's)")
    p.add_argument("--skip-corrupt", action="store_true", default=None, help="skip unreadable images instead of "
                   "stopping")
    p.add_argument("--stage", choices=("all", "teacher", "dgnet"), default="all",
                   help="train both stages (default), only the teacher, or only DG-Net (needs a teacher)")
    p.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key, e.g. --set optim.gen_lr=2e-4 (repeatable)")
    return p


def args_to_overrides(args: argparse.Namespace) -> dict:
    """The flags as a nested override mapping (flags left out do not override)."""
    from dgnet.config import parse_set

    o: dict[str, dict[str, Any]] = parse_set(args.set)
    flags = {
        ("data", "root"): args.data_root,
        ("train", "output"): args.output,
        ("train", "fused"): args.fused,
        ("train", "amp"): args.amp,
        ("data", "loader"): args.loader,
        ("train", "device"): args.device,
        ("train", "max_iterations"): args.iterations,
        ("train", "teacher"): args.teacher,
        ("model", "backbone_weights"): args.backbone_weights,
        ("data", "skip_corrupt"): args.skip_corrupt,
    }
    for (section, key), value in flags.items():
        if value is not None:
            o.setdefault(section, {})[key] = value
    return o


# --------------------------------------------------------------------------------------------------------------------
# environment


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` unless torch.distributed is initialised."""
    from dgnet.distributed import world

    return world()


# A rank's own RNG seed offset: ranks draw different dropout masks and structure-branch coins, as they see
# different images (rank 0 keeps the single-process seed).
RANK_SEED_STRIDE = 1_000_003


def _seed_rank(seed: int) -> None:
    rank, size = dist_info()
    if size > 1:
        seed_everything(seed + rank * RANK_SEED_STRIDE)


def _scale_lrs(optimizers: dict[str, torch.optim.Optimizer], cfg: Config) -> None:
    """``train.scale_lr``: every learning rate x world size (before the schedulers capture them)."""
    _, size = dist_info()
    if cfg.train.scale_lr and size > 1:
        for opt in optimizers.values():
            for g in opt.param_groups:
                g["lr"] *= size


def _gather_rng() -> list[dict]:
    """Every rank's RNG state in rank order (a collective: every rank calls it)."""
    from dgnet.checkpoint import get_rng_state
    from dgnet.distributed import all_gather_objects

    return all_gather_objects(get_rng_state())


def _with_ranks(state: dict, rng_ranks: list[dict]) -> dict:
    state["world_size"] = len(rng_ranks)
    state["rng_ranks"] = rng_ranks
    return state


def _restore_dist(ckpt: dict, what: str, streams: dict | None, scale_lr: bool = False, **parts: Any) -> None:
    """``restore_state`` for this rank: exact on the saved world size (this rank's RNG state, the streams'
    positions); on another world size models, optimisers and schedulers are restored, the streams start
    the saved epoch afresh on the new shards and every rank reseeds, and rank 0 says so."""
    from dgnet.checkpoint import from_safe, set_rng_state

    rank, size = dist_info()
    saved = int(ckpt.get("world_size", 1))
    if saved == size:
        restore_state(ckpt, streams=None, **parts)
        for name, st in (streams or {}).items():
            # Rank 0 saved its streams; every rank has consumed as many batches of its own shard (the sampler
            # gives every rank the same number per epoch), so each continues at that position of its shard.
            state = from_safe(ckpt["streams"][name]) if name in ckpt.get("streams", {}) else None
            if state is None:
                raise ValueError(f"checkpoint has no streams[{name!r}] (holds {sorted(ckpt.get('streams', {}))})")
            st.load_state_dict({**state, "rank": rank})
        if size > 1 and "rng_ranks" in ckpt:
            set_rng_state(ckpt["rng_ranks"][rank])
        return
    restore_state(ckpt, streams=None, rng=False, **parts)
    for name, st in (streams or {}).items():
        epoch = int(from_safe(ckpt.get("streams", {}).get(name, {"epoch": 0}))["epoch"])
        st.load_state_dict({"epoch": epoch, "position": 0})
    seed_everything(int(ckpt["iteration"]) * 7919 + rank * RANK_SEED_STRIDE + 1)
    if rank == 0:
        print(f"dgnet: {what}: the checkpoint was written by {saved} process(es), this run has {size}: models, "
              "optimisers, schedulers and the ramps are restored, but the resume is not exact: the data shards, "
              "the position within the epoch (the saved epoch restarts) and the RNG streams differ"
              + ("; train.scale_lr: the learning rates stay those of the saved world size" if scale_lr else ""))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable cuda is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: dgnet runs on cpu or cuda devices")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def resolve_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """``(autocast dtype or None, GradScaler or None)`` for ``train.amp``.

    ``auto``: bf16 on GPUs that support it, fp16 (with gradient scaling) on older GPUs, off on CPU.
    """
    if mode == "auto":
        if device.type != "cuda":
            return None, None
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "off":
        return None, None
    if mode == "bf16":
        return torch.bfloat16, None
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or off")
        return torch.float16, torch.amp.GradScaler("cuda")
    raise ValueError(f"train.amp={mode!r}: expected auto, bf16, fp16 or off")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool) -> None:
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def prepare_dataset(cfg: Config, verbose: bool = True):
    """Generate the synthetic set if needed, read the layout, preflight the images, check identity counts.

    Sets ``cfg.model.num_ids`` from the data when it is 0 (the synthetic presets).
    """
    from dgnet.data import load_dataset

    root = Path(cfg.data.root)
    if cfg.data.dataset == "synthetic":
        from dgnet.data.synthetic import ensure_dataset

        ensure_dataset(root, verbose=verbose, ids=cfg.data.synthetic_ids, cams=cfg.data.synthetic_cams,
                       height=cfg.data.synthetic_height, width=cfg.data.synthetic_width, seed=cfg.data.synthetic_seed)
    elif not root.exists():
        raise FileNotFoundError(
            f"dataset folder {str(root)!r} (data.root, --data-root) does not exist; expected the "
            f"{cfg.data.dataset} layout there (no dataset is downloaded)"
        )
    ds = load_dataset(cfg.data.dataset, root, verbose=verbose)
    try:
        from dgnet.data.check import preflight
    except ImportError:
        preflight = None
    if preflight is not None:
        for split in ("train", "query", "gallery"):
            samples, skipped = preflight(getattr(ds, split), cfg.data.skip_corrupt)
            if skipped and verbose:
                print(f"dgnet: skipped {skipped} unreadable {split} images (--skip-corrupt)")
            setattr(ds, split, samples)
    if verbose:
        from dgnet.data import singleton_identities

        single = singleton_identities(ds.train)
        if single:
            print(f"dgnet: {len(single)} train identities with one image get no DG-Net pairs (the classifier keeps "
                  "their classes)")
    n = ds.num_train_pids
    if cfg.model.num_ids == 0:
        cfg.model.num_ids = n
    elif cfg.model.num_ids != n:
        raise ValueError(
            f"model.num_ids={cfg.model.num_ids} but {str(root)!r} ({cfg.data.dataset}) has {n} train identities; "
            f"set model.num_ids: {n} (or 0 to take it from the data)"
        )
    return ds


# --------------------------------------------------------------------------------------------------------------------
# shared loop pieces


def _check_finite(out: dict[str, Any], stage: str, iteration: int, mgr: CheckpointManager) -> None:
    bad = {k: v for k, v in out.items() if isinstance(v, float) and k.startswith("loss") and not math.isfinite(v)}
    if not bad:
        return
    last = mgr.latest()
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
    names = ", ".join(f"{k} = {v}" for k, v in bad.items())
    raise NonFiniteLoss(
        f"{stage}: non-finite loss at iteration {iteration + 1}: {names}; training stopped, {kept}. "
        "If fp16 overflowed, resume with --resume --amp bf16 (or off); lower learning rates or loss weights "
        "change the run's fingerprint, so they need a new run (another --output)."
    )


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


def _stream_kwargs(cfg: Config, device: torch.device, seed: int, batch_size: int) -> dict:
    rank, world = dist_info()
    return dict(batch_size=batch_size, size=(cfg.data.height, cfg.data.width), device=device, seed=seed,
                pad=cfg.data.pad, erasing_p=cfg.data.erasing_p, rank=rank, world_size=world,
                workers=cfg.data.workers)


def stage_iterations(cfg: Config, stage: str) -> int:
    """Iterations ``stage`` ("teacher" or "dgnet") trains for: its schedule, capped by ``--iterations``."""
    total = cfg.optim.teacher_iterations if stage == "teacher" else cfg.optim.iterations
    return min(total, cfg.train.max_iterations) if cfg.train.max_iterations else total


def _final_weights(path: Path, stage: str, iteration: int, cfg: Config, num_ids: int, models: dict) -> None:
    save_atomic(build_state(stage=stage, iteration=iteration, cfg=cfg, num_ids=num_ids, models=models), path)


# --------------------------------------------------------------------------------------------------------------------
# stage 1: the teacher


def train_teacher(cfg: Config, ds, device: torch.device, backend: str, mgr: CheckpointManager,
                  resume: dict | None, amp: tuple, out: Path) -> torch.nn.Module:
    """Train the re-id baseline (the teacher) for ``optim.teacher_iterations`` (capped); returns it in eval mode."""
    from dgnet import engine
    from dgnet.data import train_stream
    from dgnet.models import ReidBaseline

    rank, _ = dist_info()
    amp_dtype, scaler = amp
    total = stage_iterations(cfg, "teacher")
    seed_everything(cfg.train.seed)
    num_ids = cfg.model.num_ids
    scratch = resume is not None or cfg.model.backbone_weights == TEACHER_WEIGHTS  # the teacher itself starts anew
    teacher = ReidBaseline(arch_only(cfg.model) if scratch else cfg.model, num_ids).to(device)
    opt = engine.build_teacher_optimizer(teacher, cfg.optim)
    _scale_lrs({"teacher": opt}, cfg)
    sched = engine.build_teacher_scheduler(opt, cfg.optim)
    ddp = _ddp(teacher, device)
    stream = train_stream(ds.train, backend, mode="pk", augment=True,
                          **_stream_kwargs(cfg, device, cfg.train.seed, cfg.data.teacher_batch_size))
    start = 0
    _seed_rank(cfg.train.seed)
    if resume is not None:
        _restore_dist(resume, "teacher", {"train": stream}, models={"teacher": teacher}, optimizers={"teacher": opt},
                      schedulers={"teacher": sched}, scaler=scaler, scale_lr=cfg.train.scale_lr)
        start = resume["iteration"]
    log = RunLogger(out, "teacher", total, start=start, enabled=rank == 0)
    if start >= total:
        log.write(f"teacher: already trained ({start} iterations)")
    batches = iter(stream)

    def save(it: int) -> None:
        rngs = _gather_rng()
        if rank == 0:
            mgr.save(_with_ranks(build_state(stage="teacher", iteration=it, cfg=cfg, num_ids=num_ids,
                                             models={"teacher": teacher}, optimizers={"teacher": opt},
                                             schedulers={"teacher": sched}, scaler=scaler,
                                             streams={"train": stream}), rngs), "teacher", it)

    teacher.train()
    try:
        for it in range(start, total):
            sched_step(sched)
            batch = _next_batch(batches)
            o = engine.teacher_step(teacher, opt, batch, cfg, scaler, amp_dtype, ddp=ddp)
            _check_finite(o, "teacher", it, mgr)
            done = it + 1
            log.step(postfix={k: v for k, v in o.items() if k.startswith("loss")})
            if done % cfg.train.log_every == 0 or done == total:
                log.scalars(done, {**o, **_lrs({"teacher": opt}), "it_per_s": log.its_per_second(done)})
            if done % cfg.train.checkpoint_every == 0 or done == total:
                save(done)
    finally:
        log.close()
    if rank == 0 and total > 0:
        _final_weights(out / "teacher.pt", "teacher", max(start, total), cfg, num_ids, {"teacher": teacher})
    teacher.eval()
    return teacher


def _ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """The stage-1 teacher's DDP wrapper under torchrun (``None`` in a single process)."""
    _, size = dist_info()
    if size == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)


def sched_step(*schedulers: Any) -> None:
    """Step schedulers at the start of an iteration, as the reference does (spec: Optimisation)."""
    with warnings.catch_warnings():
        # torch warns when a scheduler steps before the first optimiser step; that order is the spec's.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        for s in schedulers:
            s.step()


def load_teacher(path: str | Path, num_ids: int, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """A frozen teacher from ``teacher.pt`` or any dgnet checkpoint holding one; checks the identity count."""
    ckpt = load_checkpoint(path)
    if "teacher" not in ckpt["models"]:
        raise ValueError(f"--teacher {str(path)!r}: the checkpoint holds no teacher (it has {sorted(ckpt['models'])})")
    if ckpt["num_ids"] != num_ids:
        raise ValueError(
            f"--teacher {str(path)!r} was trained on {ckpt['num_ids']} identities, but the dataset has {num_ids} "
            "train identities; train a teacher on this dataset (omit --teacher)"
        )
    return teacher_from(ckpt, num_ids, device), ckpt


def teacher_from(ckpt: dict, num_ids: int, device: torch.device) -> torch.nn.Module:
    """The frozen teacher a checkpoint holds, built from its own architecture record, in eval mode."""
    from dgnet.models import ReidBaseline

    teacher = ReidBaseline(model_config_of(ckpt, "teacher"), num_ids).to(device)
    teacher.load_state_dict(ckpt["models"]["teacher"])
    return teacher.eval()


# --------------------------------------------------------------------------------------------------------------------
# stage 2: DG-Net


def fixed_grid_batches(ds, cfg: Config, backend: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of fixed train images of different identities (a: ids 0..n-1, b: the next n), for the grids.

    Read through the test pipeline (no augmentation, no random state consumed), so grids at the
    same iteration of a resumed and an uninterrupted run show the same inputs.
    """
    from dgnet.data import test_stream

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
    samples = picks[:half] + picks[half : 2 * half]
    images = []
    for batch in test_stream(samples, backend, batch_size=len(samples), size=(cfg.data.height, cfg.data.width),
                             device=device, workers=0):
        images.append(batch["image"].clone())
    x = torch.cat(images)[: len(samples)]
    return x[:half], x[half : 2 * half]


@torch.no_grad()
def generate_rows(model: torch.nn.Module, xa: torch.Tensor, xb: torch.Tensor) -> list[torch.Tensor]:
    """Rows of a training grid: real a, real b, reconstruction of a, cycle of a, x_ab, x_ba.

    ``x_ab = G(s_a, f_b)``: structure of a, appearance of b. Runs with every module in eval mode.
    """
    from dgnet.models import eval_mode, gray

    with eval_mode(model):
        f_a, s_a, _, _ = model.encode(xa)
        f_b, s_b, _, _ = model.encode(xb)
        x_ab, x_ba = model.decode(s_a, f_b), model.decode(s_b, f_a)
        # cycle: structure of a back from x_ab, appearance of a back from x_ba
        cycle_a = model.decode(model.Es(gray(x_ab)), model.Ea(x_ba)[0])
        rows = [xa, xb, model.decode(s_a, f_a), cycle_a, x_ab, x_ba]
    return [r.float() for r in rows]


def train_dgnet(cfg: Config, ds, teacher: torch.nn.Module, device: torch.device, backend: str,
                mgr: CheckpointManager, resume: dict | None, amp: tuple, out: Path) -> torch.nn.Module:
    """Joint training (spec: Losses, Optimisation) for ``optim.iterations`` (capped); returns DGNet in eval mode."""
    from dgnet import engine
    from dgnet.data import train_stream
    from dgnet.models import DGNet

    rank, _ = dist_info()
    amp_dtype, scaler = amp
    total = stage_iterations(cfg, "dgnet")
    # Stage 2 seeds itself, so it is the same whether stage 1 ran in this process or was loaded.
    seed_everything(cfg.train.seed + 1)
    num_ids = cfg.model.num_ids
    from_teacher = cfg.model.backbone_weights == TEACHER_WEIGHTS
    model = DGNet(arch_only(cfg.model) if resume is not None or from_teacher else cfg.model, num_ids).to(device)
    if from_teacher and resume is None:
        try:
            model.Ea.backbone.load_state_dict(teacher.backbone.state_dict())
        except RuntimeError as exc:
            raise ValueError(f"model.backbone_weights=teacher: the teacher's trunk does not fit Ea's "
                             f"({cfg.model.backbone}): {exc}") from None
    _, size = dist_info()
    if size > 1 and cfg.train.sync_bn:
        from dgnet.distributed import convert_sync_batchnorm

        model.Ea = convert_sync_batchnorm(model.Ea, device).to(device)
    opts = engine.build_optimizers(model, cfg.optim)
    _scale_lrs(opts, cfg)
    scheds = engine.build_schedulers(opts, cfg.optim)
    ddp = engine.wrap_ddp(model, device) if size > 1 else None
    from dgnet.data import drop_singletons

    kw = _stream_kwargs(cfg, device, 0, cfg.data.batch_size)
    pairs, _ = drop_singletons(ds.train)  # an identity with one image has no positive to pair with
    streams = {
        "a": train_stream(pairs, backend, mode="pairs", augment=True, **{**kw, "seed": cfg.train.seed + 11}),
        "b": train_stream(pairs, backend, mode="pairs", augment=True, **{**kw, "seed": cfg.train.seed + 23}),
    }
    start = 0
    _seed_rank(cfg.train.seed + 1)
    if resume is not None:
        _restore_dist(resume, "dgnet", streams, models={"dgnet": model}, optimizers=opts, schedulers=scheds,
                      scaler=scaler, scale_lr=cfg.train.scale_lr)
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
        rngs = _gather_rng()
        if rank == 0:
            mgr.save(_with_ranks(build_state(stage="dgnet", iteration=it, cfg=cfg, num_ids=num_ids,
                                             models={"dgnet": model, "teacher": teacher}, optimizers=opts,
                                             schedulers=scheds, scaler=scaler, streams=streams, ramps=ramps),
                                 rngs), "dgnet", it)

    model.train()
    try:
        for it in range(start, total):
            sched_step(*scheds.values())
            batch_a, batch_b = _next_batch(it_a), _next_batch(it_b)
            o = engine.dgnet_step(model, teacher, opts, batch_a, batch_b, it, cfg, scaler=scaler, amp_dtype=amp_dtype,
                                  ddp=ddp)
            _check_finite(o, "dgnet", it, mgr)
            done = it + 1
            ramps = engine.ramp_weights(it, cfg.loss)
            log.step(postfix={k: o[k] for k in ("loss_gen_total", "loss_dis_total") if k in o})
            if done % cfg.train.log_every == 0 or done == total:
                # ``o`` already holds the ramped weights of this iteration (engine.dgnet_step reports them)
                log.scalars(done, {**o, **_lrs(opts), "it_per_s": log.its_per_second(done)})
            if rank == 0 and (done % cfg.train.image_every == 0 or done == total):
                with torch.random.fork_rng(devices=[]):  # grids never touch the training RNG streams
                    log.grid(done, generate_rows(model, grid_a, grid_b))
            if done % cfg.train.checkpoint_every == 0 or done == total:
                save(done, ramps)
    finally:
        log.close()
    if rank == 0 and total > 0:
        _final_weights(out / "dgnet.pt", "dgnet", max(start, total), cfg, num_ids,
                       {"dgnet": model, "teacher": teacher})
    model.eval()
    return model


# --------------------------------------------------------------------------------------------------------------------
# the whole run


def run(cfg: Config, resume: bool | str = False, stage: str = "all", evaluate: bool = True,
        verbose: bool = True) -> dict:
    """Train (and evaluate) per ``cfg``; returns ``{"results": {...}, "output": str, "seconds": float}``.

    ``resume="auto"``: resume when the output folder holds a checkpoint, else start afresh.
    Under torchrun (``WORLD_SIZE`` set) joins the process group first (``dgnet.distributed.init_from_env``)
    and leaves it at the end.
    """
    from dgnet.distributed import as_collective_failure, destroy, init_from_env

    joined = not torch.distributed.is_initialized()
    ctx = init_from_env(resolve_device(cfg.train.device))
    try:
        return _run(cfg, ctx.device, resume, stage, evaluate, verbose)
    except RuntimeError as exc:
        failure = as_collective_failure(exc, ctx.rank, str(Path(cfg.train.output) / "checkpoints"))
        if failure is None or ctx.world_size < 2:
            raise
        raise failure from exc
    finally:
        if joined:
            destroy()


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


def _run(cfg: Config, device: torch.device, resume: bool | str, stage: str, evaluate: bool, verbose: bool) -> dict:
    t0 = time.perf_counter()
    rank, size = dist_info()
    out = Path(cfg.train.output)
    amp = resolve_amp(cfg.train.amp, device)
    set_determinism(cfg.train.deterministic)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)

    from dgnet import ops

    # dgnet.ops says once, on the first AdaIN call, which path (fused kernel or reference) runs.
    ops.set_fused(cfg.train.fused)
    ops.set_fold_upsample(cfg.train.fold_upsample)

    from dgnet.data import resolve_backend

    backend = resolve_backend(cfg.data.loader, device)
    if size > 1 and rank != 0:
        torch.distributed.barrier()  # rank 0 generates the synthetic set (if absent) before anyone reads it
    ds = prepare_dataset(cfg, verbose=verbose and rank == 0)
    if size > 1 and rank == 0:
        torch.distributed.barrier()
    mgr = CheckpointManager(out / "checkpoints", keep=cfg.train.keep_checkpoints)

    latest = mgr.latest()
    if resume == "auto":
        resume = latest is not None
    ckpt = None
    if resume:
        if latest is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {mgr.folder}; start without --resume")
        ckpt = load_checkpoint(latest, map_location=device)
        check_compatible(ckpt, cfg, latest)
        if rank == 0:
            print(f"dgnet: resuming from {latest} (stage {ckpt['stage']}, iteration {ckpt['iteration']})")
    elif latest is not None:
        raise FileExistsError(
            f"{mgr.folder} already holds checkpoints (newest {latest.name}); pass --resume to continue that run, "
            "or choose another --output"
        )
    if rank == 0:
        save_config(cfg, out / "config.yaml")
        if verbose:
            print(f"dgnet: device {device}, amp {amp[0] or 'off'}, loader {backend}, output {out}")

    teacher = model = None
    resumed_stage = ckpt["stage"] if ckpt else None
    if resumed_stage == "dgnet" and not cfg.train.teacher:
        _check_teacher_finished(mgr, cfg)
    if resumed_stage == "dgnet":
        teacher = teacher_from(ckpt, cfg.model.num_ids, device)
    elif cfg.train.teacher:
        teacher, _ = load_teacher(cfg.train.teacher, cfg.model.num_ids, device)
    elif stage in ("all", "teacher"):
        teacher = train_teacher(cfg, ds, device, backend, mgr, ckpt if resumed_stage == "teacher" else None, amp, out)
    else:
        found = out / "teacher.pt"
        if not found.exists():
            raise FileNotFoundError(f"--stage dgnet needs a teacher: pass --teacher PATH (no {found})")
        teacher, _ = load_teacher(found, cfg.model.num_ids, device)
    for p in teacher.parameters():
        p.requires_grad_(False)

    if stage in ("all", "dgnet"):
        model = train_dgnet(cfg, ds, teacher, device, backend, mgr, ckpt if resumed_stage == "dgnet" else None,
                            amp, out)

    results: dict = {}
    if evaluate:
        from dgnet.test import evaluate_models, format_table

        # every rank embeds its share of query and gallery (collectives); rank 0 alone gets the metrics
        results = evaluate_models({"teacher": teacher, **({"dgnet": model} if model is not None else {})},
                                  ds, cfg, device, backend)
    if evaluate and rank == 0:
        table = format_table(results)
        write_text_atomic(out / "results.json", json.dumps(results, indent=2))
        write_text_atomic(out / "results.md", table + "\n")
        print(table)
    seconds = time.perf_counter() - t0
    if rank == 0 and verbose:
        print(f"dgnet: finished in {seconds / 60:.1f} min; outputs in {out}")
    return {"results": results, "output": str(out), "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args.config, args_to_overrides(args))
        run(cfg, resume="auto" if args.auto_resume else args.resume, stage=args.stage, evaluate=not args.no_eval)
    except (ValueError, FileNotFoundError, FileExistsError, NonFiniteLoss) as exc:
        print(f"dgnet.train: error: {exc}", file=sys.stderr)
        return 2
    except CollectiveFailure as exc:
        print(f"dgnet.train: error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
