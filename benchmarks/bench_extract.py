"""Feature extraction throughput: ``dgnet.FeatureExtractor`` against the plain loop a user would write.

The plain loop, per image: PIL decode, PIL bicubic resize to the model's size, to tensor, ImageNet
normalisation, then one forward of the image and one of its horizontal flip, the protocol's normalisations
and concatenation (``dgnet.evaluation.protocol.embed``). ``FeatureExtractor`` decodes and resizes through the test
pipeline in batches (DALI where it imports, on the GPU with a CUDA device; the torch DataLoader otherwise)
and embeds whole batches. Images per second count query images; the files are a synthetic set at
Market-1501's own size (128x64 JPEGs), the models seeded and untrained (speed does not depend on training).

    .venv/bin/python -m pytest benchmarks/bench_extract.py -p no:cacheprovider -s       # CPU
    python3 -m pytest -m gpu benchmarks/bench_extract.py -p no:cacheprovider -s        # GPU

Each figure records the machine, threads, versions, size and backbone; the ratio FeatureExtractor / plain
loop is printed and stored with the FeatureExtractor row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from machine import machine
from PIL import Image

import dgnet
from dgnet.checkpoints.format import arch_only, build_state, save_atomic
from dgnet.config import resolve_config
from dgnet.data import load_dataset
from dgnet.data import synthetic as syn
from dgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dgnet.evaluation.protocol import embed
from dgnet.models import DGNet

# (backbone, height, width, images): the demo's model on CPU; the spec's on a GPU
SIZES = {"demo": ("resnet18", 64, 32, 256), "spec": ("resnet50", 256, 128, 1024)}
_RATES: dict[tuple, dict[str, float]] = {}


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    root = syn.generate(tmp_path_factory.mktemp("bench_extract") / "synthetic", ids=120, cams=6, height=128, width=64)
    ds = load_dataset("synthetic", root, verbose=False)
    return [s.path for s in ds.gallery + ds.query + ds.train]


def _checkpoint(tmp_path_factory, size: str) -> str:
    backbone, h, w, _ = SIZES[size]
    cfg = resolve_config("demo", {"model": {"backbone": backbone, "backbone_weights": "none", "num_ids": 8},
                                  "data": {"height": h, "width": w}})
    torch.manual_seed(0)
    model = DGNet(arch_only(cfg.model), 8)
    path = tmp_path_factory.mktemp(f"ck_{size}") / "dgnet.pt"
    return str(save_atomic(build_state(stage="dgnet", iteration=1, cfg=cfg, num_ids=8, models={"dgnet": model}), path))


def _run(benchmark, tmp_path_factory, images, device: str, size: str, how: str) -> None:
    backbone, h, w, n = SIZES[size]
    files = (images * (n // len(images) + 1))[:n]
    path = _checkpoint(tmp_path_factory, size)
    if how == "extractor":
        fx = dgnet.FeatureExtractor(path, device=device)
        run = lambda: fx(files)  # noqa: E731
        backend = fx.backend
    else:
        model = dgnet.load_model(path, device=device)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

        def run() -> torch.Tensor:
            out = []
            for f in files:
                im = Image.open(f).convert("RGB").resize((w, h), Image.BICUBIC)
                x = (torch.from_numpy(np.asarray(im)).permute(2, 0, 1).float() / 255 - mean) / std
                out.append(embed(model, "dgnet", x[None].to(device)))
            return torch.cat(out)

        backend = "PIL loop"

    def timed() -> None:
        feats = run()
        if device == "cuda":
            torch.cuda.synchronize()
        assert feats.shape == (n, 1024)

    timed()  # warm-up: workers, DALI pipeline, allocator, algorithm choice
    benchmark.pedantic(timed, rounds=3, iterations=1)
    rate = n / benchmark.stats.stats.mean
    info = benchmark.extra_info
    info.update(machine(device), images=n, size=f"{h}x{w}", backbone=backbone, how=how, backend=backend,
                images_per_s=rate)
    got = _RATES.setdefault((device, size), {})
    got[how] = rate
    print(f"\n{device} {size} ({backbone} {h}x{w}, {n} images): {how} {rate:.1f} images/s ({backend})")
    if len(got) == 2:
        ratio = got["extractor"] / got["plain"]
        info["extractor_over_plain"] = ratio
        print(f"{device} {size}: FeatureExtractor / plain loop = {ratio:.2f}x")


@pytest.mark.parametrize("how", ["plain", "extractor"])
def test_extract_cpu(benchmark, tmp_path_factory, images, how):
    _run(benchmark, tmp_path_factory, images, "cpu", "demo", how)


@pytest.mark.gpu
@pytest.mark.parametrize("size", ["demo", "spec"])
@pytest.mark.parametrize("how", ["plain", "extractor"])
def test_extract_gpu(benchmark, tmp_path_factory, images, size, how):
    _run(benchmark, tmp_path_factory, images, "cuda", size, how)
