"""Nothing is lost and nothing broken is saved as good: full disks, killed writes, torn and non-finite checkpoints,
files that are not checkpoints, and inputs that used to fail late or unclearly."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from _tiny_run import make_tiny_checkpoint, make_tiny_set, tiny_flags
from _tiny_run import train_fails as fails

from dgnet.checkpoints.format import CheckpointManager, NonFiniteWeights, build_state, load_checkpoint, save_atomic
from dgnet.config import resolve_config
from dgnet.fileio import DiskFull, load_weights_only, remove_stale_temporaries
from dgnet.train import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_set(tmp_path_factory.mktemp("rel") / "syn")


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB file system (tmpfs), or a skip where this machine cannot mount one."""
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small file system here ({r.stderr.decode().strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---- disk full ----------------------------------------------------------------------------------------------------


def test_a_full_disk_stops_with_one_line_and_keeps_what_was_there(small_disk):
    mgr = CheckpointManager(small_disk / "ck")
    first = mgr.save({"format": "x", "models": {"m": {"w": torch.ones(1000)}}}, "teacher", 1)
    before = first.read_bytes()
    with pytest.raises(DiskFull) as e:
        mgr.save({"format": "x", "models": {"m": {"w": torch.ones(8_000_000)}}}, "teacher", 2)  # 32 MB
    msg = str(e.value)
    assert str(small_disk / "ck") in msg and "30.5 MiB" in msg and "free" in msg, msg
    assert first.read_bytes() == before and [p.name for p in (small_disk / "ck").iterdir()] == [first.name]


def test_a_full_disk_during_training_is_one_line(root, small_disk, capsys):
    """The CLI's message names the folder and the bytes; no traceback (the old code showed torch's zip-writer
    'enforce fail at inline_container.cc:672' with 'No space left' only further up)."""
    err = fails(capsys, tiny_flags(root, small_disk / "run", "--stage", "teacher", "--iterations", "1", "--no-eval"),
                 "no space left in", "checkpoints", "are free")
    assert "Traceback" not in err and "inline_container" not in err
    assert not [p for p in (small_disk / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


def test_disk_full_is_recognised_through_torchs_wrapping(tmp_path, monkeypatch):
    """torch.save raises a RuntimeError while handling the OSError; the chain is what says 'no space'."""
    def full(obj, fh):
        fh.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFull, match="no space left in"):
        save_atomic({"models": {}}, tmp_path / "x.pt")
    assert list(tmp_path.iterdir()) == []


# ---- killed writes and torn files ------------------------------------------------------------------------------


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".teacher_00000004.pt.tmp{int(dead.stdout)}"
    live = tmp_path / f".teacher_00000005.pt.tmp{os.getpid()}"  # this process is writing it
    for p in (stale, live):
        p.write_bytes(b"x" * 100)
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


def test_resume_sweeps_first_and_skips_a_torn_newest_checkpoint(root, tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--stage", "teacher", "--no-eval", "--set", "train.checkpoint_every=1"]
    assert main(tiny_flags(root, out, "--iterations", "2", *flags)) == 0
    ck = out / "checkpoints"
    (ck / "teacher_00000002.pt").write_bytes((ck / "teacher_00000002.pt").read_bytes()[:5000])  # torn
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (ck / f".teacher_00000003.pt.tmp{int(dead.stdout)}").write_bytes(b"y" * 1000)
    with pytest.warns(UserWarning, match="teacher_00000002.pt set aside as teacher_00000002.pt.torn"):
        assert main(tiny_flags(root, out, "--iterations", "3", "--resume", *flags)) == 0
    text = capsys.readouterr().out
    assert "resuming from" in text and "teacher_00000001.pt" in text and "tmp" in text
    assert sorted(p.name for p in ck.iterdir()) == ["teacher_00000001.pt", "teacher_00000002.pt",
                                                     "teacher_00000002.pt.torn", "teacher_00000003.pt"]
    assert load_checkpoint(ck / "teacher_00000003.pt")["iteration"] == 3


# ---- non-finite weights ----------------------------------------------------------------------------------------


def test_nothing_non_finite_is_saved(tmp_path):
    cfg = resolve_config("demo")
    state = build_state(stage="teacher", iteration=1, cfg=cfg, num_ids=2, models={})
    state["models"] = {"teacher": {"a.weight": torch.ones(3), "b.bias": torch.tensor([1.0, float("nan")])}}
    with pytest.raises(NonFiniteWeights, match=r"1 tensor\(s\) hold NaN or infinite values \(models.teacher.b.bias\)"):
        save_atomic(state, tmp_path / "x.pt")
    state["models"]["teacher"]["b.bias"] = torch.ones(2)
    state["optimizers"] = {"teacher": {"state": {0: {"momentum_buffer": torch.tensor([float("inf")])}}}}
    with pytest.raises(NonFiniteWeights, match="optimizers.teacher.0.momentum_buffer"):
        CheckpointManager(tmp_path / "ck").save(state, "teacher", 1)
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "ck" / "teacher_00000001.pt").exists()


def test_a_nan_stop_names_a_checkpoint_that_is_really_good(root, tmp_path, capsys):
    """A huge learning rate: the weights blow up. Whatever iteration the stop comes at, the checkpoint it names
    loads, is finite, and resuming starts there (the old code named one holding 96 non-finite tensors)."""
    out = tmp_path / "run"
    err = fails(capsys, tiny_flags(root, out, "--iterations", "6", "--no-eval", "--set", "optim.gen_lr=1e4",
                                    "--set", "optim.id_lr_backbone=1e4", "--set", "train.checkpoint_every=1"),
                 "training stopped", "the last good checkpoint")
    named = Path(err.split("the last good checkpoint, ")[1].split(", is kept")[0])
    ckpt = load_checkpoint(named)
    assert all(torch.isfinite(t).all() for m in ckpt["models"].values() for t in m.values() if t.is_floating_point())
    mgr = CheckpointManager(out / "checkpoints")
    assert mgr.latest() == named  # what --resume would start from


def test_commands_refuse_a_model_with_non_finite_weights(tmp_path, capsys):
    import dgnet
    from dgnet import generate, test, visualize

    path, _, _ = make_tiny_checkpoint(tmp_path)
    ckpt = load_checkpoint(path)
    ckpt["models"]["dgnet"]["Es.model.0.conv.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)  # written past the check, as a file from elsewhere would be
    with pytest.raises(ValueError, match="Es.model.0.conv.weight"):
        dgnet.load_model(bad)
    for mod, argv in ((test, ["--checkpoint", str(bad), "--model", "dgnet", "--device", "cpu"]),
                      (visualize, ["--checkpoint", str(bad), "--mode", "swap", "--device", "cpu"]),
                      (generate, ["--checkpoint", str(bad), "--out", str(tmp_path / "g"), "--device", "cpu"])):
        assert mod.main(argv) == 2
        err = capsys.readouterr().err
        assert "bad.pt" in err and "NaN or infinite" in err and "Es.model.0.conv.weight" in err, err


# ---- files that are not checkpoints ------------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_files_that_are_not_checkpoints_say_why(tmp_path):
    (tmp_path / "random.pt").write_bytes(os.urandom(500))
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "folder.pt").mkdir()
    torch.save({"a": _Evil()}, tmp_path / "evil.pt")
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(100)}, good)
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[:300])
    cases = {"random.pt": "damaged or not a torch file", "empty.pt": "is empty (0 bytes)",
             "folder.pt": "is a folder", "evil.pt": "pickled Python objects", "trunc.pt": "truncated"}
    for name, why in cases.items():
        with pytest.raises(ValueError) as e:
            load_checkpoint(tmp_path / name)
        assert name in str(e.value) and why in str(e.value), str(e.value)
        assert "weights_only=False" not in str(e.value) and "weights_only` set to `False" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_weights_only(tmp_path / "missing.pt", "checkpoint")


def test_bad_backbone_weights_are_a_clear_error(root, tmp_path, capsys):
    torch.save({"a": _Evil()}, tmp_path / "evil.pt")
    good = tmp_path / "r18.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, good)
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[:200])
    for name, why in (("evil.pt", "pickled Python objects"), ("trunc.pt", "truncated")):
        fails(capsys, tiny_flags(root, tmp_path / name.replace(".", "_"), "--backbone-weights",
                                  str(tmp_path / name), "--stage", "teacher", "--iterations", "1", "--no-eval"),
               name, why)


# ---- inputs that failed late -------------------------------------------------------------------------------------


def test_bad_batch_sizes_fail_before_anything_is_written(root, tmp_path, capsys):
    for key, value, why in (("teacher_batch_size", 1, "multiple of 4"), ("batch_size", 1, "at least 2")):
        out = tmp_path / key
        fails(capsys, tiny_flags(root, out, "--set", f"data.{key}={value}"), f"data.{key}={value}", why)
        assert not out.exists()


def test_single_image_identities_are_refused_before_the_teacher_trains(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "singles"
    for split, pids in (("train", range(4)), ("query", range(10, 12)), ("gallery", range(10, 12))):
        for pid in pids:
            (data / split / str(pid)).mkdir(parents=True)
            Image.new("RGB", (32, 64), (pid * 20, 40, 90)).save(data / split / str(pid) / f"{pid}_c1_0.png")
    out = tmp_path / "run"
    argv = tiny_flags(data, out, "--set", "data.dataset=folder", "--iterations", "1", "--no-eval")
    fails(capsys, argv, "single image", "--stage teacher")
    assert not (out / "teacher.pt").exists() and not (out / "checkpoints").exists()


def test_a_trained_runs_data_is_found_from_anywhere_and_never_drawn_again(root, tmp_path):
    """The saved config holds the absolute data root; a checkpoint whose root is gone is an error naming it, and
    no synthetic set is drawn in the working directory (the old dgnet.test drew one under ./data/synthetic)."""
    out = tmp_path / "run"
    assert main(tiny_flags(root, out, "--iterations", "1", "--stage", "teacher", "--no-eval")) == 0
    ckpt = load_checkpoint(out / "teacher.pt")
    assert ckpt["config"]["data"]["root"] == str(root.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ckpt["config"]["data"]["root"] = "data/synthetic"
    moved = tmp_path / "moved.pt"
    torch.save(ckpt, moved)
    r = subprocess.run([sys.executable, "-m", "dgnet.test", "--checkpoint", str(moved), "--device", "cpu"],
                       cwd=elsewhere, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and "data/synthetic" in r.stderr and "--data-root" in r.stderr, r.stderr
    assert not (elsewhere / "data").exists()
    r = subprocess.run([sys.executable, "-m", "dgnet.test", "--checkpoint", str(out / "teacher.pt"), "--device",
                        "cpu", "--loader", "torch", "--no-rerank"], cwd=elsewhere, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and "Rank-1" in r.stdout, r.stderr
