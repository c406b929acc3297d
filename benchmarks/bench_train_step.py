"""Training iterations per second and peak memory of one full DG-Net iteration (``dgnet.engine.dgnet_step``).

- CPU: the demo preset's size (ResNet-18, 64x32, batch 4 per stream), plain vs ``--fused``.
- GPU (marked ``gpu``): the spec's size (ResNet-50, 256x128, batch 8 per stream), fp32 and bf16 autocast,
  plain vs fused (the upsample fold off, as ``train.fold_upsample=auto`` runs it on CUDA) vs fused-fold.
- The folded upsample + conv5x5 against its plain twin, on CPU and (``gpu``) at the spec's shapes.
Every ramped term is active (warm-up at 0), so the iteration costs what a post-warm-up one costs.

Run: ``.venv/bin/python -m pytest benchmarks/bench_train_step.py -p no:cacheprovider`` (CPU, ~1-2 min), and
``... -m gpu`` on a CUDA machine. Each figure carries the machine, versions, sizes and threads in
``extra_info``; each variant's ratio to plain is printed once plain of that configuration ran.
``benchmarks/profile_step.py`` splits an iteration into host and device time and names the top operators.

Measured 2026-11-25:
- H100 80GB HBM3 (torch 2.11, triton 3.6), fold on under --fused (before train.fold_upsample): fp32 plain
  0.501 s/it, fused 0.579; bf16 plain 0.427, fused 0.497. The iteration is host-bound there (AdaIN calls at
  64x32 cost about 0.3-0.6 ms of host time each, forward + backward). Fused without the fold: not yet measured.
- 2-core AMD EPYC, one thread, another training job on the other core: plain 2.14 s/it, fused 2.16 s/it
  (about 1.0x). The profile (profile_step.py --device cpu) explains it: convolutions forward and backward
  are 78% of the iteration, the decoder's AdaIN steps a few percent, its LayerNorm+LeakyReLU about 2% and
  the AdaIN MLPs about 1%, so neither of those is worth a fused kernel on this CPU. The fold alone, forward +
  backward: 1.21x (demo_up1), 1.62x (demo_up2), 2.13x (spec_up2) against plain.
"""

from __future__ import annotations

import resource

import pytest
import torch
from machine import cpu_name

import dgnet
from dgnet.config import Config
from dgnet.engine import build_optimizers, dgnet_step
from dgnet.models import DGNet, ReidBaseline
from dgnet.profiling import host_op_count

IDS = 16
_MEANS: dict[tuple, dict[str, float]] = {}
# plain: the reference path; fused: --fused as training runs it (the upsample fold on CPU only, train.fold_upsample
# auto); fused-fold: --fused with the fold forced on, to measure the fold on a GPU; fused-nofold: the fold off, which
# is what CUDA runs by default (for profile_step on a CPU).
VARIANTS = {
    "plain": (False, "auto"),
    "fused": (True, "auto"),
    "fused-fold": (True, "on"),
    "fused-nofold": (True, "off"),
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
    fused, fold = VARIANTS[variant]
    torch.manual_seed(0)
    cfg = _cfg(backbone, h, w, b)
    model = DGNet(cfg.model, IDS, fused=fused, fold_upsample=fold).to(device)
    teacher = ReidBaseline(cfg.model, IDS).to(device)
    opts = build_optimizers(model, cfg.optim, fused=fused)
    batches = [(_batch(b, h, w, device, 2 * i), _batch(b, h, w, device, 2 * i + 1)) for i in range(2)]

    def step(i: int) -> None:
        a, bb = batches[i % 2]
        dgnet_step(model, teacher, opts, a, bb, i + 1, cfg, amp_dtype=amp_dtype, fused=fused)  # returns floats
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def _run(benchmark, backbone, h, w, b, device, variant, amp_dtype, rounds):
    step = make_step(backbone, h, w, b, device, amp_dtype, variant)
    it = iter(range(1, 1_000_000))
    step(0)  # warm-up: allocator, cudnn/mkldnn algorithm choice, Triton compilation
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(lambda: step(next(it)), rounds=rounds, iterations=1, warmup_rounds=0)
    calls = host_op_count(lambda: step(next(it)))  # ~ kernel launches on a GPU, where the step is host-bound
    mean = benchmark.stats.stats.mean
    info = benchmark.extra_info
    info.update(
        machine=torch.cuda.get_device_name()
        if device == "cuda"
        else f"{cpu_name()} ({torch.get_num_threads()} threads)",
        torch=torch.__version__,
        dgnet=dgnet.__version__,
        backbone=backbone,
        image=f"{h}x{w}",
        batch_per_stream=b,
        amp=str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        variant=variant,
        iterations_per_s=1.0 / mean,
        operator_calls=calls,
    )
    if device == "cuda":
        info["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:  # process-wide high-water mark (ru_maxrss is KiB on Linux): an upper bound for this configuration
        info["process_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    key = (backbone, h, w, b, device, str(amp_dtype))
    _MEANS.setdefault(key, {})[variant] = mean
    got = _MEANS[key]
    print(f"\n{key}: {variant} {mean:.3f} s/iteration ({1 / mean:.3f} it/s), {calls} operator calls")
    if variant != "plain" and "plain" in got:
        print(f"{key}: {variant}/plain time ratio {mean / got['plain']:.3f} (speed-up {got['plain'] / mean:.2f}x)")


@pytest.fixture
def one_thread():
    """On a CPU shared with other jobs, OpenMP spin-waiting makes multi-threaded small ops many times slower;
    set DGNET_BENCH_THREADS to measure another count."""
    import os

    n = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("DGNET_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("variant", ["plain", "fused", "fused-nofold"])
def test_train_step_cpu_demo(benchmark, one_thread, variant):
    _run(benchmark, "resnet18", 64, 32, 4, "cpu", variant, None, rounds=6)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["fp32", "bf16"])
@pytest.mark.parametrize("variant", ["plain", "fused", "fused-fold"])  # fused is fused-nofold on CUDA
def test_train_step_gpu_spec(benchmark, variant, amp):
    dtype = torch.bfloat16 if amp == "bf16" else None
    _run(benchmark, "resnet50", 256, 128, 8, "cuda", variant, dtype, rounds=10)
