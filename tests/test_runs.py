"""Opening a run (dgnet.checkpoints.runs): layout options from YAML and --set reach the dataset reader, the identity
count comes from the data without mutating the config, and models rebuilt from a checkpoint keep its fast paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from dgnet.checkpoints.format import arch_only, build_state, save_atomic
from dgnet.checkpoints.runs import build_model, open_run, prepare_dataset, with_data_ids
from dgnet.config import parse_set, resolve_config


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 32), (120, 80, 40)).save(path)


def _folder_tree(root: Path) -> None:
    """A folder layout with its own split names and camera tags ``cam<N>``: 3 train ids, 2 test ids."""
    for pid in range(3):
        for k in range(2):
            _image(root / "tr" / f"{pid:03d}" / f"{pid:03d}_cam{k + 1}_{k}.png")
    for pid in (7, 8):
        _image(root / "qu" / f"{pid}" / f"{pid}_cam1_0.png")
        _image(root / "ga" / f"{pid}" / f"{pid}_cam2_0.png")


def test_folder_options_from_yaml_and_set_reach_the_reader(tmp_path):
    root = tmp_path / "mine"
    _folder_tree(root)
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text(f"preset: demo\ndata:\n  dataset: folder\n  root: {root}\n  splits: [tr, qu, ga]\n")
    cfg = resolve_config(str(yaml_file), parse_set([r"data.camera_pattern=cam(\d+)"]))
    ds = prepare_dataset(cfg, verbose=False)
    assert (len(ds.train), len(ds.query), len(ds.gallery), ds.num_train_pids) == (6, 2, 2, 3)
    assert sorted({s.camid for s in ds.train}) == [0, 1] and {s.camid for s in ds.gallery} == {1}
    # the default pattern c(\d+) finds no camera in these names: the option is what reads them
    with pytest.raises(ValueError, match="camera pattern"):
        prepare_dataset(resolve_config(str(yaml_file)), verbose=False)


def test_folder_camera_csv_relative_to_the_root(tmp_path):
    root = tmp_path / "mine"
    _folder_tree(root)
    rows = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*.png"))]
    (root / "cams.csv").write_text("path,camid\n" + "".join(f"{r},{i % 4}\n" for i, r in enumerate(rows)))
    cfg = resolve_config("demo", parse_set(["data.dataset=folder", f"data.root={root}", "data.splits=tr,qu,ga",
                                            "data.camera_csv=cams.csv"]))
    ds = prepare_dataset(cfg, verbose=False)
    want = {str(root / r): i % 4 for i, r in enumerate(rows)}
    assert all(s.camid == want[s.path] for s in ds.train + ds.query + ds.gallery)


def test_msmt17_list_names_from_the_config(tmp_path):
    root = tmp_path / "msmt"
    for split, pid, n in (("train", 0, 2), ("train", 1, 2), ("test", 5, 2)):
        for k in range(n):
            _image(root / split / f"{pid:04d}" / f"{pid:04d}_{k:03d}_{k + 1:02d}_0303morning_0015_0.jpg")
    (root / "mine_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n"
                                         "0000/0000_001_02_0303morning_0015_0.jpg 0\n"
                                         "0001/0001_000_01_0303morning_0015_0.jpg 1\n")
    (root / "mine_q.txt").write_text("0005/0005_000_01_0303morning_0015_0.jpg 5\n")
    (root / "mine_g.txt").write_text("0005/0005_001_02_0303morning_0015_0.jpg 5\n")
    cfg = resolve_config("msmt17", parse_set([f"data.root={root}", "data.train_lists=[mine_train.txt]",
                                              "data.query_list=mine_q.txt", "data.gallery_list=mine_g.txt"]))
    ds = prepare_dataset(cfg, verbose=False)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (3, 1, 1)
    assert [s.camid for s in ds.train] == [0, 1, 0]


def test_dataset_names_and_layout_options_are_validated():
    with pytest.raises(ValueError, match=r"data.dataset='market': expected one of .*'market1501'.*'folder'"):
        resolve_config("demo", {"data": {"dataset": "market"}})
    with pytest.raises(ValueError, match="data.camera_csv='c.csv' is an option of the folder layout"):
        resolve_config("market1501", {"data": {"camera_csv": "c.csv"}})
    with pytest.raises(ValueError, match="data.splits"):
        resolve_config("demo", {"data": {"dataset": "folder", "splits": ["a", "a", "b"]}})


def test_identity_count_from_the_data_leaves_the_config_alone(tmp_path):
    root = tmp_path / "mine"
    _folder_tree(root)
    cfg = resolve_config("demo", {"data": {"dataset": "folder", "root": str(root), "splits": ["tr", "qu", "ga"],
                                           "camera_pattern": r"cam(\d+)"}})
    ds = prepare_dataset(cfg, verbose=False)
    resolved = with_data_ids(cfg, ds)
    assert resolved.model.num_ids == 3 and cfg.model.num_ids == 0
    with pytest.raises(ValueError, match="model.num_ids=5 but .* has 3 train identities"):
        with_data_ids(resolve_config("demo", {"model": {"num_ids": 5}}), ds)


def test_models_from_a_checkpoint_keep_the_runs_fast_paths(tmp_path):
    from dgnet.models import DGNet

    cfg = resolve_config("demo", {"train": {"fused": True, "fold_upsample": "off"}})
    model = DGNet(arch_only(cfg.model), 4)
    path = save_atomic(build_state(stage="dgnet", iteration=1, cfg=cfg, num_ids=4, models={"dgnet": model}),
                       tmp_path / "dgnet.pt")
    run = open_run(path, data_root=str(tmp_path / "elsewhere"), loader="torch", device="cpu")
    assert run.cfg.data.root == str(tmp_path / "elsewhere") and run.cfg.data.loader == "torch"
    built = run.model("dgnet")
    assert built.fused and built.G.fold_upsample == "off" and not built.training
    assert all(b.fused for b in built.G.blocks)
    assert not build_model(run.ckpt, "dgnet", fused=False).fused
    for k, v in model.state_dict().items():
        assert torch.equal(built.state_dict()[k], v), k
    with pytest.raises(ValueError, match="holds no teacher"):
        run.model("teacher")


# ------------------------------------------------------------------------------------- fine-tuning: model.init_from
def _dgnet_checkpoint(path: Path, seed: int, num_ids: int, **model) -> tuple:
    """A dgnet checkpoint of a seeded demo-sized DG-Net and teacher (ResNet-18)."""
    from dgnet.models import DGNet, ReidBaseline

    cfg = resolve_config("demo", {"model": {"num_ids": num_ids, **model}})
    torch.manual_seed(seed)
    dg, teacher = DGNet(arch_only(cfg.model), num_ids), ReidBaseline(arch_only(cfg.model), num_ids)
    save_atomic(build_state(stage="dgnet", iteration=3, cfg=cfg, num_ids=num_ids,
                            models={"dgnet": dg, "teacher": teacher}), path)
    return dg, teacher


def test_init_from_loads_every_weight_and_checks_the_architecture(tmp_path):
    from dgnet.checkpoints.runs import init_dgnet_from
    from dgnet.models import DGNet

    source, _ = _dgnet_checkpoint(tmp_path / "c.pt", seed=0, num_ids=5)
    torch.manual_seed(1)
    fresh = DGNet(source.cfg, 5)
    init_dgnet_from(fresh, tmp_path / "c.pt", source.cfg, 5)
    want = source.state_dict()
    assert all(torch.equal(fresh.state_dict()[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="has 5 identities, but this run has 6"):
        init_dgnet_from(DGNet(source.cfg, 6), tmp_path / "c.pt", source.cfg, 6)
    other = dataclasses.replace(source.cfg, last_stride=2)  # same shapes, another meaning: refused
    with pytest.raises(ValueError, match="model.last_stride=1, this run has 2"):
        init_dgnet_from(DGNet(other, 5), tmp_path / "c.pt", other, 5)
    wider = dataclasses.replace(source.cfg, mlp_dim=64)
    with pytest.raises(ValueError, match=r"'G.mlp_w.0.fc1.weight' has shape \(512, 512\), expected \(64, 512\)"):
        init_dgnet_from(DGNet(wider, 5), tmp_path / "c.pt", wider, 5)
    with pytest.raises(FileNotFoundError, match="model.init_from .*missing.pt"):
        init_dgnet_from(fresh, tmp_path / "missing.pt", source.cfg, 5)


def test_train_fine_tunes_from_init_from(tmp_path):
    """``dgnet.train --stage dgnet --teacher C --init-from C``: DG-Net starts from C's weights. With learning rates
    of 1e-12 one iteration moves no parameter visibly, so the result must be C's weights, not a fresh init."""
    from _tiny_run import make_tiny_set, tiny_flags

    from dgnet.checkpoints.format import load_checkpoint
    from dgnet.data import load_dataset
    from dgnet.train import main

    root = make_tiny_set(tmp_path / "syn")
    n = load_dataset("synthetic", root, verbose=False).num_train_pids
    source, teacher = _dgnet_checkpoint(tmp_path / "c.pt", seed=5, num_ids=n)
    lrs = [x for k in ("gen_lr", "dis_lr", "id_lr_backbone", "id_lr_heads") for x in ("--set", f"optim.{k}=1e-12")]
    out = tmp_path / "run"
    assert main(tiny_flags(root, out, "--stage", "dgnet", "--teacher", str(tmp_path / "c.pt"), "--init-from",
                           str(tmp_path / "c.pt"), "--iterations", "1", "--no-eval", *lrs)) == 0
    got = load_checkpoint(out / "dgnet.pt")["models"]
    for name, p in source.named_parameters():
        torch.testing.assert_close(got["dgnet"][name], p.detach(), rtol=1e-6, atol=1e-9, msg=name)
    assert all(torch.equal(got["teacher"][k], v) for k, v in teacher.state_dict().items())
    # a missing file fails at once, before any stage trains
    assert main(tiny_flags(root, tmp_path / "run2", "--init-from", str(tmp_path / "nope.pt"))) == 2
    assert not (tmp_path / "run2" / "teacher.pt").exists()
