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
    with pytest.raises(ValueError, match=r"images\[1\]: a numpy image must be uint8 \(H, W\) grey, \(H, W, 3\)"):
        fx([np.zeros((8, 4, 3), np.uint8), np.zeros((8, 4, 2), np.uint8)])
    with pytest.raises(ValueError, match=r"a float tensor is taken as preprocessed, \(N, 3, 64, 32\)"):
        fx(torch.zeros(2, 3, 128, 64))
    with pytest.raises(ValueError, match="images\\[0\\]: expected a path"):
        fx([3.5])
    with pytest.raises(ValueError, match="batch_size=0"):
        dgnet.FeatureExtractor(path, batch_size=0)


# ---- files that cannot be read, by either loader --------------------------------------------------------------

LOADERS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(not dgnet.data.dali_status()[0],
                                                                  reason="DALI unavailable"))]


@pytest.fixture(scope="module")
def mixed(run, tmp_path_factory):
    """Three good files around a garbage one and a truncated one."""
    path, ds, _ = run
    d = tmp_path_factory.mktemp("mixed")
    good = [d / f"good{i}.png" for i in range(3)]
    for g, s in zip(good, ds.query[:3], strict=True):
        Image.open(s.path).save(g)
    garbage, truncated = d / "garbage.jpg", d / "truncated.png"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    truncated.write_bytes(good[0].read_bytes()[:200])
    return [str(good[0]), str(garbage), str(good[1]), str(truncated), str(good[2])], [0, 2, 4]


@pytest.mark.parametrize("loader", LOADERS)
def test_a_file_that_cannot_be_read_is_named(run, mixed, loader):
    path, _, _ = run
    files, good = mixed
    fx = dgnet.FeatureExtractor(path, device="cpu", batch_size=2, loader=loader)
    with pytest.raises(ValueError) as info:
        fx(files)
    msg = str(info.value)
    assert "2 image(s) cannot be read" in msg and f"{files[1]}: " in msg and f"{files[3]}: " in msg
    assert files[0] + ":" not in msg
    fx = dgnet.FeatureExtractor(path, device="cpu", batch_size=2, loader=loader, skip_errors=True)
    got = fx(files)
    assert sorted(fx.skipped) == sorted([files[1], files[3]]) and fx.kept == good
    torch.testing.assert_close(got, fx([files[i] for i in good]), rtol=0, atol=1e-6)
    assert fx.skipped == {}  # each call lists its own


def test_a_folder_or_a_missing_file_says_which(run, mixed, tmp_path):
    path, _, _ = run
    fx = dgnet.FeatureExtractor(path, device="cpu", loader="torch")
    with pytest.raises(IsADirectoryError, match=f"image '{tmp_path}' is a folder; pass its images"):
        fx([mixed[0][0], str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="nothing.png' does not exist"):
        fx([str(tmp_path / "nothing.png")])
    with pytest.raises(ValueError, match=f"{mixed[0][1]}: cannot read it"):  # in a list with arrays: named too
        fx([np.zeros((8, 4, 3), np.uint8), mixed[0][1]])
    fx = dgnet.FeatureExtractor(path, device="cpu", loader="torch", skip_errors=True)
    assert fx([np.zeros((8, 4, 3), np.uint8), mixed[0][1], str(tmp_path)]).shape == (1, 1024)
    assert fx.kept == [0] and set(fx.skipped) == {mixed[0][1], str(tmp_path)}


# ---- a model in memory, and images in memory of every kind -------------------------------------------------------


@pytest.mark.parametrize("which", ["dgnet", "teacher"])
def test_a_model_in_memory_gives_its_checkpoints_features(run, which):
    path, ds, cfg = run
    files = [s.path for s in ds.query[:4]]
    model = dgnet.load_model(path, which).train()  # as a fine-tune holds it: in train mode
    fx = dgnet.FeatureExtractor(model, config=cfg, loader="torch")
    assert fx.which == which and fx.device == torch.device("cpu") and fx.checkpoint is None
    torch.testing.assert_close(fx(files), dgnet.FeatureExtractor(path, device="cpu", which=which,
                                                                 loader="torch")(files), rtol=0, atol=1e-6)
    assert model.training  # its own mode given back
    assert fx.fingerprint != dgnet.FeatureExtractor(path, device="cpu", which=which).fingerprint or which
    with pytest.raises(ValueError, match="which='dgnet', but the model is a ReidBaseline"):
        dgnet.FeatureExtractor(dgnet.load_model(path, "teacher"), which="dgnet")
    with pytest.raises(TypeError, match="a Linear; expected a checkpoint path, a dgnet.models.DGNet"):
        dgnet.FeatureExtractor(torch.nn.Linear(2, 2))


def test_a_checkpoint_with_only_a_teacher_gives_the_teachers_features(run, tmp_path):
    from dgnet.checkpoints.format import build_state, save_atomic

    path, ds, cfg = run
    teacher = dgnet.load_model(path, "teacher")
    only = save_atomic(build_state(stage="teacher", iteration=1, cfg=cfg, num_ids=ds.num_train_pids,
                                   models={"teacher": teacher}), tmp_path / "teacher.pt")
    fx = dgnet.FeatureExtractor(only, device="cpu", loader="torch")
    assert fx.which == "teacher" and fx.dim == 512
    files = [s.path for s in ds.query[:3]]
    torch.testing.assert_close(fx(files), dgnet.FeatureExtractor(path, device="cpu", which="teacher",
                                                                 loader="torch")(files), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """One picture as RGB, grey and RGBA PNG files (lossless, so memory and file hold the same pixels)."""
    d = tmp_path_factory.mktemp("kinds")
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (50, 23, 4), dtype=np.uint8)
    out = {"rgb": (d / "rgb.png", rgba[..., :3]), "grey": (d / "grey.png", rgba[..., 0]),
           "rgba": (d / "rgba.png", rgba)}
    for p, arr in out.values():
        Image.fromarray(arr).save(p)
    return out


def test_tensors_and_arrays_give_the_same_image_files_features(run, image_files):
    path, _, _ = run
    fx = dgnet.FeatureExtractor(path, device="cpu", loader="torch")
    (rgb_file, rgb), (grey_file, grey), (rgba_file, rgba) = (image_files[k] for k in ("rgb", "grey", "rgba"))
    want = fx([rgb_file, grey_file, rgba_file])
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for name, got in {
        "uint8 CHW": fx(chw), "uint8 NCHW": fx(chw[None]), "uint8 HWC": fx(torch.from_numpy(rgb)),
        "uint8 NHWC": fx(torch.from_numpy(rgb)[None]), "list of tensors": fx([chw, chw]),
        "float [0, 1] through preprocess": fx(fx.preprocess(chw.float() / 255)),
        "preprocessed CHW": fx(fx.preprocess([rgb])[0]), "list of preprocessed": fx(list(fx.preprocess([rgb]))),
    }.items():
        torch.testing.assert_close(got, want[:1].expand(len(got), -1), rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(fx([grey, rgba]), want[1:], rtol=0, atol=1e-6)  # grey and RGBA arrays
    grey_t, rgba_t = torch.from_numpy(grey)[None], torch.from_numpy(rgba).permute(2, 0, 1)
    torch.testing.assert_close(fx([grey_t, rgba_t]), want[1:], rtol=0, atol=1e-6)  # and tensors
    torch.testing.assert_close(fx([Image.open(grey_file), Image.open(rgba_file)]), want[1:], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"both its first and last image axes could hold the channels"):
        fx(torch.zeros(3, 40, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="no axis of 1, 3 or 4 channels"):
        fx(torch.zeros(2, 40, 20, dtype=torch.uint8))


def test_exif_orientation_reaches_the_features(run, tmp_path):
    """A photo tagged "rotate 90 clockwise" gives its upright copy's features, as a file and as a PIL image."""
    path, _, _ = run
    rgb = np.random.default_rng(4).integers(0, 256, (40, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "tagged.png", exif=exif.tobytes())
    Image.fromarray(np.ascontiguousarray(np.rot90(rgb, -1))).save(tmp_path / "upright.png")
    fx = dgnet.FeatureExtractor(path, device="cpu", loader="torch")
    want = fx([tmp_path / "upright.png"])
    torch.testing.assert_close(fx([tmp_path / "tagged.png"]), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(fx([Image.open(tmp_path / "tagged.png")]), want, rtol=0, atol=1e-6)
    assert not torch.allclose(fx([rgb]), want, atol=1e-3)  # the tag is what turns it


def test_ea_embed_and_the_reid_wrapper_are_the_protocols_features(run):
    """torchreid's habit, model.eval(); feats = model(x): Ea.embed, ReidBaseline.embed and
    dgnet.inference.export.ReidFeatures equal dgnet.evaluation.protocol.embed, and the formula written out here."""
    from dgnet.evaluation.protocol import embed
    from dgnet.inference.export import ReidFeatures

    path, _, cfg = run
    x = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(5))
    model = dgnet.load_model(path)
    n = F.normalize
    with torch.no_grad():
        a, b = model.Ea.features(x), model.Ea.features(x.flip(3))
        heads = [n(n(a[i], dim=1) + n(b[i], dim=1), dim=1) for i in range(2)]
        want = torch.cat([heads[0], heads[1] * 0.5 ** 0.5], dim=1)
        torch.testing.assert_close(model.Ea.embed(x, 0.5), want, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.Ea.embed(x, 0.5), embed(model, "dgnet", x, 0.5), rtol=0, atol=0)
        wrapper = ReidFeatures(model, "dgnet", cfg.eval.alpha, (64, 32)).eval()
        torch.testing.assert_close(wrapper(x), want, rtol=0, atol=1e-5)
        teacher = dgnet.load_model(path, "teacher")
        t = n(n(teacher.features(x), dim=1) + n(teacher.features(x.flip(3)), dim=1), dim=1)
        torch.testing.assert_close(teacher.embed(x), t, rtol=0, atol=1e-5)
