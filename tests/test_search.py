"""python -m dgnet.extract and python -m dgnet.search on images the test makes: feature files, skipped images,
the gallery cache, and rankings against dgnet.evaluation.rank on the same distances."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from _tiny_run import image_folders, make_tiny_checkpoint
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
    return path, image_folders(base, ds)


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
    # a gallery .npz written with another checkpoint: refused, both files named
    other = FeatureSet(torch.zeros(1, 1024), ["a.png"], "0123456789abcdef")
    other.save(tmp_path / "other.npz")
    assert search.main(["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery",
                        str(tmp_path / "other.npz"), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "other.npz") in err and str(path) in err and "extract the gallery again" in err


def test_search_ranks_as_the_evaluation_does_on_the_same_distances(run, tmp_path, monkeypatch):
    """Rank-1 of the search's lists equals dgnet.evaluation.rank's Rank-1 on the same distance matrix (every image its
    own camera, so the protocol removes nothing), and the order is the distance order."""
    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    out = tmp_path / "out"
    assert search.main(["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery",
                        str(folders["gallery"]), "--out", str(out), "--device", "cpu", "--loader", "torch",
                        "--topk", "5", "--no-rerank"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "cosine" and res["reranked"] is False and "1 - cos" in res["distance"]
    fx = dgnet.FeatureExtractor(path, device="cpu", loader="torch")
    q = [r["query"] for r in res["ranked"]]
    g = sorted(str(p) for p in folders["gallery"].iterdir())
    qf, gf = fx(q).double(), fx(g).double()
    dist = (1 - (qf @ gf.T) / (qf.norm(dim=1)[:, None] * gf.norm(dim=1)[None])).numpy()  # cosine distance
    assert (np.argsort(dist, axis=1, kind="stable") == np.argsort(-(qf @ gf.T).numpy(), axis=1, kind="stable")).all()
    qp, gp = _pids(q), _pids(g)
    cmc, _ = evaluate_rank(dist, qp, gp, np.arange(len(q)), np.arange(len(q), len(q) + len(g)), max_rank=len(g))
    first = [_pids([r["results"][0]["path"]])[0] for r in res["ranked"]]
    assert np.mean(np.array(first) == qp) == pytest.approx(float(cmc[0]))
    for i, r in enumerate(res["ranked"]):
        want = np.argsort(dist[i], kind="stable")[:5]
        assert [x["path"] for x in r["results"]] == [g[j] for j in want]
        np.testing.assert_allclose([x["distance"] for x in r["results"]], dist[i][want], rtol=1e-5, atol=1e-5)
    assert res["extracted"] == len(g)
    # the rank-list file is the labelled figure of that query's results (JPEG: equal up to compression)
    from dgnet.generative.figures import Thumbnails, search_figure

    thumbs = Thumbnails((256, 128))
    for r in res["ranked"][:2]:
        paths, dists = [x["path"] for x in r["results"]], [x["distance"] for x in r["results"]]
        want = np.asarray(search_figure(r["query"], paths, dists, thumbs, "negative dot product").image, float)
        got = np.asarray(Image.open(r["ranklist"]).convert("RGB"), float)
        assert got.shape == want.shape and want.shape[0] > 256  # tiles shown 256 x 128, not at 64 x 32
        assert np.abs(got - want).mean() < 2


def test_search_draws_the_first_queries_unless_asked_for_all(run, tmp_path, monkeypatch):
    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    base = ["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery", str(folders["gallery"]),
            "--device", "cpu", "--loader", "torch", "--topk", "2"]
    n = len(list(folders["query"].iterdir()))
    for flag, drawn in (("2", 2), ("all", n), ("0", 0)):
        out = tmp_path / flag
        assert search.main([*base, "--out", str(out), "--ranklists", flag]) == 0
        res = json.loads((out / "results.json").read_text())
        assert len(res["ranked"]) == n and res["ranklists"] == drawn
        files = sorted((out / "ranklists").glob("*.jpg"))
        assert [r["ranklist"] for r in res["ranked"]] == [str(f) for f in files] + [None] * (n - drawn)
    with pytest.raises(SystemExit):
        search.build_parser().parse_args([*base, "--out", "o", "--ranklists", "-1"])


def test_the_gallery_cache_is_reused_and_updated(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    gallery = tmp_path / "g"
    gallery.mkdir()
    for p in sorted(folders["gallery"].iterdir())[:6]:
        (gallery / p.name).write_bytes(p.read_bytes())
    argv = ["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery", str(gallery), "--out",
            str(tmp_path / "o"), "--device", "cpu", "--loader", "torch", "--rerank", "--topk", "3", "--force"]
    counts = []
    for change in (None, None, "add"):
        if change == "add":
            src = sorted(folders["gallery"].iterdir())[6]
            (gallery / src.name).write_bytes(src.read_bytes())
        assert search.main(argv) == 0
        counts.append(json.loads((tmp_path / "o" / "results.json").read_text())["extracted"])
    assert counts == [6, 0, 1]


def test_search_distances_say_what_they_are_and_rerank_follows_the_checkpoint(run, tmp_path, monkeypatch, capsys):
    """Cosine distances by default (never negative); re-ranking on unless --no-rerank, as the checkpoint's
    eval.rerank (the demo preset's: on); --metric neg_dot gives the protocol's negative score."""
    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    fx = dgnet.FeatureExtractor(path, device="cpu", loader="torch")
    assert fx.cfg.eval.rerank
    base = ["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery", str(folders["gallery"]),
            "--device", "cpu", "--loader", "torch", "--topk", "3"]
    runs = {}
    for name, extra in {"default": [], "plain": ["--no-rerank"], "neg_dot": ["--no-rerank", "--metric", "neg_dot"],
                        "rerank": ["--rerank"]}.items():
        assert search.main([*base, "--out", str(tmp_path / name), *extra]) == 0
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())
        assert "distances: " in capsys.readouterr().out
    results = lambda res: [r["results"] for r in res["ranked"]]  # noqa: E731
    assert runs["default"]["reranked"] and results(runs["default"]) == results(runs["rerank"])
    assert "re-ranked distance in [0, 1]" in runs["default"]["distance"]
    for name in ("default", "plain"):
        assert all(x["distance"] >= -1e-6 for r in runs[name]["ranked"] for x in r["results"])
    assert all(x["distance"] < 0 for r in runs["neg_dot"]["ranked"] for x in r["results"])
    order = lambda res: [[x["path"] for x in r["results"]] for r in res["ranked"]]  # noqa: E731
    assert order(runs["plain"]) == order(runs["neg_dot"])  # the same ranking: every feature has one norm


def test_extract_and_search_take_a_teacher_checkpoint(run, tmp_path, monkeypatch):
    from dgnet.checkpoints.format import build_state, load_checkpoint, save_atomic
    from dgnet.config import config_from_dict

    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    ckpt = load_checkpoint(path)
    only = save_atomic(build_state(stage="teacher", iteration=1, cfg=config_from_dict(ckpt["config"]),
                                   num_ids=ckpt["num_ids"], models={"teacher": dgnet.load_model(path, "teacher")}),
                       tmp_path / "teacher.pt")
    assert extract.main(["--checkpoint", str(only), "--images", str(folders["gallery"]), "--out",
                         str(tmp_path / "t.npz"), "--device", "cpu", "--loader", "torch"]) == 0
    fs = FeatureSet.load(tmp_path / "t.npz")
    assert fs.features.shape[1] == 512
    assert search.main(["--checkpoint", str(only), "--query", str(folders["query"]), "--gallery",
                        str(tmp_path / "t.npz"), "--out", str(tmp_path / "o"), "--device", "cpu", "--loader",
                        "torch", "--model", "teacher"]) == 0
    assert json.loads((tmp_path / "o" / "results.json").read_text())["model"] == "teacher"
