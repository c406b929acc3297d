"""Image files -> 8-bit RGB arrays, read the way DALI's decoder reads them (Pillow and numpy only, no torch).

Both input pipelines must see the same pixels. DALI (nvImageCodec) decodes any bit depth to 8-bit RGB and
scales 16-bit samples by ``round(v / 257)``; Pillow's ``convert("RGB")`` instead clips 16-bit grey at 255
(a 16-bit grey PNG becomes a blank white image) and drops the low byte of 16-bit colour. Here every
accepted mode is read to DALI's values exactly:

- JPEG ``L``, ``RGB``, ``CMYK`` and PNG ``1``, ``L`` (1/2/4/8 bits), ``P`` (with or without transparency),
  ``LA``, ``RGB``, ``RGBA``: Pillow's conversion to RGB, which equals DALI's; alpha is dropped, not
  composited, as DALI and the DG-Net reference's Pillow loader both do;
- 16-bit grey (``I;16`` and its byte orders): ``round(v / 257)``, replicated to RGB;
- 16-bit colour PNG (RGB, RGBA, grey + alpha): Pillow's PNG decoder is run with raw modes that keep both
  bytes of each sample, then ``round(v / 257)``.

Everything else (32-bit integer ``I`` and float ``F`` TIFFs have no defined 8-bit range; DALI reads ``F`` on
its own scale and fails on ``I``; ``LAB``, ``HSV``, ``YCbCr``, premultiplied modes) is refused with
:class:`UnsupportedImage`, and :mod:`dgnet.data.check` refuses files whose content is not JPEG or PNG,
the formats the layouts' extensions name.

EXIF orientation (tag 0x0112, JPEG APP1 or PNG eXIf) is applied, as DALI's decoder applies it: a phone photo
is read upright, as a viewer shows it (Pillow's ``open`` alone does not rotate it; the DG-Net reference's
datasets carry no such tag). Both pipelines agree on all eight orientations.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = ("JPEG", "PNG")  # what IMAGE_EXTENSIONS (.jpg, .jpeg, .png) promise, and what the check lets through
MODES_8BIT = ("1", "L", "P", "LA", "RGB", "RGBA", "CMYK")
MODES_16BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N")
# Pillow's raw modes of 16-bit colour PNGs (it opens them as 8-bit RGB / RGBA, keeping the high bytes):
# per raw mode, the raw mode that reads the low bytes instead (same bits per pixel, so PNG un-filtering is
# the same), or None where one raw mode already reads both bytes (grey + alpha as 8-bit RGBA: Lhi Llo Ahi Alo).
_PNG16_LOW = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": None}
EXPECTED = (
    "expected a JPEG (L, RGB, CMYK) or a PNG (1, L, P, LA, RGB, RGBA at 8 bits, or L, LA, RGB, RGBA at 16 bits)"
)


class UnsupportedImage(ValueError):
    """An image that decodes but whose pixels have no agreed 8-bit RGB reading; the message names the file."""


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than Pillow's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``), the limit every dgnet reader applies; the message names the file."""


def refuse_too_large(size: tuple[int, int], name: str) -> None:
    """Raise :class:`ImageTooLarge` when an image of ``size`` (width, height) is over the limit that
    ``python -m dgnet.data.check`` and the commands apply (Pillow's ``MAX_IMAGE_PIXELS``; ``None`` turns it off)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and size[0] * size[1] > limit:
        raise ImageTooLarge(f"{name}: {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels is over the "
                            f"decompression-bomb limit of {limit:,} pixels (PIL.Image.MAX_IMAGE_PIXELS); refused "
                            "before decoding")


def check_file_size(path: str | Path) -> None:
    """Read only the header of the image file ``path`` and raise :class:`ImageTooLarge` when it is over the limit
    (a decoder that does not apply Pillow's, such as DALI's, would otherwise decode gigabytes). Files whose header
    does not parse are left to the decoder to report."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                size = im.size
        except Image.DecompressionBombError as exc:  # over twice the limit: Pillow refuses to open it at all
            raise ImageTooLarge(f"{path}: {exc}") from None
        except Exception:  # noqa: BLE001 - not an image, truncated header...: the decoder names those
            return
    refuse_too_large(size, str(path))


def scale16(v: np.ndarray) -> np.ndarray:
    """16-bit samples -> uint8 as DALI converts them: ``round(v / 257)`` (checked on all 65,536 values)."""
    return ((v.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def unsupported(im: Image.Image) -> str | None:
    """Why the opened (not yet loaded) image ``im`` has no agreed RGB reading, or ``None``."""
    if im.mode in MODES_8BIT or im.mode in MODES_16BIT_GREY:
        return None
    if im.mode == "I":
        return "32-bit integer pixels have no defined 8-bit range"
    if im.mode == "F":
        return "floating-point pixels have no defined 8-bit range"
    return f"mode {im.mode} is not read the same way by both input pipelines"


def _rawmode(im: Image.Image) -> str | None:
    return im.tile[0].args if im.format == "PNG" and len(im.tile) == 1 else None


def _png_raw(path: str | Path, rawmode: str) -> np.ndarray:
    with Image.open(path) as im:
        im.tile = [t._replace(args=rawmode) for t in im.tile]
        return np.asarray(im)


def _png16_colour(path: str | Path, rawmode: str) -> np.ndarray:
    if rawmode == "LA;16B":
        raw = _png_raw(path, "RGBA").astype(np.uint16)
        return np.repeat(scale16(raw[..., 0] << 8 | raw[..., 1])[..., None], 3, axis=2)
    high = _png_raw(path, rawmode).astype(np.uint16)
    low = _png_raw(path, _PNG16_LOW[rawmode]).astype(np.uint16)
    return scale16(high[..., :3] << 8 | low[..., :3])


ORIENTATION_TAG = 0x0112


def orientation(im: Image.Image) -> int:
    """The EXIF orientation of the opened image ``im`` (1, upright, when it has none or an invalid one)."""
    value = im.getexif().get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(rgb: np.ndarray, value: int) -> np.ndarray:
    """``rgb`` ``(H, W, C)`` as EXIF orientation ``value`` says to display it (Pillow's ``exif_transpose`` and
    DALI's ``adjust_orientation``): 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
    7 transverse, 8 rotate 90 counter-clockwise. A writable, contiguous copy when it moves anything."""
    if value == 1:
        return rgb
    out = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}[value](rgb)
    return np.ascontiguousarray(out)


def rgb8(path: str | Path) -> np.ndarray:
    """The image file ``path`` as ``(H, W, 3)`` uint8 RGB, upright by its EXIF orientation, as DALI reads it.

    Raises :class:`UnsupportedImage` for modes without an agreed reading, :class:`ImageTooLarge` over the
    decompression-bomb limit, and Pillow's own errors
    (``OSError``, ``Image.DecompressionBombError``...) for files that do not decode.
    """
    try:
        with warnings.catch_warnings():  # one open: the size is checked below, against the same limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{path}: {exc}") from None
    with im:
        refuse_too_large(im.size, str(path))
        why = unsupported(im)
        if why is not None:
            raise UnsupportedImage(f"{path}: {im.format} image in mode {im.mode}: {why}; {EXPECTED}")
        return orient(_rgb8(path, im), orientation(im))


def _rgb8(path: str | Path, im: Image.Image) -> np.ndarray:
    rawmode = _rawmode(im)
    if rawmode in _PNG16_LOW:
        return _png16_colour(path, rawmode)
    if im.mode in MODES_16BIT_GREY:
        return np.repeat(scale16(np.asarray(im))[..., None], 3, axis=2)
    if im.mode == "P":  # through RGBA: Pillow warns when it drops a palette's alpha on the way to RGB
        return np.asarray(im.convert("RGBA"))[..., :3].copy()
    return np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy refuses read-only arrays
