"""Input pipeline throughput: DALI against the torch DataLoader, same files, transforms and batch size.

Both run the full training transform of the spec (decode, flip, bicubic resize to 256x128, edge pad 10 +
random crop, normalise, random erasing of the identity copies) on DG-Net pairs: every batch decodes
``2 * batch`` images (anchor + positive), and images/s counts them all. Files: a synthetic set at
Market-1501's own size (128x64 JPEGs), generated once per session. The stream is warmed up (workers or
pipeline started, first batches out) before timing, so start-up is not counted.

    .venv/bin/python -m pytest benchmarks/bench_loader.py -p no:cacheprovider -s       # CPU: DALI CPU vs DataLoader
    python3 -m pytest -m gpu benchmarks/bench_loader.py -p no:cacheprovider -s        # GPU: DALI mixed vs DataLoader
GPU target: DALI (nvJPEG, ``mixed``) >= 3x a DataLoader with one worker per core at 256x128 (the DG-Net
reference decodes with PIL in a DataLoader, as the torch backend here does).
"""

from __future__ import annotations

import os

import pytest
import torch
from machine import machine

from dgnet.data import load_dataset, train_stream
from dgnet.data import synthetic as syn

BACKENDS = ("torch", "dali")
CPU_BATCHES = (16,)
GPU_BATCHES = (8, 32, 64)
STEPS = {"cpu": 8, "cuda": 40}
_RESULTS: dict[tuple, float] = {}


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = syn.generate(tmp_path_factory.mktemp("bench") / "synthetic", ids=120, cams=6, height=128, width=64)
    return load_dataset("synthetic", root, verbose=False)


def run(dataset, device: str, backend: str, batch: int, benchmark) -> None:
    workers = os.cpu_count() or 1  # one DataLoader worker (or DALI thread) per core
    stream = train_stream(dataset.train, backend=backend, batch_size=batch, size=(256, 128), device=device,
                          seed=0, workers=workers)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):  # start workers / build the pipeline, fill the prefetch queues
        next(stream)
    sync()
    steps = STEPS[device]

    def take():
        for _ in range(steps):
            b = next(stream)
        b["image_erased"].sum().item()  # make sure the last batch really exists on the device
        sync()

    benchmark.pedantic(take, rounds=3, iterations=1, warmup_rounds=0)
    per_s = steps * 2 * batch / benchmark.stats.stats.median
    _RESULTS[(device, batch, backend)] = per_s
    benchmark.extra_info.update(machine(device))
    benchmark.extra_info.update({"backend": backend, "batch": batch, "images_per_batch": 2 * batch,
                                 "size": "256x128", "source": "128x64 JPEG", "workers": workers,
                                 "images_per_s": round(per_s, 1)})
    msg = f"\n[{device}] {backend:5s} batch {batch:3d}: {per_s:8.1f} images/s"
    other = "torch" if backend == "dali" else "dali"
    if (device, batch, other) in _RESULTS:  # whichever of the pair runs second reports the ratio
        ratio = _RESULTS[(device, batch, "dali")] / _RESULTS[(device, batch, "torch")]
        benchmark.extra_info["dali_over_torch"] = round(ratio, 2)
        msg += f"   DALI/torch = {ratio:.2f}x"
    print(msg)


@pytest.mark.parametrize("batch", CPU_BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_loader_cpu(dataset, backend, batch, benchmark):
    benchmark.group = f"loader cpu batch {batch}"
    run(dataset, "cpu", backend, batch, benchmark)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_loader_gpu(dataset, backend, batch, benchmark):
    benchmark.group = f"loader cuda batch {batch}"
    run(dataset, "cuda", backend, batch, benchmark)
