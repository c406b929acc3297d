"""Shared by the training tests: a tiny synthetic set and the flags for a seconds-long run on it."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

TINY_SET = {"synthetic_ids": 12, "synthetic_cams": 3, "synthetic_height": 64, "synthetic_width": 32}


def tiny_flags(root: Path, out: Path, *extra: str) -> list[str]:
    """``python -m dgnet.train`` flags for a 64x32, batch-2 run on the tiny set at ``root``.

    One thread and no loader workers: fast on a shared CPU and bitwise reproducible.
    """
    sets = {**{f"data.{k}": v for k, v in TINY_SET.items()},
            "data.height": 64, "data.width": 32, "data.pad": 2, "data.batch_size": 2, "data.teacher_batch_size": 8,
            "data.workers": 0, "train.threads": 1, "train.log_every": 1, "train.deterministic": True,
            "eval.batch_size": 32, "eval.k1": 4, "eval.k2": 2}
    flags = ["--data-root", str(root), "--output", str(out), "--loader", "torch", "--device", "cpu"]
    for k, v in sets.items():
        flags += ["--set", f"{k}={v}"]
    return flags + list(extra)


def make_tiny_set(root: Path) -> Path:
    from dgnet.data.synthetic import ensure_dataset

    return ensure_dataset(root, verbose=False, seed=0, ids=TINY_SET["synthetic_ids"], cams=TINY_SET["synthetic_cams"],
                          height=TINY_SET["synthetic_height"], width=TINY_SET["synthetic_width"])


def make_tiny_checkpoint(base: Path):
    """A tiny synthetic set under ``base`` and a seeded, untrained DG-Net checkpoint of it (64x32, ResNet-18, with
    its teacher; BatchNorm statistics moved off their init so eval mode matters). Returns ``(path, ds, cfg)``."""
    import torch

    from dgnet.checkpoints.format import arch_only, build_state, save_atomic
    from dgnet.config import resolve_config
    from dgnet.data import load_dataset
    from dgnet.models import DGNet, ReidBaseline

    root = make_tiny_set(base / "syn")
    ds = load_dataset("synthetic", root, verbose=False)
    cfg = resolve_config("demo", {"data": {"root": str(root), "workers": 0, "loader": "torch"},
                                  "model": {"num_ids": ds.num_train_pids}})
    torch.manual_seed(0)
    models = {"dgnet": DGNet(arch_only(cfg.model), ds.num_train_pids),
              "teacher": ReidBaseline(arch_only(cfg.model), ds.num_train_pids)}
    with torch.no_grad():
        models["dgnet"].Ea(torch.randn(4, 3, 64, 32))
        models["teacher"](torch.randn(4, 3, 64, 32))
    path = save_atomic(build_state(stage="dgnet", iteration=1, cfg=cfg, num_ids=ds.num_train_pids, models=models),
                       base / "dgnet.pt")
    return path, ds, cfg


def train_fails(capsys, argv: list[str], *needles: str) -> str:
    """Run ``python -m dgnet.train argv`` in-process; assert it stops with exit status 2 and a ``dgnet.train:
    error:`` message containing every needle; return stderr."""
    from dgnet.train import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "dgnet.train: error:" in err
    for n in needles:
        assert n in err, (n, err)
    return err


def image_folders(base: Path, ds) -> dict[str, Path]:
    """The tiny set's query and gallery people (pid > 0: the synthetic set's 0 is a distractor, -1 junk) copied into
    plain folders ``base/query`` and ``base/gallery``, named ``<pid>_<index>.png``."""
    folders = {}
    for split in ("query", "gallery"):
        folder = base / split
        folder.mkdir()
        for i, s in enumerate(getattr(ds, split)):
            if s.pid > 0:
                Image.open(s.path).save(folder / f"{s.pid:04d}_{i:03d}.png")
        folders[split] = folder
    return folders
