"""Visual tools: the swap table's layout, interpolation end points, rank lists, frames, the CLI."""

import numpy as np
import pytest
import torch

from dgnet.config import resolve_config
from dgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dgnet.generative.figures import framed, image_grid, interpolate_rows, rainbow_rows, ranklist, swap_rows


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


def test_swap_table_layout(model, images):
    rows = swap_rows(model, images)
    assert len(rows) == 4 and all(r.shape == (4, 3, 64, 32) for r in rows)
    # top-left is white, the top row gives structures, the left column appearances
    white = ((1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)
    assert torch.allclose(rows[0][0], white.expand(3, 64, 32))
    assert torch.equal(rows[0][1:], images)
    with torch.no_grad():
        f, s, _, _ = model.encode(images)
        for i in range(3):
            assert torch.equal(rows[i + 1][0], images[i])
            for j in range(3):
                want = model.decode(s[j : j + 1], f[i : i + 1])  # structure of column j, appearance of row i
                torch.testing.assert_close(rows[i + 1][j + 1 : j + 2], want, atol=1e-5, rtol=1e-5)


def test_rainbow_and_interpolation_end_points(model, images):
    rows = rainbow_rows(model, images)
    assert [r.shape[0] for r in rows] == [3, 3]
    rows = interpolate_rows(model, images[:1], images[1:2], steps=4, what="appearance")
    assert len(rows) == 1 and rows[0].shape[0] == 6
    with torch.no_grad():
        fa, sa, _, _ = model.encode(images[:1])
        fb, _, _, _ = model.encode(images[1:2])
        torch.testing.assert_close(rows[0][1:2], model.decode(sa, fa), atol=1e-5, rtol=1e-5)  # t = 0
        torch.testing.assert_close(rows[0][4:5], model.decode(sa, fb), atol=1e-5, rtol=1e-5)  # t = 1
    rows = interpolate_rows(model, images[:1], images[1:2], steps=3, what="structure")
    assert rows[0].shape[0] == 5


def test_ranklist_hand_case():
    # query 0: pid 1 cam 0. Gallery: [pid1 cam0 (excluded), pid2, pid1 cam1, junk, pid3]
    dist = np.array([[0.0, 0.1, 0.2, 0.05, 0.3]])
    g_p, g_c = np.array([1, 2, 1, -1, 3]), np.array([0, 1, 1, 2, 1])
    lists = ranklist(dist, np.array([1]), g_p, np.array([0]), g_c, topk=3)
    assert lists == [[(1, False), (2, True), (4, False)]]


def test_frame_and_grid_sizes():
    img = torch.full((3, 10, 6), 0.5)
    f = framed(img, (1.0, 0.0, 0.0), width=2)
    assert torch.equal(f[:, 0, 0], torch.tensor([1.0, 0.0, 0.0])) and torch.equal(f[:, 5, 3], img[:, 5, 3])
    g = image_grid([torch.rand(3, 3, 10, 6), torch.rand(1, 3, 10, 6)], pad=2, normalized=False)
    assert g.shape == (3, 2 * 12 + 2, 3 * 8 + 2)


def test_interpolation_arguments_are_checked_first(tmp_path, capsys):
    """Both checks come before the checkpoint is read (it does not exist here)."""
    from dgnet.visualize import main

    ckpt = str(tmp_path / "missing.pt")
    assert main(["--checkpoint", ckpt, "--mode", "interpolate-appearance", "--steps", "1"]) == 2
    assert "at least 2 steps" in capsys.readouterr().err
    imgs = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    assert main(["--checkpoint", ckpt, "--mode", "interpolate-structure", "--images", *imgs]) == 2
    assert "got 3, an odd number" in capsys.readouterr().err
