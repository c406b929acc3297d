"""Feature extraction throughput: ``dgnet.FeatureExtractor`` against the batched loader a user would write.

The baseline (``dataloader``): a ``torch.utils.data.DataLoader`` over the files with one worker per core and the
extractor's batch size (64), each worker doing PIL decode, PIL bicubic resize to the model's size, to tensor and
ImageNet normalisation; the main process embeds each batch with the protocol's feature
(``dgnet.evaluation.protocol.embed``: the image and its horizontal flip in one forward, normalisations and
concatenation). The loader is built once and its workers persist across rounds, as the extractor's pipeline does.
``FeatureExtractor`` decodes and resizes through the test pipeline in batches (DALI where it imports, on the GPU
with a CUDA device; the torch DataLoader otherwise) and embeds whole batches. Median of 5 rounds after one warm-up
each. Images per second count query images; the files are a synthetic set at
Market-1501's own size (128x64 JPEGs), the models seeded and untrained (speed does not depend on training).

    .venv/bin/python -m pytest benchmarks/bench_extract.py -p no:cacheprovider -s       # CPU
    python3 -m pytest -m gpu benchmarks/bench_extract.py -p no:cacheprovider -s        # GPU

Each figure records the machine, threads, versions, size and backbone; the ratio FeatureExtractor / plain
DataLoader is printed and stored with the FeatureExtractor row.

``test_index_gallery_cpu``: what ``python -m dgnet.search`` does to a new gallery folder of 2,000 images
(``dgnet.inference.gallery.gallery_features`` without its cache: the decode check, then the extractor at full batches)
against the extractor alone on the same files; the ratio is the cost of the check.
"""

from __future__ import annotations

import os

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


class _Files(torch.utils.data.Dataset):
    """The baseline's dataset: one normalised ``(3, h, w)`` tensor per file, decoded and resized with PIL."""

    def __init__(self, files: list[str], h: int, w: int) -> None:
        self.files, self.h, self.w = files, h, w
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        im = Image.open(self.files[i]).convert("RGB").resize((self.w, self.h), Image.BICUBIC)
        return (torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255 - self.mean) / self.std


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
        loader = torch.utils.data.DataLoader(_Files(files, h, w), batch_size=64, num_workers=os.cpu_count() or 1,
                                             persistent_workers=True, pin_memory=device == "cuda")

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return torch.cat([embed(model, "dgnet", x.to(device, non_blocking=True)) for x in loader])

        backend = f"DataLoader, {loader.num_workers} workers"

    def timed() -> None:
        feats = run()
        if device == "cuda":
            torch.cuda.synchronize()
        assert feats.shape == (n, 1024)

    timed()  # warm-up: workers, DALI pipeline, allocator, algorithm choice
    benchmark.pedantic(timed, rounds=5, iterations=1)
    rate = n / benchmark.stats.stats.median
    info = benchmark.extra_info
    info.update(machine(device), images=n, size=f"{h}x{w}", backbone=backbone, how=how, backend=backend,
                images_per_s=rate)
    got = _RATES.setdefault((device, size), {})
    got[how] = rate
    print(f"\n{device} {size} ({backbone} {h}x{w}, {n} images): {how} {rate:.1f} images/s ({backend})")
    if len(got) == 2:
        ratio = got["extractor"] / got["dataloader"]
        info["extractor_over_dataloader"] = ratio
        print(f"{device} {size}: FeatureExtractor / batched DataLoader = {ratio:.2f}x")


@pytest.mark.parametrize("how", ["dataloader", "extractor"])
def test_extract_cpu(benchmark, tmp_path_factory, images, how):
    _run(benchmark, tmp_path_factory, images, "cpu", "demo", how)


@pytest.mark.gpu
@pytest.mark.parametrize("size", ["demo", "spec"])
@pytest.mark.parametrize("how", ["dataloader", "extractor"])
def test_extract_gpu(benchmark, tmp_path_factory, images, size, how):
    _run(benchmark, tmp_path_factory, images, "cuda", size, how)


def _gallery(tmp_path_factory, images, n: int):
    folder = tmp_path_factory.mktemp("gallery")
    for i in range(n):
        (folder / f"{i:05d}.jpg").write_bytes(open(images[i % len(images)], "rb").read())
    return folder


@pytest.mark.parametrize("how", ["extractor", "gallery"])
def test_index_gallery_cpu(benchmark, tmp_path_factory, images, how):
    from dgnet.inference.gallery import gallery_features, list_images

    n = 2000
    folder = _gallery(tmp_path_factory, images, n)
    fx = dgnet.FeatureExtractor(_checkpoint(tmp_path_factory, "demo"), device="cpu")
    files = list_images(folder)
    run = (lambda: fx(files)) if how == "extractor" else (lambda: gallery_features(fx, folder, cache=False)[0].features)
    assert run().shape == (n, 1024)  # warm-up
    benchmark.pedantic(run, rounds=2, iterations=1)
    rate = n / benchmark.stats.stats.mean
    benchmark.extra_info.update(machine("cpu"), images=n, size="64x32", backbone="resnet18", how=how,
                                backend=fx.backend, images_per_s=rate)
    got = _RATES.setdefault(("cpu", "gallery"), {})
    got[how] = rate
    print(f"\ncpu gallery of {n} images (resnet18 64x32): {how} {rate:.1f} images/s ({fx.backend})")
    if len(got) == 2:
        print(f"cpu gallery: indexing / extractor alone = {got['gallery'] / got['extractor']:.2f}x")
