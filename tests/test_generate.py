"""dgnet.generate (dgnet.generative.dataset): the generated set reads back through the folder loader, labels and
pixels."""

import csv
import io

import numpy as np
import pytest
import torch
from _tiny_run import make_tiny_set
from PIL import Image

from dgnet.config import resolve_config
from dgnet.data import load_dataset
from dgnet.data.layouts import load_folder
from dgnet.data.streams import load_images
from dgnet.data.transforms import denormalize
from dgnet.generative.dataset import draw_pairs, generate_dataset

SIZE = (64, 32)  # the model's input size (height, width)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dgnet.checkpoints.format import arch_only
    from dgnet.models import DGNet

    root = make_tiny_set(tmp_path_factory.mktemp("syn"))
    ds = load_dataset("synthetic", root, verbose=False)
    cfg = resolve_config("demo")
    cfg.data.height, cfg.data.width = SIZE
    torch.manual_seed(0)
    model = DGNet(arch_only(cfg.model), ds.num_train_pids).eval()
    return model, ds, cfg


def test_pairs_cross_identities_and_are_seeded():
    pids = np.array([0, 0, 1, 2, 2, 2])
    a, b = draw_pairs(pids, 500, seed=1)
    assert (pids[a] != pids[b]).all()
    assert set(a) == set(range(6)) and set(b) == set(range(6))  # every image serves as both kinds of provider
    a2, b2 = draw_pairs(pids, 500, seed=1)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    with pytest.raises(ValueError, match="fewer than 2 identities"):
        draw_pairs(np.zeros(4, int), 3, 0)
    with pytest.raises(ValueError, match="count=0"):
        draw_pairs(pids, 0, 0)


def test_export_reads_back_with_labels_and_pixels(setup, tmp_path):
    model, ds, cfg = setup
    out = tmp_path / "gen"
    rows = generate_dataset(model, ds, SIZE, out, count=7, seed=3, batch_size=4)  # two batches, one short
    with (out / "manifest.csv").open() as fh:
        manifest = list(csv.DictReader(fh))
    assert [m["path"] for m in manifest] == [r.path for r in rows] and len(rows) == 7

    by_path = {s.path: s for s in ds.train}
    original = {label: pid for pid, label in ds.pid_map.items()}
    back = load_folder(out, splits=("train", "train", "train"))
    got = {str(s.path): s for s in back.query}  # query: not relabelled, original identities
    assert len(got) == 7
    for r in rows:
        a, b = by_path[r.structure_source], by_path[r.appearance_source]
        assert a.pid != b.pid
        s = got[str(out / r.path)]
        assert s.pid == original[b.pid] == r.pid  # the appearance provider's identity
        assert s.camid == a.camid == r.camid  # the structure provider's camera

    # pixels: each image is G(s_a, f_b) of its own pair, computed here one pair at a time
    for r in rows[:3]:
        xa = load_images([by_path[r.structure_source]], (64, 32), "torch", torch.device("cpu"))
        xb = load_images([by_path[r.appearance_source]], (64, 32), "torch", torch.device("cpu"))
        with torch.no_grad():
            want = denormalize(model.decode(model.encode(xa)[1], model.encode(xb)[0]))[0]
        img = torch.from_numpy(np.array(Image.open(out / r.path).convert("RGB"))).permute(2, 0, 1).float() / 255
        assert img.shape == want.shape
        # the same pixels through the same JPEG encoder (quality 95): equal but for a rounding flip or two
        pixels = (want * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
        jpeg = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float() / 255
        assert (img - jpeg).abs().mean() < 2e-3, float((img - jpeg).abs().mean())
        other = denormalize(model.decode(model.encode(xb)[1], model.encode(xa)[0]))[0]  # the swapped pair
        assert (img - want).abs().mean() < (img - other).abs().mean()


def test_export_is_deterministic_and_refuses_to_overwrite(setup, tmp_path):
    model, ds, cfg = setup
    r1 = generate_dataset(model, ds, SIZE, tmp_path / "one", count=3, seed=5)
    r2 = generate_dataset(model, ds, SIZE, tmp_path / "two", count=3, seed=5)
    assert r1 == r2
    for r in r1:
        assert (tmp_path / "one" / r.path).read_bytes() == (tmp_path / "two" / r.path).read_bytes()
    # a model handed over in train mode is run in eval mode (the same images) and given back in train mode
    model.train()
    try:
        r3 = generate_dataset(model, ds, SIZE, tmp_path / "train_mode", count=3, seed=5)
        assert model.training and model.Ea.training
    finally:
        model.eval()
    for r in r3:
        assert (tmp_path / "train_mode" / r.path).read_bytes() == (tmp_path / "one" / r.path).read_bytes()
    with pytest.raises(ValueError, match="already holds a generated set"):
        generate_dataset(model, ds, SIZE, tmp_path / "one", count=3, seed=6)
    with pytest.raises(ValueError, match="quality=0"):
        generate_dataset(model, ds, SIZE, tmp_path / "three", count=3, quality=0)
