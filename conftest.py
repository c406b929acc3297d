"""Shared set-up of tests/ and benchmarks/ (pytest loads it for both from the repository root).

Without a GPU, Triton kernels run under its interpreter: TRITON_INTERPRET must be set before
any kernel module is imported, so it is set here, first. Tests marked ``gpu`` are skipped
when no CUDA device is visible; ``pytest -m gpu`` runs only those.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored after. Small tensors gain nothing from intra-op threads, and on a
    CPU that other jobs share OpenMP threads spin at barriers while another process holds a core (README,
    "Training speed"). A file opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
