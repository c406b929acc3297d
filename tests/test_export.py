"""python -m dgnet.export (dgnet.inference.export): every format runs in its own runtime at two batch sizes and matches
PyTorch: the reid part against dgnet.FeatureExtractor (the test protocol through dgnet.evaluation.protocol.embed), the
generator against a --fused model's own encode/decode (the C++ AdaIN kernel), so the exported reference
decomposition is checked against the fused op it stands for. Bad input is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dgnet.checkpoints.format import arch_only, build_state, load_checkpoint, save_atomic
from dgnet.checkpoints.runs import build_model
from dgnet.config import resolve_config
from dgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dgnet.export import main
from dgnet.inference.export import Generator, ReidFeatures, read_metadata
from dgnet.inference.extractor import FeatureExtractor, checkpoint_identity
from dgnet.models import DGNet, ReidBaseline

NUM_IDS = 6
SIZE = (64, 32)  # the demo preset's input (height, width)
ALPHA = 0.7  # not the default 0.5: the exported graph must take the checkpoint's own
BATCHES = (1, 3)  # the graphs are traced at batch 2: both differ from it
FEATURE_RTOL = 1e-4  # max |exported - PyTorch| / max |PyTorch|
IMAGE_RTOL = 1e-3
SUFFIX = {"onnx": "onnx", "torchscript": "ts.pt", "exported-program": "pt2"}


def _rel(got, want: torch.Tensor) -> float:
    got = torch.as_tensor(np.asarray(got))
    assert got.shape == want.shape, (got.shape, want.shape)
    return float((got - want).abs().max() / want.abs().max())


def _settle_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Running statistics away from their (0, 1) init, so the graphs must carry eval-mode BatchNorm as trained."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A --fused DG-Net checkpoint (``dgnet.pt``, with its teacher) and a teacher-only one (``teacher.pt``)."""
    folder = tmp_path_factory.mktemp("ckpt")
    # fold_upsample "on": the fused decoder runs all three fast paths (AdaIN kernel, grouped MLP, folded upsample)
    cfg = resolve_config("demo", {"train": {"fused": True, "fold_upsample": "on"}, "eval": {"alpha": ALPHA}})
    assert (cfg.data.height, cfg.data.width) == SIZE
    torch.manual_seed(0)
    teacher = ReidBaseline(arch_only(cfg.model), NUM_IDS)
    model = DGNet(arch_only(cfg.model), NUM_IDS, fused=True, fold_upsample="on")
    _settle_batchnorm(teacher, 1)
    _settle_batchnorm(model, 2)
    dg = save_atomic(build_state(stage="dgnet", iteration=7, cfg=cfg, num_ids=NUM_IDS,
                                 models={"dgnet": model, "teacher": teacher}), folder / "dgnet.pt")
    te = save_atomic(build_state(stage="teacher", iteration=3, cfg=cfg, num_ids=NUM_IDS, models={"teacher": teacher}),
                     folder / "teacher.pt")
    return {"dgnet": dg, "teacher": te}


@pytest.fixture(scope="module")
def export(ckpts, tmp_path_factory):
    """``export(fmt, part, checkpoint="dgnet", model=None)`` -> the file, exported once per module through the
    command line."""
    folder = tmp_path_factory.mktemp("exported")
    done: dict[tuple, object] = {}

    def run(fmt: str, part: str, checkpoint: str = "dgnet", model: str | None = None):
        key = (fmt, part, checkpoint, model)
        if key not in done:
            out = folder / f"{checkpoint}-{part}-{model}.{SUFFIX[fmt]}"
            argv = ["--checkpoint", str(ckpts[checkpoint]), "--format", fmt, "--part", part, "--out", str(out)]
            assert main(argv + (["--model", model] if model else [])) == 0
            done[key] = out
        return done[key]

    return run


def _runner(fmt: str, path):
    """A callable running the exported file in its own runtime: tensors in, one output as a numpy array."""
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return lambda *xs: sess.run(None, {n: x.numpy() for n, x in zip(names, xs, strict=True)})[0]
    if fmt == "torchscript":
        mod = torch.jit.load(str(path))
    else:
        mod = torch.export.load(str(path)).module()

    def call(*xs):
        with torch.no_grad():
            return mod(*xs).numpy()

    return call


def _images(n: int, seed: int) -> list[np.ndarray]:
    """uint8 RGB images of another size than the model's: preprocess() resizes them."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (100, 45, 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
def test_reid_features_match_the_feature_extractor(fmt, ckpts, export):
    fx = FeatureExtractor(ckpts["dgnet"], device="cpu", which="dgnet")
    run = _runner(fmt, export(fmt, "reid"))
    for n in BATCHES:
        x = fx.preprocess(_images(n, seed=n))  # the exported input is exactly what preprocess() makes
        want = fx(x)
        assert want.shape == (n, 1024)
        assert _rel(run(x), want) <= FEATURE_RTOL, (fmt, n)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
def test_generator_matches_the_fused_model(fmt, ckpts, export):
    model = build_model(load_checkpoint(ckpts["dgnet"]), "dgnet")  # as trained: --fused, the C++ AdaIN kernel
    assert model.fused and model.G.fold_upsample == "on"
    run = _runner(fmt, export(fmt, "generator"))
    fx = FeatureExtractor(ckpts["dgnet"], device="cpu")
    for n in BATCHES:
        structure, appearance = fx.preprocess(_images(n, seed=10 + n)), fx.preprocess(_images(n, seed=20 + n))
        with torch.no_grad():
            want = model.decode(model.encode(structure)[1], model.encode(appearance)[0])
        assert want.shape == (n, 3, *SIZE)
        assert _rel(run(structure, appearance), want) <= IMAGE_RTOL, (fmt, n)


def test_onnx_interface_and_no_custom_ops(export):
    import onnx
    import onnxruntime as ort

    for part, ins, outs in (("reid", ["images"], ["features"]), ("generator", ["structure", "appearance"], ["image"])):
        path = export("onnx", part)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == ins and [o.name for o in sess.get_outputs()] == outs
        for i in sess.get_inputs():
            assert i.shape[0] == "batch" and i.shape[1:] == [3, *SIZE] and i.type == "tensor(float)"
        assert sess.get_outputs()[0].shape[0] == "batch"
        # the fused kernels' reference decomposition: only standard ONNX operators, nothing from dgnet's library
        domains = {node.domain for node in onnx.load(str(path)).graph.node}
        assert domains <= {"", "ai.onnx"}, domains


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported-program"])
def test_metadata_says_how_to_feed_the_graph(fmt, ckpts, export):
    ckpt = load_checkpoint(ckpts["dgnet"])
    reid, gen = read_metadata(export(fmt, "reid")), read_metadata(export(fmt, "generator"))
    for meta in (reid, gen):
        assert meta["format"] == "dgnet-export" and meta["export_format"] == fmt
        assert meta["input_size"] == list(SIZE)
        assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)
        assert meta["checkpoint"] == {"file": "dgnet.pt", "identity": checkpoint_identity(ckpt), "stage": "dgnet",
                                      "iteration": 7, "num_ids": NUM_IDS}
    assert (reid["part"], reid["model"], reid["alpha"], reid["feature_dim"]) == ("reid", "dgnet", ALPHA, 1024)
    assert reid["inputs"] == {"images": ["N", 3, *SIZE]} and reid["outputs"] == {"features": ["N", 1024]}
    assert gen["part"] == "generator" and "alpha" not in gen
    assert gen["inputs"] == {"structure": ["N", 3, *SIZE], "appearance": ["N", 3, *SIZE]}
    assert gen["outputs"] == {"image": ["N", 3, *SIZE]}


def test_teacher_checkpoint_exports_its_512d_feature(ckpts, export):
    path = export("onnx", "reid", checkpoint="teacher")
    fx = FeatureExtractor(ckpts["teacher"], device="cpu", which="teacher")
    run = _runner("onnx", path)
    for n in BATCHES:
        x = fx.preprocess(_images(n, seed=30 + n))
        want = fx(x)
        assert want.shape == (n, 512)
        assert _rel(run(x), want) <= FEATURE_RTOL, n
    meta = read_metadata(path)
    assert (meta["model"], meta["feature_dim"], meta["alpha"]) == ("teacher", 512, None)
    assert meta["checkpoint"]["stage"] == "teacher"


def test_the_parts_copy_the_model(ckpts):
    """Exporting never changes the caller's model, nor draws from its random stream."""
    model = build_model(load_checkpoint(ckpts["dgnet"]), "dgnet")
    state = torch.random.get_rng_state()
    gen, reid = Generator(model, SIZE), ReidFeatures(model, "dgnet", ALPHA, SIZE)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.fused and not gen.G.fused and all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in [*gen.parameters(), *reid.parameters()])
    for k, v in model.G.state_dict().items():
        assert torch.equal(gen.G.state_dict()[k], v) and gen.G.state_dict()[k].data_ptr() != v.data_ptr(), k


def _fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)


def test_bad_input_is_named(ckpts, tmp_path, capsys):
    out = str(tmp_path / "m.onnx")
    not_ckpt = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, not_ckpt)
    _fails(capsys, ["--checkpoint", str(not_ckpt), "--format", "onnx", "--out", out],
           str(not_ckpt), "is not a dgnet checkpoint")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    _fails(capsys, ["--checkpoint", str(text), "--format", "onnx", "--out", out], str(text), "not a torch file")
    _fails(capsys, ["--checkpoint", str(tmp_path / "absent.pt"), "--format", "onnx", "--out", out],
           "absent.pt", "does not exist")
    teacher = str(ckpts["teacher"])
    _fails(capsys, ["--checkpoint", teacher, "--format", "onnx", "--part", "generator", "--out", out],
           teacher, "holds no DG-Net generator", "['teacher']")
    _fails(capsys, ["--checkpoint", teacher, "--format", "torchscript", "--model", "dgnet", "--out", out],
           teacher, "holds no dgnet model")
    _fails(capsys, ["--checkpoint", str(ckpts["dgnet"]), "--format", "onnx", "--part", "generator", "--model",
                    "teacher", "--out", out], "only --model dgnet")
    _fails(capsys, ["--checkpoint", teacher, "--format", "exported-program", "--out", str(tmp_path / "m.pt")],
           "m.pt", "must end in .pt2")
    assert not list(tmp_path.glob("m.*"))
    with pytest.raises(SystemExit) as exc:
        main(["--checkpoint", teacher, "--format", "tflite", "--out", out])
    assert exc.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err


def test_read_metadata_refuses_other_files(tmp_path):
    plain = tmp_path / "plain.pt2"
    mod = torch.nn.Linear(2, 2)
    torch.export.save(torch.export.export(mod, (torch.zeros(1, 2),)), plain)
    with pytest.raises(ValueError, match=r"plain\.pt2.*carries no dgnet metadata"):
        read_metadata(plain)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 7)
    with pytest.raises(ValueError, match=r"junk\.onnx.*neither an ONNX file"):
        read_metadata(junk)
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        read_metadata(tmp_path / "absent.onnx")
