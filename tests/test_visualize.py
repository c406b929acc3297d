"""Visual tools: the figures' contents against independent references (a transparent stub generator, the images
upsampled by hand, frame colours where matches are), their labels, rank lists, the CLI."""

import numpy as np
import pytest
import torch
from _tiny_run import make_tiny_checkpoint
from PIL import Image, ImageDraw

from dgnet.config import resolve_config
from dgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dgnet.generative import figures as FG
from dgnet.generative.figures import image_grid, interpolate_rows, rainbow_rows, ranklist, swap_rows

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def model():
    from dgnet.checkpoints.format import arch_only
    from dgnet.models import DGNet

    cfg = resolve_config("demo")
    torch.manual_seed(0)
    return DGNet(arch_only(cfg.model), 5).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(3, 3, 64, 32)


class Stub(torch.nn.Module):
    """A generator whose codes can be read: the appearance f is each channel's mean, the structure s the image
    with its channel means removed, and G(s, f) = s + f. So G(s_a, f_b) is a recoloured with b's means."""

    def encode(self, x):
        f = x.mean(dim=(2, 3))
        return f, x - f[:, :, None, None], None, None

    def decode(self, s, f):
        return s + f[:, :, None, None]

    def Ea(self, x):  # noqa: N802 (the paper's names)
        return (x.mean(dim=(2, 3)),)

    def Es(self, g):  # noqa: N802
        return g - g.mean(dim=(2, 3), keepdim=True)


def by_hand(x, a, b):
    """G(s_a, f_b) for the stub, written out: a minus its channel means plus b's."""
    return x[a] - x[a].mean(dim=(1, 2), keepdim=True) + x[b].mean(dim=(1, 2), keepdim=True)


def shown(x: torch.Tensor, k: int) -> np.ndarray:
    """Normalised ``(3, H, W)`` as the figure must show it: 8-bit RGB, each pixel a k x k block."""
    rgb = ((x[None] * STD + MEAN).clamp(0, 1)[0] * 255).round().to(torch.uint8).permute(1, 2, 0)
    return rgb.repeat_interleave(k, 0).repeat_interleave(k, 1).numpy()


def tile(fig, r, c):
    left, top, right, bottom = fig.boxes[(r, c)]
    return np.asarray(fig.image)[top:bottom, left:right]


def has_ink(fig, left, top, right, bottom):
    """Dark (text) pixels inside the box."""
    a = np.asarray(fig.image)[top:bottom, left:right]
    return bool((a.max(axis=2) < 100).any())


def check_grid_geometry(fig, rows: int, cols: int, skip=()):
    """Tiles in row-major order, one row per band and one column per band, none overlapping."""
    boxes = fig.boxes
    assert set(boxes) == {(r, c) for r in range(rows) for c in range(cols)} - set(skip)
    w, h = fig.image.size
    for (r, c), (left, top, right, bottom) in boxes.items():
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        for (r2, c2), (l2, t2, _, _) in boxes.items():
            if r2 == r and c2 > c:
                assert l2 >= right and t2 == top
            if r2 > r and c2 == c:
                assert t2 >= bottom and l2 == left


def check_labels(fig, rows: int, cols: int, row_labels=True):
    """Ink in the title strip, above every column and (``row_labels``) left of every row."""
    boxes = fig.boxes
    first_top = min(b[1] for b in boxes.values())
    first_left = min(b[0] for b in boxes.values())
    assert has_ink(fig, 0, 0, fig.image.size[0], 20), "title"
    for c in range(cols):
        left, _, right, _ = next(b for (r, cc), b in boxes.items() if cc == c)
        assert has_ink(fig, left, first_top - 22, right, first_top - 4), f"column {c} label"
    if row_labels:
        for r in range(rows):
            _, top, _, bottom = next(b for (rr, c), b in boxes.items() if rr == r)
            assert has_ink(fig, 0, top, first_left - 4, bottom), f"row {r} label"


def test_swap_table_layout(model, images):
    rows = swap_rows(model, images)
    assert len(rows) == 4 and all(r.shape == (4, 3, 64, 32) for r in rows)
    # top-left is white, the top row gives structures, the left column appearances
    white = ((1 - MEAN) / STD)[0]
    assert torch.allclose(rows[0][0], white.expand(3, 64, 32))
    assert torch.equal(rows[0][1:], images)
    with torch.no_grad():
        f, s, _, _ = model.encode(images)
        for i in range(3):
            assert torch.equal(rows[i + 1][0], images[i])
            for j in range(3):
                want = model.decode(s[j : j + 1], f[i : i + 1])  # structure of column j, appearance of row i
                torch.testing.assert_close(rows[i + 1][j + 1 : j + 2], want, atol=1e-5, rtol=1e-5)


def test_swap_figure_shows_each_cell_upsampled_and_labelled(images):
    fig = FG.generation_figure(Stub(), images, "swap")
    k = 256 // 64
    check_grid_geometry(fig, 4, 4, skip=[(0, 0)])
    check_labels(fig, 4, 4)
    for j in range(3):
        assert np.array_equal(tile(fig, 0, j + 1), shown(images[j], k))  # structure sources along the top
        assert np.array_equal(tile(fig, j + 1, 0), shown(images[j], k))  # appearance sources down the left
    for i in range(3):
        for j in range(3):
            # cell (i, j): structure of column j's image, appearance of row i's
            assert np.array_equal(tile(fig, i + 1, j + 1), shown(by_hand(images, j, i), k)), (i, j)
    assert tile(fig, 1, 1).shape == (256, 128, 3)


def test_rainbow_values(model, images):
    """The bottom row keeps the first image's appearance and takes each other image's structure."""
    rows = rainbow_rows(Stub(), images)
    assert torch.equal(rows[0][1:], images[1:]) and torch.equal(rows[1][0], images[0])
    for j in (1, 2):
        torch.testing.assert_close(rows[1][j], by_hand(images, j, 0))
    # the stub's row: every generated image has image 0's channel means (appearance constant) and image j's
    # pattern (structure varying)
    gen = rows[1][1:]
    torch.testing.assert_close(gen.mean(dim=(2, 3)), images[0].mean(dim=(1, 2)).expand(2, 3))
    torch.testing.assert_close(gen - gen.mean(dim=(2, 3), keepdim=True),
                               images[1:] - images[1:].mean(dim=(2, 3), keepdim=True))
    # DG-Net's own row: each cell is the decode of (s_j, f_0)
    rows = rainbow_rows(model, images)
    with torch.no_grad():
        f, s, _, _ = model.encode(images)
        for j in (1, 2):
            torch.testing.assert_close(rows[1][j : j + 1], model.decode(s[j : j + 1], f[:1]), atol=1e-5, rtol=1e-5)
    fig = FG.rainbow_figure(rainbow_rows(Stub(), images))
    check_grid_geometry(fig, 2, 3, skip=[(0, 0)])
    check_labels(fig, 2, 3)
    assert np.array_equal(tile(fig, 1, 2), shown(by_hand(images, 2, 0), 4))


@pytest.mark.parametrize("what", ["appearance", "structure"])
def test_interpolation_values(model, images, what):
    """End points are the decodes of both inputs' codes; in between, the stub's decodes are the straight lines."""
    rows = interpolate_rows(Stub(), images[:1], images[1:2], steps=5, what=what)
    assert len(rows) == 1 and rows[0].shape[0] == 7
    assert torch.equal(rows[0][0], images[0]) and torch.equal(rows[0][6], images[1])
    xa, xb = images[0], images[1]
    ma, mb = xa.mean(dim=(1, 2), keepdim=True), xb.mean(dim=(1, 2), keepdim=True)
    for k, t in enumerate(torch.linspace(0, 1, 5).tolist()):
        if what == "appearance":  # a's pattern, colour moving from a's means to b's
            want = xa - ma + (1 - t) * ma + t * mb
        else:  # the patterns blend, colour stays a's
            want = (1 - t) * (xa - ma) + t * (xb - mb) + ma
        torch.testing.assert_close(rows[0][k + 1], want, atol=1e-6, rtol=1e-6)
    rows = interpolate_rows(model, images[:1], images[1:2], steps=4, what=what)
    with torch.no_grad():
        fa, sa, _, _ = model.encode(images[:1])
        fb, sb, _, _ = model.encode(images[1:2])
        torch.testing.assert_close(rows[0][1:2], model.decode(sa, fa), atol=1e-5, rtol=1e-5)  # t = 0
        end = model.decode(sa, fb) if what == "appearance" else model.decode(sb, fa)
        torch.testing.assert_close(rows[0][4:5], end, atol=1e-5, rtol=1e-5)  # t = 1
    fig = FG.generation_figure(Stub(), images[:2], f"interpolate-{what}", steps=3)
    check_grid_geometry(fig, 1, 5)
    check_labels(fig, 1, 5)
    assert np.array_equal(tile(fig, 0, 0), shown(images[0], 4)) and np.array_equal(tile(fig, 0, 4),
                                                                                  shown(images[1], 4))


def test_training_figure_rows_and_labels(images):
    xa, xb = images[:2], images[1:3]
    fig = FG.training_figure(Stub().eval(), xa, xb, "DG-Net iteration 7")
    check_grid_geometry(fig, 6, 2)
    check_labels(fig, 6, 2)
    x = torch.cat([xa, xb])
    for c in range(2):
        a, b = c, 2 + c
        assert np.array_equal(tile(fig, 0, c), shown(xa[c], 4)) and np.array_equal(tile(fig, 1, c), shown(xb[c], 4))
        assert np.array_equal(tile(fig, 2, c), shown(x[a], 4))  # the stub reconstructs exactly
        assert np.array_equal(tile(fig, 4, c), shown(by_hand(x, a, b), 4))  # x_ab: a's structure, b's colours
        assert np.array_equal(tile(fig, 5, c), shown(by_hand(x, b, a), 4))


def test_ranklist_hand_case():
    # query 0: pid 1 cam 0. Gallery: [pid1 cam0 (excluded), pid2, pid1 cam1, junk, pid3]
    dist = np.array([[0.0, 0.1, 0.2, 0.05, 0.3]])
    g_p, g_c = np.array([1, 2, 1, -1, 3]), np.array([0, 1, 1, 2, 1])
    lists = ranklist(dist, np.array([1]), g_p, np.array([0]), g_c, topk=3)
    assert lists == [[(1, False), (2, True), (4, False)]]


def _solid(path, colour):
    Image.new("RGB", (16, 32), colour).save(path)
    return str(path)


def frame_colour(fig, r, c):
    left, top, _, _ = fig.boxes[(r, c)]
    return tuple(np.asarray(fig.image)[top - 2, left - 2])


def test_protocol_ranklist_figure(tmp_path):
    """The hand case above drawn: each rank's tile is that gallery image, framed green where it matches."""
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200)]
    gallery = [(_solid(tmp_path / f"g{i}.png", c), p, cam) for i, (c, p, cam) in
               enumerate(zip(colours, [1, 2, 1, -1, 3], [0, 1, 1, 2, 1], strict=True))]
    query = [(_solid(tmp_path / "q.png", (90, 90, 90)), 1, 0)]
    dist = np.array([[0.0, 0.1, 0.2, 0.05, 0.3]])
    fig = FG.protocol_ranklist_figure(dist, query, gallery, topk=3, thumbnails=FG.Thumbnails((128, 64)))
    check_grid_geometry(fig, 1, 4)
    check_labels(fig, 1, 4, row_labels=False)
    assert (tile(fig, 0, 0) == (90, 90, 90)).all()
    for rank, (j, match) in enumerate([(1, False), (2, True), (4, False)]):
        assert (tile(fig, 0, rank + 1) == colours[j]).all() and tile(fig, 0, rank + 1).shape == (128, 64, 3)
        assert frame_colour(fig, 0, rank + 1) == (FG.GREEN if match else FG.RED)
        left, _, right, bottom = fig.boxes[(0, rank + 1)]
        assert has_ink(fig, left, bottom + 4, right, bottom + 40), "caption: distance and identity"
    assert frame_colour(fig, 0, 0) == FG.BLUE


def test_search_figure_has_no_match_colours(tmp_path):
    paths = [_solid(tmp_path / f"{i}.png", (40 * i, 0, 0)) for i in range(4)]
    fig = FG.search_figure(paths[0], paths[1:], [0.1, 0.2, 0.3], FG.Thumbnails((64, 32)))
    check_grid_geometry(fig, 1, 4)
    assert [frame_colour(fig, 0, c) for c in range(1, 4)] == [FG.GREY] * 3
    assert all((tile(fig, 0, c) == (40 * c, 0, 0)).all() for c in range(4))
    left, _, right, bottom = fig.boxes[(0, 2)]
    assert has_ink(fig, left, bottom + 4, right, bottom + 40)
    with_ids = FG.search_figure(paths[0], paths[1:], [0.1, 0.2, 0.3], FG.Thumbnails((64, 32)), matches=[True, False,
                                                                                                        None])
    assert [frame_colour(with_ids, 0, c) for c in range(1, 4)] == [FG.GREEN, FG.RED, FG.GREY]


def test_visualize_ranked_results_writes_one_file_per_query(tmp_path):
    gallery = [(_solid(tmp_path / f"g{i}.png", (30 * i, 0, 0)), i % 3, 1) for i in range(6)]
    query = [(_solid(tmp_path / f"q{i}.png", (0, 30 * i, 0)), i, 0) for i in range(3)]
    dist = np.random.default_rng(0).random((3, 6))
    out = FG.visualize_ranked_results(dist, (query, gallery), tmp_path / "vis", topk=4, width=32, height=64)
    assert [p.name for p in out] == ["0000_q0.jpg", "0001_q1.jpg", "0002_q2.jpg"]
    assert all(p.is_file() for p in out)
    assert len(FG.visualize_ranked_results(dist, (query, gallery), tmp_path / "v2", max_queries=2)) == 2
    with pytest.raises(ValueError, match=r"\(3, 6\)"):
        FG.visualize_ranked_results(dist.T, (query, gallery), tmp_path / "v3")


def test_put_text_draws_what_pillow_draws():
    """The cached-mask text equals Pillow's own black text on white (rounding aside), numbers included."""
    for text in ("rank 1", "id 12, cam 3", "-0.125"):
        canvas = np.full((30, 120, 3), 255, np.uint8)
        FG.put_text(canvas, 3, 2, text)
        ref = Image.new("RGB", (120, 30), (255, 255, 255))
        ImageDraw.Draw(ref).text((3, 2), text, font=FG.font(), fill=(0, 0, 0))
        diff = np.abs(canvas.astype(int) - np.asarray(ref).astype(int))
        assert diff.max() <= (1 if text[0] != "-" else 40) and diff.mean() < 0.5, text
        assert (canvas < 100).any()


def test_draw_grid_refuses_mixed_tile_sizes_and_fits_long_captions():
    a, b = np.zeros((8, 4, 3), np.uint8), np.zeros((6, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="shapes"):
        FG.draw_grid([[a, b]])
    name = "0123456789_very_long_file_name.jpg"
    cut = FG.fit_text(name, 60)
    assert FG.font().getlength(cut) <= 60 and len(FG.fit_text(name, 120)) > len(cut)
    head, tail = cut.split("…")
    assert name.startswith(head) and name.endswith(tail) and len(head) >= 2 and len(tail) >= 2
    assert len(head) - len(tail) in (0, 1)  # the middle goes: the identity prefix and the extension stay
    assert FG.fit_text("short", 60) == "short"


def test_display_scale():
    assert [FG.display_scale(h) for h in (64, 128, 256, 384, 100)] == [4, 2, 1, 1, 3]


def test_image_grid_sizes():
    g = image_grid([torch.rand(3, 3, 10, 6), torch.rand(1, 3, 10, 6)], pad=2, normalized=False)
    assert g.shape == (3, 2 * 12 + 2, 3 * 8 + 2)


def test_logger_saves_a_figure(tmp_path):
    from dgnet.training.logger import RunLogger

    fig = FG.draw_grid([[np.full((8, 4, 3), 7, np.uint8)]], title="t")
    log = RunLogger(tmp_path, "dgnet", 1, progress=False, tensorboard=False)
    path = log.grid(3, fig)
    log.close()
    assert path.name == "dgnet_samples_00000003.png"
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(fig.image))
    torch.testing.assert_close(fig.tensor(), torch.from_numpy(np.array(fig.image)).permute(2, 0, 1) / 255)


def test_interpolation_arguments_are_checked_first(tmp_path, capsys):
    """Both checks come before the checkpoint is read (it does not exist here)."""
    from dgnet.visualize import main

    ckpt = str(tmp_path / "missing.pt")
    assert main(["--checkpoint", ckpt, "--mode", "interpolate-appearance", "--steps", "1"]) == 2
    assert "at least 2 steps" in capsys.readouterr().err
    imgs = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    assert main(["--checkpoint", ckpt, "--mode", "interpolate-structure", "--images", *imgs]) == 2
    assert "got 3, an odd number" in capsys.readouterr().err
    assert main(["--checkpoint", ckpt, "--mode", "swap", "--per-query"]) == 2
    assert "--per-query" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_ranklist_per_query(tmp_path):
    """``--per-query`` end to end on a seeded checkpoint (tests/test_train_cli.py runs the other modes)."""
    from dgnet.visualize import main

    path, ds, _ = make_tiny_checkpoint(tmp_path)
    assert main(["--checkpoint", str(path), "--mode", "ranklist", "--num", "2", "--per-query", "--device", "cpu",
                 "--loader", "torch", "--output", str(tmp_path / "per")]) == 0
    files = sorted((tmp_path / "per").glob("*.jpg"))
    assert len(files) == 2 and all(Image.open(f).size[1] > 256 for f in files)  # a 256 x 128 tile per image
