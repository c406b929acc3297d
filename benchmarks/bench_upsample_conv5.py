"""The decoder's folded upsample + conv5x5 (``dgnet.ops.upsample_conv5``, its ``--fused`` path) against its plain
twin ``upsample_conv5_reference``, forward + backward, at the decoder's shapes. Each figure is recorded with the
machine (CPU or GPU name and threads), torch version, dtype and shape; ratios are printed per shape.
"""

from __future__ import annotations

import os

import pytest
import torch
from machine import cpu_name

from dgnet.ops.upsample_conv5 import upsample_conv5, upsample_conv5_reference

_MEANS: dict[tuple, dict[str, float]] = {}


@pytest.fixture
def one_thread():
    """One compute thread by default (the decoder's convolutions at these shapes); DGNET_BENCH_THREADS sets another."""
    n = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("DGNET_BENCH_THREADS", "1")))
    yield
    torch.set_num_threads(n)


# The decoder's folded upsample + conv5x5 (its --fused path) against its plain twin, forward + backward.
UPCONV_SHAPES = {  # (N, C_in, H, W) of the conv input, C_out; N = 6 decodes x batch
    "demo_up1": ((24, 128, 16, 8), 64),
    "demo_up2": ((24, 64, 32, 16), 32),
    "spec_up2": ((8, 64, 128, 64), 32),
}


@pytest.mark.parametrize("shape", list(UPCONV_SHAPES))
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "folded"])
def test_upsample_conv5_cpu(benchmark, one_thread, shape, fast):
    _upconv(benchmark, UPCONV_SHAPES[shape], shape, fast, "cpu", torch.float32)


# The spec's decoder (256x128, batch 8, six decodes): the two upsampling convs. On a GPU the fold trades
# 64% of the multiply-adds for more, smaller launches, so whether it pays is a measurement (train.fold_upsample).
GPU_UPCONV_SHAPES = {
    "spec_up1": ((48, 128, 64, 32), 64),
    "spec_up2": ((48, 64, 128, 64), 32),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", list(GPU_UPCONV_SHAPES))
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "folded"])
def test_upsample_conv5_gpu(benchmark, shape, fast, dtype):
    _upconv(benchmark, GPU_UPCONV_SHAPES[shape], shape, fast, "cuda", dtype)


def _upconv(benchmark, spec, name, fast, device, dtype):
    (n, c, h, w), co = spec
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w, device=device, dtype=dtype, requires_grad=True)
    wt = torch.randn(co, c, 5, 5, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(co, device=device, dtype=dtype, requires_grad=True)
    fn = upsample_conv5 if fast else upsample_conv5_reference

    def run():
        fn(x, wt, b).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    run()
    benchmark.pedantic(run, rounds=10 if device == "cuda" else 5, iterations=1)
    mean = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        machine=torch.cuda.get_device_name() if device == "cuda"
        else f"{cpu_name()} ({torch.get_num_threads()} threads)",
        torch=torch.__version__,
        dtype=str(dtype).replace("torch.", ""),
        input=f"{n}x{c}x{h}x{w}",
        out_channels=co,
    )
    key = ("upsample_conv5", name, device, str(dtype))
    _MEANS.setdefault(key, {})["folded" if fast else "plain"] = mean
    m = _MEANS[key]
    if len(m) == 2:
        print(f"\n{key}: folded/plain time ratio {m['folded'] / m['plain']:.3f} "
              f"(speed-up {m['plain'] / m['folded']:.2f}x)")
