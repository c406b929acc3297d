"""Multi-process training and testing with torch.distributed, launched by ``torchrun``.

One process per GPU (or per CPU process with gloo). ``torchrun`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``init_from_env`` reads them. Without ``WORLD_SIZE``
it returns a single-process context and initialises nothing, so every entry point runs unchanged under
plain ``python -m``.

Backends: NCCL for CUDA devices, gloo for CPU. Every collective has a timeout (``DGNET_DIST_TIMEOUT``
seconds, default ``DEFAULT_TIMEOUT_S``): a rank that dies or stalls makes the others fail with an error
naming the timeout instead of waiting forever, and torchrun then stops the job (or restarts it with
``--max-restarts``, and ``dgnet.train --resume`` continues from the last checkpoint).

``torch.nn.SyncBatchNorm`` only runs on accelerators; ``SyncBatchNormCPU`` is its plain-PyTorch twin for
gloo/CPU (the same statistics: mean and biased variance over every rank's batch, unbiased variance in the
running buffer), so the CPU tests can check parameter parity with SyncBatchNorm on.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

DEFAULT_TIMEOUT_S = 600.0  # 10 minutes: longer than any single step or checkpoint write of a real run
TIMEOUT_ENV = "DGNET_DIST_TIMEOUT"


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (global), ``local_rank`` on its node, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, writes checkpoints and evaluates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set; launch with torchrun (it sets RANK, "
                             "WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: expected an integer") from None


def timeout_seconds() -> float:
    """The collective timeout: ``$DGNET_DIST_TIMEOUT`` seconds, else ``DEFAULT_TIMEOUT_S``."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


class CollectiveFailure(RuntimeError):
    """A collective with the other ranks failed: a peer crashed, was killed or stalled past the timeout."""


# What gloo and NCCL say when a peer is gone or silent (they raise plain RuntimeErrors or DistBackendError).
_PEER_FAILURE_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out",
                       "NCCL", "gloo", "ProcessGroup", "Broken pipe")


def as_collective_failure(exc: BaseException, rank: int, checkpoints: str) -> CollectiveFailure | None:
    """``exc`` reworded for the user when it is a failed collective (else None): which rank saw it, the likely
    causes, the timeout in force, and that the last checkpoint is intact and ``--auto-resume`` continues."""
    is_dist = isinstance(exc, getattr(dist, "DistError", ())) or (
        isinstance(exc, RuntimeError) and any(s in str(exc) for s in _PEER_FAILURE_SIGNS))
    if not is_dist:
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CollectiveFailure(
        f"rank {rank}: a collective with the other ranks failed: another rank most likely crashed or was killed "
        f"(see its log), or stalled longer than the {timeout_seconds():g} s collective timeout ({TIMEOUT_ENV}). "
        f"The last checkpoint under {checkpoints} is intact: relaunch with --auto-resume (torchrun "
        f"--max-restarts does it) to continue from it. The backend said: {first}"
    )


def init_from_env(device: torch.device | str = "cpu", timeout_s: float | None = None) -> DistContext:
    """Join the process group torchrun describes in the environment; single-process when it describes none.

    Args:
        device: the device the command line asked for (``cpu`` or ``cuda``/``cuda:N``); under torchrun a CUDA
            request becomes ``cuda:LOCAL_RANK`` (one process per GPU) and is made the current device.
        timeout_s: collective timeout (default ``timeout_seconds()``).
    Returns:
        a ``DistContext``. With ``WORLD_SIZE`` unset (or 1) nothing is initialised.
    """
    device = torch.device(device)
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") == 1:
        return DistContext(0, 1, 0, device)
    world = _env_int("WORLD_SIZE")
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank}: expected 0 <= RANK < WORLD_SIZE={world}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set; launch with torchrun")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device}: no CUDA device is visible to rank {rank}; use --device cpu (gloo)")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPUs; "
                             "use --nproc_per_node <= the GPU count")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    timeout = datetime.timedelta(seconds=timeout_s if timeout_s is not None else timeout_seconds())
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    return DistContext(rank, world, local_rank, device)


def destroy() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` unless torch.distributed is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_varlen(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0, in rank order; ranks may hold different row counts.

    ``t``: ``(n_rank, *rest)`` with the same ``rest`` and dtype on every rank, on this rank's device
    (CUDA under NCCL). Returns ``(sum n_rank, *rest)`` on every rank; ``t`` itself when not distributed.
    """
    rank, size = world()
    if size == 1:
        return t
    n = torch.tensor([t.shape[0]], device=t.device, dtype=torch.int64)
    counts = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(counts, n)
    counts_i = [int(c.item()) for c in counts]
    longest = max(counts_i)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts_i, strict=True)])


def all_gather_objects(obj: object) -> list:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` when not distributed)."""
    _, size = world()
    if size == 1:
        return [obj]
    out: list = [None] * size
    dist.all_gather_object(out, obj)
    return out


def broadcast_state(module: nn.Module, src: int = 0) -> None:
    """Overwrite every rank's parameters and buffers of ``module`` with rank ``src``'s, in place.

    DDP keeps parameters equal, but without ``train.sync_bn`` each rank's BatchNorm running statistics are its
    own (rank 0's are the ones saved). Work split across ranks in eval mode needs one model: this one.
    Tensors stay on their devices (CUDA under NCCL); a no-op when not distributed.
    """
    if world()[1] == 1:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


# ------------------------------------------------------------------------------------------- SyncBatchNorm
class SyncBatchNormCPU(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span every rank's batch: ``torch.nn.SyncBatchNorm`` for gloo/CPU.

    Input ``(N, C, *)`` float (statistics in float32 for 16-bit inputs, else in the input's dtype). In
    training mode (and whenever batch statistics are used) the per-channel mean and biased variance come from
    all ranks via differentiable all-reduces (two passes: mean, then
    centred squares, for the same accuracy as a single-process BatchNorm); gradients flow back across
    ranks like ``SyncBatchNorm``'s. Outside a process group, or in eval mode, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNormCPU: expected at least 2-D input (N, C, *), got {tuple(input.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        use_batch = self.training or self.running_mean is None
        if not (use_batch and self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # float64 keeps its precision
        count = all_reduce(torch.tensor([float(x.numel() // x.shape[1])], dtype=xf.dtype))
        mean = all_reduce(xf.sum(dims)) / count
        centred = xf - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / count
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                # New tensors, not in-place updates: an eval-mode call earlier in the same graph (the frozen
                # Ea copy) saved the old running statistics for its backward.
                unbiased = var.detach() * (count / (count - 1).clamp(min=1))
                rm, rv = self.running_mean, self.running_var
                self.running_mean = rm * (1 - factor) + mean.detach().to(rm.dtype) * factor
                self.running_var = rv * (1 - factor) + unbiased.to(rv.dtype) * factor
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in ``module`` as a synchronised one: ``torch.nn.SyncBatchNorm`` on accelerators,
    ``SyncBatchNormCPU`` on CPU. Weights, buffers and state-dict keys are kept (checkpoints stay loadable)."""
    if torch.device(device).type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_cpu_sync(module)


def _to_cpu_sync(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNormCPU):
        like = next(iter(module.parameters()), module.running_mean)  # keep the module's dtype (float64 too)
        factory = {} if like is None else {"device": like.device, "dtype": like.dtype}
        new = SyncBatchNormCPU(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, **factory)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        return new
    for name, child in module.named_children():
        module.add_module(name, _to_cpu_sync(child))
    return module


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistContext",
    "SyncBatchNormCPU",
    "all_gather_objects",
    "all_gather_varlen",
    "convert_sync_batchnorm",
    "destroy",
    "init_from_env",
    "timeout_seconds",
    "CollectiveFailure",
    "as_collective_failure",
    "world",
]
