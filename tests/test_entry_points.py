"""Every command run the way README.md shows it, ``python -m dgnet.X`` in a fresh process, on a tiny run.

Each step checks the exit status and the files the command promises (README's command list), not the numbers in
them: those have their own tests (test_train_cli.py, test_quality.py, test_search.py, ...). ``dgnet.convert
reference`` runs as a command in test_convert.py, which holds the reference-format files it needs. The last test
trains through the DALI loader (its CPU graph) end to end: training stays finite and the run evaluates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import _optional
import numpy as np
import pytest
import torch
from _tiny_run import TINY_SET, tiny_flags
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def run(module: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    """``python -m <module> args`` from the repository root with this checkout on the path, as a user runs it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=600)
    assert p.returncode == expect, f"{module} {args}: exit status {p.returncode}, expected {expect}\n" \
                                   f"{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


def run_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_every_command_runs_as_readme_shows(tmp_path: Path) -> None:
    # python -m dgnet.data.synthetic --out data/synthetic: the set, with its manifest
    root = tmp_path / "synthetic"
    run("dgnet.data.synthetic", "--out", root, "--ids", TINY_SET["synthetic_ids"], "--cams", TINY_SET["synthetic_cams"],
        "--height", TINY_SET["synthetic_height"], "--width", TINY_SET["synthetic_width"], "--workers", 1)
    assert (root / "manifest.json").is_file()
    for split in ("bounding_box_train", "bounding_box_test", "query"):
        assert any((root / split).glob("*.jpg")), split

    # python -m dgnet.data.check DIR: 0 on a clean set; 1 naming the file when one is truncated
    assert "0 corrupt" in run("dgnet.data.check", root, "--no-cache").stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    good = sorted((root / "query").glob("*.jpg"))[0]
    shutil.copy(good, bad / good.name)
    (bad / "0001_c1s1_000001_00.jpg").write_bytes(good.read_bytes()[:200])
    p = run("dgnet.data.check", bad, "--no-cache", expect=1)
    assert "0001_c1s1_000001_00.jpg" in p.stdout + p.stderr and "1 corrupt" in p.stdout

    # python -m dgnet.train: checkpoints, metrics, config and the evaluation table
    out = tmp_path / "run"
    p = run("dgnet.train", *tiny_flags(root, out, "--iterations", "1"))
    assert "| dgnet | no |" in p.stdout
    assert {"config.yaml", "metrics.jsonl", "teacher.pt", "dgnet.pt", "results.json", "results.md",
            "checkpoints/teacher_00000001.pt", "checkpoints/dgnet_00000001.pt"} <= run_files(out)
    ckpt = out / "dgnet.pt"

    # python -m dgnet.test --checkpoint dgnet.pt --rerank
    run("dgnet.test", "--checkpoint", ckpt, "--rerank", "--loader", "torch", "--device", "cpu",
        "--output", tmp_path / "test.json")
    assert set(json.loads((tmp_path / "test.json").read_text())) == {"teacher", "dgnet"}

    # python -m dgnet.visualize --checkpoint dgnet.pt --mode swap
    run("dgnet.visualize", "--checkpoint", ckpt, "--mode", "swap", "--num", 2, "--loader", "torch",
        "--device", "cpu", "--output", tmp_path / "swap.png")
    assert min(Image.open(tmp_path / "swap.png").size) > 0

    # python -m dgnet.quality --checkpoint dgnet.pt: the table, and its JSON next to the checkpoint
    run("dgnet.quality", "--checkpoint", ckpt, "--pairs", 6, "--device", "cpu")
    assert (out / "dgnet.quality.json").is_file()

    # python -m dgnet.generate --checkpoint dgnet.pt --out gen --count N: images and their manifest
    run("dgnet.generate", "--checkpoint", ckpt, "--out", tmp_path / "gen", "--count", 3, "--loader", "torch",
        "--device", "cpu")
    rows = (tmp_path / "gen" / "manifest.csv").read_text().splitlines()[1:]
    assert len(rows) == 3 and all((tmp_path / "gen" / r.split(",")[0]).is_file() for r in rows)

    # python -m dgnet.extract --checkpoint dgnet.pt --images DIR --out feats.npz: one feature row per image
    gallery = root / "bounding_box_test"
    run("dgnet.extract", "--checkpoint", ckpt, "--images", gallery, "--out", tmp_path / "feats.npz",
        "--loader", "torch", "--device", "cpu")
    with np.load(tmp_path / "feats.npz", allow_pickle=False) as f:
        n_images = len(list(gallery.glob("*.jpg")))
        assert {"features", "paths"} <= set(f.files) and len(f["paths"]) == n_images
        assert f["features"].shape[0] == n_images and np.isfinite(f["features"]).all()

    # python -m dgnet.search --checkpoint dgnet.pt --query q.jpg --gallery feats.npz --out search/
    run("dgnet.search", "--checkpoint", ckpt, "--query", good, "--gallery", tmp_path / "feats.npz",
        "--out", tmp_path / "search", "--loader", "torch", "--device", "cpu")
    assert (tmp_path / "search" / "results.json").is_file()
    assert len(list((tmp_path / "search" / "ranklists").glob("*.jpg"))) == 1

    # python -m dgnet.export --checkpoint dgnet.pt --format onnx --out reid.onnx
    run("dgnet.export", "--checkpoint", ckpt, "--format", "onnx", "--out", tmp_path / "reid.onnx")
    assert (tmp_path / "reid.onnx").stat().st_size > 0

    # and a mistake is an error message with exit status 2, not a traceback
    p = run("dgnet.test", "--checkpoint", tmp_path / "missing.pt", "--device", "cpu", expect=2)
    assert "Traceback" not in p.stderr and "missing.pt" in p.stderr


@pytest.mark.slow
@_optional.skip_unless_installed("dali")
def test_training_through_the_dali_loader(tmp_path: Path) -> None:
    """``--loader dali`` on CPU (DALI's CPU graph, two loader threads, no deterministic mode): both stages train
    with finite losses, the run evaluates, and the checkpoint records the loader."""
    from _tiny_run import make_tiny_set

    from dgnet.checkpoints.format import load_checkpoint

    root = make_tiny_set(tmp_path / "syn")
    out = tmp_path / "run"
    flags = tiny_flags(root, out, "--iterations", "2", "--set", "data.workers=2", "--set", "train.deterministic=false")
    flags[flags.index("--loader") + 1] = "dali"
    run("dgnet.train", *flags)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["iteration"]) for r in lines] == [("teacher", 1), ("teacher", 2), ("dgnet", 1),
                                                              ("dgnet", 2)]
    for r in lines:
        losses = {k: v for k, v in r.items() if k.startswith("loss")}
        assert losses and all(np.isfinite(v) for v in losses.values()), r
    results = json.loads((out / "results.json").read_text())
    for model in ("teacher", "dgnet"):
        m = results[model]["plain"]
        # every query has a true match in the gallery, so AP > 0 whatever the ranking
        assert 0 <= m["rank1"] <= m["rank5"] <= m["rank10"] <= 1 and 0 < m["mAP"] <= 1, (model, m)
    ckpt = load_checkpoint(out / "dgnet.pt")
    assert ckpt["config"]["data"]["loader"] == "dali"
    for name, t in ckpt["models"]["dgnet"].items():
        if t.is_floating_point():
            assert torch.isfinite(t).all(), name
