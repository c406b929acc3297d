"""Pre-flight scan for corrupt/truncated images: detection, the size+mtime cache, preflight, the CLI."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from dgnet.data import Sample, check
from dgnet.data.check.__main__ import main as check_main


def jpeg(seed: int) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path):
    good = [tmp_path / "a" / f"{i}.jpg" for i in range(4)]
    for i, p in enumerate(good):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(jpeg(i))
    truncated = tmp_path / "a" / "trunc.jpg"
    truncated.write_bytes(jpeg(9)[:900])
    garbage = tmp_path / "b" / "garbage.jpg"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a jpeg at all")
    (tmp_path / "b" / "notes.txt").write_text("ignored: not an image")
    return tmp_path, good, truncated, garbage


def test_scan_finds_corrupt_and_truncated(tree):
    root, good, truncated, garbage = tree
    assert check.scan(root) == sorted([truncated, garbage])
    assert check.is_corrupt(good[0]) is None
    assert "truncated" in check.is_corrupt(truncated)


def test_cache_by_size_and_mtime(tree, monkeypatch):
    root, good, truncated, garbage = tree
    check.scan(root)
    assert (root / check.CACHE_NAME).exists()
    calls = []
    real = check.is_corrupt
    monkeypatch.setattr(check, "is_corrupt", lambda p: calls.append(p) or real(p))
    assert check.scan(root) == sorted([truncated, garbage])
    assert sorted(calls) == sorted([truncated, garbage])  # good files are not decoded again; bad ones are
    # a good file that changes (here: gets truncated) is checked again and caught
    calls.clear()
    good[1].write_bytes(good[1].read_bytes()[:700])
    st = good[1].stat()
    os.utime(good[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert good[1] in check.scan(root)
    assert good[1] in calls and good[0] not in calls
    # without the cache every file is decoded
    calls.clear()
    check.scan(root, cache=False)
    assert len(calls) == 6  # 4 good + truncated + garbage (notes.txt is no image)


def test_preflight(tree):
    root, good, truncated, garbage = tree
    samples = [Sample(str(p), 1, 0) for p in good] + [Sample(str(truncated), 2, 0), Sample(str(garbage), 3, 1)]
    with pytest.raises(ValueError, match=r"(?s)2 corrupt.*trunc\.jpg.*--skip-corrupt"):
        check.preflight(samples, skip_corrupt=False)
    kept, left_out = check.preflight(samples, skip_corrupt=True)
    assert left_out == 2 and [s.path for s in kept] == [str(p) for p in good]
    assert check.preflight(samples[:4], skip_corrupt=False) == (samples[:4], 0)


def test_cli(tree, capsys):
    root, good, truncated, garbage = tree
    assert check_main([str(root)]) == 1
    out = capsys.readouterr().out
    assert str(truncated) in out and str(garbage) in out and "2 corrupt" in out
    assert check_main([str(root / "a" / "0.jpg")]) == 0


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        check.scan(tmp_path / "nope")


def test_missing_listed_file_is_reported_with_the_others(tree):
    """A list layout (MSMT17) can name a file that is not there: it is reported, and skippable, like a corrupt
    one (it used to escape the scan as a bare FileNotFoundError that --skip-corrupt could not skip)."""
    root, good, truncated, garbage = tree
    samples = [Sample(str(good[0]), 1, 0), Sample(str(root / "a" / "gone.jpg"), 1, 1), Sample(str(truncated), 2, 0)]
    with pytest.raises(ValueError, match=r"(?s)2 corrupt.*gone\.jpg: missing: No such file"):
        check.preflight(samples, skip_corrupt=False)
    assert check.preflight(samples, skip_corrupt=True) == ([samples[0]], 2)
