"""The paper's generation figures, training-time image grids and torchreid-style rank lists, as image rows.

``x_ab = G(s_a, f_b)``: structure of a, appearance of b. Every builder returns a list of rows (each a
``(N_i, 3, H, W)`` tensor) for :func:`image_grid`, which :func:`save_png` writes:

- :func:`swap_rows`: a table; the top row gives the structures, the left column the appearances, cell (i, j) is
  ``G(s_j, f_i)``.
- :func:`rainbow_rows`: one appearance (the first image) over many structures (the others).
- :func:`interpolate_rows`: ``G(s_a, (1 - t) f_a + t f_b)`` (appearance) or ``G((1 - t) s_a + t s_b, f_a)``
  (structure) for ``t`` in ``[0, 1]``, one row per pair.
- :func:`training_rows`: real a, real b, reconstruction, cycle and both swaps (the training grids).
- :func:`ranklist_rows`: each query and its top-k gallery images by the test protocol's distance; green
  frames are true matches, red frames false ones (same-identity same-camera images and junk excluded,
  as in the evaluation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dgnet.checkpoints.runs import open_run
from dgnet.data import Sample
from dgnet.data.streams import load_images
from dgnet.data.transforms import blank_like, denormalize
from dgnet.evaluation.protocol import extract
from dgnet.models import eval_mode, gray

MODES = ("swap", "rainbow", "interpolate-appearance", "interpolate-structure", "ranklist")
GREEN = (0.1, 0.75, 0.1)
RED = (0.85, 0.1, 0.1)
BLUE = (0.1, 0.3, 0.9)


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
    """``[x_0, structures x_1..]`` and ``[x_0, G(s_j, f_0)]``: one appearance over many structures."""
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


@torch.no_grad()
def training_rows(model: torch.nn.Module, xa: torch.Tensor, xb: torch.Tensor) -> list[torch.Tensor]:
    """Rows of a training grid: real a, real b, reconstruction of a, cycle of a, x_ab, x_ba.

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


def framed(img01: torch.Tensor, colour: tuple[float, float, float], width: int = 3) -> torch.Tensor:
    """``(3, H, W)`` in [0, 1] with a coloured frame ``width`` pixels wide drawn inside its border."""
    img = img01.clone()
    c = torch.tensor(colour).view(3, 1, 1)
    img[:, :width], img[:, -width:] = c, c
    img[:, :, :width], img[:, :, -width:] = c, c
    return img


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


def generation_figure(model: torch.nn.Module, x: torch.Tensor, mode: str, steps: int = 6) -> torch.Tensor:
    """The ``(3, H', W')`` [0, 1] grid of a generation ``mode`` (``swap``, ``rainbow``, ``interpolate-*``) over
    the normalised images ``x`` ``(N >= 2, 3, H, W)``; interpolation pairs the first half with the second."""
    if x.shape[0] < 2:
        raise ValueError(f"mode {mode!r} needs at least 2 images, got {x.shape[0]}")
    with eval_mode(model):
        if mode == "swap":
            rows = swap_rows(model, x)
        elif mode == "rainbow":
            rows = rainbow_rows(model, x)
        elif mode.startswith("interpolate-"):
            half = x.shape[0] // 2
            rows = interpolate_rows(model, x[:half], x[half : 2 * half], steps, mode.split("-", 1)[1])
        else:
            raise ValueError(f"mode {mode!r}: expected one of {MODES[:-1]}")
    return image_grid(rows)


def ranklist_figure(lists: list[list[tuple[int, Any]]], queries: torch.Tensor, gallery_images) -> torch.Tensor:
    """The rank-list grid: per query ``queries[i]`` (normalised ``(3, H, W)``) a blue-framed image, then its
    list's gallery images (``gallery_images(indices)`` -> normalised ``(K, 3, H, W)``), green when the entry's
    flag is true, red otherwise."""
    q_img = denormalize(queries)
    rows = []
    for i, lst in enumerate(lists):
        g_img = denormalize(gallery_images([j for j, _ in lst])) if lst else []
        row = [framed(q_img[i], BLUE)] + [framed(g_img[k], GREEN if ok else RED) for k, (_, ok) in enumerate(lst)]
        rows.append(torch.stack(row))
    return image_grid(rows, normalized=False)


def figure_from_checkpoint(checkpoint: str | Path, mode: str, images: list[str] | None = None, num: int = 6,
                           steps: int = 6, which: str = "dgnet", data_root: str | None = None,
                           loader: str | None = None, device: str = "auto", output: Path | None = None) -> Path:
    """What ``python -m dgnet.visualize`` does: the ``mode`` figure of a checkpoint's model, written as a PNG
    (default ``<checkpoint folder>/visuals/<mode>.png``); returns its path.

    ``images``: image files (default: the first query image of each of ``num`` identities). ``which``: whose
    features rank the ``ranklist`` (``dgnet`` or ``teacher``); the generation modes use DG-Net.
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
    run = open_run(checkpoint, data_root, loader, device)
    cfg, backend = run.cfg, run.backend
    size = (cfg.data.height, cfg.data.width)
    which = which if mode == "ranklist" else "dgnet"
    model = run.model(which)
    out = output or Path(checkpoint).parent / "visuals" / f"{mode}.png"
    ds = None
    if images:
        for f in images:
            if not Path(f).is_file():
                raise FileNotFoundError(f"--images: {f!r} does not exist")
        samples = [Sample(str(f), -1, 0) for f in images]
    else:
        ds = run.dataset(preflight=False)
        samples = default_samples(ds, num)

    if mode == "ranklist":
        gf, gp, gc = extract(model, which, ds.gallery, cfg, backend, run.device)
        qf, qp, qc = extract(model, which, samples, cfg, backend, run.device)
        dist = (-(qf @ gf.T)).cpu().numpy()  # the spec's score is the dot product
        lists = ranklist(dist, qp, gp, qc, gc)
        grid = ranklist_figure(lists, load_images(samples, size, backend, run.device),
                               lambda idx: load_images([ds.gallery[j] for j in idx], size, backend, run.device))
    else:
        grid = generation_figure(model, load_images(samples, size, backend, run.device), mode, steps)
    return save_png(grid, out)


def captioned_row(images01: list[torch.Tensor], captions: list[str], frames: list[tuple[float, float, float]],
                  pad: int = 2, caption_height: int = 14) -> Any:
    """One row of ``(3, H, W)`` [0, 1] images, each framed in its colour with its caption written under it: a PIL
    RGB image (the search command's rank lists: the query, then its top k with their distances)."""
    from PIL import Image, ImageDraw

    if len(images01) != len(captions) or len(images01) != len(frames):
        raise ValueError(f"captioned_row: {len(images01)} images, {len(captions)} captions, {len(frames)} frames")
    tiles = [framed(img, colour, width=2) for img, colour in zip(images01, frames, strict=True)]
    grid = image_grid([torch.stack(tiles)], pad=pad, normalized=False)
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    h, w = arr.shape[:2]
    canvas = Image.new("RGB", (w, h + caption_height), (255, 255, 255))
    canvas.paste(Image.fromarray(arr), (0, 0))
    draw = ImageDraw.Draw(canvas)
    tile_w = images01[0].shape[-1]
    for i, text in enumerate(captions):
        draw.text((pad + i * (tile_w + pad), h), text, fill=(0, 0, 0))
    return canvas
