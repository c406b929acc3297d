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
from pathlib import Path

import pytest
import torch
from _dist_workers import (
    broadcast_worker,
    cli_worker,
    dying_train_worker,
    dying_worker,
    parity_run,
    parity_worker,
    shards_worker,
    spawn_ranks,
)

WORLD = 2


def _spawn(target, out: Path, *args, timeout: float = 110.0) -> list[int]:
    return spawn_ranks(target, out, *args, world=WORLD, timeout=timeout)


def _ok(codes: list[int], out: Path) -> None:
    errors = "\n".join(f.read_text() for f in sorted(out.glob("error_*.txt")))
    assert codes == [0] * WORLD, f"exit codes {codes}\n{errors}"


pytestmark = pytest.mark.usefixtures("one_thread")


def _float32_error_ok(got: torch.Tensor, plain: torch.Tensor, truth: torch.Tensor, scale: torch.Tensor) -> tuple:
    """The style guide's accuracy rule: a result passes when its error against the float64 truth is at most twice
    the error of the plain computation (one process) in the same dtype, plus one unit of float32 rounding of the
    quantity's size ``scale``. The 2-process result rounds the same sums in another order (the gradient all-reduce,
    the synchronised BatchNorm statistics), so its error is of the plain one's size; a wrong gradient or BatchNorm
    statistic is off by much more. Errors are norms over many elements, whose ratio stays near 1 for two
    roundings of the same computation."""
    err, plain_err = (got - truth).norm().item(), (plain - truth).norm().item()
    bound = 2 * plain_err + torch.finfo(torch.float32).eps * scale.norm().item()
    return err <= bound, f"error {err:.3g} vs 2 x plain {plain_err:.3g} + atol = {bound:.3g}"


# Each iteration is compared on the same weights (one iteration from the seeded initial weights): along two
# diverging trajectories the untrained nets amplify rounding by about 1e3 per iteration, so how far two runs drift
# would measure the CPU's kernels, not DDP. Iteration 0 has every ramped term off (the fine head and the structure
# re-encoding unused, so DDP must handle unused parameters); iteration 1 has all on (teacher, cycle, fine-grained,
# frozen Ea copy). The float64 single-process run is the truth both float32 runs are held to.
PARITY_CASES = {"cpu-fp32": "cpu", "cuda-fp32": "cuda"}


@pytest.mark.parametrize("case", ["cpu-fp32", pytest.param("cuda-fp32", marks=pytest.mark.gpu)])
def test_parameter_parity_two_processes_vs_combined_batch(tmp_path: Path, case: str) -> None:
    """Two processes with SyncBatchNorm on half batches each against one process on the combined batch, one
    iteration at a time on the same weights: parameters, BatchNorm statistics and losses. (Without SyncBatchNorm
    the 2-process Ea was off by 19x its update, Es by 1.4x, G by 0.3x.)"""
    device = torch.device(PARITY_CASES[case])
    if device.type == "cuda" and torch.cuda.device_count() < WORLD:
        pytest.skip(f"needs {WORLD} CUDA devices (NCCL, torch.nn.SyncBatchNorm)")
    starts = [0, 1]
    _ok(_spawn(parity_worker, tmp_path, starts, device.type, torch.float32, timeout=300), tmp_path)
    init, _ = parity_run(0, 1, 0, WORLD, device, torch.float64)
    loss_errors = {"two": [], "one": [], "scale": []}
    for start in starts:
        two = [torch.load(tmp_path / f"state_{r}_{start}.pt") for r in range(WORLD)]
        one, one_losses = parity_run(0, 1, 1, WORLD, device, torch.float32, start)
        truth, true_losses = parity_run(0, 1, 1, WORLD, device, torch.float64, start)
        for k in one:  # DDP applies one averaged gradient on every rank; SyncBatchNorm's statistics are all-reduced
            assert torch.equal(two[1]["state"][k], two[0]["state"][k]), f"iteration {start}: ranks differ in {k}"
        for part in ("Ea.", "Es.", "G.", "D."):
            keys = [k for k in one if k.startswith(part) and one[k].is_floating_point() and "running" not in k]
            flat = {name: torch.cat([sd[k].double().flatten() for k in keys])
                    for name, sd in (("two", two[0]["state"]), ("one", one), ("truth", truth), ("init", init))}
            update = flat["truth"] - flat["init"]
            assert update.norm() > 0, part
            # relative to the initial weights, so the comparison is of the updates (weights are ~1e3 x larger). The
            # updates are read off float32 weights, so their unit of rounding is the weights' (eps x |w|), not the
            # updates': on an AVX2 CPU the 2-process Es update erred by 1.9e-5 against 2 x plain's 8.2e-6, within
            # that unit; a missing SyncBatchNorm errs by 0.3x to 19x of the update itself.
            ok, why = _float32_error_ok(flat["two"] - flat["init"], flat["one"] - flat["init"], update, flat["init"])
            assert ok, f"iteration {start}, {part} update: {why}"
        running = [k for k in one if "running" in k]
        flat = {name: torch.cat([sd[k].double().flatten() for k in running])
                for name, sd in (("two", two[0]["state"]), ("one", one), ("truth", truth))}
        ok, why = _float32_error_ok(flat["two"], flat["one"], flat["truth"], flat["truth"])
        assert ok, f"iteration {start}, BatchNorm statistics: {why}"
        for k, v in true_losses[0].items():  # every loss is a batch mean: the ranks' mean is the combined batch's
            loss_errors["two"].append(sum(t["losses"][0][k] for t in two) / WORLD - v)
            loss_errors["one"].append(one_losses[0][k] - v)
            loss_errors["scale"].append(v)
    zero = torch.zeros(len(loss_errors["scale"]), dtype=torch.float64)
    ok, why = _float32_error_ok(*(torch.tensor(loss_errors[n], dtype=torch.float64) for n in ("two", "one")), zero,
                                torch.tensor(loss_errors["scale"], dtype=torch.float64))
    assert ok, f"losses: {why}"


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
    """Rank 1 is alive but silent; rank 0's collective fails on the 3 s DGNET_DIST_TIMEOUT. Rank 1 leaves only
    once rank 0 has recorded its error, so no clock decides the outcome: exit status 3 says rank 1 was still alive
    when rank 0 gave up (the timeout ended the wait, not rank 1's exit); 4 would say rank 0 waited past 50 s."""
    from dgnet.distributed import CollectiveFailure, as_collective_failure

    codes = _spawn(dying_worker, tmp_path, 50.0, timeout=90)
    msg = (tmp_path / "rank0.txt").read_text()
    assert not msg.startswith("no error"), msg
    assert codes[1] == 3, f"rank 1 exit status {codes[1]}: rank 0 did not give up on the silent rank ({msg})"
    assert "Timed out" in msg, msg  # gloo's timeout, not a connection reset
    assert isinstance(as_collective_failure(RuntimeError(msg.split(": ", 1)[1]), 0, "c"), CollectiveFailure)


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
