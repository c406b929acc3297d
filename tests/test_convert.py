"""Importing the DG-Net reference's and Person_reID_baseline_pytorch's checkpoints (dgnet.convert).

The reference-format files are written here from dgnet's own modules with seeded weights, following the format
facts (key names, their order, the shapes, the unused entries), written out below on their own, not with the
importer's layout code: a round trip through them must give back every tensor bit for bit, and the converted
model must compute what the original does.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from dgnet.checkpoints.format import load_checkpoint
from dgnet.config import ModelConfig
from dgnet.convert import main
from dgnet.models import DGNet, ReidBaseline

IDS = 7
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------- the format, from the facts
def _conv(out: dict, sd: dict, ref: str, ours: str, norm: tuple[str, ...] = ()) -> None:
    """A reference conv block: the norm's entries, then ``conv.weight``, ``conv.bias``."""
    for k in norm:
        out[f"{ref}.norm.{k}"] = sd[f"{ours}.norm.{k}"]
    out[f"{ref}.conv.weight"], out[f"{ref}.conv.bias"] = sd[f"{ours}.conv.weight"], sd[f"{ours}.conv.bias"]


def reference_gen(model: DGNet) -> dict:
    """The reference's ``gen`` state dict of ``model``'s Es and G (4 residual blocks each, ASPP, 8 MLPs)."""
    sd, out = model.state_dict(), collections.OrderedDict()
    for i in range(4):  # content encoder: four conv blocks (InstanceNorm without affine: no entries)
        _conv(out, sd, f"enc_content.model.{i}", f"Es.model.{i}")
    for k in range(4):
        _conv(out, sd, f"enc_content.model.4.model.{k}.model.0", f"Es.model.{4 + k}.block1")
        _conv(out, sd, f"enc_content.model.4.model.{k}.model.1", f"Es.model.{4 + k}.block2")
    _conv(out, sd, "enc_content.model.5.conv1", "Es.model.8.branch1")
    for b, name in enumerate(("conv6", "conv12", "conv18")):
        _conv(out, sd, f"enc_content.model.5.{name}.0", f"Es.model.8.branches.{b}.0")
        _conv(out, sd, f"enc_content.model.5.{name}.1", f"Es.model.8.branches.{b}.1")
    _conv(out, sd, "enc_content.model.5.fuse", "Es.model.8.fuse")
    for k in range(4):  # decoder: 0 is a dropout, 1 the AdaIN residual blocks, whose AdaINs hold unused buffers
        for j, conv in enumerate(("conv1", "conv2")):
            ref = f"dec.model.1.model.{k}.model.{j}"
            out[f"{ref}.norm.running_mean"] = torch.zeros(128)
            out[f"{ref}.norm.running_var"] = torch.ones(128)
            out[f"{ref}.conv.weight"], out[f"{ref}.conv.bias"] = sd[f"G.blocks.{k}.{conv}.weight"], sd[
                f"G.blocks.{k}.{conv}.bias"]
    _conv(out, sd, "dec.model.3", "G.up.1", norm=("gamma", "beta"))  # 2 and 4 are the upsamples
    _conv(out, sd, "dec.model.5", "G.up.3", norm=("gamma", "beta"))
    for i in (6, 7, 8):
        _conv(out, sd, f"dec.model.{i}", f"G.up.{i - 2}")
    for kind in ("w", "b"):
        for k in range(4):
            for j in range(3):
                for p in ("weight", "bias"):
                    out[f"mlp_{kind}{k + 1}.model.{j}.fc.{p}"] = sd[f"G.mlp_{kind}.{k}.fc{j + 1}.{p}"]
    return out


def _class_block(out: dict, sd: dict, ref: str, ours: str) -> None:
    for p in ("weight", "bias"):
        out[f"{ref}.add_block.0.{p}"] = sd[f"{ours}.bottleneck.{p}"]
    for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        out[f"{ref}.add_block.1.{p}"] = sd[f"{ours}.bn.{p}"]
    for p in ("weight", "bias"):
        out[f"{ref}.classifier.0.{p}"] = sd[f"{ours}.classifier.{p}"]


def _resnet(out: dict, sd: dict, prefix: str, seed: int) -> None:
    """``model.*``: the trunk under torchvision's names, then its ImageNet fc (unused; random here)."""
    for k, v in sd.items():
        if k.startswith(prefix):
            out["model." + k.removeprefix(prefix)] = v
    g = torch.Generator().manual_seed(seed)
    out["model.fc.weight"], out["model.fc.bias"] = torch.randn(1000, 2048, generator=g), torch.randn(1000, generator=g)


def reference_id(model: DGNet) -> dict:
    sd, out = model.state_dict(), collections.OrderedDict()
    _resnet(out, sd, "Ea.backbone.", seed=1)
    _class_block(out, sd, "classifier1", "Ea.head_primary")
    _class_block(out, sd, "classifier2", "Ea.head_fine")
    return out


def reference_dis(model: DGNet) -> dict:
    sd, out = model.state_dict(), collections.OrderedDict()
    for s in range(3):
        for i in range(5):
            _conv(out, sd, f"cnns.{s}.{i}", f"D.nets.{s}.{i}")
        for i in range(5, 9):
            _conv(out, sd, f"cnns.{s}.{i}.model.0", f"D.nets.{s}.{i}.block1")
            _conv(out, sd, f"cnns.{s}.{i}.model.1", f"D.nets.{s}.{i}.block2")
        out[f"cnns.{s}.9.weight"], out[f"cnns.{s}.9.bias"] = sd[f"D.nets.{s}.9.weight"], sd[f"D.nets.{s}.9.bias"]
    return out


def baseline_ft_net(teacher: ReidBaseline) -> dict:
    sd, out = teacher.state_dict(), collections.OrderedDict()
    _resnet(out, sd, "backbone.", seed=2)
    _class_block(out, sd, "classifier", "head")
    return out


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Weights and BatchNorm statistics away from their init, so a tensor loaded into the wrong place shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.05)
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
            elif name.endswith("num_batches_tracked"):
                t.fill_(1234)


def _resnet50(**kw) -> ModelConfig:
    return ModelConfig(backbone="resnet50", backbone_weights="none", **kw)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """A reference run folder (``checkpoints/`` with gen, id, dis at iteration 100000; gen in the legacy
    serialisation) and a baseline teacher (``teacher/net_last.pth``, stride 2 in its ``opts.yaml``), with the
    dgnet models they were written from."""
    root = tmp_path_factory.mktemp("reference")
    torch.manual_seed(0)
    model = DGNet(_resnet50(), IDS)
    _perturb(model, 1)
    teacher = ReidBaseline(_resnet50(last_stride=2), IDS)
    _perturb(teacher, 2)
    ck = root / "run" / "checkpoints"
    ck.mkdir(parents=True)
    torch.save({"a": reference_gen(model)}, ck / "gen_00100000.pt", _use_new_zipfile_serialization=False)
    torch.save({"a": reference_id(model)}, ck / "id_00100000.pt")
    torch.save({"a": reference_dis(model)}, ck / "dis_00100000.pt")
    torch.save({"a": {"stale": torch.zeros(1)}}, ck / "gen_00050000.pt")  # an older, unusable save: never read
    (root / "teacher").mkdir()
    torch.save(baseline_ft_net(teacher), root / "teacher" / "net_last.pth")
    (root / "teacher" / "opts.yaml").write_text(yaml.safe_dump({"stride": 2, "droprate": 0.3, "name": "best"}))
    return {"root": root, "checkpoints": ck, "model": model.eval(), "teacher": teacher.eval(),
            "net_last": root / "teacher" / "net_last.pth"}


@pytest.fixture(scope="module")
def converted(reference_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "dgnet.pt"
    r = reference_run
    assert main(["reference", "--checkpoints", str(r["checkpoints"]), "--teacher", str(r["net_last"]),
                 "--num-ids", str(IDS), "--config", "market1501", "--out", str(out)]) == 0
    return out


# ----------------------------------------------------------------------------------- the facts themselves
def test_the_written_files_have_the_reference_format(reference_run):
    """The fixture follows the format facts: parameter counts of the reference's modules (ImageNet fc included),
    16 AdaIN buffers, each LayerNorm conv block's norm before its conv, ``{'a': ...}`` and nothing else, and a
    gen file in the legacy serialisation."""
    ck = reference_run["checkpoints"]
    files = {k: torch.load(ck / f"{k}_00100000.pt", weights_only=True) for k in ("gen", "id", "dis")}
    assert all(list(f) == ["a"] for f in files.values())
    buffers = ("running_mean", "running_var", "num_batches_tracked")

    def params(sd):
        return sum(v.numel() for k, v in sd.items() if not k.endswith(buffers))

    # the counts measured at Market-1501's 751 identities; each classifier has 512 + 1 parameters per identity
    fewer = (751 - IDS) * 513
    assert params(files["gen"]["a"]) == 380_544 + 1_455_555 + 11_544_576
    assert params(files["id"]["a"]) == 26_378_782 - 2 * fewer + 2_049_000
    assert params(files["dis"]["a"]) == 1_025_571
    assert params(torch.load(reference_run["net_last"], weights_only=True)) == 24_943_407 - fewer + 2_049_000
    gen_keys = list(files["gen"]["a"])
    assert sum(k.endswith(("norm.running_mean", "norm.running_var")) for k in gen_keys) == 16
    for block in ("dec.model.3", "dec.model.5"):
        assert gen_keys.index(f"{block}.norm.beta") < gen_keys.index(f"{block}.conv.weight")
    assert "model.fc.weight" in files["id"]["a"]
    assert not zipfile.is_zipfile(ck / "gen_00100000.pt") and zipfile.is_zipfile(ck / "id_00100000.pt")


# ----------------------------------------------------------------------------------- the reference command
def test_round_trip_is_exact(reference_run, converted):
    ckpt = load_checkpoint(converted)
    assert ckpt["stage"] == "dgnet" and ckpt["iteration"] == 100_000 and ckpt["num_ids"] == IDS
    for name, original in (("dgnet", reference_run["model"]), ("teacher", reference_run["teacher"])):
        got, want = ckpt["models"][name], original.state_dict()
        assert list(got) == list(want), name
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (name, k)
    cfg = ckpt["config"]
    assert (cfg["model"]["backbone"], cfg["model"]["num_ids"], cfg["model"]["last_stride"]) == ("resnet50", IDS, 1)
    assert (cfg["data"]["height"], cfg["data"]["width"], cfg["data"]["dataset"]) == (256, 128, "market1501")
    assert cfg["train"]["amp"] == "off" and cfg["model"]["teacher_dropout"] is True  # the preset's parity defaults
    assert ckpt["arch"]["teacher"]["last_stride"] == 2 and ckpt["arch"]["teacher"]["dropout_primary"] == 0.5


def test_converted_model_computes_what_the_original_does(reference_run, converted):
    """Through the public API: the same outputs as the model the files were written from (float64, so a
    tensor in the wrong place could not hide in rounding)."""
    import dgnet

    model, teacher = reference_run["model"].double(), reference_run["teacher"].double()
    try:
        loaded = dgnet.load_model(converted).double()
        loaded_teacher = dgnet.load_model(converted, which="teacher").double()
        g = torch.Generator().manual_seed(3)
        x, y = torch.randn(2, 3, 64, 32, generator=g).double(), torch.randn(2, 3, 64, 32, generator=g).double()
        with torch.no_grad():
            f, s = loaded.Ea(x)[0], loaded.Es(x.mean(1, keepdim=True))
            for got, want in zip(loaded.Ea(y), model.Ea(y), strict=True):
                assert torch.equal(got, want)
            assert torch.equal(loaded.Ea.features(y)[1], model.Ea.features(y)[1])
            assert torch.equal(s, model.Es(x.mean(1, keepdim=True)))
            img = loaded.G(s, f)
            assert torch.equal(img, model.G(s, f))
            for got, want in zip(loaded.D(img), model.D(img), strict=True):
                assert torch.equal(got, want)
            assert torch.equal(loaded_teacher(y), teacher(y))
            assert loaded_teacher.backbone(y).shape[2:] == (2, 1)  # stride 2 in layer4: 64x32 -> 2x1
    finally:
        model.float()
        teacher.float()
    # FeatureExtractor: the test protocol's feature at the checkpoint's 256x128
    from dgnet.evaluation.protocol import embed

    fx = dgnet.FeatureExtractor(converted, device="cpu", batch_size=2)
    x = torch.randn(2, 3, 256, 128, generator=torch.Generator().manual_seed(4))
    assert torch.equal(fx(x), embed(reference_run["model"], "dgnet", x, 0.5))


def test_a_legacy_serialised_file_loads(tmp_path):
    from dgnet.fileio import load_weights_only

    state = {"a": collections.OrderedDict(w=torch.arange(6.0).view(2, 3), n=torch.tensor(5))}
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(tmp_path / "old.pt")
    got = load_weights_only(tmp_path / "old.pt", "file")
    assert list(got) == ["a"] and all(torch.equal(got["a"][k], state["a"][k]) for k in state["a"])


def test_another_identity_count_names_the_file_key_and_shapes(reference_run, tmp_path, capsys):
    assert main(["reference", "--checkpoints", str(reference_run["checkpoints"]), "--num-ids", str(IDS + 3),
                 "--config", "market1501", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "id_00100000.pt" in err and "'classifier1.classifier.0.weight'" in err
    assert f"({IDS}, 512)" in err and f"({IDS + 3}, 512)" in err and "identities" in err
    assert not (tmp_path / "x.pt").exists()


def test_missing_inputs_are_named(reference_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "gen_00000010.pt").write_bytes(b"")
    cases = [
        (["reference", "--checkpoints", str(tmp_path / "nope"), "--num-ids", "7"], str(tmp_path / "nope")),
        (["reference", "--checkpoints", str(empty), "--num-ids", "7"], "no gen_XXXXXXXX.pt with an id_XXXXXXXX.pt"),
        (["reference", "--checkpoints", str(reference_run["checkpoints"]), "--num-ids", str(IDS),
          "--config", "market1501", "--teacher", str(tmp_path / "net_last.pth")], str(tmp_path / "net_last.pth")),
        (["baseline", "--weights", str(tmp_path / "w.pth")], str(tmp_path / "w.pth")),
    ]
    for argv, named in cases:
        assert main([*argv, "--out", str(tmp_path / "o.pt")]) == 2, argv
        assert named in capsys.readouterr().err, argv


def test_a_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):  # unpickling would call open(marker, "w"), creating the file
            return (open, (str(marker), "w"))

    bad = tmp_path / "run"
    bad.mkdir()
    torch.save({"a": {"x": Payload()}}, bad / "gen_00000001.pt")
    torch.save({"a": {}}, bad / "id_00000001.pt")
    assert main(["reference", "--checkpoints", str(bad), "--num-ids", "7", "--config", "market1501",
                 "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err
    assert "gen_00000001.pt" in err and "holds pickled Python objects" in err and "never runs code" in err
    assert not marker.exists()


def test_non_finite_weights_are_refused_by_name(reference_run, tmp_path, capsys):
    """A diverged or fp16-overflowed reference run: the first tensor with a NaN is named, nothing is written."""
    run = tmp_path / "run"
    run.mkdir()
    for kind in ("id", "dis"):
        os.symlink(reference_run["checkpoints"] / f"{kind}_00100000.pt", run / f"{kind}_00100000.pt")
    gen = reference_gen(reference_run["model"])
    gen["dec.model.3.norm.gamma"] = gen["dec.model.3.norm.gamma"].clone().fill_(float("nan"))
    torch.save({"a": gen}, run / "gen_00100000.pt")
    assert main(["reference", "--checkpoints", str(run), "--num-ids", str(IDS), "--config", "market1501",
                 "--out", str(tmp_path / "o.pt")]) == 2
    assert "'dec.model.3.norm.gamma' holds NaN or infinite values" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_the_run_config_is_read_and_checked(reference_run, tmp_path, capsys):
    """``config.yaml`` above ``checkpoints/``: ID_class stands in for --num-ids, ID_stride becomes Ea's stride, a
    setting dgnet does not implement is refused by name, a contradicting --num-ids too."""
    from dgnet.checkpoints.reference import REFERENCE_SETTINGS

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for f in reference_run["checkpoints"].glob("*_00100000.pt"):
        os.symlink(f, run / "checkpoints" / f.name)
    conf = {"ID_class": IDS, "ID_stride": 2, "crop_image_height": 256, "crop_image_width": 128,
            "gen": {k.split(".")[1]: v for k, v in REFERENCE_SETTINGS.items() if k.startswith("gen.")},
            **{k: v for k, v in REFERENCE_SETTINGS.items() if "." not in k}}
    (run / "config.yaml").write_text(yaml.safe_dump(conf))
    out = tmp_path / "o.pt"
    assert main(["reference", "--checkpoints", str(run / "checkpoints"), "--config", "market1501",
                 "--out", str(out)]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["num_ids"] == IDS and ckpt["config"]["model"]["last_stride"] == 2
    assert main(["reference", "--checkpoints", str(run), "--num-ids", str(IDS + 1), "--out", str(out)]) == 2
    assert "ID_class: 7, but --num-ids is 8" in capsys.readouterr().err
    (run / "config.yaml").write_text(yaml.safe_dump({**conf, "pool": "avg"}))
    assert main(["reference", "--checkpoints", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "config.yaml: pool: 'avg'" in err and "pool: 'max'" in err


def test_a_multi_gpu_dis_file_and_no_dis_file(reference_run, tmp_path):
    """A dis saved through DataParallel (``module.`` keys) imports as the plain one; without any dis file D keeps
    a fresh initialisation and everything else imports."""
    run = tmp_path / "run"
    run.mkdir()
    for kind in ("gen", "id"):
        os.symlink(reference_run["checkpoints"] / f"{kind}_00100000.pt", run / f"{kind}_00100000.pt")
    dis = reference_dis(reference_run["model"])
    torch.save({"a": {f"module.{k}": v for k, v in dis.items()}}, run / "dis_00100000.pt")
    assert main(["reference", "--checkpoints", str(run), "--num-ids", str(IDS), "--config", "market1501",
                 "--out", str(tmp_path / "a.pt")]) == 0
    want = reference_run["model"].state_dict()
    got = load_checkpoint(tmp_path / "a.pt")["models"]["dgnet"]
    assert all(torch.equal(got[k], want[k]) for k in want)
    (run / "dis_00100000.pt").unlink()
    assert main(["reference", "--checkpoints", str(run), "--num-ids", str(IDS), "--config", "market1501",
                 "--out", str(tmp_path / "b.pt")]) == 0
    got = load_checkpoint(tmp_path / "b.pt")["models"]["dgnet"]
    assert all(torch.equal(got[k], want[k]) for k in want if not k.startswith("D."))
    assert not torch.equal(got["D.nets.0.0.conv.weight"], want["D.nets.0.0.conv.weight"])


# ----------------------------------------------------------------------------------- the baseline command
def test_baseline_teacher_stride_from_opts_and_default_2(reference_run, tmp_path):
    from dgnet.checkpoints.runs import load_teacher

    out = tmp_path / "teacher.pt"
    assert main(["baseline", "--weights", str(reference_run["net_last"]), "--config", "market1501",
                 "--out", str(out)]) == 0
    teacher, ckpt = load_teacher(out, IDS, torch.device("cpu"))  # what dgnet.train --teacher does
    assert ckpt["stage"] == "teacher" and teacher.model_cfg.last_stride == 2
    want = reference_run["teacher"].state_dict()
    assert all(torch.equal(teacher.state_dict()[k], want[k]) for k in want)
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(teacher(x), reference_run["teacher"](x))
    # opts.yaml with stride 1; no opts.yaml at all: the reference's default, 2
    for opts, stride in (({"stride": 1}, 1), (None, 2)):
        d = tmp_path / f"t{stride}"
        d.mkdir()
        os.symlink(reference_run["net_last"], d / "net_last.pth")
        if opts is not None:
            (d / "opts.yaml").write_text(yaml.safe_dump(opts))
        assert main(["baseline", "--weights", str(d / "net_last.pth"), "--config", "market1501",
                     "--out", str(d / "t.pt")]) == 0
        assert load_checkpoint(d / "t.pt")["arch"]["teacher"]["last_stride"] == stride


def test_baseline_other_models_and_wrong_files_are_refused(reference_run, tmp_path, capsys):
    d = tmp_path / "dense"
    d.mkdir()
    os.symlink(reference_run["net_last"], d / "net_last.pth")
    (d / "opts.yaml").write_text(yaml.safe_dump({"use_dense": True, "stride": 2}))
    assert main(["baseline", "--weights", str(d / "net_last.pth"), "--config", "market1501",
                 "--out", str(tmp_path / "o.pt")]) == 2
    assert "use_dense: True" in capsys.readouterr().err
    # a DG-Net id file is not a baseline state dict
    assert main(["baseline", "--weights", str(reference_run["checkpoints"] / "id_00100000.pt"),
                 "--out", str(tmp_path / "o.pt")]) == 2
    assert "a DG-Net reference file" in capsys.readouterr().err
    # 7 identities match no real-dataset preset: the config must be named
    assert main(["baseline", "--weights", str(reference_run["net_last"]), "--out", str(tmp_path / "o.pt")]) == 2
    assert "--config" in capsys.readouterr().err


def test_convert_runs_as_a_command(reference_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "dgnet.convert", "baseline", "--weights", str(reference_run["net_last"]),
                        "--config", "market1501", "--out", str(tmp_path / "t.pt")], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "teacher" in p.stdout and (tmp_path / "t.pt").is_file()
