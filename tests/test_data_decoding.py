"""Unusual image files: 16-bit, palette, alpha, grey, 1-bit PNGs and grey, CMYK, EXIF-rotated JPEGs and PNGs.

Each lossless file is compared with the 8-bit RGB computed here from the array it was written from (16-bit
samples -> round(v / 257), DALI's conversion); every file the pre-flight check passes must come out of the
torch and DALI pipelines the same; files with no agreed reading are refused by the check, by name, mode and
what is expected.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _optional import skip_unless_installed
from PIL import Image

from dgnet.data import Sample, check, test_stream
from dgnet.data.decoding import UnsupportedImage, rgb8
from dgnet.data.pipeline_torch import decode
from dgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD

H, W = 24, 12
needs_dali = skip_unless_installed("dali")  # a broken DALI install fails these tests (tests/_optional.py)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, samples: np.ndarray, color_type: int, bit_depth: int) -> Path:
    """A PNG written byte by byte (Pillow writes no 16-bit colour), ``samples`` ``(H, W, channels)``.

    Rows alternate the None, Sub and Up filters: Sub reaches back one whole pixel (6 bytes for 16-bit RGB),
    so a reader that un-filters with the wrong pixel size gets wrong values.
    """
    h, w, c = samples.shape
    rows = samples.astype(">u2" if bit_depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    bpp = c * bit_depth // 8
    out = []
    for y in range(h):
        row, kind = rows[y].astype(np.int16), y % 3
        if kind == 1:
            row = row - np.concatenate([np.zeros(bpp, np.int16), row[:-bpp]])
        elif kind == 2 and y > 0:
            row = row - rows[y - 1].astype(np.int16)
        else:
            kind = 0
        out.append(bytes([kind]) + (row % 256).astype(np.uint8).tobytes())
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"".join(out)))
                     + _chunk(b"IEND", b""))
    return path


def round257(v: np.ndarray) -> np.ndarray:
    return np.floor(v.astype(np.float64) / 257 + 0.5).astype(np.uint8)


def grey_rgb(v: np.ndarray) -> np.ndarray:
    return np.repeat(v[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray | None]]:
    """name -> (file, expected (H, W, 3) uint8 RGB, or None for JPEGs: lossy, compared across pipelines only)."""
    d = tmp_path_factory.mktemp("modes")
    rng = np.random.default_rng(0)
    g16 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    c16 = rng.integers(0, 65536, (H, W, 4), dtype=np.uint16)
    c8 = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
    out: dict[str, tuple[Path, np.ndarray | None]] = {}

    def save(name, im, expected, **kw):
        im.save(d / name, **kw)
        out[name] = (d / name, expected)

    save("grey16.png", Image.fromarray(g16), grey_rgb(round257(g16)))  # the reported file
    out["grey16_alpha.png"] = (write_png(d / "grey16_alpha.png", c16[..., :2], 4, 16), grey_rgb(round257(c16[..., 0])))
    out["rgb16.png"] = (write_png(d / "rgb16.png", c16[..., :3], 2, 16), round257(c16[..., :3]))
    out["rgba16.png"] = (write_png(d / "rgba16.png", c16, 6, 16), round257(c16[..., :3]))
    save("grey8.png", Image.fromarray(c8[..., 0]), grey_rgb(c8[..., 0]))
    g2 = rng.integers(0, 4, (H, W), dtype=np.uint8)  # 2-bit grey, packed four pixels a byte
    packed = (g2.reshape(H, W // 4, 4) << np.array([6, 4, 2, 0], np.uint8)).sum(-1, dtype=np.uint8)
    (d / "grey2.png").write_bytes(_grey2_png(packed))
    out["grey2.png"] = (d / "grey2.png", grey_rgb(g2 * 85))
    ink = c8[..., 0] > 127
    save("bilevel.png", Image.fromarray(ink), grey_rgb(np.where(ink, 255, 0).astype(np.uint8)))
    save("grey_alpha.png", Image.fromarray(c8[..., :2].copy(), "LA"), grey_rgb(c8[..., 0]))
    save("rgba.png", Image.fromarray(c8, "RGBA"), c8[..., :3])
    pal = Image.fromarray(c8[..., :3].copy()).quantize(16)
    lut = np.array(pal.getpalette(), np.uint8).reshape(-1, 3)
    expected_pal = lut[np.asarray(pal)]
    save("palette.png", pal, expected_pal)
    save("palette_one_transparent.png", pal, expected_pal, transparency=3)
    save("palette_alpha.png", pal, expected_pal, transparency=bytes(range(0, 256, 16)))
    rgb = Image.fromarray(c8[..., :3].copy())
    save("rgb.jpg", rgb, None, quality=95)
    save("grey.jpg", rgb.convert("L"), None, quality=95)
    save("cmyk.jpg", rgb.convert("CMYK"), None, quality=95)  # Pillow writes the Adobe (inverted) marker
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": this 24x12 image is read as 12x24
    save("exif_rotated.jpg", rgb, None, quality=95, exif=exif.tobytes())
    return out


def _grey2_png(packed: np.ndarray) -> bytes:
    h = packed.shape[0]
    raw = b"".join(b"\x00" + packed[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", W, h, 2, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def test_torch_decode_reads_what_was_written(images):
    for name, (path, expected) in images.items():
        got = decode(str(path))
        shape = (3, W, H) if name == "exif_rotated.jpg" else (3, H, W)  # EXIF orientation applied
        assert got.dtype == torch.uint8 and got.shape == shape, name
        if expected is not None:
            assert np.array_equal(got.permute(1, 2, 0).numpy(), expected), name


def test_every_file_passes_the_check(images):
    assert check.problems([p for p, _ in images.values()], cache=False) == {}


def _normalised(rgb: np.ndarray) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - mean) / std


@needs_dali
def test_torch_and_dali_pipelines_agree(images):
    """Through the real test streams at the files' own size (no resize): equal to float rounding; the lossless
    files also equal the values they were written from."""
    for names, size in (([n for n in images if n != "exif_rotated.jpg"], (H, W)), (["exif_rotated.jpg"], (W, H))):
        _agree(images, names, size)


def _agree(images, names, size):
    samples = [Sample(str(images[n][0]), i, 0) for i, n in enumerate(names)]
    kw = dict(batch_size=5, size=size)
    a = torch.cat([b["image"] for b in test_stream(samples, backend="torch", workers=0, **kw)])
    b = torch.cat([b["image"] for b in test_stream(samples, backend="dali", workers=1, **kw)])
    for i, name in enumerate(names):
        torch.testing.assert_close(a[i], b[i], atol=1e-5, rtol=0, msg=name)
        expected = images[name][1]
        if expected is not None:
            torch.testing.assert_close(b[i], _normalised(expected), atol=1e-5, rtol=0, msg=name)


@pytest.fixture
def refused(tmp_path) -> dict[Path, tuple[str, str]]:
    """Files with no agreed reading, named as the layouts expect -> (what the message must name)."""
    rng = np.random.default_rng(1)
    out = {}
    float_tiff = tmp_path / "0001_c1_f.png"  # TIFF content: the suffix does not make it a PNG
    Image.fromarray(rng.random((H, W), dtype=np.float32)).save(float_tiff, format="TIFF")
    out[float_tiff] = ("TIFF", "mode F")
    int_tiff = tmp_path / "0001_c1_i.png"
    Image.fromarray(rng.integers(0, 70000, (H, W)).astype(np.int32), "I").save(int_tiff, format="TIFF")
    out[int_tiff] = ("TIFF", "mode I")
    bmp = tmp_path / "0001_c1_b.jpg"
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(bmp, format="BMP")
    out[bmp] = ("BMP", "mode RGB")
    return out


def test_check_refuses_files_without_an_agreed_reading(refused):
    found = check.problems(list(refused), cache=False)
    assert set(found) == set(refused)
    for path, (fmt, mode) in refused.items():
        why = found[path]
        assert fmt in why and mode in why and "expected a JPEG" in why and path.suffix in why, why
    samples = [Sample(str(p), 1, 0) for p in refused]
    with pytest.raises(ValueError) as info:
        check.preflight(samples, skip_corrupt=False, cache=False)
    msg = str(info.value)
    for path, (_, mode) in refused.items():
        assert f"{path}: " in msg and mode in msg  # each file with its reason
    assert check.preflight(samples, skip_corrupt=True, cache=False) == ([], 3)


def test_torch_decode_refuses_modes_without_an_8bit_range(refused):
    for path, (_, mode) in refused.items():
        if mode in ("mode F", "mode I"):
            with pytest.raises(UnsupportedImage, match=rf"{path}.*{mode}.*no defined 8-bit range"):
                rgb8(path)


def test_cache_from_laxer_rules_is_not_trusted(tmp_path, images):
    """A cache written before these rules (a flat {path: [size, mtime]}) listed the 16-bit float file as good:
    the check must look at it again, not trust the stamp."""
    bad = tmp_path / "0001_c1_f.png"
    Image.fromarray(np.zeros((H, W), np.float32)).save(bad, format="TIFF")
    st = bad.stat()
    (tmp_path / check.CACHE_NAME).write_text(json.dumps({str(bad.resolve()): [st.st_size, st.st_mtime_ns]}))
    assert check.scan(tmp_path) == [bad]
    good = tmp_path / "grey16.png"
    good.write_bytes(images["grey16.png"][0].read_bytes())
    assert check.scan(tmp_path) == [bad]
    cached = json.loads((tmp_path / check.CACHE_NAME).read_text())
    assert cached["version"] == check.CACHE_VERSION and list(cached["files"]) == [str(good.resolve())]


@pytest.fixture(scope="module")
def oriented(tmp_path_factory) -> list[tuple[Path, Path]]:
    """For each EXIF orientation 1-8: a lossless PNG tagged with it, and its upright copy (untagged) drawn here by
    the orientation's definition, so a pipeline that reads the tag gives the copy's pixels exactly."""
    d = tmp_path_factory.mktemp("exif")
    rgb = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    mirror, cw, ccw = (lambda a: a[:, ::-1]), (lambda a: np.rot90(a, -1)), (lambda a: np.rot90(a, 1))
    # the EXIF specification's words: 2 mirror, 3 rotate 180, 4 flip, 5 mirror then rotate 270 clockwise,
    # 6 rotate 90 clockwise, 7 mirror then rotate 90 clockwise, 8 rotate 270 clockwise
    upright = {1: rgb, 2: mirror(rgb), 3: cw(cw(rgb)), 4: rgb[::-1], 5: ccw(mirror(rgb)), 6: cw(rgb),
               7: cw(mirror(rgb)), 8: ccw(rgb)}
    pairs = []
    for value, want in upright.items():
        exif = Image.Exif()
        exif[0x0112] = value
        Image.fromarray(rgb).save(d / f"tagged{value}.png", exif=exif.tobytes())
        Image.fromarray(np.ascontiguousarray(want)).save(d / f"upright{value}.png")
        pairs.append((d / f"tagged{value}.png", d / f"upright{value}.png"))
    return pairs


def test_exif_orientation_is_applied(oriented):
    for tagged, upright in oriented:
        assert np.array_equal(rgb8(tagged), rgb8(upright)), tagged.name


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=needs_dali)])
def test_both_pipelines_read_exif_rotated_files_upright(oriented, backend):
    """Through the test stream: each tagged file as its upright copy (resized to one size: half the orientations
    swap height and width)."""
    samples = [Sample(str(p), i, 0) for i, pair in enumerate(oriented) for p in pair]
    got = torch.cat([b["image"] for b in test_stream(samples, backend=backend, batch_size=4, size=(H, W),
                                                    workers=0 if backend == "torch" else 1)])
    for i, (tagged, _) in enumerate(oriented):
        torch.testing.assert_close(got[2 * i], got[2 * i + 1], atol=1e-5, rtol=0, msg=tagged.name)
