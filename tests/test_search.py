"""python -m dgnet.extract and python -m dgnet.search on images the test makes: feature files, skipped images,
the gallery cache, and rankings against dgnet.evaluation.rank on the same distances."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from _tiny_run import make_tiny_checkpoint
from PIL import Image

import dgnet
from dgnet import extract, search
from dgnet.evaluation.rank import evaluate_rank
from dgnet.inference.gallery import FeatureSet


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A checkpoint (as tests/test_api.py builds it) and its tiny set's query and gallery images copied into
    plain folders, named by identity."""
    base = tmp_path_factory.mktemp("search")
    path, ds, _ = make_tiny_checkpoint(base)
    folders = {}
    for split in ("query", "gallery"):
        folder = base / split
        folder.mkdir()
        for i, s in enumerate(getattr(ds, split)):
            if s.pid > 0:  # people only (the synthetic set's 0 is a distractor, -1 junk)
                Image.open(s.path).save(folder / f"{s.pid:04d}_{i:03d}.png")
        folders[split] = folder
    return path, folders


def _pids(paths):
    return np.array([int(os.path.basename(p)[:4]) for p in paths])


def test_extract_writes_features_paths_and_the_checkpoint(run, tmp_path, capsys):
    path, folders = run
    out = tmp_path / "g.npz"
    assert extract.main(["--checkpoint", str(path), "--images", str(folders["gallery"]), "--out", str(out),
                         "--device", "cpu", "--loader", "torch"]) == 0
    fs = FeatureSet.load(out)
    fx = dgnet.FeatureExtractor(path, device="cpu", loader="torch")
    assert fs.identity == fx.fingerprint and fs.paths == sorted(str(p) for p in folders["gallery"].iterdir())
    assert not [p for p in folders["gallery"].iterdir() if p.name.startswith(".")]  # nothing written beside them
    torch.testing.assert_close(fs.features, fx(fs.paths), rtol=0, atol=1e-6)
    assert "wrote" in capsys.readouterr().out


def test_bad_images_are_skipped_and_listed(run, tmp_path):
    path, folders = run
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    good = sorted(folders["query"].iterdir())[:3]
    for p in good:
        (mixed / p.name).write_bytes(p.read_bytes())
    (mixed / "9999_broken.png").write_bytes(good[0].read_bytes()[:60])  # truncated
    out = tmp_path / "m.npz"
    with pytest.warns(UserWarning, match="skipped 1 image"):
        assert extract.main(["--checkpoint", str(path), "--images", str(mixed), "--out", str(out),
                             "--device", "cpu", "--loader", "torch"]) == 0
    fs = FeatureSet.load(out)
    assert len(fs.paths) == 3 and list(fs.skipped) == [str(mixed / "9999_broken.png")]


def test_bad_input_gets_a_named_error(run, tmp_path, capsys):
    path, folders = run
    (tmp_path / "empty").mkdir()
    assert extract.main(["--checkpoint", str(path), "--images", str(tmp_path / "empty"), "--out", "x.npz"]) == 2
    assert "no image found" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 10)
    assert extract.main(["--checkpoint", str(junk), "--images", str(folders["query"]), "--out", "x.npz"]) == 2
    assert "junk.pt" in capsys.readouterr().err
    # a gallery .npz written with another checkpoint: refused, both identities named
    other = FeatureSet(torch.zeros(1, 1024), ["a.png"], "0123456789abcdef")
    other.save(tmp_path / "other.npz")
    assert search.main(["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery",
                        str(tmp_path / "other.npz"), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "0123456789abcdef" in err and "extract the gallery again" in err


def test_search_ranks_as_the_evaluation_does_on_the_same_distances(run, tmp_path, monkeypatch):
    """Rank-1 of the search's lists equals dgnet.evaluation.rank's Rank-1 on the same distance matrix (every image its
    own camera, so the protocol removes nothing), and the order is the distance order."""
    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    out = tmp_path / "out"
    assert search.main(["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery",
                        str(folders["gallery"]), "--out", str(out), "--device", "cpu", "--loader", "torch",
                        "--topk", "5"]) == 0
    res = json.loads((out / "results.json").read_text())
    fx = dgnet.FeatureExtractor(path, device="cpu", loader="torch")
    q = [r["query"] for r in res["ranked"]]
    g = sorted(str(p) for p in folders["gallery"].iterdir())
    dist = -(fx(q) @ fx(g).T).double().numpy()
    qp, gp = _pids(q), _pids(g)
    cmc, _ = evaluate_rank(dist, qp, gp, np.arange(len(q)), np.arange(len(q), len(q) + len(g)))
    first = [_pids([r["results"][0]["path"]])[0] for r in res["ranked"]]
    assert np.mean(np.array(first) == qp) == pytest.approx(float(cmc[0]))
    for i, r in enumerate(res["ranked"]):
        want = np.argsort(dist[i], kind="stable")[:5]
        assert [x["path"] for x in r["results"]] == [g[j] for j in want]
        np.testing.assert_allclose([x["distance"] for x in r["results"]], dist[i][want], rtol=1e-5, atol=1e-5)
        assert Image.open(r["ranklist"]).size[0] == 6 * (32 + 2) + 2  # query + top 5
    assert res["extracted"] == len(g)


def test_the_gallery_cache_is_reused_and_updated(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    gallery = tmp_path / "g"
    gallery.mkdir()
    for p in sorted(folders["gallery"].iterdir())[:6]:
        (gallery / p.name).write_bytes(p.read_bytes())
    argv = ["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery", str(gallery), "--out",
            str(tmp_path / "o"), "--device", "cpu", "--loader", "torch", "--rerank", "--topk", "3"]
    counts = []
    for change in (None, None, "add"):
        if change == "add":
            src = sorted(folders["gallery"].iterdir())[6]
            (gallery / src.name).write_bytes(src.read_bytes())
        assert search.main(argv) == 0
        counts.append(json.loads((tmp_path / "o" / "results.json").read_text())["extracted"])
    assert counts == [6, 0, 1]
