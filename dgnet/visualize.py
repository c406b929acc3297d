"""``python -m dgnet.visualize``: the paper's generation figures and torchreid-style rank lists, as PNG grids.

Modes (``x_ab = G(s_a, f_b)``: structure of a, appearance of b):

- ``swap``: a table; the top row gives the structures, the left column the appearances, cell (i, j) is
  ``G(s_j, f_i)``.
- ``rainbow``: one appearance (the first image) over many structures (the others).
- ``interpolate-appearance``: ``G(s_a, (1 - t) f_a + t f_b)`` for ``t`` in ``[0, 1]``, one row per pair.
- ``interpolate-structure``: ``G((1 - t) s_a + t s_b, f_a)``.
- ``ranklist``: each query and its top-10 gallery images by the test protocol's distance; green
  frames are true matches, red frames false ones (same-identity same-camera images and junk excluded,
  as in the evaluation).

Images come from ``--images`` (paths) or, by default, the first image of each of the first query
identities of the checkpoint's dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from dgnet.config import positive_int
from dgnet.logging_utils import blank_like, denormalize, image_grid, save_png

MODES = ("swap", "rainbow", "interpolate-appearance", "interpolate-structure", "ranklist")
GREEN = (0.1, 0.75, 0.1)
RED = (0.85, 0.1, 0.1)
BLUE = (0.1, 0.3, 0.9)


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


def load_images(samples: list, cfg, backend: str, device: torch.device) -> torch.Tensor:
    """Normalised ``(N, 3, H, W)`` images of ``samples`` through the test pipeline, in order."""
    from dgnet.data import test_stream

    out = torch.zeros(len(samples), 3, cfg.data.height, cfg.data.width, device=device)
    for batch in test_stream(samples, backend, batch_size=max(1, min(len(samples), 64)),
                             size=(cfg.data.height, cfg.data.width), device=device, workers=0):
        out[torch.as_tensor(batch["index"]).long().to(device)] = batch["image"].to(device).float()
    return out


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgnet.visualize", description="PNG grids from a dgnet checkpoint.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--images", nargs="*", help="image files (default: query images of distinct identities)")
    p.add_argument("--num", type=positive_int, default=6,
                   help="images (or queries for ranklist) when --images is not given")
    p.add_argument("--steps", type=positive_int, default=6, help="interpolation steps")
    p.add_argument("--model", choices=("dgnet", "teacher"), default="dgnet", help="ranklist: whose features")
    p.add_argument("--data-root")
    p.add_argument("--loader", choices=("auto", "dali", "torch"))
    p.add_argument("--device", default="auto")
    p.add_argument("--output", help="PNG file (default: <checkpoint folder>/visuals/<mode>.png)")
    args = p.parse_args(argv)
    try:
        path = run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"dgnet.visualize: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def run(args: argparse.Namespace) -> Path:
    from dgnet.data import Sample, load_dataset, resolve_backend
    from dgnet.test import extract, load_models, open_run

    if args.mode.startswith("interpolate"):
        if args.steps < 2:
            raise ValueError(f"--steps {args.steps}: interpolation needs at least 2 steps (both end points)")
        if args.images and len(args.images) % 2:
            raise ValueError(f"--mode {args.mode} pairs the images (first half with second half): got "
                             f"{len(args.images)}, an odd number")
    ckpt, cfg, device = open_run(args.checkpoint, args.data_root, args.loader, args.device)
    backend = resolve_backend(cfg.data.loader, device)
    which = args.model if args.mode == "ranklist" else "dgnet"
    model = load_models(ckpt, cfg, device, which)[which]
    out = Path(args.output) if args.output else Path(args.checkpoint).parent / "visuals" / f"{args.mode}.png"

    ds = None
    if args.images:
        for f in args.images:
            if not Path(f).is_file():
                raise FileNotFoundError(f"--images: {f!r} does not exist")
        samples = [Sample(str(f), -1, 0) for f in args.images]
    else:
        ds = load_dataset(cfg.data.dataset, cfg.data.root, verbose=False)
        samples = default_samples(ds, args.num)

    if args.mode == "ranklist":
        if ds is None:
            raise ValueError("--mode ranklist ranks the dataset's query images: leave out --images")
        gf, gp, gc = extract(model, which, ds.gallery, cfg, backend, device)
        qf, qp, qc = extract(model, which, samples, cfg, backend, device)
        dist = (-(qf @ gf.T)).numpy()  # the spec's score is the dot product
        lists = ranklist(dist, qp, gp, qc, gc)
        q_img = denormalize(load_images(samples, cfg, backend, device))
        rows = []
        for i, lst in enumerate(lists):
            g_img = denormalize(load_images([ds.gallery[j] for j, _ in lst], cfg, backend, device))
            row = [framed(q_img[i], BLUE)] + [framed(g_img[k], GREEN if ok else RED) for k, (_, ok) in enumerate(lst)]
            rows.append(torch.stack(row))
        return save_png(image_grid(rows, normalized=False), out)

    if len(samples) < 2:
        raise ValueError(f"--mode {args.mode} needs at least 2 images, got {len(samples)}")
    x = load_images(samples, cfg, backend, device)
    if args.mode == "swap":
        rows = swap_rows(model, x)
    elif args.mode == "rainbow":
        rows = rainbow_rows(model, x)
    else:
        half = x.shape[0] // 2
        what = args.mode.split("-", 1)[1]
        rows = interpolate_rows(model, x[:half], x[half : 2 * half], args.steps, what)
    return save_png(image_grid(rows), out)


if __name__ == "__main__":
    sys.exit(main())
