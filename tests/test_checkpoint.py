"""Checkpoint files: RNG capture, atomic writes, rotation, weights-only loading, config checks."""

import pickle
import random

import numpy as np
import pytest
import torch

from dgnet.checkpoints.format import (
    CheckpointManager,
    build_state,
    check_compatible,
    from_safe,
    get_rng_state,
    load_checkpoint,
    load_optimizer_state,
    model_config_of,
    restore_state,
    save_atomic,
    set_rng_state,
    to_safe,
)
from dgnet.config import resolve_config


def _draw():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4).tolist())


def test_rng_state_round_trip_through_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in NumPy's legacy state
    random.gauss(0, 1)  # and in Python's
    save_atomic({"rng": get_rng_state()}, tmp_path / "r.pt")
    expected = _draw()
    _draw()
    state = torch.load(tmp_path / "r.pt", weights_only=True)["rng"]
    set_rng_state(state)
    assert _draw() == expected


class _Stream:
    """A stand-in for a data stream: its state holds a NumPy array, which weights_only refuses raw."""

    def __init__(self):
        self.order = np.arange(5, dtype=np.int32)
        self.pos = np.int64(2)

    def state_dict(self):
        return {"order": self.order, "pos": self.pos, "epoch": 1}

    def load_state_dict(self, s):
        self.order, self.pos = s["order"], s["pos"]


def test_full_state_round_trip(tmp_path):
    cfg = resolve_config("demo")
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [1, 3], 0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=128.0)
    for _ in range(2):
        opt.zero_grad()
        m(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        sched.step()
    stream = _Stream()
    stream.order = np.array([4, 2, 0, 1, 3], dtype=np.int32)
    state = build_state(stage="dgnet", iteration=2, cfg=cfg, num_ids=7, models={"m": m}, optimizers={"o": opt},
                        schedulers={"s": sched}, scaler=scaler, streams={"a": stream}, ramps={"teacher_w": 0.5})
    path = save_atomic(state, tmp_path / "c.pt")
    ckpt = load_checkpoint(path)
    assert ckpt["iteration"] == 2 and ckpt["num_ids"] == 7 and ckpt["ramps"] == {"teacher_w": 0.5}

    torch.manual_seed(5)
    m2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched2 = torch.optim.lr_scheduler.MultiStepLR(opt2, [1, 3], 0.1)
    scaler2 = torch.amp.GradScaler("cpu")
    s2 = _Stream()
    restore_state(ckpt, models={"m": m2}, optimizers={"o": opt2}, schedulers={"s": sched2}, scaler=scaler2,
                  streams={"a": s2})
    for p, q in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)
    assert sched2.last_epoch == sched.last_epoch and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert scaler2.get_scale() == 128.0
    assert s2.order.dtype == np.int32 and s2.order.tolist() == [4, 2, 0, 1, 3] and s2.pos == 2
    # one more identical step on both gives identical parameters (momentum buffers restored)
    x = torch.randn(4, 3)
    for mm, oo in ((m, opt), (m2, opt2)):
        oo.zero_grad()
        mm(x).square().sum().backward()
        oo.step()
    for p, q in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize(("saved", "resumed"), [(False, True), (True, False)], ids=["plain-to-fused", "fused-to-plain"])
def test_resume_switches_optimizer_implementation(tmp_path, kind, saved, resumed):
    """A run saved with (or without) --fused and resumed the other way runs the resumed mode's optimiser
    (PyTorch's load_state_dict alone would restore the saved one), with its state intact: three more steps
    land where an uninterrupted run does, up to float rounding."""

    def make(fused):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 2))
        impl = {"fused": True} if fused else {}
        if kind == "adam":
            opt = torch.optim.Adam(m.parameters(), lr=0.05, betas=(0.0, 0.999), weight_decay=1e-3, **impl)
        else:
            opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, **impl)
        return m, opt

    def steps(m, opt, seeds):
        for seed in seeds:
            x = torch.randn(6, 5, generator=torch.Generator().manual_seed(seed))
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()

    m_ref, opt_ref = make(saved)
    steps(m_ref, opt_ref, range(5))
    m, opt = make(saved)
    steps(m, opt, range(2))
    path = save_atomic({"o": opt.state_dict(), "m": m.state_dict()}, tmp_path / "c.pt")
    ckpt = torch.load(path, weights_only=True)
    m2, opt2 = make(resumed)
    m2.load_state_dict(ckpt["m"])
    load_optimizer_state(opt2, ckpt["o"])
    assert bool(opt2.param_groups[0].get("fused")) is resumed
    used = []
    name = "_fused_adam_" if kind == "adam" else "_fused_sgd_"
    real = getattr(torch, name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, name, lambda *a, **k: used.append(1) or real(*a, **k))
        steps(m2, opt2, range(2, 5))
    assert bool(used) is resumed
    for p, q in zip(m_ref.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_to_safe_round_trip():
    obj = {"a": np.arange(3, dtype=np.uint8), "b": [np.float32(1.5), (np.int64(4), "x")], "c": None}
    back = from_safe(to_safe(obj))
    assert back["a"].dtype == np.uint8 and back["a"].tolist() == [0, 1, 2]
    assert back["b"][0] == 1.5 and back["b"][1] == (4, "x") and back["c"] is None


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = save_atomic({"v": torch.tensor(1)}, tmp_path / "x.pt")

    def boom(obj, fh, *a, **k):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"v": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temporary left behind


def test_text_files_are_replaced_atomically(tmp_path, monkeypatch):
    """metrics.jsonl is rewritten on resume, results and configs are written whole: never torn."""
    from dgnet import fileio

    path = fileio.write_text_atomic(tmp_path / "metrics.jsonl", "old\n")
    real = fileio.os.replace

    def crash(*a):
        raise OSError("killed before the rename")

    monkeypatch.setattr(fileio.os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        fileio.write_text_atomic(path, "new, but never renamed\n")
    monkeypatch.setattr(fileio.os, "replace", real)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    fileio.write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"


def test_teacher_of_another_architecture_is_rebuilt_from_its_own_config(tmp_path):
    """A --teacher from another run may differ from DG-Net's model config (here its head width): DG-Net
    checkpoints record the teacher's own, and every loader (resume, --teacher, dgnet.test) builds from it."""
    from dgnet.checkpoints.runs import build_models, load_teacher
    from dgnet.config import ModelConfig
    from dgnet.models import DGNet, ReidBaseline

    cfg = resolve_config("demo")
    cfg.model.backbone_weights = "none"
    teacher = ReidBaseline(ModelConfig(backbone="resnet18", backbone_weights="none", head_dim=256), 5)
    state = build_state(stage="dgnet", iteration=1, cfg=cfg, num_ids=5,
                        models={"dgnet": DGNet(cfg.model, 5), "teacher": teacher})
    assert state["arch"]["teacher"]["head_dim"] == 256 and "dgnet" not in state["arch"]
    path = save_atomic(state, tmp_path / "dgnet.pt")
    ckpt = load_checkpoint(path)
    assert model_config_of(ckpt, "teacher").head_dim == 256 and model_config_of(ckpt, "dgnet").head_dim == 512
    models = build_models(ckpt, torch.device("cpu"))
    loaded, _ = load_teacher(path, 5, torch.device("cpu"))
    for t in (models["teacher"], loaded):
        assert t.head.bottleneck.out_features == 256
        assert torch.equal(t.head.bottleneck.weight, teacher.head.bottleneck.weight)
    # a checkpoint without the record (written before it existed) falls back to the run's config
    del ckpt["arch"]
    assert model_config_of(ckpt, "teacher").head_dim == 512


def test_resume_across_amp_modes_says_what_happens_to_the_loss_scale():
    m = torch.nn.Linear(2, 2)
    cfg = resolve_config("demo")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with_scale = build_state(stage="dgnet", iteration=1, cfg=cfg, num_ids=2, models={"m": m}, scaler=scaler)
    without = build_state(stage="dgnet", iteration=1, cfg=cfg, num_ids=2, models={"m": m})
    with pytest.warns(UserWarning, match="written with fp16 gradient scaling.*its loss scale is dropped"):
        restore_state(with_scale, models={"m": m}, rng=False)
    with pytest.warns(UserWarning, match="written without fp16 gradient scaling.*starts afresh"):
        restore_state(without, models={"m": m}, scaler=torch.amp.GradScaler("cpu"), rng=False)


def test_checkpoint_from_before_a_new_config_key_still_resumes():
    """A key added since (here data.synthetic_seed) is absent from an older checkpoint's config and hash: it
    reads as its default, so the run resumes while it keeps that default, and is refused when it does not."""
    cfg = resolve_config("demo")
    state = build_state(stage="teacher", iteration=1, cfg=cfg, num_ids=2, models={})
    del state["config"]["data"]["synthetic_seed"]
    state["fingerprint"] = "written-before"
    check_compatible(state, cfg, "old.pt")
    cfg.data.synthetic_seed = 3
    with pytest.raises(ValueError, match="data.synthetic_seed: checkpoint 0 vs now 3"):
        check_compatible(state, cfg, "old.pt")


def test_manager_keeps_last_k_per_stage(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    for it in (10, 20, 30):
        mgr.save({"it": it}, "teacher", it)
    for it in (5, 15, 25):
        mgr.save({"it": it}, "dgnet", it)
    assert [p.name for p in mgr.list("teacher")] == ["teacher_00000020.pt", "teacher_00000030.pt"]
    assert [p.name for p in mgr.list("dgnet")] == ["dgnet_00000015.pt", "dgnet_00000025.pt"]
    # any DG-Net checkpoint is newer than a finished teacher stage, whatever the iteration numbers
    assert mgr.latest().name == "dgnet_00000025.pt"
    # a write killed before its rename leaves a temporary file: the next save clears it
    (tmp_path / ".dgnet_00000035.pt.tmp4242").write_bytes(b"torn")
    mgr.save({"it": 35}, "dgnet", 35)
    assert not list(tmp_path.glob(".*")) and len(mgr.list()) == 4
    with pytest.raises(ValueError, match="keep=0"):
        CheckpointManager(tmp_path, keep=0)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_load_refuses_unsafe_and_foreign_files(tmp_path):
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as fh:
        torch.save({"format": "dgnet-checkpoint", "x": _Evil()}, fh, pickle_module=pickle)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(evil)
    other = save_atomic({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a dgnet checkpoint"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_from_another_config_names_keys(tmp_path):
    cfg = resolve_config("demo")
    state = build_state(stage="teacher", iteration=1, cfg=cfg, num_ids=3, models={"m": torch.nn.Linear(1, 1)})
    path = save_atomic(state, tmp_path / "c.pt")
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, resolve_config("demo", {"train": {"output": "elsewhere"}}), path)  # not fingerprinted
    with pytest.raises(ValueError, match=r"optim\.gen_lr.*another config|another config.*optim\.gen_lr") as e:
        check_compatible(ckpt, resolve_config("demo", {"optim": {"gen_lr": 1.0}}), path)
    assert "c.pt" in str(e.value)
