"""Training iterations per second and peak memory of one full DG-Net iteration (``dgnet.training.step.dgnet_step``).

- CPU, the demo preset's size (ResNet-18, 64x32, batch 4 per stream), each variant with its ratio to the first,
  the baseline, ``plain`` on every core (the demo's ``train.threads=0``): ``--fused`` and ``--fused --compile`` on
  the same cores, and ``plain`` on one thread (the old demo default) for reference. Median of 9 iterations after 2
  warm-up ones, for every variant.
- GPU (marked ``gpu``): the spec's size (ResNet-50, 256x128, batch 8 per stream), fp32 and bf16 autocast,
  plain vs fused (the upsample fold off, as ``train.fold_upsample=auto`` runs it on CUDA) vs fused-fold vs
  compiled (``--fused --compile``: CUDA graphs).
- ``test_main_job`` (only with ``DGNET_BENCH_MAIN_JOB=1``; about 10 minutes on 2 cores): the README's first
  command, ``python -m dgnet.train --fused``, end to end, once.
Every ramped term is active (warm-up at 0), so the iteration costs what a post-warm-up one costs.

Run: ``.venv/bin/python -m pytest benchmarks/bench_train_step.py -p no:cacheprovider -s`` (CPU: a few minutes,
most of it the compiled variant's first iteration), and ``... -m gpu`` on a CUDA machine
(``scripts/gpu_check.sh train-step``). Each figure carries the machine, versions, sizes and threads in
``extra_info``; each variant's ratio to the first is printed once the first of that configuration ran.
Check the load first (``cat /proc/loadavg``): a figure from a loaded machine is not evidence.
``benchmarks/profile_step.py`` splits an iteration into host and device time and names the top operators.
The figures measured so far, with their machines and loads, are in docs/training-speed.md.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import pytest
import torch
from machine import cpu_name

import dgnet
from dgnet.config import Config
from dgnet.models import DGNet, ReidBaseline
from dgnet.profiling import host_op_count
from dgnet.training.optim import build_optimizers
from dgnet.training.step import compile_models, dgnet_step

IDS = 16
_MEDIANS: dict[tuple, dict[str, float]] = {}
ALL_THREADS = torch.get_num_threads()  # torch's default: one per core
# variant: (fused, fold_upsample, compiled). plain: the reference path; fused: --fused as training runs it (the
# upsample fold on CPU only, train.fold_upsample auto); fused-fold: --fused with the fold forced on, to measure the
# fold on a GPU; fused-nofold: the fold off, what CUDA runs by default (for profile_step on a CPU); compiled:
# --fused --compile.
VARIANTS = {
    "plain": (False, "auto", False),
    "fused": (True, "auto", False),
    "fused-fold": (True, "on", False),
    "fused-nofold": (True, "off", False),
    "compiled": (True, "auto", True),
}


def _cfg(backbone: str, h: int, w: int, b: int) -> Config:
    cfg = Config()
    cfg.model.backbone = backbone
    cfg.model.backbone_weights = "none"
    cfg.data.height, cfg.data.width, cfg.data.batch_size = h, w, b
    cfg.loss.warm_iter = 0
    cfg.loss.warm_step = 1.0  # every term at its cap from iteration 1
    return cfg


def _batch(b: int, h: int, w: int, device: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {k: torch.randn(b, 3, h, w, generator=g) for k in ("image", "positive", "image_erased", "positive_erased")}
    out["pid"] = torch.randint(0, IDS, (b,), generator=g)
    return {k: v.to(device) for k, v in out.items()}


def make_step(backbone: str, h: int, w: int, b: int, device: str, amp_dtype, variant: str = "plain"):
    """Seeded models, optimisers and two batches at this size, with ``VARIANTS[variant]``'s fast paths; returns
    ``step(i)``, one synchronised iteration."""
    fused, fold, compiled = VARIANTS[variant]
    torch.manual_seed(0)
    cfg = _cfg(backbone, h, w, b)
    model = DGNet(cfg.model, IDS, fused=fused, fold_upsample=fold).to(device)
    teacher = ReidBaseline(cfg.model, IDS).to(device)
    if compiled:
        torch._dynamo.reset()
        compile_models(model, torch.device(device))
    opts = build_optimizers(model, cfg.optim)
    batches = [(_batch(b, h, w, device, 2 * i), _batch(b, h, w, device, 2 * i + 1)) for i in range(2)]

    def step(i: int) -> None:
        a, bb = batches[i % 2]
        dgnet_step(model, teacher, opts, a, bb, i + 1, cfg, amp_dtype=amp_dtype)  # returns floats
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def _run(benchmark, backbone, h, w, b, device, variant, amp_dtype, rounds, name=None):
    """Time ``variant``'s iteration; ``name`` (default ``variant``) labels it, the first name of a configuration
    being the one the others are compared with."""
    name = name or variant
    step = make_step(backbone, h, w, b, device, amp_dtype, variant)
    it = iter(range(1, 1_000_000))
    t0 = time.perf_counter()
    step(0)  # warm-up: allocator, cudnn/mkldnn algorithm choice, Triton compilation, torch.compile
    step(next(it))  # the compiled variant records its CUDA graphs on a second call
    first = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(lambda: step(next(it)), rounds=rounds, iterations=1, warmup_rounds=0)
    calls = host_op_count(lambda: step(next(it)))  # ~ kernel launches on a GPU, where the step is host-bound
    median = benchmark.stats.stats.median
    info = benchmark.extra_info
    info.update(
        machine=torch.cuda.get_device_name()
        if device == "cuda"
        else f"{cpu_name()} ({torch.get_num_threads()} threads)",
        load_at_start=" ".join(f"{x:.2f}" for x in os.getloadavg()),
        torch=torch.__version__,
        dgnet=dgnet.__version__,
        backbone=backbone,
        image=f"{h}x{w}",
        batch_per_stream=b,
        amp=str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        variant=name,
        threads=torch.get_num_threads(),
        iterations_per_s=1.0 / median,
        operator_calls=calls,
        first_two_iterations_s=first,
    )
    if device == "cuda":
        info["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:  # process-wide high-water mark (ru_maxrss is KiB on Linux): an upper bound for this configuration
        info["process_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    key = (backbone, h, w, b, device, str(amp_dtype))
    got = _MEDIANS.setdefault(key, {})
    got[name] = median
    base = next(iter(got))
    print(f"\n{key}: {name} {median:.3f} s/iteration ({1 / median:.3f} it/s), {calls} operator calls, "
          f"first two iterations {first:.1f} s")
    if name != base:
        info[f"speedup_vs_{base}"] = got[base] / median
        print(f"{key}: {name}/{base} time ratio {median / got[base]:.3f} (speed-up {got[base] / median:.2f}x)")


@pytest.fixture
def threads(request):
    """Run the test with ``request.param`` CPU threads (0: every core), then restore the count."""
    n = torch.get_num_threads()
    torch.set_num_threads(request.param or ALL_THREADS)
    yield torch.get_num_threads()
    torch.set_num_threads(n)


# In this order, so the ratios are to the first, the baseline: plain on the same threads as the fast paths.
CPU_VARIANTS = [("plain", "plain", 0), ("fused", "fused", 0), ("compiled", "compiled", 0),
                ("plain-1thread", "plain", 1)]


@pytest.mark.parametrize(("name", "variant", "threads"), CPU_VARIANTS, ids=[v[0] for v in CPU_VARIANTS],
                         indirect=["threads"])
def test_train_step_cpu_demo(benchmark, name, variant, threads):
    _run(benchmark, "resnet18", 64, 32, 4, "cpu", variant, None, rounds=9, name=name)


@pytest.mark.skipif(os.environ.get("DGNET_BENCH_MAIN_JOB") != "1", reason="set DGNET_BENCH_MAIN_JOB=1: ~10 min")
def test_main_job(benchmark, tmp_path):
    """The README's first command after set-up, ``python -m dgnet.train --fused``, end to end (teacher, DG-Net,
    evaluation) in a fresh output folder; the data folder is the default one (generated on first use)."""
    cmd = [sys.executable, "-m", "dgnet.train", "--fused", "--output", str(tmp_path / "demo")]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    benchmark.pedantic(lambda: subprocess.run(cmd, check=True, capture_output=True), rounds=1, iterations=1)
    minutes = benchmark.stats.stats.mean / 60
    benchmark.extra_info.update(machine=f"{cpu_name()} ({os.cpu_count()} CPUs)", load_at_start=load,
                                command="python -m dgnet.train --fused", minutes=minutes)
    print(f"\nmain job: {minutes:.1f} min on {cpu_name()}, load at start {load}")


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["plain", "fused", "fused-fold", "compiled"])  # fused: fold off on CUDA
def test_train_step_gpu_spec(benchmark, variant, amp):
    dtype = torch.bfloat16 if amp == "bf16" else None
    _run(benchmark, "resnet50", 256, 128, 8, "cuda", variant, dtype, rounds=9)
