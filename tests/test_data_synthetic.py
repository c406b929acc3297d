"""The synthetic pedestrian set: determinism, the factor manifest, the Market layout, the baseline metric."""

import hashlib
import io
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dgnet.data import load_dataset
from dgnet.data import synthetic as syn
from dgnet.evaluation.baselines import colour_histogram, histogram_baseline

TINY = dict(ids=10, cams=3, height=64, width=32)


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return syn.generate(tmp_path_factory.mktemp("syn") / "set", seed=3, workers=1, **TINY)


def test_deterministic_and_worker_independent(tiny, tmp_path):
    again = syn.generate(tmp_path / "again", seed=3, workers=2, **TINY)
    assert digest(again) == digest(tiny)
    assert (again / "manifest.json").read_text() == (tiny / "manifest.json").read_text()
    other = syn.generate(tmp_path / "other", seed=4, workers=1, **TINY)
    assert digest(other) != digest(tiny)


def test_layout_and_manifest(tiny):
    ds = load_dataset("synthetic", tiny, verbose=False)
    man = syn.load_manifest(tiny)
    files = {Path(s.path).name: s for s in ds.train + ds.query + ds.gallery}
    assert set(files) == set(man)  # every image has its factors, and nothing else is listed
    inv_map = {v: k for k, v in ds.pid_map.items()}
    for name, s in files.items():
        rec = man[name]
        assert rec["camid"] == s.camid
        assert rec["pid"] == (inv_map[s.pid] if rec["split"] == "bounding_box_train" else s.pid)
        assert Image.open(s.path).size == (TINY["width"], TINY["height"])
    assert ds.num_train_pids == TINY["ids"] // 2
    assert {s.pid for s in ds.gallery} >= {0, -1}  # distractors and junk, as in Market
    # every query has a true match in the gallery from another camera
    gallery = defaultdict(set)
    for s in ds.gallery:
        gallery[s.pid].add(s.camid)
    assert all(gallery[q.pid] - {q.camid} for q in ds.query)


def test_identity_is_appearance_structure_is_not(tiny):
    man = syn.load_manifest(tiny)
    by_pid = defaultdict(list)
    for rec in man.values():
        if rec["pid"] > 0:
            by_pid[rec["pid"]].append(rec)
    for recs in by_pid.values():  # one appearance per identity, shared by all its images
        assert all(r["identity"] == recs[0]["identity"] for r in recs)
    # structure varies within identities: views and poses are drawn per image
    assert any(len({r["factors"]["view"] for r in recs}) > 1 for recs in by_pid.values())
    assert all(len({r["factors"]["stride"] for r in recs}) == len(recs) for recs in by_pid.values())
    assert man[next(iter(man))]["camera"]["jpeg_quality"] in range(55, 96)


def pixels(ident, view, **over):
    img = {**syn.image_factors(0, 1), "view": view, "occluder": "none", **over}
    return np.asarray(syn.render_person(ident, img, syn.camera_factors(0, 0), 128, 64), dtype=np.int16)


def test_logo_only_from_the_front():
    ident = {**syn.identity_factors(0, 5), "logo": "square", "logo_colour": [255, 0, 255], "bag": "none"}
    plain = {**ident, "logo": "none"}
    assert np.abs(pixels(ident, "front") - pixels(plain, "front")).max() > 100
    for view in ("back", "left", "right"):
        assert np.array_equal(pixels(ident, view), pixels(plain, view))


def test_occluder_covers_part_of_the_person():
    ident = syn.identity_factors(0, 7)
    free = pixels(ident, "front")
    walled = pixels(ident, "front", occluder="wall", occ_size=0.3, occ_colour=[0, 255, 0])
    changed = np.abs(free - walled).max(-1) > 0
    rows = np.flatnonzero(changed.any(1))
    assert rows.min() > 128 * 0.55 and rows.max() == 127  # the bottom third only


def test_ensure_dataset_reuses_and_refuses_mismatch(tmp_path):
    root = tmp_path / "data" / "synthetic"
    syn.ensure_dataset(root, verbose=False, seed=1, **TINY)
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert syn.ensure_dataset(root, verbose=False, seed=1, **TINY) == root
    assert (root / "manifest.json").stat().st_mtime_ns == stamp  # reused, not regenerated
    with pytest.raises(ValueError, match="holds a set made with"):
        syn.ensure_dataset(root, verbose=False, seed=2, **TINY)
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_generate_refuses_a_folder_holding_files(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "0001_c1s1_000001_00.jpg").write_bytes(b"another set's image")
    with pytest.raises(ValueError, match="is not empty"):
        syn.generate(tmp_path / "old", **TINY)


def test_the_set_keeps_its_seed_when_the_training_seed_changes(monkeypatch):
    """train.seed must not regenerate (or refuse) the default data/synthetic: the set has data.synthetic_seed."""
    from dgnet.checkpoints import runs
    from dgnet.checkpoints.runs import prepare_dataset
    from dgnet.config import resolve_config

    seen = {}

    def capture(root, verbose=True, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("captured")

    monkeypatch.setattr(runs, "ensure_dataset", capture)  # patched where prepare_dataset calls it
    cfg = resolve_config("demo", {"train": {"seed": 7}})
    with pytest.raises(RuntimeError, match="captured"):
        prepare_dataset(cfg, verbose=False)
    assert seen["seed"] == 0 == cfg.data.synthetic_seed
    # and the regime's options travel from the config to the set (the twocam preset)
    seen.clear()
    with pytest.raises(RuntimeError, match="captured"):
        prepare_dataset(resolve_config("twocam"), verbose=False)
    assert (seen["train_cams"], seen["per_cam"], seen["view_tie"]) == (2, 2, 0.8)


def test_cli(tmp_path, capsys):
    from dgnet.data.synthetic.__main__ import main

    main(["--out", str(tmp_path / "s"), "--ids", "6", "--cams", "2", "--height", "48", "--width", "24"])
    assert load_dataset("synthetic", tmp_path / "s", verbose=False).num_train_pids == 3


def test_baseline_evaluator_hand_computed():
    """The histogram baseline scores with dgnet.evaluation.rank (its own numpy evaluator is gone): a hand case."""
    from dgnet.evaluation.rank import evaluate_rank

    # query pid 1 cam 0. gallery order by distance: [pid 1 cam 0 (ignored: same cam), pid 2, pid 1 cam 1,
    # junk, pid 1 cam 2] -> first true match at rank 2; AP = mean(1/2, 2/3) (junk removed from the ranking)
    dist = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    cmc, m_ap = evaluate_rank(dist, np.array([1]), np.array([1, 2, 1, -1, 1]), np.array([0]), np.array([0, 0, 1, 1, 2]))
    assert cmc[0] == 0.0 and cmc[min(4, len(cmc) - 1)] == 1.0
    assert m_ap == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_histogram_baseline_outputs(tiny):
    ds = load_dataset("synthetic", tiny, verbose=False)
    res = histogram_baseline(ds)
    assert 0.0 <= res["mAP"] <= 1.0 and 0.0 <= res["rank1"] <= res["rank5"] <= res["rank10"] <= 1.0
    h = colour_histogram(ds.query[0].path)
    assert h.shape == (64,) and np.linalg.norm(h) == pytest.approx(1.0, abs=1e-5)


def test_jpeg_quality_follows_camera():
    cam = syn.camera_factors(0, 0)
    low, high = {**cam, "jpeg_quality": 40}, {**cam, "jpeg_quality": 95}
    img = syn.image_factors(0, 2)
    ident = syn.identity_factors(0, 2)
    a, b = syn.render(ident, img, low, 128, 64), syn.render(ident, img, high, 128, 64)
    assert len(a) < len(b)
    assert Image.open(io.BytesIO(a)).size == (64, 128)


# --------------------------------------------------------------------------------------------------------------------
# the two-camera regime (docs/study.md)

REGIME = dict(ids=16, cams=4, height=64, width=32, train_cams=2, per_cam=2, view_tie=0.8)


def _set_digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*.jpg")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_regime_defaults_draw_the_default_set(tiny):
    """The regime options at their defaults leave the set as it was: this digest is of the TINY set with seed 3
    drawn by the code before the options existed (commit 7242663, the same value from /work/main then)."""
    assert _set_digest(tiny) == "6881dc2f8d25dd61c04a7b108a7d3e3d34746fb4"


def test_regime_is_deterministic_and_its_manifest_shows_the_design(tmp_path):
    a = syn.generate(tmp_path / "a", seed=5, workers=1, **REGIME)
    b = syn.generate(tmp_path / "b", seed=5, workers=2, **REGIME)
    assert digest(a) == digest(b)
    assert (a / "manifest.json").read_text() == (b / "manifest.json").read_text()
    import json

    manifest = json.loads((a / "manifest.json").read_text())
    assert {k: manifest["params"][k] for k in ("train_cams", "per_cam", "view_tie")} == \
        {"train_cams": 2, "per_cam": 2, "view_tie": 0.8}
    # The design, counted independently of the manifest's own summary: from the images as the loader reads them.
    ds = load_dataset("synthetic", a, verbose=False)
    cams, per = defaultdict(set), defaultdict(int)
    for s in ds.train:
        cams[s.pid].add(s.camid)
        per[s.pid, s.camid] += 1
    assert len(cams) == REGIME["ids"] // 2
    assert all(len(c) == 2 for c in cams.values())  # every training identity: exactly two cameras
    assert set(per.values()) == {2}  # two images under each
    design = manifest["design"]
    assert design["train_identities_by_camera_count"] == {"2": REGIME["ids"] // 2}
    assert design["train_images_per_identity_camera"] == [2]
    # every query has a true match in another camera (the protocol ignores same-camera matches)
    g = defaultdict(set)
    for s in ds.gallery:
        g[s.pid].add(s.camid)
    assert all(g[q.pid] - {q.camid} for q in ds.query)
    assert design["queries_with_a_match_in_another_camera"] == 1.0
    assert design["split_cameras"]["bounding_box_train"] == list(range(REGIME["cams"]))  # all cameras train
    # views follow the camera for about view_tie of the images, plus chance (1/4) for the rest
    man = syn.load_manifest(a)
    persons = [r for r in man.values() if r["kind"] == "person"]
    tied = sum(r["factors"]["view"] == syn.VIEWS[r["camid"] % 4] for r in persons) / len(persons)
    assert design["view_is_camera_view"] == pytest.approx(tied, abs=1e-4)
    assert 0.7 < tied < 0.97, tied  # expected 0.8 + 0.2 / 4 = 0.85


def test_regime_keeps_the_test_split_and_the_identities(tiny, tmp_path):
    """The regime changes the training identities' cameras and counts only: appearances and the test split's
    files are the default set's (the regime's own draws use their own generator)."""
    reg = syn.generate(tmp_path / "reg", seed=3, workers=1, train_cams=2, per_cam=1, **TINY)
    m0, m1 = syn.load_manifest(tiny), syn.load_manifest(reg)
    test0 = sorted((r["pid"], r["camid"], r["split"]) for r in m0.values() if r["split"] != "bounding_box_train")
    test1 = sorted((r["pid"], r["camid"], r["split"]) for r in m1.values() if r["split"] != "bounding_box_train")
    assert test0 == test1
    assert {r["pid"]: r["identity"] for r in m0.values()} == {r["pid"]: r["identity"] for r in m1.values()}


def test_regime_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="train_cams=5"):
        syn.generate(tmp_path / "x", train_cams=5, **TINY)
    with pytest.raises(ValueError, match="view_tie=1.5"):
        syn.generate(tmp_path / "y", view_tie=1.5, **TINY)


def test_a_manifest_from_before_the_regime_options_is_reused(tiny, tmp_path):
    """A set drawn before the options existed has no such keys in its manifest; it is the default set, reused."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny, old)
    m = json.loads((old / "manifest.json").read_text())
    m["params"] = {k: m["params"][k] for k in ("ids", "cams", "height", "width", "seed")}
    (old / "manifest.json").write_text(json.dumps(m))
    assert syn.ensure_dataset(old, verbose=False, seed=3, **TINY) == old
    with pytest.raises(ValueError, match="holds a set made with"):
        syn.ensure_dataset(old, verbose=False, seed=3, train_cams=2, **TINY)


def test_command_line_regime(tmp_path, capsys):
    from dgnet.data.synthetic.__main__ import main

    out = tmp_path / "cli"
    assert main(["--out", str(out), "--ids", "8", "--cams", "3", "--height", "32", "--width", "16",
                 "--train-cams", "2", "--per-cam", "3", "--view-tie", "1", "--workers", "1"]) == 0
    import json

    design = json.loads((out / "manifest.json").read_text())["design"]
    assert design["train_identities_by_camera_count"] == {"2": 4}
    assert design["view_is_camera_view"] == 1.0
    assert main(["--out", str(tmp_path / "bad"), "--cams", "3", "--train-cams", "4"]) == 2
    assert "train_cams=4" in capsys.readouterr().err
