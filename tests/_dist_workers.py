"""Process bodies for tests/test_distributed.py: each runs in its own spawned process on 127.0.0.1 with gloo.

Kept out of the test module so spawned children import only this file (and dgnet), not pytest's test module.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import time
import traceback
from pathlib import Path

import torch

from dgnet.config import Config

SMALL = (32, 16)  # the smallest image size every DG-Net module accepts
IDS = 5
PER_RANK = 2  # per-rank batch of each stream; the 1-process reference gets world x this


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



def spawn_ranks(target, out: Path, *args, world: int = 2, timeout: float = 110.0) -> list[int]:
    """Run ``target(rank, world, port, out, *args)`` in ``world`` spawned processes; their exit codes. A rank still
    running after ``timeout`` seconds is killed and the call fails as a hang, with the ranks' error files."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, world, port, out, *args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    errors = "\n".join(f.read_text() for f in sorted(out.glob("error_*.txt")))
    assert not alive, f"ranks still running after {timeout} s (a hang){errors and ': ' + errors}"
    return [p.exitcode for p in procs]

def join_env(rank: int, world: int, port: int, timeout_s: float | None = None) -> None:
    """What torchrun would export for this process."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    if timeout_s is not None:
        os.environ["DGNET_DIST_TIMEOUT"] = str(timeout_s)
    torch.set_num_threads(1)


def _guard(fn, rank: int, out: Path, *args) -> None:
    """Run ``fn``; on an exception write its traceback to ``out/error_<rank>.txt`` (the parent reports it)."""
    try:
        fn(rank, *args)
    except BaseException:
        (out / f"error_{rank}.txt").write_text(traceback.format_exc())
        raise


# ------------------------------------------------------------------------------------------- parity
def parity_config() -> Config:
    """A tiny DG-Net whose only differences between 1 and 2 processes are the gradient sum and the BN statistics:
    dropout 0 and the live structure branch always (no per-rank random draws), and the frozen teacher on running
    statistics (the teacher is never synchronised, so batch statistics would differ per rank by construction)."""
    cfg = Config()
    cfg.model.backbone = "resnet18"
    cfg.model.backbone_weights = "none"
    cfg.model.dropout_primary = 0.0
    cfg.model.dropout_fine = 0.0
    cfg.model.bn_train_on_generated = False
    cfg.loss.structure_live_p = 1.0
    cfg.loss.warm_iter = 0  # iteration 0: every ramped term off (unused parameters); from 1 on: all on
    cfg.loss.warm_step = 0.5
    cfg.train.sync_bn = True
    return cfg


def global_batch(step: int, stream: int, world: int) -> dict:
    """The combined batch of every rank at ``step``: rank r holds rows ``[r * PER_RANK, (r + 1) * PER_RANK)``."""
    g = torch.Generator().manual_seed(1000 * step + stream)
    n = PER_RANK * world
    out = {k: torch.randn(n, 3, *SMALL, generator=g) for k in ("image", "positive", "image_erased", "positive_erased")}
    out["pid"] = torch.randint(0, IDS, (n,), generator=g)
    return out


def parity_run(rank: int, world: int, steps: int, ref_world: int, device: torch.device | None = None,
               dtype: torch.dtype = torch.float32, start: int = 0) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """``steps`` DG-Net iterations from the seeded initial weights, numbered from ``start`` (which picks the ramps
    and the batches), on this rank's rows of the combined batches of ``ref_world`` ranks (all of them when
    ``world`` is 1), models and data in ``dtype``; returns the model's state dict (parameters and BatchNorm
    buffers) and each iteration's losses."""
    from dgnet.models import DGNet, ReidBaseline
    from dgnet.training.optim import build_optimizers
    from dgnet.training.step import dgnet_step, wrap_ddp

    device = device or torch.device("cpu")
    cfg = parity_config()
    torch.manual_seed(0)
    model = DGNet(cfg.model, IDS)
    torch.manual_seed(1)
    teacher = ReidBaseline(cfg.model, IDS).requires_grad_(False).to(device, dtype)
    model = model.to(device, dtype)
    teacher.eval()
    ddp = None
    if world > 1:
        from dgnet.distributed import convert_sync_batchnorm

        model.Ea = convert_sync_batchnorm(model.Ea, device)
    opts = build_optimizers(model, cfg.optim)
    # SGD for G, Es and D instead of Adam: an update linear in the gradient. Adam's first steps move every
    # element by about lr whatever its gradient's size, so the float32 noise of exactly-zero gradients (conv
    # biases before InstanceNorm) would become updates as large as the real ones and hide the comparison.
    for name in ("gen", "dis"):
        params = [p for g in opts[name].param_groups for p in g["params"]]
        opts[name] = torch.optim.SGD(params, lr=1e-3)
    if world > 1:
        ddp = wrap_ddp(model, device)
    rows = slice(0, PER_RANK * ref_world) if world == 1 else slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    losses = []
    for it in range(start, start + steps):
        a, b = (global_batch(it, s, ref_world) for s in (0, 1))
        a, b = ({k: v[rows].to(device, dtype if v.is_floating_point() else None) for k, v in x.items()}
                for x in (a, b))
        o = dgnet_step(model, teacher, opts, a, b, it, cfg, ddp=ddp)
        losses.append({k: v for k, v in o.items() if k.startswith("loss")})
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, losses


def parity_worker(rank: int, world: int, port: int, out: Path, starts: list[int], device: str = "cpu",
                  dtype: torch.dtype = torch.float32) -> None:
    """One iteration from the initial weights for each iteration number in ``starts``; each result to
    ``out/state_<rank>_<start>.pt``."""

    def body(rank: int) -> None:
        from dgnet.distributed import destroy, init_from_env

        join_env(rank, world, port, timeout_s=120)
        ctx = init_from_env(device)  # cuda -> cuda:LOCAL_RANK with NCCL
        try:
            for start in starts:
                state, losses = parity_run(rank, world, 1, world, ctx.device, dtype, start)
                torch.save({"state": state, "losses": losses}, out / f"state_{rank}_{start}.pt")
        finally:
            destroy()

    _guard(body, rank, out)


# ------------------------------------------------------------------------------------ shards, gather
def shards_worker(rank: int, world: int, port: int, out: Path, n_samples: int) -> None:
    """This rank's sample indices for two epochs of the pairs sampler and of the P x K sampler, plus an uneven
    all-gather; written to ``out/shards_<rank>.pt``."""

    def body(rank: int) -> None:
        from dgnet.data.sampler import TrainSampler
        from dgnet.distributed import all_gather_varlen, destroy, init_from_env

        join_env(rank, world, port, timeout_s=60)
        init_from_env("cpu")
        try:
            pids = [i // 4 for i in range(n_samples)]  # 4 images per identity
            result: dict = {}
            for mode in ("pairs", "pk"):
                s = TrainSampler(pids, 2 if mode == "pairs" else 8, mode, 4, 7, rank, world)
                result[mode] = [s.epoch_indices(e) for e in range(2)]
            mine = torch.arange(3 + 2 * rank, dtype=torch.float32).unsqueeze(1).repeat(1, 3) + 100 * rank
            result["gathered"] = all_gather_varlen(mine)
            torch.save(result, out / f"shards_{rank}.pt")
        finally:
            destroy()

    _guard(body, rank, out)


def broadcast_worker(rank: int, world: int, port: int, out: Path) -> None:
    """A module whose parameters and buffers hold this rank's number; after ``broadcast_state`` every rank's
    copy, written to ``out/state_<rank>.pt``, must be rank 0's."""

    def body(rank: int) -> None:
        from dgnet.distributed import broadcast_state, destroy, init_from_env

        join_env(rank, world, port, timeout_s=60)
        init_from_env("cpu")
        try:
            m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
            with torch.no_grad():
                for t in m.state_dict().values():
                    t.fill_(10 + rank)
            broadcast_state(m)
            torch.save(m.state_dict(), out / f"state_{rank}.pt")
        finally:
            destroy()

    _guard(body, rank, out)


# --------------------------------------------------------------------------------------------- failure
def dying_worker(rank: int, world: int, port: int, out: Path, stall_s: float = 0.0) -> None:
    """Rank 1 dies after joining, or, with ``stall_s``, stays alive but silent (the case only a timeout catches)
    until rank 0 has recorded its error, and at most ``stall_s`` seconds. It then exits with status 3 when rank 0
    gave up while it was still alive, 4 when it stopped waiting first. Rank 0 runs a collective and records the
    error it gets."""
    from dgnet.distributed import init_from_env

    join_env(rank, world, port, timeout_s=10 if stall_s == 0 else 3)
    init_from_env("cpu")
    if rank == 1:
        deadline = time.monotonic() + stall_s
        while stall_s and not (out / "rank0.txt").exists():
            if time.monotonic() > deadline:
                os._exit(4)
            time.sleep(0.05)
        os._exit(3)  # a crash: no cleanup, no goodbye to the group
    t0 = time.perf_counter()
    try:
        x = torch.ones(4)
        for _ in range(5):
            torch.distributed.all_reduce(x)
            time.sleep(0.2)
        (out / "rank0.txt").write_text(f"no error after {time.perf_counter() - t0:.1f} s")
    except Exception as exc:  # noqa: BLE001 - the test reads what the surviving rank saw
        (out / "rank0.txt").write_text(f"{type(exc).__name__} after {time.perf_counter() - t0:.1f} s: {exc}")


# ---------------------------------------------------------------------------------------- train / test CLI
def cli_worker(rank: int, world: int, port: int, out: Path, module: str, argv: list[str]) -> None:
    """``python -m dgnet.<module> argv`` as rank ``rank`` of ``world`` (torchrun's environment); exit status to
    ``out/rc_<rank>.txt``."""

    def body(rank: int) -> None:
        import importlib

        join_env(rank, world, port, timeout_s=120)
        rc = importlib.import_module(f"dgnet.{module}").main(argv)
        (out / f"rc_{rank}.txt").write_text(str(rc))

    _guard(body, rank, out)


def dying_train_worker(rank: int, world: int, port: int, out: Path, argv: list[str], die_at: int) -> None:
    """``dgnet.train argv`` where rank 1 crashes at the start of DG-Net iteration ``die_at`` (0-based)."""

    def body(rank: int) -> None:
        from dgnet import train
        from dgnet.training import loop

        join_env(rank, world, port, timeout_s=120)
        step = loop.dgnet_step

        def dying_step(*args, **kwargs):
            if rank == 1 and args[5] == die_at:
                os._exit(5)
            return step(*args, **kwargs)

        loop.dgnet_step = dying_step
        t0 = time.perf_counter()
        try:
            with (out / f"stderr_{rank}.txt").open("w") as err, contextlib.redirect_stderr(err):
                rc = train.main(argv)
        finally:
            (out / f"seconds_{rank}.txt").write_text(f"{time.perf_counter() - t0:.1f}")
        (out / f"rc_{rank}.txt").write_text(str(rc))

    _guard(body, rank, out)


def signalled_train_worker(rank: int, world: int, port: int, out: Path, argv: list[str], signalled: int,
                           call: int) -> None:
    """``dgnet.train argv`` where only rank ``signalled`` sends itself SIGTERM at its ``call``-th teacher step;
    exit status to ``out/rc_<rank>.txt``, stderr to ``out/stderr_<rank>.txt``."""

    def body(rank: int) -> None:
        import signal

        from dgnet import train
        from dgnet.training import loop

        join_env(rank, world, port, timeout_s=120)
        step, calls = loop.teacher_step, []

        def signalled_step(*args, **kwargs):
            calls.append(1)
            if rank == signalled and len(calls) == call:
                os.kill(os.getpid(), signal.SIGTERM)
            return step(*args, **kwargs)

        loop.teacher_step = signalled_step
        with (out / f"stderr_{rank}.txt").open("w") as err, contextlib.redirect_stderr(err):
            rc = train.main(argv)
        (out / f"rc_{rank}.txt").write_text(str(rc))

    _guard(body, rank, out)
