"""SIGINT and SIGTERM during training (dgnet.training.preemption): the iteration in progress finishes, a checkpoint
is written, the command says where and how to resume and exits 128 + the signal; --resume then gives the same
weights and losses as a run never stopped, bit for bit. A second signal ends the process at once. Under torchrun
every rank stops after the same iteration, whichever rank was signalled.

The signals are real: sent to the training process by itself at a chosen call of a training step (a fixed
iteration), or by the test from outside once metrics.jsonl shows an iteration.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _dist_workers import signalled_train_worker, spawn_ranks
from _tiny_run import make_tiny_set, tiny_flags

from dgnet.checkpoints.format import load_checkpoint
from dgnet.runlock import LOCK_NAME
from dgnet.train import main
from dgnet.training import loop

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TEACHER = ["--stage", "teacher", "--no-eval", "--set", "train.checkpoint_every=100",
           "--set", "optim.teacher_milestones=[3]"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_set(tmp_path_factory.mktemp("preempt") / "syn")


def _signal_at(monkeypatch, name: str, call: int, *signums: int) -> None:
    """Make ``loop.<name>`` send ``signums`` to this process at its ``call``-th call (1-based), then step."""
    real = getattr(loop, name)
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            for s in signums:
                os.kill(os.getpid(), s)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, name, step)


def _metrics(out: Path, stage: str) -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "it_per_s")} for r in lines if r["stage"] == stage]


def _same_weights(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    for model in ca["models"]:
        sa, sb = ca["models"][model], cb["models"][model]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (model, k)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_the_iteration_and_resume_is_exact(root, tmp_path, monkeypatch, capsys, signum):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(tiny_flags(root, ref, "--iterations", "5", *TEACHER)) == 0

    _signal_at(monkeypatch, "teacher_step", 3, signum)  # during iteration 3 of 5
    argv = tiny_flags(root, out, "--iterations", "5", *TEACHER)
    assert main(argv) == 128 + signum  # 130 / 143, as a shell reports a process that signal ended
    monkeypatch.undo()
    err = capsys.readouterr().err
    saved = out / "checkpoints" / "teacher_00000003.pt"
    assert f"stopped by {signal.Signals(signum).name} after teacher iteration 3 of 5" in err, err
    assert str(saved) in err and "--resume" in err and "Traceback" not in err
    assert load_checkpoint(saved)["iteration"] == 3 and not (out / "teacher.pt").exists()
    assert not (out / LOCK_NAME).exists()  # the run folder is free again

    assert main(argv + ["--resume"]) == 0
    _same_weights(ref / "teacher.pt", out / "teacher.pt")
    assert _metrics(out, "teacher") == _metrics(ref, "teacher")
    assert [r["iteration"] for r in _metrics(out, "teacher")] == [1, 2, 3, 4, 5]


SECOND_SIGNAL = """
import os, signal, sys
from dgnet.training import loop
from dgnet.train import main
real = loop.teacher_step
calls = []
def step(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
loop.teacher_step = step
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_signal_stops_at_once(root, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", SECOND_SIGNAL, *tiny_flags(root, out, "--iterations", "5", *TEACHER)],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGTERM, proc.stderr  # ended by the signal itself
    assert "SIGTERM again: stopping at once" in proc.stderr
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())


def _spawn(target, out: Path, *args, world: int = 2, timeout: float = 240.0) -> list[int]:
    return spawn_ranks(target, out, *args, world=world, timeout=timeout)


@pytest.mark.usefixtures("one_thread")
def test_every_rank_stops_after_the_iteration_one_rank_was_signalled_in(root, tmp_path):
    """Two gloo ranks; only rank 1 gets SIGTERM (during iteration 2): both stop after iteration 2, rank 0 saved it,
    both exit 143."""
    run = tmp_path / "run"
    argv = tiny_flags(root, run, "--iterations", "6", *TEACHER)
    codes = _spawn(signalled_train_worker, tmp_path, argv, 1, 2)
    errors = "\n".join(f.read_text() for f in sorted(tmp_path.glob("error_*.txt")))
    assert codes == [0, 0], errors
    assert [(tmp_path / f"rc_{r}.txt").read_text() for r in (0, 1)] == ["143", "143"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["teacher_00000002.pt"]
    assert load_checkpoint(run / "checkpoints" / "teacher_00000002.pt")["iteration"] == 2
    assert "teacher_00000002.pt" in (tmp_path / "stderr_0.txt").read_text()


@pytest.mark.slow
def test_sigterm_from_outside_during_dgnet_then_resume_is_exact(root, tmp_path):
    """A real `python -m dgnet.train` gets SIGTERM from this test once its metrics show DG-Net iteration 1; it
    saves the iteration it was in and exits 143; --resume finishes with the weights and losses of a run never
    stopped."""
    # six DG-Net iterations: the signal comes at the first one's metrics, and on a loaded machine the run can be
    # several iterations further before it is delivered; it must still be running then
    flags = ["--iterations", "6", "--no-eval", "--set", "train.checkpoint_every=100", "--set", "train.image_every=100",
             "--set", "loss.warm_iter=1"]

    def cmd(out, *extra):
        return [sys.executable, "-m", "dgnet.train", *tiny_flags(root, out, *flags), *extra]

    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(cmd(ref), check=True, env=ENV, capture_output=True, timeout=600)

    proc = subprocess.Popen(cmd(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / "metrics.jsonl").exists() and _metrics(out, "dgnet"):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == 143, err
    saved = sorted((out / "checkpoints").glob("dgnet_*.pt"))
    assert len(saved) == 1 and str(saved[0]) in err and "--resume" in err
    assert 2 <= load_checkpoint(saved[0])["iteration"] < 6  # the iteration in progress when the signal came

    subprocess.run(cmd(out, "--resume"), check=True, env=ENV, capture_output=True, timeout=600)
    for name in ("teacher.pt", "dgnet.pt"):
        _same_weights(ref / name, out / name)
    for stage in ("teacher", "dgnet"):
        assert _metrics(out, stage) == _metrics(ref, stage), stage
