"""The torch and DALI pipelines against each other and against the transform's definition; resume; test stream.

DALI runs its CPU graph here (``device_id=None``); the ``gpu`` tests run the mixed (nvJPEG) graph.
Tolerances: at the native size both decoders are libjpeg-turbo and agree to float rounding; through a
bicubic resize the two implementations round uint8 results differently at a few pixels: at most two
levels (2/255/std ~ 0.035 in normalised units) and a mean difference far below one level.
"""

import logging

import numpy as np
import pytest
import torch
from _optional import skip_unless_installed

from dgnet.data import load_dataset, resolve_backend, test_stream, train_stream
from dgnet.data import synthetic as syn
from dgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, apply_erasing, pad_crop

ONE_LEVEL = 1 / 255 / min(IMAGENET_STD)
RESIZED = 2 * ONE_LEVEL + 1e-5
KEYS = {"image", "positive", "image_erased", "positive_erased", "pid", "camid", "index"}
needs_dali = skip_unless_installed("dali")  # a broken DALI install fails these tests (tests/_optional.py)
BACKENDS = ["torch", pytest.param("dali", marks=needs_dali)]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = syn.generate(tmp_path_factory.mktemp("syn") / "set", ids=12, cams=3, height=64, width=32, seed=0,
                        workers=1)
    return load_dataset("synthetic", root, verbose=False)


def take(stream, n):
    return [next(stream) for _ in range(n)]


def assert_batches_close(a, b, atol):
    assert set(a) == set(b) == KEYS
    for k in KEYS:
        assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
        assert a[k].device == b[k].device, k
        if a[k].dtype == torch.int64:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


@needs_dali
@pytest.mark.parametrize("size,atol", [((64, 32), 1e-5), ((128, 64), RESIZED)])
@pytest.mark.parametrize("augment", [False, True])
def test_dali_cpu_matches_torch(ds, size, atol, augment):
    kw = dict(batch_size=6, size=size, seed=3, augment=augment, pad=4)
    a = take(train_stream(ds.train, backend="torch", workers=0, **kw), 2)
    b = take(train_stream(ds.train, backend="dali", workers=1, **kw), 2)
    for x, y in zip(a, b, strict=True):
        assert_batches_close(x, y, atol)
        assert (x["image"] - y["image"]).abs().mean() < ONE_LEVEL / 20
        assert x["image"].dtype == torch.float32 and x["image"].shape == (6, 3, *size)


@needs_dali
def test_values_are_the_transform(ds):
    # augment off and native size: the image is exactly the normalised file
    from PIL import Image

    b = next(train_stream(ds.train, backend="dali", batch_size=4, size=(64, 32), augment=False, workers=1))
    for img, idx, pid in zip(b["image"], b["index"], b["pid"], strict=True):
        ref = torch.from_numpy(np.array(Image.open(ds.train[int(idx)].path).convert("RGB"))).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        torch.testing.assert_close(img, (ref.float() / 255 - mean) / std, atol=1e-5, rtol=0)
        assert ds.train[int(idx)].pid == int(pid)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flip_and_erasing_rates(ds, backend):
    # pad 0 (no crop shift): each augmented image is the plain image or its mirror, and erasing zeroes a box
    kw = dict(batch_size=8, size=(64, 32), seed=11, pad=0, workers=0 if backend == "torch" else 1)
    plain = train_stream(ds.train, backend=backend, augment=False, **kw)
    aug = train_stream(ds.train, backend=backend, erasing_p=0.5, **kw)
    base = {}
    while len(base) < len(ds.train):  # one plain epoch gives every sample's un-augmented image
        p = next(plain)
        base.update({int(i): im for i, im in zip(p["index"], p["image"], strict=True)})
    flips = erased = n = 0
    for _ in range(12):
        b = next(aug)
        for i, im, er in zip(b["index"], b["image"], b["image_erased"], strict=True):
            ref = base[int(i)]
            same, mirrored = torch.allclose(im, ref, atol=1e-5), torch.allclose(im, ref.flip(-1), atol=1e-5)
            assert same or mirrored
            flips += mirrored and not same
            diff = (er != im).any(0)
            if diff.any():
                erased += 1
                assert (er[:, diff] == 0).all()  # fill 0 in normalised space
                assert 0.015 < diff.float().mean() < 0.42
            n += 1
    assert 0.3 < flips / n < 0.7  # p 0.5, 96 draws: 4 sigma
    assert 0.3 < erased / n < 0.7


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_is_exact(ds, backend):
    kw = dict(backend=backend, batch_size=8, size=(64, 32), seed=5, workers=0 if backend == "torch" else 1)
    s = train_stream(ds.train, **kw)
    per_epoch = s.batches_per_epoch
    take(s, per_epoch - 2)
    state = s.state_dict()
    rest = take(s, 4)  # crosses into the next epoch
    assert s.state_dict()["epoch"] == 1
    r = train_stream(ds.train, **kw)
    r.load_state_dict(state)
    for x, y in zip(rest, take(r, 4), strict=True):
        assert_batches_close(x, y, 0)
    with pytest.raises(ValueError, match="seed"):
        train_stream(ds.train, **{**kw, "seed": 6}).load_state_dict(state)


def test_independent_of_worker_count(ds):
    kw = dict(backend="torch", batch_size=8, size=(64, 32), seed=9)
    a = take(train_stream(ds.train, workers=0, **kw), 3)
    b = take(train_stream(ds.train, workers=2, **kw), 3)
    for x, y in zip(a, b, strict=True):
        assert_batches_close(x, y, 0)


def test_two_streams_differ(ds):
    a = next(train_stream(ds.train, batch_size=8, size=(64, 32), seed=0, workers=0))
    b = next(train_stream(ds.train, batch_size=8, size=(64, 32), seed=1, workers=0))
    assert not torch.equal(a["index"], b["index"])


def test_pk_stream(ds):
    b = next(train_stream(ds.train, batch_size=8, size=(64, 32), mode="pk", num_instances=4, workers=0))
    assert b["pid"].view(2, 4).unique(dim=1).shape[1] == 1 and b["pid"][0] != b["pid"][4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_test_stream(ds, backend):
    s = test_stream(ds.gallery, backend=backend, batch_size=16, size=(128, 64), workers=0 if backend == "torch" else 1)
    batches = list(s)
    assert len(batches) == len(s) == -(-len(ds.gallery) // 16)
    assert set(batches[0]) == {"image", "pid", "camid", "index"}
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(len(ds.gallery)))
    assert torch.cat([b["pid"] for b in batches]).tolist() == [x.pid for x in ds.gallery]
    assert batches[-1]["image"].shape[0] == len(ds.gallery) - 16 * (len(batches) - 1)
    assert len(list(s)) == len(batches)  # re-iterable


@needs_dali
def test_test_stream_backends_agree(ds):
    a = list(test_stream(ds.query, backend="torch", batch_size=5, size=(128, 64), workers=0))
    b = list(test_stream(ds.query, backend="dali", batch_size=5, size=(128, 64), workers=1))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x["image"], y["image"], atol=RESIZED, rtol=0)
        assert torch.equal(x["pid"], y["pid"]) and torch.equal(x["camid"], y["camid"])


def test_bad_input(ds):
    with pytest.raises(ValueError, match="empty"):
        train_stream([])
    with pytest.raises(ValueError, match="empty"):
        test_stream([])
    with pytest.raises(ValueError, match="single image"):
        train_stream(ds.train[:3] + [ds.train[-1]], workers=0)
    with pytest.raises(ValueError, match="loader 'pil'"):
        resolve_backend("pil", "cpu")


@needs_dali
def test_auto_picks_dali_on_cpu():
    assert resolve_backend("auto", "cpu") == "dali"  # DALI's CPU graph works without a GPU
    assert resolve_backend("torch", "cpu") == "torch"


def test_unavailable_dali_is_said_once(monkeypatch, caplog):
    from dgnet.data import streams

    monkeypatch.setattr(streams, "dali_status", lambda: (False, "ImportError: no DALI"))
    monkeypatch.setattr(streams, "_said", set())
    with caplog.at_level(logging.WARNING, logger="dgnet.data"):
        assert resolve_backend("auto", "cpu") == "torch"
        assert resolve_backend("auto", "cpu") == "torch"
    said = [r for r in caplog.records if "DALI is unavailable" in r.getMessage()]
    assert len(said) == 1 and "torch DataLoader" in said[0].getMessage()  # once, naming the fallback
    with pytest.raises(RuntimeError, match="--loader torch"):
        resolve_backend("dali", "cpu")


def test_erasing_and_pad_crop_reference():
    x = torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).view(2, 3, 6, 5) + 1
    out = apply_erasing(x, torch.tensor([[1, 2, 3, 2], [0, 0, 0, 0]]))
    ref = x.clone()
    ref[0, :, 1:4, 2:4] = 0
    assert torch.equal(out, ref) and torch.equal(x[1], out[1])
    img = torch.arange(4 * 5).view(1, 4, 5)
    padded = torch.nn.functional.pad(img[None].float(), (2, 2, 2, 2), mode="replicate")[0]
    for oy in range(5):
        for ox in range(5):
            assert torch.equal(pad_crop(img, (oy, ox), 2).float(), padded[:, oy : oy + 4, ox : ox + 5])


# nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo by a few levels on some pixels: a mean difference
# under 0.02 in normalised units (about one level, ONE_LEVEL ~ 0.0175) per tensor bounds that, and a wrong image
# (another index, another crop or flip, a missed normalisation) differs by about 1 on average.
NVJPEG_MEAN = 0.02


def assert_gpu_batch_matches(x: dict, y: dict, keys: set[str]) -> None:
    """Every output tensor of a DALI batch ``y`` against the torch pipeline's ``x`` on one device: integer tensors
    (identities, cameras, indices) equal; each image tensor finite and within ``NVJPEG_MEAN``; the erased copies
    erased at the same pixels (an erased pixel is exactly 0, which no normalised uint8 level is)."""
    assert set(x) == set(y) == keys
    for k in sorted(keys):
        a, b = x[k], y[k]
        assert a.shape == b.shape and a.dtype == b.dtype and a.device == b.device, k
        if not a.is_floating_point():
            assert torch.equal(a, b), k
            continue
        assert torch.isfinite(b).all(), k
        diff = (a - b).abs().mean().item()
        assert diff < NVJPEG_MEAN, (k, diff)
    for k in sorted(keys & {"image_erased", "positive_erased"}):
        assert torch.equal(x[k] == 0, y[k] == 0), f"{k}: erased at other pixels"


@needs_dali
@pytest.mark.gpu
@pytest.mark.parametrize("augment", [False, True])
def test_dali_gpu_matches_torch(ds, augment):
    kw = dict(batch_size=8, size=(128, 64), seed=2, augment=augment, device="cuda")
    a = take(train_stream(ds.train, backend="torch", workers=2, **kw), 2)
    b = take(train_stream(ds.train, backend="dali", workers=2, **kw), 2)
    for x, y in zip(a, b, strict=True):
        assert x["image"].is_cuda and y["image"].is_cuda
        assert_gpu_batch_matches(x, y, KEYS)


@needs_dali
@pytest.mark.gpu
def test_dali_gpu_test_stream(ds):
    a = list(test_stream(ds.gallery, backend="torch", batch_size=32, size=(128, 64), device="cuda"))
    b = list(test_stream(ds.gallery, backend="dali", batch_size=32, size=(128, 64), device="cuda"))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert y["image"].is_cuda
        assert_gpu_batch_matches(x, y, set(x))


def _graph_ops(outputs) -> list:
    """Every operator instance the DALI output nodes ``outputs`` depend on (each once)."""
    seen, ops, todo = set(), [], list(outputs)
    while todo:
        src = todo.pop().source
        if src is None or src.id in seen:
            continue
        seen.add(src.id)
        ops.append(src)
        todo.extend(src.inputs)
    return ops


@needs_dali
@pytest.mark.parametrize("device_id", [None, 0])
def test_dali_graph_placement(device_id):
    """The GPU training graph, checked where no GPU can build it: nvJPEG (``mixed``) decodes the CPU bytes, every
    operator after it runs on the GPU and exists there, and its only CPU inputs are per-sample arguments
    (flip, crop matrix), which DALI requires on the CPU. The CPU graph (``device_id=None``) is all CPU."""
    import nvidia.dali.backend as dali_backend

    from dgnet.data.pipeline_dali import define_train_graph

    _, outputs = define_train_graph(lambda: None, batch_size=2, size=(64, 32), device_id=device_id)
    gpu = device_id is not None
    assert [o.device for o in outputs] == ["gpu" if gpu else "cpu"] * 2
    registered = {"cpu": set(dali_backend.RegisteredCPUOps()), "gpu": set(dali_backend.RegisteredGPUOps()),
                  "mixed": set(dali_backend.RegisteredMixedOps())}
    ops = _graph_ops(outputs)
    by_device: dict[str, list[str]] = {}
    for src in ops:
        op = src._op  # ExternalSource is a Python-side operator without schema_name; its C++ twin has that name
        name, device = getattr(op, "schema_name", type(op).__name__), op.device
        by_device.setdefault(device, []).append(name)
        assert name in registered[device], f"{name} has no {device} implementation"
        regular = src.spec.NumRegularInput()
        for k, node in enumerate(src.inputs):
            if k >= regular:
                assert node.device == "cpu", f"{name}: argument input {k} on {node.device}"
            elif device == "gpu":
                assert node.device == "gpu", f"{name}: data input {k} on {node.device}"
            else:  # cpu and mixed operators read CPU data
                assert node.device == "cpu", f"{name} ({device}): data input {k} on {node.device}"
    if gpu:
        assert sorted(by_device["mixed"]) == ["decoders__Image"] * 2  # image and positive
        assert sorted(by_device["gpu"]) == sorted(["CropMirrorNormalize", "Flip", "Resize", "WarpAffine"] * 2)
        assert by_device["cpu"] == ["ExternalSource"] * 6  # one instance per external_source output
    else:
        assert set(by_device) == {"cpu"} and len(by_device["cpu"]) == 6 + 2 * 5
