"""Bad input stops with a clear message naming what is wrong (and, for a NaN, keeps the last good checkpoint)."""

import math

import pytest
import torch
from _tiny_run import make_tiny_set, tiny_flags
from _tiny_run import train_fails as fails

from dgnet.checkpoints.format import CheckpointManager, arch_only, build_state, load_checkpoint, save_atomic
from dgnet.config import resolve_config
from dgnet.train import main
from dgnet.training import loop


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_set(tmp_path_factory.mktemp("bad") / "syn")


def test_missing_dataset(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    fails(capsys, ["--config", "market1501", "--data-root", str(missing), "--output", str(tmp_path / "o")],
           str(missing), "market1501")


def test_wrong_layout(tmp_path, capsys):
    bad = tmp_path / "market"
    (bad / "images").mkdir(parents=True)  # a folder, but not the Market-1501 layout
    fails(capsys, ["--config", "market1501", "--data-root", str(bad), "--output", str(tmp_path / "o")],
           str(bad), "bounding_box_train")


def test_unknown_config_key(tmp_path, capsys):
    fails(capsys, ["--set", "model.dropout_primari=0.1", "--output", str(tmp_path / "o")], "model.dropout_primari")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: demo\nloss:\n  gan_weight: 2\n")
    fails(capsys, ["--config", str(cfg), "--output", str(tmp_path / "o")], "loss.gan_weight", "c.yaml")


def test_bad_value_fails_before_any_training(tmp_path, capsys):
    """A zero interval would divide by zero at iteration 1 and an odd size would fail after the whole teacher
    stage: both stop at start-up, named, and nothing is written."""
    out = tmp_path / "o"
    fails(capsys, ["--set", "train.checkpoint_every=0", "--output", str(out)], "train.checkpoint_every=0")
    fails(capsys, ["--set", "data.height=62", "--output", str(out)], "62x32", "multiples of 4")
    fails(capsys, ["--set", "optim.milestones=[1,", "--output", str(out)], "not valid YAML")
    fails(capsys, ["--device", "cuda:x", "--output", str(out)], "cuda:x")
    assert not out.exists()


def test_other_cli_counts_are_checked(capsys):
    from dgnet import generate, visualize

    for mod, argv in ((generate, ["--checkpoint", "x.pt", "--out", "o", "--batch-size", "0"]),
                      (visualize, ["--checkpoint", "x.pt", "--mode", "swap", "--steps", "-1"])):
        with pytest.raises(SystemExit) as e:
            mod.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "expected an integer >= 1" in err and ("--batch-size" in err or "--steps" in err), err


def test_resume_with_a_longer_cap_needs_a_finished_teacher(root, tmp_path, capsys):
    """A smoke run capped at 1 iteration, resumed with --iterations 2, would train DG-Net on against a 1-iteration
    teacher: refused, naming both numbers and the two ways on. The same cap resumes fine."""
    out = tmp_path / "run"
    assert main(tiny_flags(root, out, "--iterations", "1", "--no-eval")) == 0
    fails(capsys, tiny_flags(root, out, "--iterations", "2", "--no-eval", "--resume"),
           "teacher stopped at 1 of 2 iterations", "--iterations 1", "another --output")
    assert main(tiny_flags(root, out, "--iterations", "1", "--no-eval", "--resume")) == 0


def test_fp16_on_cpu_refused(root, tmp_path, capsys):
    fails(capsys, tiny_flags(root, tmp_path / "o", "--amp", "fp16"), "fp16", "CUDA")


def test_teacher_with_other_identity_count(root, tmp_path, capsys):
    from dgnet.models import ReidBaseline

    cfg = resolve_config("demo")
    teacher = ReidBaseline(arch_only(cfg.model), 99)
    path = save_atomic(build_state(stage="teacher", iteration=1, cfg=cfg, num_ids=99, models={"teacher": teacher}),
                       tmp_path / "t.pt")
    fails(capsys, tiny_flags(root, tmp_path / "o", "--teacher", str(path), "--iterations", "1"),
           "t.pt", "99", "6 train identities")
    fails(capsys, tiny_flags(root, tmp_path / "o2", "--teacher", str(tmp_path / "none.pt")), "none.pt")


def test_resume_rules_and_other_config(root, tmp_path, capsys):
    out = tmp_path / "run"
    fails(capsys, tiny_flags(root, out, "--resume"), "no checkpoint", "--resume")
    assert main(tiny_flags(root, out, "--stage", "teacher", "--iterations", "1", "--no-eval")) == 0
    capsys.readouterr()
    # a second fresh run into the same folder would mix two runs' checkpoints
    fails(capsys, tiny_flags(root, out, "--stage", "teacher", "--iterations", "2"), "--resume", "teacher_00000001")
    # resuming with a config that changes what is computed names the key that differs
    fails(capsys, tiny_flags(root, out, "--resume", "--set", "optim.teacher_lr_heads=0.5"),
           "another config", "optim.teacher_lr_heads")
    # what does not change the computation may differ (here the iteration cap and the log interval)
    assert main(tiny_flags(root, out, "--resume", "--stage", "teacher", "--iterations", "2", "--no-eval",
                           "--set", "train.log_every=5")) == 0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(root, tmp_path, capsys, monkeypatch):
    real = loop.teacher_step
    calls = {"n": 0}

    def step(*a, **k):
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            out["loss_id"] = math.nan
        return out

    monkeypatch.setattr(loop, "teacher_step", step)
    out = tmp_path / "run"
    # iteration 3 computes its loss with the weights of checkpoint 2: that one is set aside (renamed, kept for a
    # look, never resumed from) and checkpoint 1, whose weights gave the finite loss of iteration 2, is named
    with pytest.warns(UserWarning, match="teacher_00000002.pt set aside"):
        err = fails(capsys, tiny_flags(root, out, "--stage", "teacher", "--iterations", "5",
                                        "--set", "train.checkpoint_every=1"),
                     "loss_id = nan", "iteration 3", "teacher_00000001.pt", "teacher_00000002.pt.nonfinite")
    assert "--resume --amp bf16" in err and "new run" in err
    mgr = CheckpointManager(out / "checkpoints")
    assert [p.name for p in mgr.list()] == ["teacher_00000001.pt"]
    assert (out / "checkpoints" / "teacher_00000002.pt.nonfinite").is_file()
    good = load_checkpoint(mgr.latest())
    assert all(torch.isfinite(v).all() for v in good["models"]["teacher"].values() if v.is_floating_point())
    assert not (out / "teacher.pt").exists()
