"""The public API (dgnet.load_model, dgnet.FeatureExtractor) against the test protocol that dgnet.test runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _tiny_run import make_tiny_checkpoint
from PIL import Image

import dgnet
from dgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("api"))


def _protocol_features(path, ds, cfg, which, samples):
    """What dgnet.test computes for these samples: the checkpoint's model through dgnet.evaluation.protocol.extract."""
    from dgnet.evaluation.protocol import extract

    model = dgnet.load_model(path, which)
    return extract(model, which, samples, cfg, "torch", torch.device("cpu"))[0]


@pytest.mark.parametrize("which", ["dgnet", "teacher"])
def test_features_equal_the_test_protocols(run, which):
    path, ds, cfg = run
    samples = ds.query[:7]
    fx = dgnet.FeatureExtractor(path, device="cpu", batch_size=3, which=which, loader="torch")
    got = fx([s.path for s in samples])
    want = _protocol_features(path, ds, cfg, which, samples)
    assert got.dtype == torch.float32 and got.shape == (7, fx.dim) == (7, 1024 if which == "dgnet" else 512)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_every_input_kind_gives_the_same_features(run):
    path, ds, _ = run
    files = [s.path for s in ds.query[:5]]
    fx = dgnet.FeatureExtractor(path, device="cpu", loader="torch")
    want = fx(files)
    pil = [Image.open(f) for f in files]
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    for got in (fx(pil), fx(arrays), fx(fx.preprocess(files)), fx(fx.preprocess(pil))):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(fx(files[0]), want[:1], rtol=0, atol=1e-6)  # one image alone
    assert fx([]).shape == (0, 1024)


def test_preprocess_is_the_test_transform(run):
    """Bicubic (antialiased) resize to the checkpoint's size, rounded to 8 bits, then ImageNet normalisation:
    written out here from the formulas."""
    path, _, _ = run
    fx = dgnet.FeatureExtractor(path, device="cpu")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (101, 47, 3), dtype=np.uint8)
    got = fx.preprocess([img])
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    resized = F.interpolate(x, size=(64, 32), mode="bicubic", align_corners=False, antialias=True).round().clamp(0, 255)
    want = (resized / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert got.shape == (1, 3, 64, 32)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_load_model(run, tmp_path):
    path, ds, _ = run
    model = dgnet.load_model(path)
    assert isinstance(model, dgnet.models.DGNet) and not model.training
    assert {"Ea", "Es", "G", "D"} <= {n for n, _ in model.named_children()}
    assert isinstance(dgnet.load_model(path, "teacher"), dgnet.models.ReidBaseline)
    with pytest.raises(ValueError, match="which='student'"):
        dgnet.load_model(path, "student")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pt"):
        dgnet.load_model(junk)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        dgnet.load_model(tmp_path / "missing.pt")


def test_bad_inputs_are_named(run):
    path, _, _ = run
    fx = dgnet.FeatureExtractor(path, device="cpu")
    with pytest.raises(ValueError, match=r"images\[1\]: a numpy image must be uint8 \(H, W, 3\)"):
        fx([np.zeros((8, 4, 3), np.uint8), np.zeros((8, 4), np.uint8)])
    with pytest.raises(ValueError, match=r"float \(N, 3, 64, 32\)"):
        fx(torch.zeros(2, 3, 128, 64))
    with pytest.raises(ValueError, match="images\\[0\\]: expected a path"):
        fx([3.5])
    with pytest.raises(ValueError, match="batch_size=0"):
        dgnet.FeatureExtractor(path, batch_size=0)
