"""The compiled extension loads and registers every operator the schema file declares."""

import re
from pathlib import Path

import torch

import dgnet.ops  # noqa: F401  (registers torch.ops.dgnet.*)
from dgnet.ops import _lib

SCHEMAS = Path(__file__).resolve().parents[1] / "csrc" / "ops.cpp"


def declared_ops() -> list[str]:
    return re.findall(r'm\.def\(\s*"(\w+)\(', SCHEMAS.read_text())


def test_extension_imports():
    assert _lib.extension_available()


def test_every_declared_op_has_a_cpu_kernel():
    ops = declared_ops()
    assert ops, "no schema found in csrc/ops.cpp"
    missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"dgnet::{op}", "CPU")]
    assert not missing, f"declared in csrc/ops.cpp without a CPU kernel: {missing}"
