"""The optional packages tests rely on import, or are simply absent: never a silent skip over a broken install.

tests/_optional.py decides the skips; these tests fail the run, naming the error, when DALI or Triton is installed
but does not import (or, under CI, is missing), where the tests that need them would otherwise skip or fall back.
"""

from __future__ import annotations

import importlib

import _optional
import pytest

from dgnet.data import dali_status

# The module, not the function dgnet.ops.adain that shadows it as an attribute of dgnet.ops.
adain_module = importlib.import_module("dgnet.ops.adain")


@pytest.mark.parametrize("package", ["dali", "triton"])
def test_optional_package_imports_or_is_absent(package):
    exc = _optional.import_error(package)
    if exc is None:
        ok, why = dali_status() if package == "dali" else (adain_module._triton_kernels is not None,
                                                           adain_module._TRITON_ERROR)
        assert ok, f"{package} imports, but dgnet cannot use it: {why}"
        return
    if _optional.not_installed(package) and not _optional.in_ci():
        pytest.skip(f"{package} is not installed")
    where = "CI=true and requirements.txt pins it" if _optional.not_installed(package) else "it is installed"
    raise AssertionError(f"{package} does not import ({where}): {type(exc).__name__}: {exc}") from exc


@pytest.mark.parametrize(
    "exc,skip",
    [
        (ModuleNotFoundError("No module named 'nvidia'", name="nvidia"), True),
        (ModuleNotFoundError("No module named 'nvidia.dali'", name="nvidia.dali"), True),
        # DALI present, one of its own dependencies missing: broken, not absent
        (ModuleNotFoundError("No module named 'astunparse'", name="astunparse"), False),
        (ImportError("libcudart.so.13: cannot open shared object file"), False),
        (OSError("undefined symbol: _ZN3c10"), False),
    ],
)
def test_only_an_absent_package_is_a_skip(monkeypatch, exc, skip):
    def fail(module):
        raise exc

    monkeypatch.setattr(_optional.importlib, "import_module", fail)
    monkeypatch.delenv("CI", raising=False)
    assert _optional.not_installed("dali") is skip
    assert _optional.skip_unless_installed("dali").args == (skip,)
    monkeypatch.setenv("CI", "true")
    assert _optional.skip_unless_installed("dali").args == (False,)  # CI installed the pins: never a skip
