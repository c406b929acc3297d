"""A training run's output folder (dgnet.training, dgnet.runlock): one writer at a time, a dead writer's lock taken
over with a warning, --output that is a file or a folder this user cannot write named in one line, and a --resume
that would change the run's teacher refused with both values."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _tiny_run import make_tiny_set, tiny_flags
from _tiny_run import train_fails as fails

from dgnet import runlock
from dgnet.runlock import LOCK_NAME, StaleLockWarning
from dgnet.train import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
QUICK = ["--stage", "teacher", "--no-eval", "--iterations", "1"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_set(tmp_path_factory.mktemp("runfolder") / "syn")


def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(root, tmp_path, capsys):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "dgnet.train", *tiny_flags(root, out, "--stage", "teacher",
                                                                               "--no-eval", "--iterations", "6")],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while first.poll() is None:  # until the first run holds the folder (its lock names it)
            holder = runlock.read_holder(out / LOCK_NAME)
            if holder is not None and holder.pid == first.pid:
                break
        assert first.poll() is None, first.stderr.read()
        fails(capsys, tiny_flags(root, out, *QUICK), f"pid {first.pid}", "dgnet.train", "in use by",
              "only one writer per folder")
        assert runlock.read_holder(out / LOCK_NAME).pid == first.pid  # the refused run took nothing
    finally:
        err = first.communicate(timeout=600)[1]
    assert first.returncode == 0, err
    assert (out / "teacher.pt").is_file() and not (out / LOCK_NAME).exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["teacher_iterations"] > 1


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_warning(root, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from dgnet.runlock import acquire\n"
                               "with acquire(sys.argv[1], 'dgnet.train'):\n print('held', flush=True); input()",
                               str(out)], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait(60)
    torn = out / f".config.yaml.tmp{holder.pid}"  # what a run killed while it wrote config.yaml leaves
    torn.write_text("preset: de")
    with pytest.warns(StaleLockWarning, match=f"pid {holder.pid} "):
        assert main(tiny_flags(root, out, *QUICK)) == 0
    assert (out / "teacher.pt").is_file() and not (out / LOCK_NAME).exists()
    assert not torn.exists()  # swept: under the lock, no live writer can own it


def test_output_that_is_a_file_says_a_folder_is_expected(root, tmp_path, capsys):
    f = tmp_path / "run.pt"
    f.write_bytes(b"keep me")
    fails(capsys, tiny_flags(root, f, *QUICK), str(f), "is an existing file; expected a folder")
    assert f.read_bytes() == b"keep me"


@pytest.fixture
def read_only(tmp_path):
    """A folder this process cannot write into: chmod for a user, the immutable attribute for root (which chmod
    does not stop); a skip where neither holds."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
    else:
        subprocess.run(["chattr", "+i", str(d)], capture_output=True)
    try:
        (d / "probe").touch()
    except OSError:
        pass
    else:
        (d / "probe").unlink()
        pytest.skip("cannot make a read-only folder here")
    yield d
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(d)], capture_output=True)
    d.chmod(0o755)


def test_a_read_only_output_folder_is_one_line(root, read_only, capsys):
    err = fails(capsys, tiny_flags(root, read_only, *QUICK), str(read_only), "cannot write there")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    fails(capsys, tiny_flags(root, read_only / "sub", *QUICK), str(read_only / "sub"), "cannot write there")


def test_output_under_a_file_is_one_line(root, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    err = fails(capsys, tiny_flags(root, tmp_path / "f" / "run", *QUICK), "cannot write there", "Not a directory")
    assert "Traceback" not in err


def test_resume_keeps_the_runs_teacher(root, tmp_path, capsys):
    own = tmp_path / "own"
    assert main(tiny_flags(root, own, "--stage", "teacher", "--no-eval", "--iterations", "2")) == 0
    other = tmp_path / "other_teacher.pt"
    shutil.copy(own / "teacher.pt", other)
    # a run that trained its own teacher cannot switch to another one on resume
    fails(capsys, tiny_flags(root, own, "--stage", "teacher", "--no-eval", "--iterations", "3", "--resume",
                             "--teacher", str(other)), "trained with no train.teacher", repr(str(other)))

    run = tmp_path / "dg"
    given = ["--stage", "dgnet", "--no-eval", "--iterations", "1", "--set", "train.image_every=100"]
    assert main(tiny_flags(root, run, *given, "--teacher", str(own / "teacher.pt"))) == 0
    fails(capsys, tiny_flags(root, run, *given, "--resume", "--teacher", str(other)),
          repr(str(own / "teacher.pt")), repr(str(other)), "dgnet_00000001.pt")
    # left out on resume, the run's own teacher is kept, and config.yaml still says which it is
    assert main(tiny_flags(root, run, *given, "--resume")) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["teacher"] == str(own / "teacher.pt")


def test_a_good_save_keeps_only_the_newest_set_aside_file_of_each_kind(tmp_path):
    """.torn and .nonfinite files are never resumed from and each is a checkpoint's size: once a good checkpoint
    is written after them, only the newest of each kind stays, for a look."""
    import torch

    from dgnet.checkpoints.format import CheckpointManager

    ck = tmp_path / "checkpoints"
    ck.mkdir()
    aside = ["teacher_00000002.pt.torn", "teacher_00000004.pt.torn", "dgnet_00000001.pt.torn",
             "dgnet_00000003.pt.nonfinite", "dgnet_00000005.pt.nonfinite", "notes.torn"]
    for name in aside:
        (ck / name).write_bytes(b"x" * 100)
    mgr = CheckpointManager(ck)
    mgr.save({"format": "x", "models": {"m": {"w": torch.ones(3)}}}, "dgnet", 6)
    assert sorted(p.name for p in ck.iterdir()) == ["dgnet_00000001.pt.torn", "dgnet_00000005.pt.nonfinite",
                                                   "dgnet_00000006.pt", "notes.torn"]  # not a set-aside name
    assert [p.name for p in mgr.set_aside_files("torn")] == ["dgnet_00000001.pt.torn"]  # newest: stage, iteration
