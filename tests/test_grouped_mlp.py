"""G MLPs at once (``dgnet.ops.grouped_mlp``) against its plain twin, one MLP after the other."""

import pytest
import torch

from dgnet.ops.grouped_mlp import grouped_mlp, grouped_mlp_reference


def _layers(groups: int, dims: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [([torch.randn(o, i, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(groups)],
             [torch.randn(o, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(groups)])
            for i, o in zip(dims[:-1], dims[1:], strict=True)]


@pytest.mark.parametrize(("groups", "n", "dims", "chunks"),
                         [(1, 1, [3, 2], 1), (8, 3, [7, 5, 5, 6], 2), (3, 4, [5, 9, 6], 3), (2, 5, [4, 4], 4)])
def test_matches_the_plain_mlps_float64(groups, n, dims, chunks):
    layers = _layers(groups, dims)
    x = torch.randn(groups, n, dims[0], dtype=torch.float64, requires_grad=True)
    want, got = grouped_mlp_reference(layers, x, chunks, 0.2), grouped_mlp(layers, x, chunks, 0.2)
    assert got.shape == (groups * chunks, n, dims[-1] // chunks)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    params = [x, *(t for ws, bs in layers for t in (*ws, *bs))]
    dy = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(got, params, dy), torch.autograd.grad(want, params, dy), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_row_layout_is_mlp_then_chunk():
    """Row g * chunks + h is chunk h of MLP g: a hand-built case with identity weights."""
    eye = torch.eye(4)
    layers = [([eye, 2 * eye], [torch.zeros(4), torch.ones(4)])]
    x = torch.arange(8.0).view(2, 1, 4)
    out = grouped_mlp(layers, x, out_chunks=2)
    assert out[:, 0].tolist() == [[0.0, 1.0], [2.0, 3.0], [9.0, 11.0], [13.0, 15.0]]


@pytest.mark.parametrize(("change", "match"), [
    ("no_layers", "layers is empty"), ("x_2d", r"x must be \(G, N, in\)"), ("groups", "for G = 2 groups"),
    ("chunks", "out_chunks=4 must divide"),
])
def test_bad_input_is_named(change, match):
    layers, x, chunks = _layers(2, [3, 6]), torch.randn(2, 1, 3, dtype=torch.float64), 2
    if change == "no_layers":
        layers = []
    elif change == "x_2d":
        x = x[0]
    elif change == "groups":
        layers = _layers(3, [3, 6])
    else:
        chunks = 4
    with pytest.raises(ValueError, match=match):
        grouped_mlp(layers, x, chunks)
