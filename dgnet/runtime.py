"""The process's compute environment: device, mixed precision, seeding, determinism and CPU threads.

Every choice arrives as an argument (from the resolved config) and is applied once, at the start of a
command; nothing here is read back later from hidden state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from dgnet.config import AMP_CHOICES

# A rank's own RNG seed offset: ranks draw different dropout masks and structure-branch coins, as they see
# different images (rank 0 keeps the single-process seed).
RANK_SEED_STRIDE = 1_000_003


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


@dataclass(frozen=True)
class Amp:
    """Mixed precision for one run: the autocast dtype (``None``: float32) and, for fp16, the GradScaler."""

    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    def __str__(self) -> str:
        return "off" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def resolve_amp(mode: str, device: torch.device) -> Amp:
    """``train.amp`` on ``device``.

    ``auto``: bf16 on GPUs that support it, fp16 (with gradient scaling) on older GPUs, off on CPU.
    """
    if mode == "auto":
        if device.type != "cuda":
            return Amp(None, None)
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "off":
        return Amp(None, None)
    if mode == "bf16":
        return Amp(torch.bfloat16, None)
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or off")
        return Amp(torch.float16, torch.amp.GradScaler("cuda"))
    raise ValueError(f"train.amp={mode!r}: expected one of {AMP_CHOICES}")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch seeds every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_rank(seed: int, rank: int, world_size: int) -> None:
    """Under several processes, give rank ``rank`` its own stream (rank 0 keeps ``seed``'s)."""
    if world_size > 1:
        seed_everything(seed + rank * RANK_SEED_STRIDE)


def set_determinism(deterministic: bool) -> None:
    """Deterministic algorithms (and no cuDNN autotuning) when asked; autotuned cuDNN otherwise."""
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def set_threads(threads: int) -> None:
    """torch's CPU compute threads (``train.threads``; 0 leaves torch's default)."""
    if threads > 0:
        torch.set_num_threads(threads)
