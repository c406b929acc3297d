"""Exact resume: a run killed mid-stage and resumed equals an uninterrupted run, bit for bit, on CPU.

The "kill" is an exception raised from inside a training step (the process state after it is
thrown away, as after a crash); the resumed run starts from the newest checkpoint on disk.
"""

import json

import pytest
import torch
from _tiny_run import make_tiny_set, tiny_flags

from dgnet.checkpoints.format import load_checkpoint
from dgnet.train import main
from dgnet.training import loop


class Killed(Exception):
    pass


def _kill_at(monkeypatch, name: str, iteration: int) -> None:
    """Make ``<name>`` (as the training loop calls it) raise on its ``iteration``-th call (1-based) in this process."""
    real = getattr(loop, name)
    calls = {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == iteration:
            raise Killed(f"{name} killed at call {iteration}")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, name, step)


def _losses(out, stage):
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keep = [{k: v for k, v in r.items() if k.startswith(("loss", "accuracy", "lr_", "recon", "teacher_w"))}
            for r in lines if r["stage"] == stage]
    return [(r["iteration"], k) for r, k in zip((r for r in lines if r["stage"] == stage), keep, strict=True)]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_set(tmp_path_factory.mktemp("resume") / "syn")


@pytest.mark.parametrize("mode", [["--set", "model.teacher_dropout=true"], ["--fused"]],
                         ids=["plain", "fused"])
def test_resume_is_exact_in_both_stages(root, tmp_path, monkeypatch, mode):
    # --fused: the fused AdaIN kernels, grouped MLPs and fused optimisers resume exactly too. The plain run has the
    # teacher's dropout on (the real presets' parity setting): its masks come from the restored RNG state.
    n = ["--iterations", "4", "--no-eval", "--set", "train.checkpoint_every=2", "--set", "train.image_every=100",
         *mode]
    # The schedule is squeezed so the ramps and an LR decay happen inside the 4 iterations, and the
    # teacher/fine-grained terms are live when the run is killed.
    sched = ["--set", "loss.warm_iter=1", "--set", "loss.warm_step=0.5", "--set", "optim.milestones=[3]",
             "--set", "optim.teacher_milestones=[3]"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(tiny_flags(root, a, *n, *sched)) == 0

    _kill_at(monkeypatch, "teacher_step", 3)  # teacher checkpoint at 2, killed in iteration 3
    with pytest.raises(Killed):
        main(tiny_flags(root, b, *n, *sched))
    monkeypatch.undo()
    _kill_at(monkeypatch, "dgnet_step", 4)  # resumed teacher 3..4, then DG-Net killed in iteration 4
    with pytest.raises(Killed):
        main(tiny_flags(root, b, *n, *sched, "--resume"))
    monkeypatch.undo()
    assert load_checkpoint(b / "checkpoints" / "dgnet_00000002.pt")["iteration"] == 2
    assert main(tiny_flags(root, b, *n, *sched, "--resume")) == 0

    for name in ("teacher.pt", "dgnet.pt"):
        ca, cb = load_checkpoint(a / name), load_checkpoint(b / name)
        for model in ca["models"]:
            _assert_same_state(ca["models"][model], cb["models"][model])
    # every optimiser, scheduler and RNG state of the last checkpoint matches too
    ca = load_checkpoint(a / "checkpoints" / "dgnet_00000004.pt")
    cb = load_checkpoint(b / "checkpoints" / "dgnet_00000004.pt")
    assert ca["schedulers"] == cb["schedulers"] and ca["streams"] == cb["streams"] and ca["ramps"] == cb["ramps"]
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    for k in ca["optimizers"]:
        for pid, st in ca["optimizers"][k]["state"].items():
            for key, v in st.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(cb["optimizers"][k]["state"][pid][key]))
    # the logged losses of the resumed run are those of the uninterrupted one, iteration for iteration
    for stage in ("teacher", "dgnet"):
        la, lb = _losses(a, stage), _losses(b, stage)
        assert [i for i, _ in la] == [1, 2, 3, 4]
        assert la == lb, stage
    # the ramps were live (non-zero teacher weight) and the LR decayed within the run
    last = _losses(a, "dgnet")[-1][1]
    assert last["teacher_w"] > 0 and last["lr_gen"] == pytest.approx(1e-5)


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_then_resume_is_exact(root, tmp_path):
    """A real process killed with SIGKILL while it writes a checkpoint (a bounded loop of kills at seeded random
    moments inside the writes), then --auto-resume until done: the same losses and final weights, bit for bit,
    as an uninterrupted run, and no temporary left behind."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    flags = ["--iterations", "3", "--no-eval", "--set", "train.checkpoint_every=1", "--set", "train.image_every=100",
             "--set", "optim.iterations=4", "--set", "optim.teacher_iterations=4", "--set", "loss.warm_iter=1"]

    def cmd(out, *extra):
        return [sys.executable, "-m", "dgnet.train", *tiny_flags(root, out, *flags), *extra]

    ref = tmp_path / "ref"
    subprocess.run(cmd(ref), check=True, env=env, capture_output=True)

    out, rng, kills = tmp_path / "killed", random.Random(0), 0
    watched = [out, out / "checkpoints"]
    for _ in range(8):  # bounded: every run makes progress, so a handful of starts finishes
        proc = subprocess.Popen(cmd(out, "--auto-resume"), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        delay = rng.uniform(0.0, 0.05)
        writing = None
        while proc.poll() is None and writing is None:
            for d in watched:
                found = [e for e in os.scandir(d) if e.name.startswith(".") and ".tmp" in e.name] if d.is_dir() else []
                if found:
                    writing = found[0].name
                    break
            time.sleep(0.001)
        if proc.poll() is None:
            time.sleep(delay)  # somewhere inside the write (or, rarely, just after it)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0
        break
    else:
        proc = subprocess.run(cmd(out, "--auto-resume"), env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert kills >= 3  # the loop did kill writes, not just run through
    assert _losses(out, "teacher") == _losses(ref, "teacher") and _losses(out, "dgnet") == _losses(ref, "dgnet")
    for name in ("teacher.pt", "dgnet.pt"):
        a, b = load_checkpoint(ref / name), load_checkpoint(out / name)
        for m in a["models"]:
            _assert_same_state(a["models"][m], b["models"][m])
    assert not [p for d in watched for p in d.iterdir() if ".tmp" in p.name]
