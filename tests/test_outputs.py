"""Files and outputs (docs/reliability.md): no command writes over one of its inputs or over a file it did not
write, search and extract never read their own outputs, the gallery cache has one writer, feature files are
checked when read, and files that are not what an option expects (a TorchScript program as a checkpoint, a pickle
named .npz, a loop of links, a decompression bomb, a read-only or full folder) get one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
import warnings

import numpy as np
import pytest
import torch
from _tiny_run import image_folders, make_tiny_checkpoint
from PIL import Image

import dgnet
from dgnet import export, extract, search
from dgnet.checkpoints.format import load_checkpoint
from dgnet.data import dali_status
from dgnet.data.check import problems
from dgnet.evaluation.rank import evaluate_rank
from dgnet.fileio import human_bytes
from dgnet.inference.export import part_module
from dgnet.inference.gallery import FeatureSet
from dgnet.runlock import acquire


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny checkpoint and plain folders of its query and gallery images (as tests/test_search.py makes them)."""
    base = tmp_path_factory.mktemp("outputs")
    path, ds, _ = make_tiny_checkpoint(base)
    return path, image_folders(base, ds)


def _copy(src, dst, n=None):
    dst.mkdir(parents=True)
    for p in sorted(src.iterdir())[:n]:
        shutil.copy(p, dst / p.name)
    return dst


def _rc(capsys, main, argv):
    rc = main(argv)
    return rc, capsys.readouterr().err


CPU = ["--device", "cpu", "--loader", "torch"]


@pytest.fixture
def mount(tmp_path):
    """``mount(options)`` -> a fresh tmpfs mounted with ``options`` (e.g. ``"ro"``, ``"size=2m"``), or a skip where
    this machine cannot mount one."""
    done = []

    def make(options: str):
        mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a file system here ({r.stderr.decode().strip()})")
        done.append(mnt)
        return mnt

    yield make
    for mnt in done:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# ---- outputs never overwrite inputs (issue 26, item 1) -----------------------------------------------------------


def test_export_never_writes_over_its_checkpoint(run, tmp_path, capsys):
    """The README's TorchScript example uses a .pt name: ``--out`` equal to ``--checkpoint`` used to replace the
    trained checkpoint with the graph, exit 0."""
    path, _ = run
    ck = tmp_path / "dgnet.pt"
    shutil.copy(path, ck)
    link = tmp_path / "same.pt"
    link.symlink_to(ck)
    before = ck.read_bytes()
    for out, force in ((ck, []), (tmp_path / "." / "dgnet.pt", []), (link, []), (ck, ["--force"])):
        rc, err = _rc(capsys, export.main, ["--checkpoint", str(ck), "--format", "torchscript", "--out", str(out),
                                            *force])
        assert rc == 2 and "is the --checkpoint input" in err and str(out) in err, err
    assert ck.read_bytes() == before


def test_export_replaces_only_its_own_earlier_export_and_only_with_force(run, tmp_path, capsys):
    path, _ = run
    notes = tmp_path / "notes.pt"
    notes.write_text("three weeks of notes")
    for force in ([], ["--force"]):
        rc, err = _rc(capsys, export.main, ["--checkpoint", str(path), "--format", "torchscript", "--model",
                                            "teacher", "--out", str(notes), *force])
        assert rc == 2 and "not a model export dgnet wrote" in err and "notes.pt" in err, err
    assert notes.read_text() == "three weeks of notes"
    out = tmp_path / "teacher.ts.pt"
    argv = ["--checkpoint", str(path), "--format", "torchscript", "--model", "teacher", "--out", str(out)]
    assert export.main(argv) == 0
    rc, err = _rc(capsys, export.main, argv)
    assert rc == 2 and "holds an earlier model export; pass --force" in err, err
    assert export.main([*argv, "--force"]) == 0


def test_extract_never_writes_among_its_images_or_over_its_inputs(run, tmp_path, capsys):
    path, folders = run
    g = _copy(folders["gallery"], tmp_path / "g", 3)
    image = sorted(g.iterdir())[0]
    before = image.read_bytes()
    for out in (image, g / "features.npz", g / "sub" / "features.npz", image.with_suffix(".npz")):
        rc, err = _rc(capsys, extract.main, ["--checkpoint", str(path), "--images", str(g), "--out", str(out), *CPU])
        assert rc == 2 and str(out) in err, err
        assert ("inside" in err and "a folder of --images images" in err) or "ending in .npz" in err, err
    assert image.read_bytes() == before and sorted(p.name for p in g.iterdir()) == sorted(
        p.name for p in sorted(folders["gallery"].iterdir())[:3])
    rc, err = _rc(capsys, extract.main, ["--checkpoint", str(path), "--images", str(g), "--out", str(path), *CPU])
    assert rc == 2 and str(path) in err


def test_extract_replaces_only_feature_files_and_only_with_force(run, tmp_path, capsys):
    path, folders = run
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.arange(4))
    argv = ["--checkpoint", str(path), "--images", str(folders["query"]), *CPU]
    for force in ([], ["--force"]):
        rc, err = _rc(capsys, extract.main, [*argv, "--out", str(other), *force])
        assert rc == 2 and "not a feature file dgnet wrote" in err, err
    assert list(np.load(other)) == ["weights"]
    out = tmp_path / "q.npz"
    assert extract.main([*argv, "--out", str(out)]) == 0
    rc, err = _rc(capsys, extract.main, [*argv, "--out", str(out)])
    assert rc == 2 and "holds an earlier feature file; pass --force" in err, err
    assert extract.main([*argv, "--out", str(out), "--force"]) == 0


def test_search_never_writes_into_its_input_folders_nor_ranks_its_own_rank_lists(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    g = _copy(folders["gallery"], tmp_path / "g", 4)
    q = _copy(folders["query"], tmp_path / "q", 2)
    base = ["--checkpoint", str(path), "--query", str(q), "--gallery", str(g), *CPU, "--topk", "3"]
    for out, needle in ((g / "res", "a folder of --gallery images"), (q / "res", "a folder of --query images"),
                        (g, "is the --gallery input")):
        rc, err = _rc(capsys, search.main, [*base, "--out", str(out)])
        assert rc == 2 and needle in err, err
    assert not (g / "res").exists() and not (q / "res").exists()
    # an earlier search's output inside the gallery (as older versions allowed) is never ranked
    assert search.main([*base, "--out", str(tmp_path / "res")]) == 0
    shutil.move(tmp_path / "res", g / "res")
    assert search.main([*base, "--out", str(tmp_path / "res2")]) == 0
    res = json.loads((tmp_path / "res2" / "results.json").read_text())
    assert res["gallery"] == 4
    assert all("/res/" not in r["path"] for rec in res["ranked"] for r in rec["results"])


def test_search_replaces_an_earlier_search_only_with_force(run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    q = _copy(folders["query"], tmp_path / "q", 3)
    out = tmp_path / "o"
    base = ["--checkpoint", str(path), "--query", str(q), "--gallery", str(folders["gallery"]), *CPU, "--topk", "2"]
    argv = [*base, "--out", str(out)]
    assert search.main(argv) == 0 and len(list((out / "ranklists").iterdir())) == 3
    rc, err = _rc(capsys, search.main, argv)
    assert rc == 2 and "holds an earlier search output; pass --force" in err, err
    sorted(q.iterdir())[0].unlink()
    assert search.main([*argv, "--force"]) == 0
    assert len(list((out / "ranklists").iterdir())) == 2  # the earlier rank lists went with their results.json
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "results.json").write_text('{"accuracy": 0.9}')
    for force in ([], ["--force"]):
        rc, err = _rc(capsys, search.main, [*base, "--out", str(foreign), *force])
        assert rc == 2 and "is not a search output dgnet wrote" in err, err
    assert (foreign / "results.json").read_text() == '{"accuracy": 0.9}'


# ---- one writer for the gallery cache (item 3) -------------------------------------------------------------------


def test_the_gallery_cache_has_one_writer(run, tmp_path, monkeypatch):
    """While another process holds the cache folder's lock, a search writes no cache entry (it says so and its
    results are complete); once the lock is free, it does."""
    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    cache = tmp_path / "cache" / "galleries"
    argv = ["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery", str(folders["gallery"]),
            *CPU, "--topk", "2"]
    with acquire(cache, "another search"):
        with pytest.warns(UserWarning, match=r"was not updated: .*in use by another search"):
            assert search.main([*argv, "--out", str(tmp_path / "o1")]) == 0
        assert list(cache.glob("*.npz")) == []
    assert search.main([*argv, "--out", str(tmp_path / "o2")]) == 0
    assert len(list(cache.glob("*.npz"))) == 1


# ---- feature files are checked when read (item 4) ----------------------------------------------------------------


def _feature_file(path, rows=32, n_paths=32, dim=8, **kw):
    fs = FeatureSet(torch.randn(rows, dim), [f"img{i}.png" for i in range(n_paths)], "0123456789abcdef", **kw)
    return fs.save(path)


def test_feature_files_are_checked_when_read(tmp_path):
    good = _feature_file(tmp_path / "good.npz")
    assert len(FeatureSet.load(good).paths) == 32
    cases = {
        "5 feature rows for 32 paths": _feature_file(tmp_path / "short.npz", rows=5),
        "64 feature rows for 32 paths": _feature_file(tmp_path / "long.npz", rows=64),
    }
    arrays = dict(np.load(good))
    for name, change, needle in (
        ("ints.npz", {"features": np.zeros((32, 8), np.int64)}, "features are int64 of shape (32, 8)"),
        ("flat.npz", {"features": np.zeros(256, np.float32)}, "features are float32 of shape (256,)"),
        ("stamps.npz", {"stamps": np.zeros((31, 2), np.int64)}, "stamps are int64 of shape (31, 2)"),
        ("nan.npz", {"features": np.full((32, 8), np.nan, np.float32)}, "32 of 32 feature rows hold NaN"),
        ("meta.npz", {"meta": np.asarray("{}")}, "meta record"),
        ("reasons.npz", {"skipped": np.asarray(["a.png"])}, "1 skipped files for 0 reasons"),
    ):
        np.savez(tmp_path / name, **{**arrays, **change})
        cases[needle] = tmp_path / name
    np.savez(tmp_path / "nokey.npz", **{k: v for k, v in arrays.items() if k != "stamps"})
    cases["it lacks the array(s) stamps"] = tmp_path / "nokey.npz"
    raw = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    cases["truncated or damaged"] = tmp_path / "truncated.npz"
    (tmp_path / "empty.npz").write_bytes(b"")
    cases["it is empty (0 bytes)"] = tmp_path / "empty.npz"
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0x10  # inside the features: the zip's CRC no longer matches
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    cases["truncated or damaged"] = tmp_path / "flipped.npz"
    (tmp_path / "pickle.npz").write_bytes(__import__("pickle").dumps({"features": [1.0]}))
    cases["is a Python pickle"] = tmp_path / "pickle.npz"
    for needle, path in cases.items():
        with pytest.raises(ValueError) as e:
            FeatureSet.load(path)
        msg = str(e.value)
        assert needle in msg and str(path) in msg and "dgnet.extract writes" in msg, msg
        assert "allow_pickle" not in msg, msg


def test_a_damaged_cache_entry_is_named_deleted_and_rebuilt(run, tmp_path, monkeypatch):
    """A truncated, empty or bit-flipped cache file used to make every later search fail (BadZipFile, EOFError)."""
    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    n = len(list(folders["gallery"].iterdir()))
    argv = ["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery", str(folders["gallery"]),
            "--out", str(tmp_path / "o"), *CPU, "--topk", "2", "--force"]
    assert search.main(argv) == 0
    (entry,) = (tmp_path / "cache" / "galleries").glob("*.npz")
    good = entry.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 3] ^= 0x10
    for damaged in (good[: len(good) // 2], b"", bytes(flipped)):
        entry.write_bytes(damaged)
        with pytest.warns(UserWarning, match=rf"{entry}.* is deleted and the gallery is extracted again"):
            assert search.main(argv) == 0
        assert json.loads((tmp_path / "o" / "results.json").read_text())["extracted"] == n
        assert len(FeatureSet.load(entry).paths) == n  # rebuilt, whole


def test_a_damaged_or_foreign_gallery_file_is_a_named_error(run, tmp_path, capsys):
    path, folders = run
    argv = ["--checkpoint", str(path), "--query", str(folders["query"]), *CPU]
    good = tmp_path / "g.npz"
    assert extract.main(["--checkpoint", str(path), "--images", str(folders["gallery"]), "--out", str(good),
                         *CPU]) == 0
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:1000])
    fs = FeatureSet.load(good)
    rows = tmp_path / "rows.npz"
    FeatureSet(fs.features[:5], fs.paths, fs.identity).save(rows)
    for bad, needle in ((truncated, "truncated or damaged"), (rows, f"5 feature rows for {len(fs.paths)} paths")):
        rc, err = _rc(capsys, search.main, [*argv, "--gallery", str(bad), "--out", str(tmp_path / "o")])
        assert rc == 2 and str(bad) in err and needle in err and "expected the .npz" in err, err
    other = tmp_path / "other.npz"
    FeatureSet(torch.zeros(1, 1024), ["a.png"], "0123456789abcdef", checkpoint="/runs/old/dgnet.pt").save(other)
    rc, err = _rc(capsys, search.main, [*argv, "--gallery", str(other), "--out", str(tmp_path / "o")])
    assert rc == 2 and str(other) in err and str(path) in err and "/runs/old/dgnet.pt" in err, err
    assert "0123456789abcdef" not in err
    rc, err = _rc(capsys, search.main, [*argv, "--model", "teacher", "--gallery", str(good), "--out",
                                        str(tmp_path / "o")])
    assert rc == 2 and "1024 wide" in err and "512 wide" in err, err


# ---- files that are not what an option expects (item 7) ----------------------------------------------------------


def test_a_torchscript_file_as_checkpoint_says_what_it_is(run, tmp_path, capsys):
    path, folders = run
    ts = tmp_path / "model.ts.pt"
    assert export.main(["--checkpoint", str(path), "--format", "torchscript", "--model", "teacher", "--out",
                        str(ts)]) == 0
    capsys.readouterr()
    for main, extra in ((extract.main, ["--images", str(folders["query"]), "--out", str(tmp_path / "f.npz")]),
                        (export.main, ["--format", "onnx", "--out", str(tmp_path / "m.onnx")])):
        rc, err = _rc(capsys, main, ["--checkpoint", str(ts), *extra])
        assert rc == 2 and str(ts) in err and "is a TorchScript program" in err, err
        assert "weights_only" not in err


def test_a_loop_of_links_in_a_gallery_is_skipped_and_listed(run, tmp_path, monkeypatch):
    monkeypatch.setenv("DGNET_CACHE", str(tmp_path / "cache"))
    path, folders = run
    g = _copy(folders["gallery"], tmp_path / "g", 3)
    (g / "loop_a.png").symlink_to("loop_b.png")
    (g / "loop_b.png").symlink_to("loop_a.png")
    loops = {str(g / "loop_a.png"), str(g / "loop_b.png")}
    with pytest.warns(UserWarning, match="skipped 2 image"):
        assert extract.main(["--checkpoint", str(path), "--images", str(g), "--out", str(tmp_path / "f.npz"),
                             *CPU]) == 0
    fs = FeatureSet.load(tmp_path / "f.npz")
    assert len(fs.paths) == 3 and set(fs.skipped) == loops
    assert all("loop of symbolic links" in why for why in fs.skipped.values())
    with pytest.warns(UserWarning, match="skipped 2 image"):
        assert search.main(["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery", str(g),
                            "--out", str(tmp_path / "o"), *CPU]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["gallery"] == 3 and set(res["skipped"]) == loops


def test_read_only_output_folders_are_one_line(run, mount, capsys):
    path, folders = run
    ro = mount("ro,size=1m")
    for main, argv in (
        (export.main, ["--checkpoint", str(path), "--format", "exported-program", "--out", str(ro / "m.pt2")]),
        (extract.main, ["--checkpoint", str(path), "--images", str(folders["query"]), "--out", str(ro / "f.npz"),
                        *CPU]),
        (search.main, ["--checkpoint", str(path), "--query", str(folders["query"]), "--gallery",
                       str(folders["gallery"]), "--out", str(ro / "o"), "--no-cache", *CPU]),
    ):
        rc, err = _rc(capsys, main, argv)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "cannot write" in err and str(ro) in err, err


def test_export_on_a_full_disk_says_what_it_needs_without_resume_advice(run, mount, capsys):
    """The old message said 'needs about 15.8 MiB and 15.8 MiB are free ... (--resume continues)': the bytes
    written when the disk filled, not the export's size, and advice only training can follow."""
    path, _ = run
    disk = mount("size=2m")
    rc, err = _rc(capsys, export.main, ["--checkpoint", str(path), "--format", "torchscript", "--out",
                                        str(disk / "m.ts.pt")])
    module = part_module(load_checkpoint(path), "reid")
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    assert rc == 2 and "no space left in" in err and f"needs about {human_bytes(weights)}" in err, err
    assert "--resume" not in err and "export again" in err and list(disk.iterdir()) == []


def test_the_feature_extractor_refuses_a_decompression_bomb_as_the_commands_do(run, tmp_path):
    """90 million pixels (above Pillow's 89,478,485 but under twice it, where Pillow only warns): the commands'
    decode check refused it, while FeatureExtractor decoded it (DALI applies no limit; Pillow only warned)."""
    path, _ = run
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 9_000)).save(bomb)  # a few kB on disk
    assert "DecompressionBomb" in problems([bomb], cache=False)[bomb]
    loaders = ["torch"] + (["dali"] if dali_status()[0] else [])
    for loader in loaders:
        fx = dgnet.FeatureExtractor(path, device="cpu", loader=loader)
        with pytest.raises(ValueError, match=r"bomb\.png: 10000x9000 = 90,000,000 pixels is over the "
                                             r"decompression-bomb limit of 89,478,485"):
            fx([bomb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        opened = Image.open(bomb)
    with pytest.raises(ValueError, match="decompression-bomb limit"):
        fx([opened])


# ---- evaluate_rank (item 7) --------------------------------------------------------------------------------------


def test_evaluate_rank_warns_when_max_rank_is_above_the_gallery_size():
    """torchreid prints 'Note: number of gallery samples is quite small' and goes on with the gallery size."""
    d = np.array([[0.1, 0.5, 0.3], [0.9, 0.2, 0.4]])
    args = (d, [1, 2], [1, 2, 1], [0, 0], [1, 1, 1])
    with pytest.warns(UserWarning, match="max_rank=50 is above the gallery size 3"):
        cmc, _ = evaluate_rank(*args)
    assert len(cmc) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(evaluate_rank(*args, max_rank=3)[0]) == 3
