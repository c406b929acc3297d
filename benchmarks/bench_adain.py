"""Fused AdaIN against what a user would write instead, on the decoder's shapes.

The baselines (``instance_norm`` and ``compiled``) are ``F.instance_norm`` followed by the affine, the activation
and the residual add in eager PyTorch, and ``torch.compile`` of that same function; the fused row gives its ratio
against each, on the same threads, after the same warm-up, from the same number of samples (median of 9).

Two configurations, the two uses in a decoder residual block: ``lrelu`` (AdaIN + LeakyReLU) and
``residual`` (AdaIN + residual add); forward alone and forward + backward (gradients of x, scale,
bias and residual through ``torch.autograd.grad``, so no ``.grad`` accumulation is timed).

Effective bandwidth counts the bytes the fused kernel must move, the same for every implementation:
forward reads x (and the residual) and writes y; backward reads dy and x and writes dx (the residual's
gradient is dy itself). The fused/instance_norm and fused/compiled speed-ups are printed and stored in the
fused row's ``extra_info``, together with the machine, versions and sizes.

    .venv/bin/python -m pytest benchmarks/bench_adain.py -p no:cacheprovider -s      # CPU, every core
    python3 -m pytest -m gpu benchmarks/bench_adain.py -p no:cacheprovider -s            # GPU
On the CPU this runs at the main job's thread count (every core, ``train.threads=0``). Measure on an idle
machine (``cat /proc/loadavg`` first): on a shared one OpenMP threads spin at barriers while another process
holds a core (docs/training-speed.md), and a figure from there says nothing. ``extra_info`` records the count.
Targets: CPU >= 2x instance_norm for forward + backward at (8, 128, 64, 32); H100 >= 2.5x instance_norm for
forward + backward and >= 70% of 3.35 TB/s.

Figures, with the machine and versions they came from, are kept in docs/records.md.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from machine import machine

from dgnet.ops import adain

CONFIGS = {
    "lrelu": dict(activation="lrelu", residual=False),
    "residual": dict(activation=None, residual=True),
    # The decoder's four residual blocks without their convolutions: 8 AdaIN steps, lrelu then
    # residual, one backward. A backward through the autograd engine has a fixed host cost (on the
    # H100 machine about 0.6 ms, with eager as with fused) that this amortises as training does.
    "blocks4": dict(activation="lrelu", residual=True),
}
MODES = ("fwd", "fwd+bwd")
IMPLS = ("instance_norm", "compiled", "fused")  # fused last: its row computes the ratios
# CPU sizes keep the file under about two minutes on a 2-core machine; torch.compile (minutes of
# C++ compilation per shape there) is measured on the smaller shape only.
CPU_SHAPES = [(8, 128, 64, 32), (2, 128, 128, 64)]
CPU_COMPILED_SHAPES = [(8, 128, 64, 32)]
GPU_SHAPES = [(8, 128, 64, 32), (32, 128, 64, 32), (32, 128, 128, 64)]
GPU_DTYPES = (torch.float32, torch.bfloat16)

_RESULTS: dict[tuple, dict[str, float]] = {}


def instance_norm_adain(x, scale, bias, residual=None, activation=None, eps=1e-5, negative_slope=0.2):
    """The plain baseline: ``F.instance_norm``, then AdaIN's affine, activation and residual as separate ops."""
    y = F.instance_norm(x, eps=eps) * scale[:, :, None, None] + bias[:, :, None, None]
    if activation == "lrelu":
        y = F.leaky_relu(y, negative_slope)
    elif activation == "relu":
        y = F.relu(y)
    return y if residual is None else y + residual


def fused_bytes(shape, dtype, config: str, mode: str) -> int:
    numel = shape[0] * shape[1] * shape[2] * shape[3]
    if config == "blocks4":  # per block: forward 2 + 3 passes, backward 3 + 3
        passes = 4 * (5 + (6 if mode == "fwd+bwd" else 0))
    else:
        passes = 2 + CONFIGS[config]["residual"] + (3 if mode == "fwd+bwd" else 0)
    return passes * numel * torch.empty((), dtype=dtype).element_size()


def make_step(impl: str, device: str, shape, dtype, config: str, mode: str):
    """A no-argument callable running one forward (and backward) of ``impl``."""
    g = torch.Generator(device=device).manual_seed(0)
    n, c = shape[:2]
    grad = mode == "fwd+bwd"
    x = torch.randn(shape, device=device, dtype=dtype, generator=g).requires_grad_(grad)
    scale = (torch.randn(n, c, device=device, generator=g) + 1).to(dtype).requires_grad_(grad)
    bias = torch.randn(n, c, device=device, generator=g).to(dtype).requires_grad_(grad)
    res = torch.randn(shape, device=device, dtype=dtype, generator=g).requires_grad_(grad)
    res = res if CONFIGS[config]["residual"] else None
    act = CONFIGS[config]["activation"]
    dy = torch.randn(shape, device=device, dtype=dtype, generator=g)
    inputs = [t for t in (x, scale, bias, res) if t is not None]

    if impl == "fused":
        backend = "triton" if device == "cuda" else "cpu"
        op = lambda x, s, b, r, a: adain(x, s, b, r, a, backend=backend)
    else:
        op = instance_norm_adain

    if config == "blocks4":
        inputs = [x, scale, bias]

        def body(x, s, b, r):
            for _ in range(4):
                x = op(op(x, s, b, None, "lrelu"), s, b, x, None)
            return x
    else:
        body = lambda x, s, b, r: op(x, s, b, r, act)
    if impl == "compiled":
        # Every case compiles the same code object: without a reset, dynamo's recompile limit (8)
        # is reached after a few cases and the rest silently run eager.
        torch._dynamo.reset()
        body = torch.compile(body)
    fn = lambda: body(x, scale, bias, res)

    if grad:
        step = lambda: torch.autograd.grad(fn(), inputs, dy)
    else:
        step = lambda: fn()
    if device == "cuda":
        def synced():
            step()
            torch.cuda.synchronize()

        synced.unsynced = step
        return synced
    return step


def record(benchmark, impl, device, shape, dtype, config, mode, seconds: float) -> None:
    key = (device, shape, str(dtype), config, mode)
    _RESULTS.setdefault(key, {})[impl] = seconds
    nbytes = fused_bytes(shape, dtype, config, mode)
    benchmark.extra_info.update(machine(device))
    benchmark.extra_info.update(
        shape=list(shape), dtype=str(dtype), config=config, mode=mode, impl=impl,
        median_ms=seconds * 1e3, fused_bytes=nbytes, effective_GBps=nbytes / seconds / 1e9,
    )
    line = f"\n{device} {impl:8s} {config:8s} {mode:7s} {tuple(shape)} {str(dtype):14s} " \
           f"{seconds * 1e3:8.3f} ms {nbytes / seconds / 1e9:8.1f} GB/s"
    if impl == "fused":
        for other in ("instance_norm", "compiled"):
            if other in _RESULTS[key]:
                ratio = _RESULTS[key][other] / seconds
                benchmark.extra_info[f"speedup_vs_{other}"] = ratio
                line += f"  {ratio:5.2f}x vs {other}"
        if device == "cuda" and "H100" in torch.cuda.get_device_name():
            frac = nbytes / seconds / 3.35e12
            benchmark.extra_info["fraction_of_hbm_3.35TBps"] = frac
            line += f"  {frac * 100:4.1f}% of 3.35 TB/s"
    print(line)


def run(benchmark, impl, device, shape, dtype, config, mode, rounds: int) -> None:
    step = make_step(impl, device, shape, dtype, config, mode)
    for _ in range(2):  # warm-up: compilation, autotuning, allocator
        step()
    if device == "cuda":
        import triton.testing

        # CUDA-event timing of back-to-back calls (the host runs ahead as in training) with the L2
        # flushed between runs; pytest-benchmark keeps its own, synchronised, record.
        seconds = triton.testing.do_bench(step.unsynced, warmup=25, rep=200, return_mode="median") / 1e3
        benchmark.pedantic(step, rounds=rounds, iterations=1)
    else:
        benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
        if benchmark.stats is None:  # --benchmark-disable
            return
        seconds = benchmark.stats.stats.median
    record(benchmark, impl, device, shape, dtype, config, mode, seconds)


def _cpu_cases():
    for shape in CPU_SHAPES:
        for config in CONFIGS:
            for mode in MODES:
                for impl in IMPLS:
                    if impl == "compiled" and shape not in CPU_COMPILED_SHAPES:
                        continue
                    name = f"{'x'.join(map(str, shape))}-{config}-{mode}-{impl}"
                    yield pytest.param(shape, config, mode, impl, id=name)


@pytest.mark.parametrize("shape,config,mode,impl", list(_cpu_cases()))
def test_adain_cpu(benchmark, shape, config, mode, impl):
    benchmark.group = f"adain-cpu-{config}-{mode}-{'x'.join(map(str, shape))}"
    run(benchmark, impl, "cpu", shape, torch.float32, config, mode, rounds=9)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_adain_gpu(benchmark, shape, dtype, config, mode, impl):
    benchmark.group = f"adain-gpu-{config}-{mode}-{'x'.join(map(str, shape))}-{dtype}"
    run(benchmark, impl, "cuda", shape, dtype, config, mode, rounds=20)


@pytest.mark.gpu
@pytest.mark.parametrize("config", ["lrelu", "residual"])
@pytest.mark.parametrize("dtype", GPU_DTYPES, ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_adain_gpu_kernels_bandwidth(benchmark, shape, dtype, config):
    """The forward and backward kernels alone (no autograd, no Python op layers): achieved bandwidth."""
    import triton.testing

    from dgnet.kernels import adain as kernels

    g = torch.Generator(device="cuda").manual_seed(0)
    x, dy = (torch.randn(shape, device="cuda", dtype=dtype, generator=g) for _ in range(2))
    res = torch.randn(shape, device="cuda", dtype=dtype, generator=g) if CONFIGS[config]["residual"] else None
    scale, bias = (torch.randn(shape[:2], device="cuda", dtype=dtype, generator=g) for _ in range(2))
    code = {None: 0, "relu": 1, "lrelu": 2}[CONFIGS[config]["activation"]]
    _, mean, rstd = kernels.adain_forward(x, scale, bias, res, code, 1e-5, 0.2, traced=False)
    fwd = lambda: kernels.adain_forward(x, scale, bias, res, code, 1e-5, 0.2, traced=False)
    bwd = lambda: kernels.adain_backward(dy, x, scale, bias, mean, rstd, code, 0.2, traced=False)
    t_fwd = triton.testing.do_bench(fwd, warmup=25, rep=200, return_mode="median") / 1e3
    t_bwd = triton.testing.do_bench(bwd, warmup=25, rep=200, return_mode="median") / 1e3
    benchmark.pedantic(lambda: (fwd(), bwd(), torch.cuda.synchronize()), rounds=10, iterations=1)
    b_fwd = fused_bytes(shape, dtype, config, "fwd")
    b_bwd = fused_bytes(shape, dtype, config, "fwd+bwd") - b_fwd
    benchmark.extra_info.update(machine("cuda"))
    benchmark.extra_info.update(shape=list(shape), dtype=str(dtype), config=config, fwd_us=t_fwd * 1e6,
                                bwd_us=t_bwd * 1e6, fwd_GBps=b_fwd / t_fwd / 1e9, bwd_GBps=b_bwd / t_bwd / 1e9)
    print(f"\ncuda kernels {config:8s} {tuple(shape)} {str(dtype):14s} forward {t_fwd * 1e6:7.1f} us "
          f"{b_fwd / t_fwd / 1e9:7.1f} GB/s ({b_fwd / t_fwd / 3.35e10:4.1f}% of 3.35 TB/s), backward "
          f"{t_bwd * 1e6:7.1f} us {b_bwd / t_bwd / 1e9:7.1f} GB/s ({b_bwd / t_bwd / 3.35e10:4.1f}%)")


def profile_gpu() -> None:
    """Host time per call and device time per kernel of each implementation (``python3 bench_adain.py``)."""
    import time

    from torch.profiler import ProfilerActivity, profile

    print(machine("cuda"))
    for shape in GPU_SHAPES:
        for config in CONFIGS:
            for impl in ("instance_norm", "fused"):
                step = make_step(impl, "cuda", shape, torch.float32, config, "fwd+bwd").unsynced
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(50):
                    step()
                host = (time.perf_counter() - t0) / 50
                torch.cuda.synchronize()
                wall = (time.perf_counter() - t0) / 50
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(10):
                        step()
                    torch.cuda.synchronize()
                kernels = sum(e.device_time_total for e in prof.key_averages()) / 10
                print(f"{impl:6s} {config:8s} {shape}: host {host * 1e6:7.1f} us/call, wall {wall * 1e6:7.1f} us, "
                      f"device kernels {kernels:7.1f} us")
                if impl == "fused":
                    print(prof.key_averages().table(sort_by="device_time_total", row_limit=6))


if __name__ == "__main__":
    profile_gpu()
