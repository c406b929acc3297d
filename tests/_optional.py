"""When a test that needs NVIDIA DALI or Triton may be skipped: only when the package is not installed.

requirements.txt pins both, yet a CPU-only machine may lack them. Any other import failure (a broken install, a
missing shared library, an ABI mismatch) is never a skip: :func:`import_error` reports it and the test that needs
the package runs and fails with it, and ``tests/test_environment.py`` names it. Under CI (environment variable
``CI`` set to ``true`` or ``1``) nothing is skipped for a missing package either: CI installed the pins, so a
missing one is a broken set-up.
"""

from __future__ import annotations

import importlib
import os

import pytest

# What tests import of each optional package (DALI's ops live in a submodule that can fail on its own).
MODULES = {"dali": ("nvidia.dali", "nvidia.dali.fn"), "triton": ("triton", "triton.language")}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def import_error(package: str) -> BaseException | None:
    """The exception importing ``package`` ("dali" or "triton") raises, or ``None`` when it imports."""
    for module in MODULES[package]:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - whatever a broken install raises is reported, not hidden
            return exc
    return None


def not_installed(package: str) -> bool:
    """True when ``package`` is simply absent: a ModuleNotFoundError for the package itself (``nvidia`` or
    ``nvidia.dali`` for DALI, ``triton`` for Triton), not for something it imports in turn."""
    exc = import_error(package)
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return False
    top = MODULES[package][0]
    return top == exc.name or top.startswith(exc.name + ".")


def skip_unless_installed(package: str) -> pytest.MarkDecorator:
    """``skipif`` the package is not installed, outside CI; a broken install runs the test (which then fails)."""
    skip = not_installed(package) and not in_ci()
    return pytest.mark.skipif(skip, reason=f"{package} is not installed (requirements.txt pins it; CI requires it)")
