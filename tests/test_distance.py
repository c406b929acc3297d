"""dgnet.ops.pairwise_distance against plain PyTorch (torch.cdist and the explicit formulas)."""

import pytest
import torch
import torch.nn.functional as F

from dgnet.ops import METRICS, pairwise_distance, pairwise_distance_reference


def sample_inputs(device, m=37, n=53, d=19, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g).to(device=device, dtype=dtype)
    y = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    return x, y


def explicit(x, y, metric):
    """The textbook formulas, independent of both implementations under test (float64)."""
    xd, yd = x.double(), y.double()
    if metric == "neg_dot":
        return -(xd[:, None, :] * yd[None, :, :]).sum(-1)
    diff = xd[:, None, :] - yd[None, :, :]
    if metric == "euclidean":
        return diff.square().sum(-1).sqrt()
    if metric == "sqeuclidean":
        return diff.square().sum(-1)
    return 1.0 - F.cosine_similarity(xd[:, None, :], yd[None, :, :], dim=-1, eps=1e-12)


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_reference_matches_explicit_formulas(metric):
    x, y = sample_inputs("cpu", 11, 13, 7)
    torch.testing.assert_close(pairwise_distance_reference(x, y, metric), explicit(x, y, metric).float())


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("chunk_rows", [None, 1, 5, 36, 37, 1000])
def test_matches_reference(metric, chunk_rows):
    x, y = sample_inputs("cpu")
    out = pairwise_distance(x, y, metric, chunk_rows=chunk_rows)
    assert out.dtype == torch.float32 and out.shape == (37, 53)
    # GEMM-expansion cancellation: absolute error scales with the squared norms (~D = 19 here).
    torch.testing.assert_close(out, pairwise_distance_reference(x, y, metric), atol=2e-5 * 19, rtol=1e-5)


@pytest.mark.parametrize(
    "m, n, d",
    [
        (376, 1838, 1024),  # protocol-like: 376 queries, 1,838 gallery images, 1,024-d features
        (2200, 15300, 256),  # an output (135 MB) over the 128 MiB per call that splits the other metrics' GEMM
    ],
)
def test_neg_dot_is_bit_identical_to_the_protocol_score(m, n, d):
    """The test protocol ranks by ``-(q @ g.T)``; switching it to the op must not move a single bit."""
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(m, d, generator=g), dim=1) * 4.0
    gal = F.normalize(torch.randn(n, d, generator=g), dim=1) * 4.0
    assert torch.equal(pairwise_distance(q, gal, "neg_dot"), -(q @ gal.T))


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_kernel_propagates_nan(metric):
    """The op itself (the public function rejects NaN first): a NaN feature must not come out at distance 0 from
    everything (its nearest match): the clamp of the GEMM form's small negative values keeps NaN, in the scalar
    and the AVX2 columns (53 = 6 x 8 + 5)."""
    x, y = sample_inputs("cpu")
    x[3, 0] = float("nan")
    out = torch.ops.dgnet.pairwise_distance(x, y, METRICS[metric], 0)
    assert torch.isnan(out[3]).all() and not torch.isnan(out[torch.arange(37) != 3]).any()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_non_finite_features_rejected(bad, dtype):
    x, y = sample_inputs("cpu", dtype=dtype)
    x[3, 0] = x[5, 2] = x[5, 4] = bad
    with pytest.raises(ValueError, match=r"^x: 2 of 37 rows contain NaN or inf"):
        pairwise_distance(x, y)
    y[52, 18] = bad
    with pytest.raises(ValueError, match=r"^y: 1 of 53 rows contain NaN or inf"):
        pairwise_distance(x[:3], y, "neg_dot")


def test_euclidean_matches_cdist():
    x, y = sample_inputs("cpu", 200, 300, 64)
    torch.testing.assert_close(pairwise_distance(x, y), torch.cdist(x, y), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_computed_in_float32(metric, dtype):
    x, y = sample_inputs("cpu", 21, 17, 33, dtype=dtype)
    out = pairwise_distance(x, y, metric)
    assert out.dtype == torch.float32
    # Reference from the same (rounded) input values, so the only difference is float32 arithmetic.
    torch.testing.assert_close(out, pairwise_distance_reference(x.float(), y.float(), metric), atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_single_rows_and_empty(metric):
    x, y = sample_inputs("cpu", 1, 1, 5)
    torch.testing.assert_close(pairwise_distance(x, y, metric), explicit(x, y, metric).float(), atol=1e-5, rtol=1e-5)
    assert pairwise_distance(x[:0], y, metric).shape == (0, 1)
    assert pairwise_distance(x, y[:0], metric).shape == (1, 0)


def test_identical_rows_and_zero_vectors():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    d = pairwise_distance(x, x)
    assert d[0, 0] == 0.0 and d[1, 1] == 0.0
    torch.testing.assert_close(d[0, 1], torch.tensor(5.0))
    c = pairwise_distance(x, x, "cosine")
    torch.testing.assert_close(c[0, 0], torch.tensor(0.0), atol=1e-6, rtol=0)
    # A zero vector has no direction: cosine distance 1 to everything, including itself.
    torch.testing.assert_close(c[1], torch.tensor([1.0, 1.0]))


def test_non_contiguous_inputs():
    x, y = sample_inputs("cpu", 40, 30, 16)
    xt, yt = x.T.contiguous().T, y[::2]
    assert not xt.is_contiguous() or not yt.is_contiguous()
    torch.testing.assert_close(pairwise_distance(xt, yt), pairwise_distance_reference(x, y[::2]), atol=4e-4, rtol=1e-5)


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_opcheck(metric):
    x, y = sample_inputs("cpu", 9, 6, 5)
    torch.library.opcheck(torch.ops.dgnet.pairwise_distance.default, (x, y, METRICS[metric], 4))


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        (torch.randn(3), torch.randn(4, 3), {}, "x: expected a 2-D"),
        (torch.randn(3, 2), torch.randn(4, 3), {}, "feature dimensions differ"),
        (torch.randn(3, 2).int(), torch.randn(4, 2), {}, "x: expected a floating dtype"),
        (torch.randn(3, 2), [[1.0, 2.0]], {}, "y: expected a torch.Tensor"),
        (torch.randn(3, 2), torch.randn(4, 2), {"metric": "manhattan"}, "metric='manhattan'"),
        (torch.randn(3, 2), torch.randn(4, 2), {"chunk_rows": 0}, "chunk_rows=0"),
    ],
)
def test_bad_input(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pairwise_distance(x, y, **kwargs)


def test_under_torch_compile():
    x, y = sample_inputs("cpu", 8, 12, 4)
    compiled = torch.compile(lambda a, b: pairwise_distance(a, b, "cosine") * 2.0, fullgraph=True)
    torch.testing.assert_close(compiled(x, y), 2.0 * pairwise_distance_reference(x, y, "cosine"), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("metric", sorted(METRICS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu(metric, dtype):
    x, y = sample_inputs("cpu", 300, 700, 128, dtype=dtype)
    out = pairwise_distance(x.cuda(), y.cuda(), metric, chunk_rows=64)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), pairwise_distance(x, y, metric), atol=1e-3, rtol=1e-4)
    torch.library.opcheck(torch.ops.dgnet.pairwise_distance.default, (x.cuda()[:20], y.cuda()[:30], METRICS[metric], 7))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_huge_finite_inputs_give_finite_distances_as_the_plain_formula(metric):
    """Features of magnitude 1e19 are finite, and so are their float64 plain-formula distances; the kernel's float32
    squared norms used to overflow (euclidean inf, cosine NaN). Rows of very different size (1e-6) included."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 96, generator=g) * 1e19
    y = torch.randn(9, 96, generator=g) * 1e19
    y[0] *= 1e-25  # a row of ordinary size among huge ones
    got, want = pairwise_distance(x, y, metric), pairwise_distance_reference(x, y, metric)
    assert torch.isfinite(want).all() and torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    # float64 inputs beyond float32's range: the same
    got64 = pairwise_distance(x.double() * 1e30, y.double() * 1e30, metric)
    want64 = pairwise_distance_reference(x.double() * 1e30, y.double() * 1e30, metric)
    assert torch.equal(torch.isfinite(got64), torch.isfinite(want64))
    if metric == "cosine":
        torch.testing.assert_close(got64, want64, rtol=1e-5, atol=1e-6)
