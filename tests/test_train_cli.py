"""End to end through the command lines: train -> checkpoint, metrics, grids, table; test, visualize, export."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_run import make_tiny_set, tiny_flags
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _run(module, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def _reference_metrics(qf, gf, qp, gp, qc, gc):
    """Rank-1 and mAP by the Market-1501 protocol, written out plainly (score = dot product)."""
    score = (torch.from_numpy(qf) @ torch.from_numpy(gf).T).numpy()  # the same GEMM; the ranking below is plain
    r1, aps = [], []
    for i in range(len(qp)):
        order = np.argsort(-score[i], kind="stable")
        keep = ~(((gp[order] == qp[i]) & (gc[order] == qc[i])) | (gp[order] == -1))
        match = (gp[order][keep] == qp[i]).astype(float)
        if match.sum() == 0:
            continue
        r1.append(match[0])
        hits = np.cumsum(match)
        aps.append(float(np.mean(hits[match == 1] / (np.flatnonzero(match) + 1))))
    return float(np.mean(r1)), float(np.mean(aps))


def test_score_weights_the_fine_head_by_alpha():
    """The reference scores p.p' + alpha * f.f' (it scales the query's fine half alone): the dot product of two
    test features must be exactly that, written here from the heads' raw post-BN outputs."""
    from dgnet.config import ModelConfig
    from dgnet.evaluation.protocol import embed
    from dgnet.models import DGNet

    torch.manual_seed(0)
    model = DGNet(ModelConfig(backbone="resnet18", backbone_weights="none"), num_ids=5).eval()
    x = torch.randn(6, 3, 64, 32)

    def half(i):  # one head's protocol feature: normalise, add the flip's, normalise again
        with torch.no_grad():
            a, b = model.Ea.features(x)[i], model.Ea.features(x.flip(3))[i]
        return torch.nn.functional.normalize(
            torch.nn.functional.normalize(a, dim=1) + torch.nn.functional.normalize(b, dim=1), dim=1)

    p, f = half(0), half(1)
    for alpha in (0.5, 0.0, 2.0):
        feat = embed(model, "dgnet", x, alpha)
        torch.testing.assert_close(feat @ feat.T, p @ p.T + alpha * (f @ f.T), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eval.alpha=-1"):
        embed(model, "dgnet", x, -1.0)


@pytest.mark.slow
def test_train_test_visualize_cli(tmp_path):
    root = make_tiny_set(tmp_path / "syn")
    out = tmp_path / "run"
    stdout = _run("dgnet.train", *tiny_flags(root, out, "--iterations", "2", "--set", "train.image_every=1"))
    # the table is printed, with both models, with and without re-ranking
    for row in ("| teacher | no |", "| teacher | yes |", "| dgnet | no |", "| dgnet | yes |"):
        assert row in stdout
    for f in ("config.yaml", "metrics.jsonl", "teacher.pt", "dgnet.pt", "results.json", "results.md",
              "checkpoints/teacher_00000002.pt", "checkpoints/dgnet_00000002.pt"):
        assert (out / f).is_file(), f
    assert sorted(p.name for p in (out / "tb").iterdir()) == ["dgnet", "teacher"]  # one event folder per stage
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["iteration"]) for r in lines] == [("teacher", 1), ("teacher", 2), ("dgnet", 1),
                                                              ("dgnet", 2)]
    assert {"loss_gen_total", "loss_dis_total", "teacher_w", "lr_gen", "lr_id_0", "it_per_s"} <= set(lines[-1])
    grids = sorted((out / "images").glob("dgnet_samples_*.png"))
    assert [g.name for g in grids] == ["dgnet_samples_00000001.png", "dgnet_samples_00000002.png"]
    w, h = Image.open(grids[0]).size
    # 6 rows (real a, real b, reconstruction, cycle, x_ab, x_ba); 3 columns: the 6 train identities split in two
    assert h == 6 * (64 + 2) + 2 and w == 3 * (32 + 2) + 2

    results = json.loads((out / "results.json").read_text())
    for model in ("teacher", "dgnet"):
        for mode in ("plain", "rerank"):
            m = results[model][mode]
            # per query AP >= INP (n + 1) / (2 n) >= INP / 2 (each match's precision k / r_k >= k / r_last); mINP
            # may exceed mAP (matches at ranks 3 and 4: AP 0.42, INP 0.5)
            assert 0 <= m["mINP"] <= 2 * m["mAP"] <= 2 and m["rank1"] <= m["rank5"] <= m["rank10"] <= 1

    # the same numbers from the saved model by an independent, plain implementation of the protocol
    from dgnet.checkpoints.format import load_checkpoint
    from dgnet.checkpoints.runs import build_model
    from dgnet.config import config_from_dict
    from dgnet.data import load_dataset
    from dgnet.evaluation.protocol import extract

    ckpt = load_checkpoint(out / "dgnet.pt")
    cfg = config_from_dict(ckpt["config"])
    ds = load_dataset("synthetic", root, verbose=False)
    torch.set_num_threads(1)
    model = build_model(ckpt, "dgnet", torch.device("cpu"))
    qf, qp, qc = extract(model, "dgnet", ds.query, cfg, "torch", torch.device("cpu"))
    gf, gp, gc = extract(model, "dgnet", ds.gallery, cfg, "torch", torch.device("cpu"))
    assert torch.allclose(qf[:, :512].norm(dim=1), torch.ones(len(qf)), atol=1e-5)
    assert torch.allclose(qf[:, 512:].norm(dim=1), torch.full((len(qf),), cfg.eval.alpha ** 0.5), atol=1e-5)
    r1, mAP = _reference_metrics(qf.cpu().numpy(), gf.cpu().numpy(), qp, gp, qc, gc)
    assert results["dgnet"]["plain"]["rank1"] == pytest.approx(r1, abs=1e-6)
    assert results["dgnet"]["plain"]["mAP"] == pytest.approx(mAP, abs=1e-5)

    # dgnet.test on the saved checkpoint reproduces the training run's table
    stdout = _run("dgnet.test", "--checkpoint", str(out / "dgnet.pt"), "--rerank", "--loader", "torch",
                  "--output", str(tmp_path / "test.json"))
    again = json.loads((tmp_path / "test.json").read_text())
    for model in ("teacher", "dgnet"):
        for mode in ("plain", "rerank"):
            for k, v in results[model][mode].items():
                assert again[model][mode][k] == pytest.approx(v, abs=1e-6), (model, mode, k)

    # the visual tools write their grids
    for mode in ("swap", "ranklist", "interpolate-structure"):
        _run("dgnet.visualize", "--checkpoint", str(out / "dgnet.pt"), "--mode", mode, "--num", "4",
             "--loader", "torch", "--output", str(tmp_path / f"{mode}.png"))
        assert Image.open(tmp_path / f"{mode}.png").size[0] > 0
    w, h = Image.open(tmp_path / "ranklist.png").size
    assert w == 11 * (32 + 2) + 2 and h == 4 * (64 + 2) + 2  # query + top-10, one row per query

    # the generated-dataset export reads the checkpoint's own training split
    stdout = _run("dgnet.generate", "--checkpoint", str(out / "dgnet.pt"), "--out", str(tmp_path / "gen"),
                  "--count", "5", "--loader", "torch", "--device", "cpu")
    assert "wrote 5 images" in stdout
    rows = (tmp_path / "gen" / "manifest.csv").read_text().splitlines()[1:]
    assert len(rows) == 5 and all((tmp_path / "gen" / r.split(",")[0]).is_file() for r in rows)
