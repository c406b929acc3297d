"""What every benchmark records beside its figures: the machine and the versions that produced them."""

from __future__ import annotations

import importlib
import os
import platform

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except ImportError:
        return None


def machine(device: str = "cpu") -> dict:
    """CPU (name, cores, torch threads), the GPU when ``device`` is CUDA, and package versions."""
    info = {
        "cpu": f"{cpu_name()} ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "triton": _version("triton"),
        "dali": _version("nvidia.dali"),
    }
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info
