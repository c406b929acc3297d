"""Multi-process training and testing on CPU with gloo, 2 processes on 127.0.0.1 (what torchrun sets up).

- parameter parity: 2 processes with SyncBatchNorm on half batches each == 1 process on the combined batch;
- the samplers' shards are disjoint across real ranks, and the uneven all-gather concatenates in rank order;
- SyncBatchNormCPU (the gloo twin of torch.nn.SyncBatchNorm) == BatchNorm on the combined batch, with gradients;
- a dead rank ends the job with an error within the collective timeout instead of hanging;
- the training CLI under 2 ranks writes every rank's RNG state, and a 1-process resume of it works and says
  what is not exact; distributed ``dgnet.test`` equals the single-process evaluation.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest
import torch
from _dist_workers import (
    broadcast_worker,
    cli_worker,
    dying_train_worker,
    dying_worker,
    free_port,
    parity_run,
    parity_worker,
    shards_worker,
)

WORLD = 2


def _spawn(target, out: Path, *args, timeout: float = 110.0) -> list[int]:
    """Run ``target(rank, WORLD, port, out, *args)`` in WORLD spawned processes; their exit codes."""
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, WORLD, port, out, *args)) for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    errors = "\n".join(f.read_text() for f in sorted(out.glob("error_*.txt")))
    assert not alive, f"ranks still running after {timeout} s (a hang){errors and ': ' + errors}"
    return [p.exitcode for p in procs]


def _ok(codes: list[int], out: Path) -> None:
    errors = "\n".join(f.read_text() for f in sorted(out.glob("error_*.txt")))
    assert codes == [0] * WORLD, f"exit codes {codes}\n{errors}"


pytestmark = pytest.mark.usefixtures("one_thread")


# (device, dtype, iterations, tolerances): float32 for two iterations, as training runs; float64 for four, which
# shows that the float32 drift after two is rounding amplified by these untrained nets, not a DDP difference.
PARITY_CASES = {
    "cpu-fp32": ("cpu", torch.float32, 2, dict(loss=1e-3, ranks=1e-6, params=3e-2, bn=1e-3)),
    "cpu-fp64": ("cpu", torch.float64, 4, dict(loss=1e-6, ranks=1e-12, params=1e-7, bn=1e-7)),
    "cuda-fp32": ("cuda", torch.float32, 2, dict(loss=1e-3, ranks=1e-6, params=1e-2, bn=1e-3)),
}


@pytest.mark.parametrize("case", ["cpu-fp32", pytest.param("cpu-fp64", marks=pytest.mark.slow),
                                  pytest.param("cuda-fp32", marks=pytest.mark.gpu)])
def test_parameter_parity_two_processes_vs_combined_batch(tmp_path: Path, case: str) -> None:
    """Iteration 0 with every ramped term off (the fine head and the structure re-encoding unused, so DDP must
    handle unused parameters), from iteration 1 on all on (teacher, cycle, fine-grained, frozen Ea copy).

    Measured here in float32: |2-proc - 1-proc| / |update| is 7e-3 for Ea, 1.6e-2 for Es, 4e-3 for G, 1e-6 for D
    with SyncBatchNorm. These move with the random init: with the heads' BatchNorm1d weights drawn from
    N(1, 0.02), which shifts every later draw, they were 1.5e-3, 7.8e-3, 1.4e-3 and 1e-7. Without SyncBatchNorm
    Ea was off by 19x its update, Es by 1.4x, G by 0.3x. A third float32 iteration
    reaches tens of percent in the teacher-KL term: the untrained nets amplify rounding by about 1e3 per
    iteration. In float64 the same four iterations agree to the float32 rounding of the logged losses, which is
    what proves the drift is rounding and not a difference between the 2-process and 1-process computations.
    """
    device, dtype, steps, tol = PARITY_CASES[case]
    if device == "cuda" and torch.cuda.device_count() < WORLD:
        pytest.skip(f"needs {WORLD} CUDA devices (NCCL, torch.nn.SyncBatchNorm)")
    _ok(_spawn(parity_worker, tmp_path, steps, device, dtype, timeout=300), tmp_path)
    two = [torch.load(tmp_path / f"state_{r}.pt") for r in range(WORLD)]
    one, one_losses = parity_run(0, 1, steps, WORLD, torch.device(device), dtype)
    init, _ = parity_run(0, 1, 0, WORLD, torch.device(device), dtype)
    for k in one:  # DDP keeps every rank's parameters equal; SyncBatchNorm keeps the BN statistics equal
        torch.testing.assert_close(two[1]["state"][k], two[0]["state"][k], rtol=0, atol=tol["ranks"],
                                   msg=f"ranks differ in {k}")
    for it in range(steps):  # every loss is a batch mean: the ranks' mean is the combined batch's loss
        for k, v in one_losses[it].items():
            got = sum(t["losses"][it][k] for t in two) / WORLD
            assert got == pytest.approx(v, rel=tol["loss"], abs=1e-6), (it, k)
    for part in ("Ea.", "Es.", "G.", "D."):
        keys = [k for k in one if k.startswith(part) and one[k].is_floating_point() and "running" not in k]
        ref = torch.cat([one[k].flatten() for k in keys])
        got = torch.cat([two[0]["state"][k].flatten() for k in keys])
        moved = (ref - torch.cat([init[k].flatten() for k in keys])).norm()
        assert moved > 0, part
        err = (got - ref).norm()
        assert err <= tol["params"] * moved, f"{part}: |2-proc - 1-proc| = {err:.3g} for an update of {moved:.3g}"
    for k in one:
        if "running" in k:  # per tensor, relative to its size (near-zero means have no relative precision)
            err = (two[0]["state"][k] - one[k]).norm()
            assert err <= tol["bn"] * one[k].norm(), f"BN statistics {k}: |2-proc - 1-proc| = {err:.3g}"


def test_shards_disjoint_and_uneven_gather(tmp_path: Path) -> None:
    n = 48  # 12 identities x 4 images: 12 pairs batches of 2 per epoch, no padding at 2 ranks
    _ok(_spawn(shards_worker, tmp_path, n), tmp_path)
    res = [torch.load(tmp_path / f"shards_{r}.pt", weights_only=False) for r in range(WORLD)]
    for mode in ("pairs", "pk"):
        for epoch in range(2):
            parts = [set(res[r][mode][epoch].ravel().tolist()) for r in range(WORLD)]
            sizes = [res[r][mode][epoch].size for r in range(WORLD)]
            assert sizes[0] == sizes[1] > 0, (mode, sizes)  # every rank takes the same number of batches
            assert not parts[0] & parts[1], f"{mode} epoch {epoch}: ranks share samples {parts[0] & parts[1]}"
            if mode == "pairs":
                assert parts[0] | parts[1] == set(range(n))
    expect = torch.cat([torch.arange(3 + 2 * r, dtype=torch.float32).unsqueeze(1).repeat(1, 3) + 100 * r
                        for r in range(WORLD)])
    for r in range(WORLD):
        torch.testing.assert_close(res[r]["gathered"], expect, rtol=0, atol=0)


def test_broadcast_state_gives_every_rank_rank0s_tensors(tmp_path: Path) -> None:
    """Evaluation splits the features across ranks, so every rank must hold rank 0's model (the saved one)."""
    _ok(_spawn(broadcast_worker, tmp_path), tmp_path)
    for r in range(WORLD):
        state = torch.load(tmp_path / f"state_{r}.pt", weights_only=True)
        assert state and all(torch.equal(t, torch.full_like(t, 10)) for t in state.values()), r


def test_dead_rank_fails_fast_with_an_error(tmp_path: Path) -> None:
    """Rank 1 crashes; rank 0's next collective raises (gloo sees the connection reset) instead of hanging."""
    codes = _spawn(dying_worker, tmp_path, timeout=60)
    assert codes[1] == 3
    msg = (tmp_path / "rank0.txt").read_text()
    assert not msg.startswith("no error"), msg


def test_collective_failures_are_reworded() -> None:
    from dgnet.distributed import CollectiveFailure, as_collective_failure

    gloo = RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:1")
    f = as_collective_failure(gloo, 1, "out/run/checkpoints")
    assert isinstance(f, CollectiveFailure)
    assert str(f).startswith("rank 1: a collective with the other ranks failed")
    assert "out/run/checkpoints" in str(f) and "DGNET_DIST_TIMEOUT" in str(f) and "Connection closed" in str(f)
    stalled = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 3000ms for recv operation")
    assert isinstance(as_collective_failure(stalled, 0, "c"), CollectiveFailure)
    assert as_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 0, "c") is None
    assert as_collective_failure(ValueError("Timed out"), 0, "c") is None


def test_stalled_rank_hits_the_collective_timeout(tmp_path: Path) -> None:
    """Rank 1 is alive but silent for 12 s; rank 0's collective fails after the 3 s DGNET_DIST_TIMEOUT."""
    _spawn(dying_worker, tmp_path, 12.0, timeout=60)
    msg = (tmp_path / "rank0.txt").read_text()
    assert not msg.startswith("no error"), msg
    waited = float(msg.split(" after ")[1].split(" s")[0])
    assert 2.0 <= waited < 11.0, msg  # the timeout, not rank 1's exit, ended the wait


def test_train_two_ranks_then_resume_on_one(tmp_path: Path, capsys) -> None:
    """``dgnet.train`` under 2 ranks: checkpoints hold both ranks' RNG states and rank 0 alone writes them; the
    end-of-run evaluation (every rank extracts, rank 0 scores) finishes and equals a 1-process ``dgnet.test`` of
    the saved model; the distributed ``dgnet.test`` reports the same; ``--resume`` on 1 process continues and
    says the resume is not exact."""
    from _tiny_run import make_tiny_set, tiny_flags

    from dgnet.checkpoints.format import load_checkpoint
    from dgnet.test import main as test_main
    from dgnet.train import main

    root = make_tiny_set(tmp_path / "data")
    out = tmp_path / "run"
    flags = tiny_flags(root, out, "--config", "demo", "--set", "model.backbone=resnet18", "--set",
                       "data.height=32", "--set", "data.width=16", "--set", "train.sync_bn=true",
                       "--set", "train.checkpoint_every=2", "--set", "optim.teacher_iterations=2")
    _ok(_spawn(cli_worker, tmp_path, "train", [*flags, "--iterations", "2"], timeout=180), tmp_path)
    flags.append("--no-eval")
    assert [(tmp_path / f"rc_{r}.txt").read_text() for r in range(WORLD)] == ["0", "0"]
    ckpt = load_checkpoint(sorted((out / "checkpoints").glob("dgnet_*.pt"))[-1])
    assert ckpt["world_size"] == WORLD and len(ckpt["rng_ranks"]) == WORLD
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])  # ranks draw their own

    # dgnet.test on 2 ranks (features split, gathered, rank 0 evaluates) == 1 process
    test_flags = ["--checkpoint", str(out / "dgnet.pt"), "--device", "cpu", "--loader", "torch", "--rerank"]
    for f in tmp_path.glob("rc_*.txt"):
        f.unlink()
    _ok(_spawn(cli_worker, tmp_path, "test", [*test_flags, "--output", str(tmp_path / "two.json")]), tmp_path)
    assert test_main([*test_flags, "--output", str(tmp_path / "one.json")]) == 0
    two, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert set(one) == {"teacher", "dgnet"} and set(one["dgnet"]) == {"plain", "rerank"}
    trained = json.loads((out / "results.json").read_text())  # the 2-rank training run's own evaluation
    for model, by_mode in one.items():
        for mode, metrics in by_mode.items():
            assert two[model][mode] == pytest.approx(metrics, abs=1e-6), (model, mode)
            assert trained[model][mode] == pytest.approx(metrics, abs=1e-6), (model, mode)

    assert main([*flags, "--iterations", "3", "--resume"]) == 0
    said = capsys.readouterr().out
    assert "written by 2 process(es), this run has 1" in said and "not exact" in said
    assert load_checkpoint(sorted((out / "checkpoints").glob("dgnet_*.pt"))[-1])["iteration"] == 3


def test_killed_rank_then_exact_resume_on_the_same_world_size(tmp_path: Path) -> None:
    """Rank 1 crashes in DG-Net iteration 3 (after the checkpoint of iteration 2): rank 0 stops with an error,
    not a hang; relaunching with --auto-resume (what torchrun --max-restarts does) finishes, and the weights
    equal those of an uninterrupted 2-rank run bit for bit (every rank's RNG state and stream position)."""
    from _tiny_run import make_tiny_set, tiny_flags

    from dgnet.checkpoints.format import load_checkpoint

    root = make_tiny_set(tmp_path / "data")

    def flags(out: Path) -> list[str]:
        return [*tiny_flags(root, out, "--config", "demo", "--set", "model.backbone=resnet18", "--set",
                            "data.height=32", "--set", "data.width=16", "--set", "train.sync_bn=true",
                            "--set", "train.checkpoint_every=2", "--no-eval", "--iterations", "3"), "--auto-resume"]

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    for d in (straight / "log", broken / "log1", broken / "log2"):
        d.mkdir(parents=True)
    _ok(_spawn(cli_worker, straight / "log", "train", flags(straight)), straight / "log")

    codes = _spawn(dying_train_worker, broken / "log1", flags(broken), 2)
    assert codes[1] == 5, codes
    # rank 0 stopped (it did not hang: _spawn would say) with dgnet's error, exit status 3
    assert (broken / "log1" / "rc_0.txt").read_text() == "3", (broken / "log1" / "stderr_0.txt").read_text()
    error = (broken / "log1" / "stderr_0.txt").read_text()
    assert "rank 0: a collective with the other ranks failed" in error, error
    assert str(broken / "checkpoints") in error and "--auto-resume" in error, error
    assert load_checkpoint(sorted((broken / "checkpoints").glob("dgnet_*.pt"))[-1])["iteration"] == 2

    _ok(_spawn(cli_worker, broken / "log2", "train", flags(broken)), broken / "log2")
    a, b = (load_checkpoint(d / "dgnet.pt")["models"]["dgnet"] for d in (straight, broken))
    for k in a:
        assert torch.equal(a[k], b[k]), k
