"""The synthetic pedestrian dataset: procedurally drawn people in the Market-1501 layout, with true factors.

Why it exists: no real dataset can be downloaded on our machines and a new user has none, so this set is the
default benchmark of the main job. It is built to separate appearance (identity) from structure and
condition the way DG-Net's encoders do:

- identity = appearance only: upper clothing (two colours, pattern, sleeve length), lower clothing (two
  colours, trousers/shorts/skirt, side stripe), hair (colour, style), skin, shoes, bag (kind, colour) and
  a chest logo that is seen only from the front;
- structure and condition are drawn independently of identity for every image: pose (limb angles,
  stride, knee bend, lean), body proportions, position and scale in the box, view (front, back, left,
  right), camera background, illumination colour and brightness, blur, noise, JPEG quality, and a partial
  occluder (pole, low wall, side block) on some images.

Colours come from a small shared palette, so many identities share colours and differ only in where
they sit (upper vs lower), in patterns, hair, bag or logo: a global colour histogram cannot tell them
apart, and the camera's illumination shifts the colours on top (see
:func:`dgnet.evaluation.baselines.histogram_baseline`).

Everything is a deterministic function of the seed: every identity and every image has its own
``numpy`` generator seeded by ``(seed, kind, index)``, so the set does not depend on the number of worker
processes. Output: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` (with ``0000`` distractors and
``-1`` junk images in the gallery, as in Market-1501) and ``manifest.json`` with every factor.

The two-camera regime (``train_cams``, ``per_cam``, ``view_tie``; docs/study.md gives its rationale): each
training identity is seen by exactly ``train_cams`` cameras with ``per_cam`` images under each, and with
probability ``view_tie`` an image shows its camera's own view (camera ``c`` sees people from ``VIEWS[c % 4]``),
so background, light and viewpoint come with the camera, as in real sets. Test identities are planned as in the
default set (the same cameras and counts; query from one or two cameras, their other images in the gallery).
The defaults (0, 0, 0.0) draw the default set, byte for byte.

Default size (``ids=400, cams=6, 128x64``): about 4,000 images. 128x64 is Market-1501's own image size (the
pipeline upsamples to 256x128 as for Market); 400 identities (200 train / 200 test) give about 10 images per
identity over 2-6 cameras: a ranking task small enough for CI. Its generation time and the colour-histogram
baseline's scores are in docs/records.md.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from dgnet.data.workers import ignore_stop_signals, pool_context

VERSION = 1
MANIFEST = "manifest.json"
DEFAULTS = dict(ids=400, cams=6, height=128, width=64, seed=0, train_cams=0, per_cam=0, view_tie=0.0)
# The regime's options and the value that leaves the default set as it was (a manifest written before they
# existed holds none of them: it was drawn with these).
REGIME_DEFAULTS = dict(train_cams=0, per_cam=0, view_tie=0.0)

# A small shared palette (RGB); identities jitter it slightly, so colours are shared but not identical.
PALETTE = np.array(
    [
        [200, 30, 30], [30, 60, 170], [240, 240, 235], [25, 25, 30], [120, 120, 125], [40, 130, 50],
        [235, 200, 40], [130, 70, 30], [230, 120, 160], [110, 40, 140], [240, 130, 30], [90, 170, 200],
    ],
    dtype=np.int64,
)
HAIR = np.array([[20, 15, 10], [70, 45, 20], [160, 110, 60], [200, 180, 120], [140, 140, 140], [120, 30, 20]])
SKIN = np.array([[255, 220, 190], [235, 190, 150], [200, 150, 110], [150, 100, 70], [100, 65, 45]])
UPPER_PATTERNS = ("solid", "hstripes", "vstripes", "split", "check", "band")
LOWER_KINDS = ("trousers", "shorts", "skirt")
HAIR_STYLES = ("short", "long", "bun", "cap")
BAGS = ("none", "backpack", "shoulder", "handbag")
LOGOS = ("none", "circle", "square", "triangle", "bar")
VIEWS = ("front", "back", "left", "right")
OCCLUDERS = ("none", "pole", "wall", "side")


def _rng(seed: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, index])


def _colour(rng: np.random.Generator, table: np.ndarray, jitter: int = 18) -> list[int]:
    c = table[rng.integers(len(table))] + rng.integers(-jitter, jitter + 1, 3)
    return [int(v) for v in np.clip(c, 0, 255)]


def identity_factors(seed: int, pid: int) -> dict:
    """The appearance of identity ``pid``: a JSON-able dict of colours (RGB lists) and categorical choices."""
    r = _rng(seed, 1, pid)
    return {
        "upper": _colour(r, PALETTE),
        "upper2": _colour(r, PALETTE),
        "upper_pattern": UPPER_PATTERNS[r.integers(len(UPPER_PATTERNS))],
        "stripe": int(r.integers(3, 7)),  # stripe period, in 1/40 of the person height
        "long_sleeves": bool(r.random() < 0.5),
        "lower": _colour(r, PALETTE),
        "lower2": _colour(r, PALETTE),
        "lower_kind": LOWER_KINDS[r.choice(3, p=[0.6, 0.25, 0.15])],
        "lower_stripe": bool(r.random() < 0.3),
        "hair": _colour(r, HAIR, 10),
        "hair_style": HAIR_STYLES[r.integers(len(HAIR_STYLES))],
        "cap": _colour(r, PALETTE),
        "skin": _colour(r, SKIN, 10),
        "shoes": _colour(r, PALETTE[[2, 3, 4, 7, 0, 1]]),
        "bag": BAGS[r.choice(4, p=[0.4, 0.25, 0.2, 0.15])],
        "bag_colour": _colour(r, PALETTE),
        "logo": LOGOS[r.integers(len(LOGOS))],
        "logo_colour": _colour(r, PALETTE),
    }


def camera_factors(seed: int, cam: int) -> dict:
    """Per-camera conditions: background scene seed and colours, illumination, blur, noise, JPEG quality."""
    r = _rng(seed, 2, cam)
    return {
        "bg_seed": int(r.integers(2**31)),
        "wall": [int(v) for v in r.integers(60, 220, 3)],
        "ground": [int(v) for v in r.integers(40, 180, 3)],
        "gain": [round(float(v), 3) for v in r.uniform(0.85, 1.15, 3)],  # illumination colour
        "brightness": round(float(r.uniform(0.8, 1.15)), 3),
        "blur": round(float(r.uniform(0.0, 1.2)), 3),  # Gaussian sigma in output pixels
        "noise": round(float(r.uniform(2.0, 10.0)), 3),  # std of additive noise, 0..255 scale
        "jpeg_quality": int(r.integers(55, 96)),
    }


def image_factors(seed: int, index: int) -> dict:
    """Structure and condition of image ``index``, independent of its identity."""
    r = _rng(seed, 3, index)
    occ = OCCLUDERS[r.choice(4, p=[0.7, 0.1, 0.1, 0.1])]
    return {
        "view": VIEWS[r.integers(4)],
        "scale": round(float(r.uniform(0.72, 0.95)), 4),  # person height / box height
        "cx": round(float(r.uniform(-0.1, 0.1)), 4),  # horizontal offset / box width
        "foot": round(float(r.uniform(0.93, 0.99)), 4),  # foot line / box height
        "leg_ratio": round(float(r.uniform(0.9, 1.1)), 4),
        "shoulder": round(float(r.uniform(0.85, 1.15)), 4),
        "head": round(float(r.uniform(0.9, 1.1)), 4),
        "stride": round(float(r.uniform(0.0, 0.45)), 4),  # radians, leg swing
        "arm_swing": round(float(r.uniform(0.0, 0.5)), 4),
        "knee": round(float(r.uniform(0.0, 0.35)), 4),
        "phase": int(r.choice([-1, 1])),
        "lean": round(float(r.uniform(-0.06, 0.06)), 4),
        "bg_offset": round(float(r.random()), 4),
        "brightness": round(float(r.uniform(0.85, 1.15)), 4),
        "occluder": occ,
        "occ_pos": round(float(r.uniform(0.15, 0.85)), 4),
        "occ_size": round(float(r.uniform(0.15, 0.35)), 4),
        "occ_colour": [int(v) for v in r.integers(30, 230, 3)],
        "noise_seed": int(r.integers(2**31)),
    }


# --------------------------------------------------------------------------------------------------------------------
# drawing (at twice the output size, then downsampled: cheap anti-aliasing)

_BG_CACHE: dict[tuple, Image.Image] = {}


def _muted(r: np.random.Generator) -> tuple:
    g = r.uniform(40, 200)
    return tuple(int(v) for v in 0.5 * r.integers(20, 240, 3) + 0.5 * g)


def _background(cam: dict, h: int, w: int) -> Image.Image:
    """A camera's scene, three boxes wide (each image takes a horizontal window of it)."""
    key = (cam["bg_seed"], h, w)
    if key in _BG_CACHE:
        return _BG_CACHE[key]
    r = np.random.default_rng(cam["bg_seed"])
    big_w = 3 * w
    y = np.linspace(0, 1, h)[:, None, None]
    horizon = r.uniform(0.55, 0.8)
    # Streets are mostly muted: camera colours are pulled towards grey so the person stands out.
    grey = r.uniform(80, 170)
    wall = 0.4 * np.array(cam["wall"], float) + 0.6 * grey
    ground = 0.4 * np.array(cam["ground"], float) + 0.6 * grey * 0.8
    img = np.where(y < horizon, wall * (0.8 + 0.3 * y), ground * (1.1 - 0.3 * (y - horizon)))
    img = np.broadcast_to(img, (h, big_w, 3)).copy()
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    hy = int(horizon * h)
    for _ in range(int(r.integers(6, 14))):  # facades, windows, signs
        x0 = int(r.integers(0, big_w))
        bw, bh = int(r.integers(w // 8, w // 2)), int(r.integers(h // 10, h // 2))
        y0 = int(r.integers(0, max(1, hy - bh // 2)))
        _rect(d, [x0, y0, x0 + bw, min(y0 + bh, hy)], fill=_muted(r))
    for _ in range(int(r.integers(2, 6))):  # kerbs and floor markings
        yy = int(r.integers(hy, h))
        d.line([0, yy, big_w, yy + int(r.integers(-h // 10, h // 10))],
               fill=_muted(r), width=int(r.integers(1, max(2, h // 40))))
    _BG_CACHE[key] = im
    return im


def _rect(d: ImageDraw.ImageDraw, box, fill) -> None:
    x0, y0, x1, y1 = box  # PIL wants ordered corners; mirrored (left-facing) shapes come reversed
    d.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=fill)


def _seg(d: ImageDraw.ImageDraw, a, b, colour, width: float) -> None:
    width = max(1, int(round(width)))
    d.line([a, b], fill=tuple(colour), width=width)
    r = width / 2  # round joints so limbs don't look cut
    for x, y in (a, b):
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(colour))


def _shade(c, f: float) -> tuple:
    return tuple(int(min(255, v * f)) for v in c)


def _pattern_fill(d: ImageDraw.ImageDraw, box, ident: dict, unit: float) -> None:
    """Fill ``box`` (x0, y0, x1, y1) with the identity's upper pattern; the caller masks it to the torso."""
    x0, y0, x1, y1 = box
    c1, c2 = tuple(ident["upper"]), tuple(ident["upper2"])
    _rect(d, box, fill=c1)
    pat, period = ident["upper_pattern"], max(2.0, ident["stripe"] * unit)
    if pat == "hstripes":
        y = y0
        while y < y1:
            _rect(d, [x0, y, x1, y + period / 2], fill=c2)
            y += period
    elif pat == "vstripes":
        x = x0
        while x < x1:
            _rect(d, [x, y0, x + period / 2, y1], fill=c2)
            x += period
    elif pat == "split":
        _rect(d, [(x0 + x1) / 2, y0, x1, y1], fill=c2)
    elif pat == "check":
        y, k = y0, 0
        while y < y1:
            x = x0 + (k % 2) * period
            while x < x1:
                _rect(d, [x, y, x + period, y + period], fill=c2)
                x += 2 * period
            y, k = y + period, k + 1
    elif pat == "band":
        _rect(d, [x0, y0 + 0.35 * (y1 - y0), x1, y0 + 0.55 * (y1 - y0)], fill=c2)


def render_person(ident: dict, img: dict, cam: dict, height: int, width: int, with_person: bool = True) -> Image.Image:
    """Draw one image (RGB, ``height x width``) before camera degradations (blur/noise/JPEG)."""
    s = 2  # supersampling factor
    H, W = height * s, width * s
    bg = _background(cam, H, W)
    off = int(img["bg_offset"] * (bg.width - W))
    canvas = bg.crop((off, 0, off + W, H))
    d = ImageDraw.Draw(canvas)
    if with_person:
        _draw_person(canvas, d, ident, img, H, W)
    occ = img["occluder"]
    oc = tuple(img["occ_colour"])
    if occ == "pole":
        x = img["occ_pos"] * W
        _rect(d, [x - img["occ_size"] * W * 0.35, 0, x + img["occ_size"] * W * 0.35, H], fill=oc)
    elif occ == "wall":
        _rect(d, [0, H * (1 - img["occ_size"] * 1.2), W, H], fill=oc)
    elif occ == "side":
        x = img["occ_size"] * W * 1.3
        if img["occ_pos"] < 0.5:
            _rect(d, [0, H * 0.3, x, H], fill=oc)
        else:
            _rect(d, [W - x, H * 0.3, W, H], fill=oc)
    return canvas.resize((width, height), Image.BILINEAR, reducing_gap=None)


@dataclass(frozen=True)
class _Body:
    """Where one person's parts sit on the canvas (pixels, supersampled), from its image factors."""

    u: float  # drawing unit: 1/40 of the person's height
    cx: float
    view: str
    side: bool
    facing: int
    leg: float
    torso: float
    head_r: float
    hip_y: float
    sh_y: float
    lean: float
    sw: float  # half shoulder width
    hw: float  # half hip width
    limb: float
    stride: float
    phase: float
    knee: float
    swing: float
    head_c: tuple[float, float]


def _body(img: dict, H: int, W: int) -> _Body:
    ph = img["scale"] * H  # person height
    u = ph / 40.0  # drawing unit
    cx = W / 2 + img["cx"] * W
    foot = img["foot"] * H
    view = img["view"]
    side = view in ("left", "right")
    leg = 17.5 * u * img["leg_ratio"]
    torso = 13.0 * u
    head_r = 2.9 * u * img["head"]
    hip_y = foot - leg
    sh_y = hip_y - torso
    lean = img["lean"] * ph
    stride = img["stride"]
    if not side:
        stride *= 0.3  # seen from front/back, a stride moves the legs little sideways
    return _Body(
        u=u, cx=cx, view=view, side=side, facing=-1 if view == "left" else 1, leg=leg, torso=torso, head_r=head_r,
        hip_y=hip_y, sh_y=sh_y, lean=lean, sw=(4.6 if not side else 2.6) * u * img["shoulder"],
        hw=(3.6 if not side else 2.4) * u, limb=2.6 * u, stride=stride, phase=img["phase"], knee=img["knee"],
        swing=img["arm_swing"] * img["phase"], head_c=(cx + lean, sh_y - head_r * 1.05),
    )


def _draw_leg(d: ImageDraw.ImageDraw, b: _Body, ident: dict, hx: float, angle: float, shade: float) -> None:
    kx, ky = hx + math.sin(angle) * b.leg / 2, b.hip_y + math.cos(angle) * b.leg / 2
    a2 = angle - b.knee * (1 if not b.side else b.facing) * 0.5
    hip, kn, ft = (hx, b.hip_y), (kx, ky), (kx + math.sin(a2) * b.leg / 2, ky + math.cos(a2) * b.leg / 2)
    skin, lower, limb = ident["skin"], ident["lower"], b.limb
    if ident["lower_kind"] == "trousers":
        _seg(d, hip, kn, _shade(lower, shade), limb * 1.15)
        _seg(d, kn, ft, _shade(lower, shade), limb)
        if ident["lower_stripe"]:
            _seg(d, hip, kn, _shade(ident["lower2"], shade), limb * 0.3)
            _seg(d, kn, ft, _shade(ident["lower2"], shade), limb * 0.3)
    else:
        _seg(d, kn, ft, _shade(skin, shade), limb * 0.85)
        if ident["lower_kind"] == "shorts":
            _seg(d, hip, kn, _shade(lower, shade), limb * 1.2)
        else:
            _seg(d, hip, kn, _shade(skin, shade), limb)
    fx, fy = ft
    u = b.u
    sx = 1.6 * u if not b.side else 2.2 * u
    ox = 0 if not b.side else b.facing * 0.8 * u
    d.ellipse([fx - sx + ox, fy - 1.0 * u, fx + sx + ox, fy + 0.8 * u], fill=_shade(ident["shoes"], shade))


def _draw_arm(d: ImageDraw.ImageDraw, b: _Body, ident: dict, x: float, angle: float,
              shade: float) -> tuple[float, float]:
    """One arm from the shoulder at ``x``; returns where the hand is."""
    u = b.u
    ax, ay = x, b.sh_y + b.limb * 0.4
    ex, ey = ax + math.sin(angle) * 6 * u, ay + math.cos(angle) * 6 * u
    a2 = angle + 0.25 * (b.facing if b.side else 0)
    hx, hy = ex + math.sin(a2) * 5.5 * u, ey + math.cos(a2) * 5.5 * u
    up, skin = ident["upper"], ident["skin"]
    _seg(d, (ax, ay), (ex, ey), _shade(up, shade), b.limb)
    _seg(d, (ex, ey), (hx, hy), _shade(up if ident["long_sleeves"] else skin, shade), b.limb * 0.85)
    d.ellipse([hx - 1.1 * u, hy - 1.1 * u, hx + 1.1 * u, hy + 1.1 * u], fill=_shade(skin, shade))
    return hx, hy


def _draw_behind(d: ImageDraw.ImageDraw, b: _Body, ident: dict) -> None:
    """What hangs behind the body: long hair, and a backpack seen from the side."""
    if ident["hair_style"] == "long" and b.view != "back":
        hx0, hy0 = b.head_c
        _rect(d, [hx0 - b.head_r * 1.05, hy0, hx0 + b.head_r * 1.05, hy0 + b.head_r * 2.2], fill=tuple(ident["hair"]))
    if ident["bag"] == "backpack" and b.side:
        u = b.u
        bx = b.cx + b.lean * 0.5 - b.facing * b.sw * 1.9
        _rect(d, [bx - 1.8 * u, b.sh_y + 1 * u, bx + 1.8 * u, b.sh_y + 9 * u], fill=tuple(ident["bag_colour"]))


def _draw_hips(d: ImageDraw.ImageDraw, b: _Body, ident: dict) -> None:
    """A skirt, or the waist of shorts and trousers."""
    cx, hw, hip_y, u, lower = b.cx, b.hw, b.hip_y, b.u, tuple(ident["lower"])
    if ident["lower_kind"] == "skirt":
        d.polygon([(cx - hw, hip_y - u), (cx + hw, hip_y - u), (cx + hw * 1.6, hip_y + b.leg * 0.45),
                   (cx - hw * 1.6, hip_y + b.leg * 0.45)], fill=lower)
    elif ident["lower_kind"] == "shorts" or ident["lower_kind"] == "trousers":
        _rect(d, [cx - hw, hip_y - u, cx + hw, hip_y + 1.5 * u], fill=lower)


def _draw_torso(canvas: Image.Image, b: _Body, ident: dict) -> None:
    """A trapezoid filled with the upper pattern through a mask."""
    cx, lean, sw, hw, sh_y, hip_y, u = b.cx, b.lean, b.sw, b.hw, b.sh_y, b.hip_y, b.u
    torso_poly = [(cx + lean - sw, sh_y), (cx + lean + sw, sh_y),
                  (cx + hw, hip_y + 0.5 * u), (cx - hw, hip_y + 0.5 * u)]
    x0 = int(min(p[0] for p in torso_poly)) - 1
    y0 = int(sh_y) - 1
    x1 = int(max(p[0] for p in torso_poly)) + 2
    y1 = int(hip_y + 0.5 * u) + 2
    bw, bh = max(1, x1 - x0), max(1, y1 - y0)
    patch = Image.new("RGB", (bw, bh))
    _pattern_fill(ImageDraw.Draw(patch), (0, 0, bw, bh), ident, u)
    mask = Image.new("L", (bw, bh), 0)
    ImageDraw.Draw(mask).polygon([(x - x0, y - y0) for x, y in torso_poly], fill=255)
    canvas.paste(patch, (x0, y0), mask)


def _draw_logo(d: ImageDraw.ImageDraw, b: _Body, ident: dict) -> None:
    """The chest logo, seen from the front only."""
    if b.view != "front" or ident["logo"] == "none":
        return
    lc, lx, ly, lr = tuple(ident["logo_colour"]), b.cx + b.lean * 0.7, b.sh_y + 0.3 * b.torso, 1.5 * b.u
    if ident["logo"] == "circle":
        d.ellipse([lx - lr, ly - lr, lx + lr, ly + lr], fill=lc)
    elif ident["logo"] == "square":
        _rect(d, [lx - lr, ly - lr, lx + lr, ly + lr], fill=lc)
    elif ident["logo"] == "triangle":
        d.polygon([(lx, ly - lr * 1.2), (lx + lr * 1.2, ly + lr), (lx - lr * 1.2, ly + lr)], fill=lc)
    else:
        _rect(d, [lx - b.sw * 0.8, ly - lr * 0.5, lx + b.sw * 0.8, ly + lr * 0.5], fill=lc)


def _draw_bag(d: ImageDraw.ImageDraw, b: _Body, ident: dict) -> None:
    """Bags over the torso (a handbag hangs from the near hand: ``_draw_person``)."""
    bag, bag_c = ident["bag"], tuple(ident["bag_colour"])
    cx, lean, sw, hw, sh_y, hip_y, u = b.cx, b.lean, b.sw, b.hw, b.sh_y, b.hip_y, b.u
    if bag == "backpack":
        if b.view == "back":
            _rect(d, [cx + lean - sw * 0.75, sh_y + 1.2 * u, cx + lean + sw * 0.75, sh_y + 10 * u], fill=bag_c)
        elif b.view == "front":
            for sgn in (-1, 1):
                _seg(d, (cx + lean + sgn * sw * 0.6, sh_y), (cx + sgn * sw * 0.55, sh_y + 7 * u), bag_c, 0.8 * u)
    elif bag == "shoulder":
        _seg(d, (cx + lean - sw * 0.8, sh_y + 0.3 * u), (cx + hw * 1.1, hip_y - 0.5 * u), bag_c, 0.8 * u)
        bx = cx + hw * 1.3 if not b.side else cx - b.facing * 0.5 * u
        _rect(d, [bx - 2 * u, hip_y - 2.5 * u, bx + 2 * u, hip_y + 1.5 * u], fill=bag_c)


def _draw_head(d: ImageDraw.ImageDraw, b: _Body, ident: dict) -> None:
    """Neck, head, eyes and hair (with a bun or a cap)."""
    u, head_r, side, facing, view = b.u, b.head_r, b.side, b.facing, b.view
    skin = ident["skin"]
    hx0, hy0 = b.head_c
    _seg(d, (b.cx + b.lean, b.sh_y), (hx0, hy0), skin, 1.6 * u)
    d.ellipse([hx0 - head_r, hy0 - head_r * 1.1, hx0 + head_r, hy0 + head_r * 1.1], fill=tuple(skin))
    hair = tuple(ident["hair"])
    top = [hx0 - head_r * 1.05, hy0 - head_r * 1.2, hx0 + head_r * 1.05, hy0 + head_r * 0.4]
    if view == "back":
        d.ellipse([hx0 - head_r * 1.05, hy0 - head_r * 1.2, hx0 + head_r * 1.05, hy0 + head_r * 1.05], fill=hair)
        if ident["hair_style"] == "long":
            _rect(d, [hx0 - head_r * 1.05, hy0, hx0 + head_r * 1.05, hy0 + head_r * 2.2], fill=hair)
    elif side:
        d.chord(top, 180, 360, fill=hair)
        back = hx0 - facing * head_r * 0.5
        d.ellipse([back - head_r * 0.6, hy0 - head_r, back + head_r * 0.6, hy0 + head_r * 0.6], fill=hair)
        ex = hx0 + facing * head_r * 0.55
        d.ellipse([ex - 0.3 * u, hy0 - 0.3 * u, ex + 0.3 * u, hy0 + 0.3 * u], fill=(20, 20, 20))
    else:
        d.chord(top, 180, 360, fill=hair)
        for sgn in (-1, 1):
            ex = hx0 + sgn * head_r * 0.4
            d.ellipse([ex - 0.3 * u, hy0 - 0.2 * u, ex + 0.3 * u, hy0 + 0.4 * u], fill=(20, 20, 20))
    if ident["hair_style"] == "bun":
        bx, by = hx0 - (facing * head_r * 0.8 if side else 0), hy0 - head_r * 1.2
        d.ellipse([bx - head_r * 0.45, by - head_r * 0.45, bx + head_r * 0.45, by + head_r * 0.45], fill=hair)
    elif ident["hair_style"] == "cap":
        cap = tuple(ident["cap"])
        d.chord([hx0 - head_r * 1.1, hy0 - head_r * 1.3, hx0 + head_r * 1.1, hy0 + head_r * 0.3], 180, 360, fill=cap)
        if view == "front":
            _rect(d, [hx0 - head_r * 1.1, hy0 - head_r * 0.5, hx0 + head_r * 1.1, hy0 - head_r * 0.3], fill=cap)
        elif side:
            _rect(d, [hx0, hy0 - head_r * 0.5, hx0 + facing * head_r * 1.7, hy0 - head_r * 0.3], fill=cap)


def _draw_person(canvas: Image.Image, d: ImageDraw.ImageDraw, ident: dict, img: dict, H: int, W: int) -> None:
    """One person, back to front: what hangs behind, the far limbs (side view, darker), hips, torso, logo,
    bags, the near limbs, the head."""
    b = _body(img, H, W)
    cx, lean, sw, hw, u, facing = b.cx, b.lean, b.sw, b.hw, b.u, b.facing
    move = b.stride * b.phase
    _draw_behind(d, b, ident)
    if b.side:
        _draw_leg(d, b, ident, cx - 0.3 * u, -facing * move, 0.75)
        _draw_arm(d, b, ident, cx + lean * 0.5, facing * b.swing, 0.75)
    else:
        _draw_leg(d, b, ident, cx - hw * 0.55, -move - 0.05, 1.0)
        _draw_leg(d, b, ident, cx + hw * 0.55, move + 0.05, 1.0)
    _draw_hips(d, b, ident)
    _draw_torso(canvas, b, ident)
    _draw_logo(d, b, ident)
    _draw_bag(d, b, ident)
    if b.side:
        _draw_leg(d, b, ident, cx + 0.3 * u, facing * move, 1.0)
        hand = _draw_arm(d, b, ident, cx + lean * 0.5, -facing * b.swing, 1.0)
    else:
        _draw_arm(d, b, ident, cx + lean - sw, -0.12 - b.swing * 0.3, 1.0)
        hand = _draw_arm(d, b, ident, cx + lean + sw, 0.12 + b.swing * 0.3, 1.0)
    if ident["bag"] == "handbag":
        hx, hy = hand
        _rect(d, [hx - 1.6 * u, hy, hx + 1.6 * u, hy + 3.2 * u], fill=tuple(ident["bag_colour"]))
    _draw_head(d, b, ident)


def degrade(im: Image.Image, cam: dict, img: dict) -> Image.Image:
    """The camera: blur, illumination colour and brightness, sensor noise (JPEG quality is applied on save)."""
    if cam["blur"] > 0.05:
        im = im.filter(ImageFilter.GaussianBlur(cam["blur"]))
    a = np.asarray(im, dtype=np.float32)
    gain = np.asarray(cam["gain"], np.float32) * cam["brightness"] * img["brightness"]
    noise = np.random.default_rng(img["noise_seed"]).standard_normal(a.shape, dtype=np.float32) * cam["noise"]
    return Image.fromarray(np.clip(a * gain + noise, 0, 255).astype(np.uint8))


def render(ident: dict | None, img: dict, cam: dict, height: int, width: int) -> bytes:
    """The JPEG bytes of one image; ``ident=None`` draws an empty scene (a distractor)."""
    im = render_person(ident or {}, img, cam, height, width, with_person=ident is not None)
    im = degrade(im, cam, img)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=cam["jpeg_quality"])
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------------------
# the dataset plan


def camera_view(cam: int) -> str:
    """The view camera ``cam`` sees people from in the two-camera regime (``view_tie``)."""
    return VIEWS[cam % len(VIEWS)]


def check_regime(cams: int, train_cams: int, per_cam: int, view_tie: float) -> None:
    """The regime options' ranges, named in the error."""
    if not (train_cams == 0 or 1 <= train_cams <= cams):
        raise ValueError(f"synthetic: train_cams={train_cams}: expected 0 (the default draw of 2..cams) or 1..cams "
                         f"({cams})")
    if per_cam < 0:
        raise ValueError(f"synthetic: per_cam={per_cam}: expected 0 (the default draw of 1..4) or a positive count")
    if not 0.0 <= view_tie <= 1.0:
        raise ValueError(f"synthetic: view_tie={view_tie}: expected a probability in [0, 1]")


def plan(ids: int, cams: int, seed: int, train_cams: int = 0, per_cam: int = 0,
         view_tie: float = 0.0) -> tuple[dict, dict, list[dict]]:
    """Identities, cameras and the list of images (file name, split, pid, camera, factors) of a set.

    Identities ``1..ids//2`` train, the rest test. Each identity is seen by 2..cams cameras, 1-4 images each;
    a training identity by exactly ``train_cams`` cameras when it is not 0, with ``per_cam`` images under each
    when that is not 0 (its own draw decides which cameras, so test identities keep the default set's cameras
    and counts).
    ``view_tie``: the probability that an image's view is its camera's (:func:`camera_view`).
    Test identities give one query image from each of up to two cameras that keep at least one more image
    of it in the gallery, so every query has a true match in the gallery. The gallery also gets
    distractors (``0000``: empty scenes, 4% of it) and junk (``-1``: heavily cropped, 2%).
    """
    if ids < 4 or cams < 2:
        raise ValueError(f"synthetic: need ids >= 4 and cams >= 2, got ids={ids}, cams={cams}")
    check_regime(cams, train_cams, per_cam, view_tie)
    identities = {pid: identity_factors(seed, pid) for pid in range(1, ids + 1)}
    cameras = {c: camera_factors(seed, c) for c in range(cams)}
    n_train = ids // 2
    images: list[dict] = []

    def add(pid: int, cam: int, split: str, kind: str = "person") -> None:
        index = len(images)
        label = "-1" if pid < 0 else f"{pid:04d}"
        name = f"{label}_c{cam + 1}s1_{index:06d}_00.jpg"
        images.append({"name": name, "split": split, "pid": pid, "camid": cam, "index": index, "kind": kind})

    for pid in range(1, ids + 1):
        r = _rng(seed, 4, pid)
        k = int(r.integers(2, cams + 1))
        views = sorted(r.choice(cams, size=k, replace=False).tolist())
        counts = [int(r.integers(1, 5)) for _ in views]
        if pid <= n_train and (train_cams or per_cam):
            # The regime's own draw (kind 7): the default draws above still run, so the test split is unchanged.
            rr = _rng(seed, 7, pid)
            if train_cams:
                views = sorted(rr.choice(cams, size=train_cams, replace=False).tolist())
            counts = [per_cam or int(rr.integers(1, 5)) for _ in views]
        if pid <= n_train:
            for cam, n in zip(views, counts, strict=True):
                for _ in range(n):
                    add(pid, cam, "bounding_box_train")
            continue
        query_cams = [c for c, n in zip(views, counts, strict=True) if n >= 2][:2] or [views[0]]
        for cam, n in zip(views, counts, strict=True):
            for j in range(n):
                add(pid, cam, "query" if (j == 0 and cam in query_cams) else "bounding_box_test")
    r = _rng(seed, 5, 0)
    n_gallery = sum(1 for im in images if im["split"] == "bounding_box_test")
    for _ in range(max(1, int(0.04 * n_gallery))):
        add(0, int(r.integers(cams)), "bounding_box_test", "distractor")
    for _ in range(max(1, int(0.02 * n_gallery))):
        add(-1, int(r.integers(cams)), "bounding_box_test", "junk")
    for im in images:
        im["factors"] = image_factors(seed, im["index"])
        if view_tie and _rng(seed, 6, im["index"]).random() < view_tie:
            im["factors"]["view"] = camera_view(im["camid"])
    return identities, cameras, images


def design(images: list[dict], cams: int, train_cams: int, per_cam: int, view_tie: float) -> dict:
    """What the manifest records of a set's design, counted from its plan: cameras per training identity
    (a histogram), images per (training identity, camera), the cameras of the train, query and gallery splits,
    the share of queries with a true match in another camera, and the share of images whose view is their
    camera's (:func:`camera_view`)."""
    persons = [im for im in images if im["kind"] == "person"]
    train_cams_of: dict[int, set] = {}
    per: dict[tuple[int, int], int] = {}
    q_cams: dict[int, set] = {}
    g_cams: dict[int, set] = {}
    for im in persons:
        pid, cam, split = im["pid"], im["camid"], im["split"]
        if split == "bounding_box_train":
            train_cams_of.setdefault(pid, set()).add(cam)
            per[pid, cam] = per.get((pid, cam), 0) + 1
        else:
            (q_cams if split == "query" else g_cams).setdefault(pid, set()).add(cam)
    hist: dict[str, int] = {}
    for cs in train_cams_of.values():
        hist[str(len(cs))] = hist.get(str(len(cs)), 0) + 1
    tied = sum(im["factors"]["view"] == camera_view(im["camid"]) for im in persons)
    return {
        "train_cams": train_cams, "per_cam": per_cam, "view_tie": view_tie,
        "camera_views": {str(c): camera_view(c) for c in range(cams)} if view_tie else {},
        "train_identities_by_camera_count": dict(sorted(hist.items())),
        "train_images_per_identity_camera": sorted(set(per.values())),
        "split_cameras": {split: sorted({im["camid"] for im in persons if im["split"] == split})
                          for split in ("bounding_box_train", "query", "bounding_box_test")},
        # the test protocol ignores a query's same-camera matches: what it scores is matching across cameras
        "queries_with_a_match_in_another_camera": round(sum(
            bool(g_cams.get(im["pid"], set()) - {im["camid"]}) for im in persons if im["split"] == "query"
        ) / max(1, sum(im["split"] == "query" for im in persons)), 4),
        "view_is_camera_view": round(tied / max(1, len(persons)), 4),
    }


def _junk_identity(seed: int, index: int) -> dict:
    # Junk boxes in Market are bad detections: a random person cut badly. Any appearance will do.
    return identity_factors(seed, 10_000_000 + index)


def _render_chunk(args) -> int:
    out, seed, height, width, cameras, items = args
    for item, ident in items:
        img = dict(item["factors"])
        if item["kind"] == "junk":  # a person far off-centre and too big: a bad detection
            img = {**img, "scale": 1.6, "cx": 0.45 * (1 if img["cx"] > 0 else -1), "foot": 1.4}
        data = render(ident, img, cameras[item["camid"]], height, width)
        (Path(out) / item["split"] / item["name"]).write_bytes(data)
    return len(items)


def generate(
    out: str | Path,
    ids: int = DEFAULTS["ids"],
    cams: int = DEFAULTS["cams"],
    height: int = DEFAULTS["height"],
    width: int = DEFAULTS["width"],
    seed: int = DEFAULTS["seed"],
    workers: int | None = None,
    verbose: bool = False,
    train_cams: int = 0,
    per_cam: int = 0,
    view_tie: float = 0.0,
) -> Path:
    """Write a synthetic set to ``out`` (created; must not hold another set) and return ``out``.

    Images are ``height x width`` RGB JPEGs in the Market-1501 layout; ``out/manifest.json`` holds the
    parameters, every identity's appearance, every camera's conditions and every image's factors.
    ``workers`` processes render (default: up to 2); the result is the same for any number. ``train_cams``,
    ``per_cam``, ``view_tie``: the two-camera regime (:func:`plan`).
    """
    if height < 32 or width < 16:
        raise ValueError(f"synthetic: image size {height}x{width} too small; expected at least 32x16")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"synthetic: {out} is not empty; generate into a new or empty folder (images of "
                         "another set would mix with this one's)")
    t0 = time.perf_counter()
    identities, cameras, images = plan(ids, cams, seed, train_cams, per_cam, view_tie)
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (out / split).mkdir(parents=True, exist_ok=True)
    items = []
    for im in images:
        ident = None
        if im["kind"] == "person":
            ident = identities[im["pid"]]
        elif im["kind"] == "junk":
            ident = _junk_identity(seed, im["index"])
        items.append((im, ident))
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    chunks = [items[i::max(1, workers * 4)] for i in range(max(1, workers * 4))]
    jobs = [(str(out), seed, height, width, cameras, c) for c in chunks if c]
    if workers <= 1:
        for job in jobs:
            _render_chunk(job)
    else:
        # forkserver, never fork: a caller may already run torch or OpenMP threads (dgnet.data.workers)
        with ProcessPoolExecutor(workers, mp_context=pool_context(), initializer=ignore_stop_signals) as pool:
            list(pool.map(_render_chunk, jobs))
    manifest = {
        "version": VERSION,
        "params": {"ids": ids, "cams": cams, "height": height, "width": width, "seed": seed,
                   "train_cams": train_cams, "per_cam": per_cam, "view_tie": view_tie},
        "design": design(images, cams, train_cams, per_cam, view_tie),
        "identities": {str(k): v for k, v in identities.items()},
        "cameras": {str(k): v for k, v in cameras.items()},
        "images": {
            im["name"]: {k: im[k] for k in ("split", "pid", "camid", "kind", "factors")} for im in images
        },
    }
    # The manifest is written last: its presence marks a complete set (ensure_dataset relies on it).
    (out / MANIFEST).write_text(json.dumps(manifest))
    if verbose:
        print(f"synthetic: {len(images)} images ({ids} identities, {cams} cameras, {height}x{width}) "
              f"written to {out} in {time.perf_counter() - t0:.1f} s")
    return out


def ensure_dataset(root: str | Path, verbose: bool = True, **kwargs) -> Path:
    """The synthetic set at ``root``: reused when its manifest matches the parameters, else generated.

    Generation goes to a temporary sibling folder renamed into place, so an interrupted run never leaves
    a half-written set behind. A folder holding a set made with other parameters is an error (never
    overwritten): pass another root or delete it.
    """
    root = Path(root)
    params = {**DEFAULTS, **{k: v for k, v in kwargs.items() if k in DEFAULTS}}
    if (root / MANIFEST).exists():
        have = json.loads((root / MANIFEST).read_text()).get("params")
        if have is not None:
            have = {**REGIME_DEFAULTS, **have}  # a manifest from before the regime options: drawn with their defaults
        if have == params:
            return root
        raise ValueError(
            f"synthetic: {root} holds a set made with {have}, not the requested {params}; "
            f"use another root or delete {root}"
        )
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"synthetic: {root} exists, is not empty and has no {MANIFEST}; expected an empty folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        generate(tmp, verbose=verbose, **{k: v for k, v in kwargs.items() if k != "verbose"})
        if root.exists():
            root.rmdir()
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def load_manifest(root: str | Path) -> dict[str, dict]:
    """Every image's true factors, keyed by file name (names are unique across the splits).

    Each value holds ``split``, ``pid`` (``0`` distractor, ``-1`` junk), ``camid`` (zero-based, as the
    loader), ``kind``, ``factors`` (structure and condition: view, pose, proportions, position/scale,
    occluder, brightness, ...), ``camera`` (that camera's conditions) and ``identity`` (appearance, ``None``
    for distractors and junk). Look a sample up with ``manifest[Path(sample.path).name]``.
    """
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(
            f"synthetic: no manifest at {path}; generate the set with python -m dgnet.data.synthetic --out {root}"
        )
    m = json.loads(path.read_text())
    out = {}
    for name, rec in m["images"].items():
        pid = rec["pid"]
        out[name] = {**rec, "camera": m["cameras"][str(rec["camid"])], "identity": m["identities"].get(str(pid))}
    return out
