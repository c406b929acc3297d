"""The test protocol's data path (dgnet.protocol): features stay on the model's device, and distances,
re-ranking and evaluation run there through dgnet.ops and dgnet.evaluation, with the metrics the plain
formulas give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dgnet import ops, protocol
from dgnet.config import EvalConfig
from dgnet.evaluation import evaluate_reference
from dgnet.ops.rerank import re_ranking_reference


def _features(device: str, q: int = 9, g: int = 21, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    qf = torch.nn.functional.normalize(torch.randn(q, 16, generator=gen), dim=1)
    gf = torch.nn.functional.normalize(torch.randn(g, 16, generator=gen), dim=1)
    qp, gp = np.arange(q) % 4, np.arange(g) % 4
    qc, gc = np.zeros(q, dtype=np.int64), np.ones(g, dtype=np.int64)
    return qf.to(device), gf.to(device), qp, gp, qc, gc


def _record_devices(monkeypatch) -> list[tuple[str, str]]:
    """Wrap the retrieval ops the protocol calls so each records the device of what it receives."""
    seen: list[tuple[str, str]] = []

    def wrap(module, name, arg):
        real = getattr(module, name)

        def spy(*args, **kwargs):
            seen.append((name, str(args[arg].device)))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)

    wrap(ops, "pairwise_distance", 0)
    wrap(ops, "re_ranking_features", 0)
    wrap(protocol, "evaluate", 0)
    return seen


def test_retrieval_ops_receive_the_features_device_cpu(monkeypatch):
    seen = _record_devices(monkeypatch)
    qf, gf, qp, gp, qc, gc = _features("cpu")
    out = protocol.evaluate_features(qf, gf, qp, gp, qc, gc, EvalConfig(k1=4, k2=2), rerank=True)
    assert [n for n, _ in seen] == ["pairwise_distance", "evaluate", "re_ranking_features", "evaluate"]
    assert {d for _, d in seen} == {"cpu"}
    # the numbers: the negative dot product ranked by the classic loop; re-ranking by the dense reference
    want = evaluate_reference(-(qf @ gf.T).double().numpy(), qp, gp, qc, gc)
    assert out["plain"]["mAP"] == pytest.approx(want.mAP, abs=1e-6)
    assert out["plain"]["rank1"] == pytest.approx(float(want.cmc[0]))
    sq = lambda a, b: torch.cdist(a.double(), b.double()).numpy()
    rr = re_ranking_reference(sq(qf, gf), sq(qf, qf), sq(gf, gf), k1=4, k2=2, lambda_value=0.3)
    want_rr = evaluate_reference(rr, qp, gp, qc, gc)
    assert out["rerank"]["mAP"] == pytest.approx(want_rr.mAP, abs=1e-4)


def test_extract_keeps_features_on_the_models_device_in_sample_order(tmp_path):
    """extract returns features where the model runs (no host round trip), row i being sample i's feature
    whatever batch it was decoded in."""
    from PIL import Image

    from dgnet.config import ModelConfig, resolve_config
    from dgnet.data import Sample
    from dgnet.models import ReidBaseline

    samples = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 64), (40 * i, 20, 200 - 30 * i)).save(p)
        samples.append(Sample(str(p), i, 0))
    torch.manual_seed(0)
    model = ReidBaseline(ModelConfig(backbone="resnet18", backbone_weights="none"), 5).eval()
    cpu = torch.device("cpu")
    cfg = resolve_config("demo", {"data": {"workers": 0}, "eval": {"batch_size": 2}})
    feats, pids, camids = protocol.extract(model, "teacher", samples, cfg, "torch", cpu)
    assert feats.device == cpu and feats.shape == (5, 512) and pids.tolist() == [0, 1, 2, 3, 4]
    for i, s in enumerate(samples):
        alone, _, _ = protocol.extract(model, "teacher", [s], cfg, "torch", cpu)
        torch.testing.assert_close(feats[i], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_the_whole_path_runs_on_cuda(monkeypatch):
    seen = _record_devices(monkeypatch)
    qf, gf, qp, gp, qc, gc = _features("cuda")
    out = protocol.evaluate_features(qf, gf, qp, gp, qc, gc, EvalConfig(k1=4, k2=2), rerank=True)
    assert {d for _, d in seen} == {"cuda:0"}
    cpu = protocol.evaluate_features(qf.cpu(), gf.cpu(), qp, gp, qc, gc, EvalConfig(k1=4, k2=2), rerank=True)
    for mode in ("plain", "rerank"):
        for k, v in cpu[mode].items():
            assert out[mode][k] == pytest.approx(v, abs=1e-5), (mode, k)
