"""The paper's generation figures, training-time image grids and torchreid-style rank lists, drawn labelled.

``x_ab = G(s_a, f_b)``: structure of a, appearance of b. The row builders return lists of rows (each a
``(N_i, 3, H, W)`` normalised tensor; :func:`image_grid` stacks them unlabelled); the ``*_figure`` functions
draw them with titles, row and column labels and captions through :func:`draw_grid`, upsampled by an integer
factor to about :data:`DISPLAY_HEIGHT` pixels (nearest neighbour, so every generated pixel stays visible as it
is):

- :func:`swap_rows`: a table; the top row gives the structures, the left column the appearances, cell (i, j) is
  ``G(s_j, f_i)``.
- :func:`rainbow_rows`: one appearance (the first image) over many structures (the others).
- :func:`interpolate_rows`: ``G(s_a, (1 - t) f_a + t f_b)`` (appearance) or ``G((1 - t) s_a + t s_b, f_a)``
  (structure) for ``t`` in ``[0, 1]``, one row per pair.
- :func:`training_rows` / :func:`training_figure`: real a, real b, reconstruction, cycle and both swaps.
- :func:`ranklist` / :func:`ranklist_figure` / :func:`visualize_ranked_results`: each query and its top-k gallery
  images by the test protocol's distance, with rank, distance and identity; green frames are true matches, red
  frames false ones (same-identity same-camera images and junk excluded, as in the evaluation).
  :func:`search_figure`: the same for ``dgnet.search`` (file names, grey frames: no identities are known).

Rank lists are drawn straight from the image files at display size (:class:`Thumbnails` decodes each file
once), with Pillow and numpy only (text from cached glyph masks; many rank lists are saved as JPEG, a tenth of
a PNG's encoding time). docs/figures.md describes every figure.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dgnet.checkpoints.runs import open_run
from dgnet.data import Sample
from dgnet.data.decoding import rgb8
from dgnet.data.streams import load_images
from dgnet.data.transforms import blank_like, denormalize
from dgnet.evaluation.protocol import extract
from dgnet.models import eval_mode, gray

MODES = ("swap", "rainbow", "interpolate-appearance", "interpolate-structure", "ranklist")
DISPLAY_HEIGHT = 256  # images are shown at least this tall (integer upsampling), e.g. 64x32 -> 256x128
# 8-bit RGB colours of the frames and text
GREEN = (30, 170, 30)
RED = (210, 30, 30)
BLUE = (30, 80, 220)
GREY = (150, 150, 150)
INK = (0, 0, 0)
WHITE = (255, 255, 255)
FONT_SIZE = 14


def image_grid(rows: list[torch.Tensor], pad: int = 2, normalized: bool = True) -> torch.Tensor:
    """Stack rows of images ``(N_i, C, H, W)`` (same H, W) into one ``(3, H', W')`` [0, 1] grid.

    ``normalized``: the rows are in the pipelines' normalised space (else already in [0, 1]).
    Shorter rows are padded with white on the right, so rows of different lengths line up by column.
    ``H' = R * (H + pad) + pad`` and ``W' = max N_i * (W + pad) + pad`` for ``R`` rows.
    """
    if not rows:
        raise ValueError("image_grid: rows is empty")
    rows = [denormalize(r) if normalized else r.detach().float().cpu().clamp(0, 1) for r in rows]
    h, w = rows[0].shape[-2:]
    for r in rows:
        if r.shape[-2:] != (h, w):
            raise ValueError(f"image_grid: row images are {tuple(r.shape[-2:])}, expected {(h, w)}")
    ncol = max(r.shape[0] for r in rows)
    grid = torch.ones(3, len(rows) * (h + pad) + pad, ncol * (w + pad) + pad)
    for i, r in enumerate(rows):
        for j in range(r.shape[0]):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y : y + h, x : x + w] = r[j]
    return grid


def save_png(grid: torch.Tensor, path: str | Path) -> Path:
    """Write a ``(3, H, W)`` float [0, 1] tensor as an 8-bit PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)
    return path


@torch.no_grad()
def swap_rows(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Rows for the swap table of ``x`` ``(N, 3, H, W)``: ``[blank, x...]`` then ``[x_i, G(s_j, f_i) for j]``."""
    f, s, _, _ = model.encode(x)
    rows = [torch.cat([blank_like(x), x])]
    for i in range(x.shape[0]):
        gen = model.decode(s, f[i : i + 1].expand(x.shape[0], -1))
        rows.append(torch.cat([x[i : i + 1], gen]))
    return rows


@torch.no_grad()
def rainbow_rows(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """``[blank, structures x_1..]`` and ``[x_0, G(s_j, f_0)]``: one appearance over many structures."""
    f, s, _, _ = model.encode(x)
    gen = model.decode(s[1:], f[:1].expand(x.shape[0] - 1, -1))
    return [torch.cat([blank_like(x), x[1:]]), torch.cat([x[:1], gen])]


@torch.no_grad()
def interpolate_rows(model: torch.nn.Module, xa: torch.Tensor, xb: torch.Tensor, steps: int,
                     what: str) -> list[torch.Tensor]:
    """One row per pair: ``[x_a, G(...t=0), ..., G(...t=1), x_b]`` interpolating ``what`` (appearance|structure)."""
    if steps < 2:
        raise ValueError(f"steps={steps}: interpolation needs at least 2 steps (both end points)")
    if what not in ("appearance", "structure"):
        raise ValueError(f"what={what!r}: expected 'appearance' or 'structure'")
    fa, sa, _, _ = model.encode(xa)
    fb, sb, _, _ = model.encode(xb)
    ts = torch.linspace(0, 1, steps).tolist()
    rows = []
    for i in range(xa.shape[0]):
        outs = []
        for t in ts:
            if what == "appearance":
                outs.append(model.decode(sa[i : i + 1], torch.lerp(fa[i : i + 1], fb[i : i + 1], t)))
            else:
                outs.append(model.decode(torch.lerp(sa[i : i + 1], sb[i : i + 1], t), fa[i : i + 1]))
        rows.append(torch.cat([xa[i : i + 1], *outs, xb[i : i + 1]]))
    return rows


TRAINING_ROWS = ("real a", "real b", "recon\nG(s_a, f_a)", "cycle a\nG(s(x_ab), f(x_ba))", "x_ab =\nG(s_a, f_b)",
                 "x_ba =\nG(s_b, f_a)")


@torch.no_grad()
def training_rows(model: torch.nn.Module, xa: torch.Tensor, xb: torch.Tensor) -> list[torch.Tensor]:
    """Rows of a training grid (:data:`TRAINING_ROWS`): real a, real b, reconstruction of a, cycle of a, x_ab, x_ba.

    ``x_ab = G(s_a, f_b)``: structure of a, appearance of b. Runs with every module in eval mode.
    """
    with eval_mode(model):
        f_a, s_a, _, _ = model.encode(xa)
        f_b, s_b, _, _ = model.encode(xb)
        x_ab, x_ba = model.decode(s_a, f_b), model.decode(s_b, f_a)
        # cycle: structure of a back from x_ab, appearance of a back from x_ba
        cycle_a = model.decode(model.Es(gray(x_ab)), model.Ea(x_ba)[0])
        rows = [xa, xb, model.decode(s_a, f_a), cycle_a, x_ab, x_ba]
    return [r.float() for r in rows]


def ranklist(dist: np.ndarray, q_pids, g_pids, q_camids, g_camids, topk: int = 10) -> list[list[tuple[int, bool]]]:
    """Per query, the ``topk`` gallery indices by ascending distance with ``True`` for a true match.

    Gallery entries of the query's identity seen by the query's camera, and junk (pid -1), are left out,
    as in the evaluation protocol.
    """
    out = []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = ~(((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])) | (g_pids[order] == -1))
        order = order[keep][:topk]
        out.append([(int(j), bool(g_pids[j] == q_pids[i])) for j in order])
    return out


# ---------------------------------------------------------------------------------------------------- drawing


def display_scale(height: int) -> int:
    """The integer factor that shows images ``height`` pixels tall at least :data:`DISPLAY_HEIGHT` tall."""
    return max(1, math.ceil(DISPLAY_HEIGHT / height))


def to_display(x: torch.Tensor, scale: int, normalized: bool = True) -> np.ndarray:
    """Images ``(N, 3, H, W)`` (normalised, or in [0, 1]) -> ``(N, scale H, scale W, 3)`` uint8, nearest neighbour."""
    x01 = denormalize(x) if normalized else x.detach().float().cpu().clamp(0, 1)
    a = (x01 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return a.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else a


@lru_cache(maxsize=8)
def font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    """Pillow's bundled font at ``size`` pixels (built once per size: drawing many figures reuses it)."""
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=4096)
def fit_text(text: str, width: float, size: int = FONT_SIZE) -> str:
    """``text`` with its middle replaced by ``…`` until it is ``width`` pixels wide: a file name keeps its start
    (an identity prefix, say) and its end."""
    f = font(size)
    if f.getlength(text) <= width:
        return text

    def cut(k):  # k characters kept, the start getting the extra one
        return text[: (k + 1) // 2] + "…" + text[len(text) - k // 2 :]

    lo, hi = 0, len(text) - 1  # the most characters kept: bisect on the (monotone) width
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if f.getlength(cut(mid)) <= width:
            lo = mid
        else:
            hi = mid - 1
    return cut(lo)


@lru_cache(maxsize=4096)
def text_mask(text: str, size: int = FONT_SIZE) -> np.ndarray:
    """One line of ``text`` as an ink coverage mask ``(size + 4, width)`` uint8 (255 = ink), rendered once per
    string: rank numbers, labels and file names come back figure after figure."""
    f = font(size)
    im = Image.new("L", (max(1, math.ceil(f.getlength(text))), size + 4), 0)
    ImageDraw.Draw(im).text((0, 0), text, font=f, fill=255)
    return np.asarray(im)


_NUMBER = re.compile(r"[-+0-9.e]+")


def _number_mask(text: str, size: int) -> np.ndarray:
    """A distance or other number from cached per-character masks: distances differ in every caption, and the
    bundled font's digits are tabular, so joining the glyphs draws what rendering the string would."""
    return np.concatenate([text_mask(ch, size) for ch in text], axis=1)


def put_text(canvas: np.ndarray, x: float, y: int, text: str, size: int = FONT_SIZE, center: bool = False) -> None:
    """Write ``text`` (its lines one under the other) in black into ``canvas`` ``(H, W, 3)`` uint8 at ``(x, y)``, the
    top-left corner (or the top centre with ``center``); clipped at the canvas's edges."""
    for k, line in enumerate(_lines(text)):
        m = _number_mask(line, size) if _NUMBER.fullmatch(line) else text_mask(line, size)
        top, left = y + k * (size + 4), round(x - m.shape[1] / 2) if center else round(x)
        t0, l0 = max(0, top), max(0, left)
        t1, l1 = min(canvas.shape[0], top + m.shape[0]), min(canvas.shape[1], left + m.shape[1])
        if t1 <= t0 or l1 <= l0:
            continue
        cover = m[t0 - top : t1 - top, l0 - left : l1 - left, None].astype(np.uint16)
        region = canvas[t0:t1, l0:l1]
        region[:] = (region * (255 - cover) // 255).astype(np.uint8)  # black ink over the background


@dataclass
class Figure:
    """A drawn figure: ``image`` (RGB) and ``boxes[(row, column)] = (left, top, right, bottom)`` of every image
    tile in it (frames and labels lie outside the boxes)."""

    image: Image.Image
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the figure, creating the folder: ``.png`` (fast zlib level) or ``.jpg`` (quality 95, no chroma
        subsampling, so frames and text stay sharp; a tenth of a PNG's encoding time for photo content, which
        is what many rank lists need)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in (".jpg", ".jpeg"):
            self.image.save(path, quality=95, subsampling=0)
        else:
            self.image.save(path, compress_level=1)
        return path

    def tensor(self) -> torch.Tensor:
        """``(3, H, W)`` float32 in [0, 1] (what TensorBoard's ``add_image`` takes)."""
        return torch.from_numpy(np.asarray(self.image).copy()).permute(2, 0, 1).float() / 255


def _lines(text: str | None) -> list[str]:
    return text.split("\n") if text else []


def draw_grid(tiles: Sequence[Sequence[np.ndarray | None]], title: str | None = None,
              row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
              captions: Sequence[Sequence[str]] | None = None,
              frames: Sequence[Sequence[tuple[int, int, int] | None]] | None = None,
              font_size: int = FONT_SIZE, frame: int = 4, gap: int = 6) -> Figure:
    """Lay out image tiles in rows and label them.

    ``tiles[r][c]``: ``(h, w, 3)`` uint8 (all the same size) or ``None`` (an empty cell). ``title`` goes above
    everything, ``col_labels[c]`` above column ``c``, ``row_labels[r]`` left of row ``r``, ``captions[r][c]`` under
    its tile, and ``frames[r][c]`` (an RGB colour, or ``None``) draws a ``frame``-pixel border around the tile.
    Text may hold line breaks. Tiles are copied as they are (no resampling).
    """
    shapes = {t.shape for row in tiles for t in row if t is not None}
    if len(shapes) != 1:
        raise ValueError(f"draw_grid: tiles of shapes {sorted(shapes)}; expected one (h, w, 3) shape and some tile")
    h, w, _ = shapes.pop()
    f = font(font_size)
    line = font_size + 4
    ncol = max(len(r) for r in tiles)

    def width_of(text):
        return max((f.getlength(s) for s in _lines(text)), default=0)

    def n_lines(texts):
        return max((len(_lines(t)) for t in texts), default=0)

    cap_h = n_lines(c for row in (captions or []) for c in row) * line
    col_h = n_lines(col_labels or []) * line
    row_w = math.ceil(max((width_of(t) for t in row_labels or []), default=0))
    title_h = len(_lines(title)) * line
    cell_w, cell_h = w + 2 * frame + gap, h + 2 * frame + cap_h + gap
    x0 = gap + (row_w + gap if row_w else 0)
    y0 = gap + (title_h + gap if title_h else 0) + col_h
    width = max(x0 + ncol * cell_w, math.ceil(width_of(title)) + 2 * gap)
    canvas = np.full((y0 + len(tiles) * cell_h, width, 3), 255, np.uint8)
    boxes = {}
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            if t is None:
                continue
            left, top = x0 + c * cell_w + frame, y0 + r * cell_h + frame
            colour = frames[r][c] if frames else None
            if colour is not None:
                canvas[top - frame : top + h + frame, left - frame : left + w + frame] = colour
            canvas[top : top + h, left : left + w] = t
            boxes[(r, c)] = (left, top, left + w, top + h)
    if title:
        put_text(canvas, gap, gap, title, font_size)
    for c, text in enumerate(col_labels or []):
        if text:
            top = y0 - len(_lines(text)) * line  # bottom-aligned: every label sits just above its column
            put_text(canvas, x0 + c * cell_w + frame + w / 2, top, text, font_size, center=True)
    for r, text in enumerate(row_labels or []):
        if text:
            put_text(canvas, gap, round(y0 + r * cell_h + frame + h / 2 - len(_lines(text)) * line / 2), text,
                     font_size)
    for r, row in enumerate(captions or []):
        for c, text in enumerate(row):
            if text and (r, c) in boxes:
                left, top, right, bottom = boxes[(r, c)]
                fitted = "\n".join(fit_text(t, w + 2 * frame, font_size) for t in _lines(text))
                put_text(canvas, (left + right) / 2, bottom + frame + 1, fitted, font_size, center=True)
    img = Image.fromarray(canvas)
    return Figure(img, boxes)


def _names(n: int, names: Sequence[str] | None) -> list[str]:
    if names is not None and len(names) != n:
        raise ValueError(f"names: {len(names)} given for {n} images")
    return list(names) if names is not None else [f"#{i + 1}" for i in range(n)]


def swap_figure(rows: list[torch.Tensor], names: Sequence[str] | None = None) -> Figure:
    """:func:`swap_rows` drawn: column j's image gives the structure, row i's the appearance of cell (i, j)."""
    n = rows[0].shape[0] - 1
    names = _names(n, names)
    scale = display_scale(rows[0].shape[-2])
    tiles = [[None, *to_display(rows[0][1:], scale)]] + [list(to_display(r, scale)) for r in rows[1:]]
    return draw_grid(tiles, title="swap: cell (i, j) = G(s_j, f_i)\nstructure s from the column's image, "
                     "appearance f from the row's image",
                     col_labels=["appearance\nsource", *(f"s of {k}" for k in names)],
                     row_labels=["structure\nsource", *(f"f of {k}" for k in names)])


def rainbow_figure(rows: list[torch.Tensor], names: Sequence[str] | None = None) -> Figure:
    """:func:`rainbow_rows` drawn: the first image's appearance over the structure of each of the others."""
    n = rows[0].shape[0]
    names = _names(n, names)
    scale = display_scale(rows[0].shape[-2])
    tiles = [[None, *to_display(rows[0][1:], scale)], list(to_display(rows[1], scale))]
    return draw_grid(tiles, title=f"rainbow: one appearance ({names[0]}) over many structures\n"
                     f"bottom row: G(s of the column's image, f of {names[0]})",
                     col_labels=[f"appearance\nsource {names[0]}", *names[1:]],
                     row_labels=["structure\nsource", f"G(s, f of\n{names[0]})"])


def interpolate_figure(rows: list[torch.Tensor], what: str, names_a: Sequence[str] | None = None,
                       names_b: Sequence[str] | None = None) -> Figure:
    """:func:`interpolate_rows` drawn: per pair ``x_a``, the decodes from ``t = 0`` to ``t = 1``, then ``x_b``."""
    steps = rows[0].shape[0] - 2
    names_a = _names(len(rows), names_a)
    names_b = _names(len(rows), names_b if names_b is not None else [f"#{len(rows) + i + 1}" for i in range(len(rows))])
    scale = display_scale(rows[0].shape[-2])
    if what == "appearance":
        title = ("interpolate appearance: G(s_a, (1 - t) f_a + t f_b)\n"
                 "t = 0 reconstructs a; t = 1 is the swap x_ab = G(s_a, f_b)")
    else:
        title = ("interpolate structure: G((1 - t) s_a + t s_b, f_a)\n"
                 "t = 0 reconstructs a; t = 1 is x_ba = G(s_b, f_a)")
    ts = torch.linspace(0, 1, steps).tolist()
    return draw_grid([list(to_display(r, scale)) for r in rows], title=title,
                     col_labels=["x_a", *(f"t = {t:.2g}" for t in ts), "x_b"],
                     row_labels=[f"a = {a}\nb = {b}" for a, b in zip(names_a, names_b, strict=True)])


def training_figure(model: torch.nn.Module, xa: torch.Tensor, xb: torch.Tensor, title: str | None = None) -> Figure:
    """The training grid: :func:`training_rows` drawn with :data:`TRAINING_ROWS` as row labels, one pair a column."""
    rows = training_rows(model, xa, xb)
    scale = display_scale(xa.shape[-2])
    head = "x_ab = G(s_a, f_b): structure of a, appearance of b"
    return draw_grid([list(to_display(r, scale)) for r in rows], title=f"{title}\n{head}" if title else head,
                     col_labels=[f"pair {k + 1}" for k in range(xa.shape[0])], row_labels=list(TRAINING_ROWS))


def generation_figure(model: torch.nn.Module, x: torch.Tensor, mode: str, steps: int = 6,
                      names: Sequence[str] | None = None) -> Figure:
    """The labelled figure of a generation ``mode`` (``swap``, ``rainbow``, ``interpolate-*``) over the normalised
    images ``x`` ``(N >= 2, 3, H, W)`` named ``names`` (default ``#1``...); interpolation pairs the first half
    with the second."""
    if x.shape[0] < 2:
        raise ValueError(f"mode {mode!r} needs at least 2 images, got {x.shape[0]}")
    names = _names(x.shape[0], names)
    with eval_mode(model):
        if mode == "swap":
            return swap_figure(swap_rows(model, x), names)
        if mode == "rainbow":
            return rainbow_figure(rainbow_rows(model, x), names)
        if mode.startswith("interpolate-"):
            half = x.shape[0] // 2
            what = mode.split("-", 1)[1]
            rows = interpolate_rows(model, x[:half], x[half : 2 * half], steps, what)
            return interpolate_figure(rows, what, names[:half], names[half : 2 * half])
    raise ValueError(f"mode {mode!r}: expected one of {MODES[:-1]}")


class Thumbnails:
    """Image files at a display ``size`` ``(H, W)`` as ``(H, W, 3)`` uint8, each file decoded and resized once
    (bicubic) and kept for the next rank list (the same gallery images come back query after query)."""

    def __init__(self, size: tuple[int, int], capacity: int = 2048) -> None:
        self.size, self.capacity = (int(size[0]), int(size[1])), capacity
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, path: str | Path) -> np.ndarray:
        key = str(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        img = Image.fromarray(rgb8(key)).resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC)
        arr = np.asarray(img)
        self._cache[key] = arr
        if len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return arr


MATCH_LEGEND = "frames: green = same identity, red = different identity"


def ranklist_figure(query_tiles: Sequence[np.ndarray], query_captions: Sequence[str],
                    ranked_tiles: Sequence[Sequence[np.ndarray]], captions: Sequence[Sequence[str]],
                    matches: Sequence[Sequence[bool | None]], title: str | None = None) -> Figure:
    """Rank lists, one row per query: the query (blue frame) and its ranked images, framed green (``True``: same
    identity), red (``False``) or grey (``None``: unknown), with columns ``query``, ``rank 1``, ..."""
    k = max((len(r) for r in ranked_tiles), default=0)
    colour = {True: GREEN, False: RED, None: GREY}
    return draw_grid([[q, *r] for q, r in zip(query_tiles, ranked_tiles, strict=True)], title=title,
                     col_labels=["query", *(f"rank {j + 1}" for j in range(k))],
                     captions=[[qc, *c] for qc, c in zip(query_captions, captions, strict=True)],
                     frames=[[BLUE, *(colour[m] for m in ms)] for ms in matches])


def _sample_caption(s) -> str:
    return f"id {s[1]}, cam {s[2] + 1}" if s[1] >= 0 else f"junk, cam {s[2] + 1}"


def protocol_ranklist_figure(dist: np.ndarray, query: Sequence, gallery: Sequence, topk: int = 10,
                             thumbnails: Thumbnails | None = None, distance: str = "distance") -> Figure:
    """Rank lists of ``query`` against ``gallery`` (``Sample``s or ``(path, pid, camid)``) by ``dist``
    ``(Q, G)`` (smaller is closer), with the protocol's exclusions (:func:`ranklist`): captions give each
    entry's distance and identity, frames whether it matches the query."""
    thumbs = thumbnails or Thumbnails((DISPLAY_HEIGHT, DISPLAY_HEIGHT // 2))
    q_p, q_c = np.array([s[1] for s in query]), np.array([s[2] for s in query])
    g_p, g_c = np.array([s[1] for s in gallery]), np.array([s[2] for s in gallery])
    lists = ranklist(dist, q_p, g_p, q_c, g_c, topk)
    return ranklist_figure(
        [thumbs(s[0]) for s in query], [f"{_sample_caption(s)}\n{Path(s[0]).name}" for s in query],
        [[thumbs(gallery[j][0]) for j, _ in lst] for lst in lists],
        [[f"{dist[i, j]:.3f}\n{_sample_caption(gallery[j])}" for j, _ in lst] for i, lst in enumerate(lists)],
        [[ok for _, ok in lst] for lst in lists],
        title=f"top {topk} by {distance} (smaller is closer; same-camera matches and junk left out)\n{MATCH_LEGEND}")


def visualize_ranked_results(distmat: np.ndarray, dataset: tuple[Sequence, Sequence], save_dir: str | Path,
                             topk: int = 10, width: int = 128, height: int = 256, max_queries: int | None = None,
                             distance: str = "distance") -> list[Path]:
    """torchreid's ``visualize_ranked_results`` for the test protocol: one image per query in ``save_dir``
    (``<index>_<query file name>.jpg``, JPEG as torchreid writes them): the query and its ``topk`` gallery images
    by ``distmat`` ``(Q, G)`` (smaller is closer), with rank, distance, identity and green/red match frames.
    ``dataset = (query, gallery)``, lists of ``Sample`` or ``(path, pid, camid)``; images are shown at ``height``
    x ``width``; ``max_queries``: only the first queries. Returns the files written."""
    query, gallery = dataset
    distmat = np.asarray(distmat)
    if distmat.shape != (len(query), len(gallery)):
        raise ValueError(f"visualize_ranked_results: distmat is {distmat.shape}; expected "
                         f"({len(query)}, {len(gallery)}) for {len(query)} queries and {len(gallery)} gallery images")
    thumbs = Thumbnails((height, width))
    out = []
    for i in range(len(query) if max_queries is None else min(max_queries, len(query))):
        fig = protocol_ranklist_figure(distmat[i : i + 1], [query[i]], gallery, topk, thumbs, distance)
        out.append(fig.save(Path(save_dir) / f"{i:04d}_{Path(query[i][0]).stem}.jpg"))
    return out


def search_figure(query_path: str, paths: Sequence[str], distances: Sequence[float], thumbnails: Thumbnails,
                  distance: str = "distance", matches: Sequence[bool | None] | None = None) -> Figure:
    """One ``dgnet.search`` rank list: the query and its ranked gallery files, each captioned with its distance
    and file name. Identities are unknown to a search, so frames are grey (``matches`` may give them)."""
    matches = list(matches) if matches is not None else [None] * len(paths)
    legend = MATCH_LEGEND if any(m is not None for m in matches) else "identities unknown: grey frames"
    return ranklist_figure([thumbnails(query_path)], [f"query\n{Path(query_path).name}"],
                           [[thumbnails(p) for p in paths]],
                           [[f"{d:.3f}\n{Path(p).name}" for p, d in zip(paths, distances, strict=True)]], [matches],
                           title=f"query {Path(query_path).name}: top {len(paths)} by {distance} "
                           f"(smaller is closer)\n{legend}")


def default_samples(ds, n: int) -> list:
    """The first image of each of the first ``n`` query identities (junk and Market's distractors left out)."""
    first: dict[int, object] = {}
    distractor = 0 if ds.name in ("market1501", "dukemtmc", "synthetic") else None
    for s in ds.query:
        if s.pid >= 0 and s.pid != distractor:
            first.setdefault(s.pid, s)
        if len(first) >= n:
            break
    return list(first.values())


def figure_from_checkpoint(checkpoint: str | Path, mode: str, images: list[str] | None = None, num: int = 6,
                           steps: int = 6, which: str = "dgnet", data_root: str | None = None,
                           loader: str | None = None, device: str = "auto", output: Path | None = None,
                           per_query: bool = False, topk: int = 10) -> Path:
    """What ``python -m dgnet.visualize`` does: the ``mode`` figure of a checkpoint's model, written as a PNG
    (default ``<checkpoint folder>/visuals/<mode>.png``); returns its path.

    ``images``: image files (default: the first query image of each of ``num`` identities). ``which``: whose
    features rank the ``ranklist`` (``dgnet`` or ``teacher``); the generation modes use DG-Net. ``per_query``
    (ranklist): one PNG per query (:func:`visualize_ranked_results`) in the folder ``output`` (default
    ``<checkpoint folder>/visuals/ranklist/``) instead of one grid; returns the folder.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {MODES}")
    if mode.startswith("interpolate"):
        if steps < 2:
            raise ValueError(f"--steps {steps}: interpolation needs at least 2 steps (both end points)")
        if images and len(images) % 2:
            raise ValueError(f"--mode {mode} pairs the images (first half with second half): got "
                             f"{len(images)}, an odd number")
    if mode == "ranklist" and images:
        raise ValueError("--mode ranklist ranks the dataset's query images: leave out --images")
    if per_query and mode != "ranklist":
        raise ValueError(f"--per-query draws rank lists; --mode {mode} makes one figure")
    run = open_run(checkpoint, data_root, loader, device)
    cfg, backend = run.cfg, run.backend
    size = (cfg.data.height, cfg.data.width)
    which = which if mode == "ranklist" else "dgnet"
    model = run.model(which)
    default_out = Path(checkpoint).parent / "visuals" / (mode if per_query else f"{mode}.png")
    out = output or default_out
    ds = None
    if images:
        for f in images:
            if not Path(f).is_file():
                raise FileNotFoundError(f"--images: {f!r} does not exist")
        samples = [Sample(str(f), -1, 0) for f in images]
        names = [Path(f).stem for f in images]
    else:
        ds = run.dataset(preflight=False)
        samples = default_samples(ds, num)
        names = [f"#{i + 1}" for i in range(len(samples))]

    if mode == "ranklist":
        gf, _, _ = extract(model, which, ds.gallery, cfg, backend, run.device)
        qf, _, _ = extract(model, which, samples, cfg, backend, run.device)
        dist = (-(qf @ gf.T)).cpu().numpy()  # the spec's score is the dot product
        scale = display_scale(size[0])
        label = f"negative dot product of {which} features"
        if per_query:
            visualize_ranked_results(dist, (samples, ds.gallery), out, topk, size[1] * scale, size[0] * scale,
                                     distance=label)
            return Path(out)
        fig = protocol_ranklist_figure(dist, samples, ds.gallery, topk, Thumbnails((size[0] * scale, size[1] * scale)),
                                       label)
    else:
        fig = generation_figure(model, load_images(samples, size, backend, run.device), mode, steps, names)
    return fig.save(out)
