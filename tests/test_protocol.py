"""The test protocol's data path (dgnet.evaluation.protocol): features stay on the model's device, and distances,
re-ranking and evaluation run there through dgnet.ops and dgnet.evaluation.rank, with the metrics the plain
formulas give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dgnet import ops
from dgnet.config import EvalConfig
from dgnet.evaluation import protocol
from dgnet.evaluation.rank import evaluate_reference
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


# ------------------------------------------------------------------------------- several alphas from one pass
def _heads(model, x):
    """Each head's protocol feature written out: normalise, add the flip's, normalise again."""
    n = torch.nn.functional.normalize
    with torch.no_grad():
        a, b = model.Ea.features(x), model.Ea.features(x.flip(3))
    return [n(n(a[i], dim=1) + n(b[i], dim=1), dim=1) for i in range(2)]


def test_weigh_heads_gives_each_alphas_score_from_one_pass():
    """From the features at weight 1, every alpha's score is ``p.p' + alpha f.f'`` and ``fine`` is ``f.f'`` (the
    reference zeroes the query's primary half), with no network run; alpha 0.5 is embed's own feature."""
    from dgnet.config import ModelConfig
    from dgnet.models import DGNet

    torch.manual_seed(0)
    model = DGNet(ModelConfig(backbone="resnet18", backbone_weights="none"), num_ids=5).eval()
    x, y = torch.randn(4, 3, 64, 32), torch.randn(3, 3, 64, 32)
    raw_x, raw_y = protocol.embed(model, "dgnet", x, 1.0), protocol.embed(model, "dgnet", y, 1.0)
    (px, fx), (py, fy) = _heads(model, x), _heads(model, y)
    for alpha in (0.0, 0.5, 2.0):
        got = protocol.weigh_heads(raw_x, alpha) @ protocol.weigh_heads(raw_y, alpha).T
        torch.testing.assert_close(got, px @ py.T + alpha * (fx @ fy.T), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(protocol.weigh_heads(raw_x, protocol.FINE) @ protocol.weigh_heads(raw_y, "fine").T,
                               fx @ fy.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(protocol.weigh_heads(raw_x, 0.5), protocol.embed(model, "dgnet", x, 0.5))


def test_parse_alphas():
    assert protocol.parse_alphas("0,0.5,fine") == (0.0, 0.5, "fine")
    assert protocol.parse_alphas(" 1 ") == (1.0,)
    for bad, needle in (("0,-1", "'-1': expected a finite weight >= 0"), ("0,primary", "'primary' is neither"),
                        ("0.5,0.5", "repeated"), ("nan", "'nan': expected")):
        with pytest.raises(ValueError, match=needle):
            protocol.parse_alphas(bad)
    assert [protocol.alpha_row("dgnet", a) for a in (0.0, 0.5, "fine")] == [
        "dgnet (alpha 0)", "dgnet (alpha 0.5)", "dgnet (fine head)"]


def test_evaluate_models_extracts_once_and_scores_every_alpha(monkeypatch):
    """DG-Net is embedded once per split (at weight 1) and each alpha scored from those features; the teacher, which
    has one head, keeps its single row."""
    from dgnet.config import Config

    gen = torch.Generator().manual_seed(1)
    feats = {"dgnet": torch.nn.functional.normalize(torch.randn(6, 1024, generator=gen), dim=1),
             "teacher": torch.nn.functional.normalize(torch.randn(6, 512, generator=gen), dim=1)}
    calls, scored = [], {}

    def fake_extract(model, kind, samples, cfg, backend, device, alpha=None):
        calls.append((kind, samples, alpha))
        return feats[kind], np.arange(6) % 3, np.zeros(6, dtype=np.int64)

    def fake_evaluate(qf, gf, *args, **kwargs):
        scored[len(scored)] = (qf, gf)
        return {"plain": {"rank1": float(len(scored))}}

    monkeypatch.setattr(protocol, "extract", fake_extract)
    monkeypatch.setattr(protocol, "evaluate_features", fake_evaluate)
    monkeypatch.setattr(protocol, "broadcast_state", lambda model: None)  # patched where evaluate_models calls it
    ds = type("DS", (), {"query": "Q", "gallery": "G"})()
    models = {"teacher": torch.nn.Identity(), "dgnet": torch.nn.Identity()}
    out = protocol.evaluate_models(models, ds, Config(), torch.device("cpu"), "torch", rerank=False,
                                   alphas=(0.0, 0.5, "fine"))
    assert list(out) == ["teacher", "dgnet (alpha 0)", "dgnet (alpha 0.5)", "dgnet (fine head)"]
    assert calls == [("teacher", "Q", None), ("teacher", "G", None), ("dgnet", "Q", 1.0), ("dgnet", "G", 1.0)]
    for i, alpha in enumerate((0.0, 0.5, "fine"), start=1):
        qf, gf = scored[i]
        assert torch.equal(qf, protocol.weigh_heads(feats["dgnet"], alpha)) and gf.shape == qf.shape


def test_test_command_takes_alphas_or_alpha():
    from dgnet.test import build_parser

    assert build_parser().parse_args(["--checkpoint", "c.pt", "--alphas", "0,0.5,fine"]).alphas == (0.0, 0.5, "fine")
    assert build_parser().parse_args(["--checkpoint", "c.pt", "--alpha", "0.3"]).alpha == 0.3
    for argv in (["--alphas", "0,-2"], ["--alpha", "0.5", "--alphas", "0"]):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["--checkpoint", "c.pt", *argv])
        assert e.value.code == 2


def test_alpha_rows_equal_single_alpha_runs_and_the_fine_head_alone(tmp_path):
    """Real numbers: ``--alphas`` row 0.5 is the ``--alpha 0.5`` evaluation, row 0 the primary head alone, and
    ``fine`` the fine-grained head alone, each ranked here by the plain loop over ``-score``."""
    from PIL import Image

    from dgnet.config import ModelConfig, resolve_config
    from dgnet.data import Sample
    from dgnet.models import DGNet

    gen = torch.Generator().manual_seed(2)
    query, gallery = [], []
    for i in range(12):
        p = tmp_path / f"{i}.png"
        Image.fromarray((torch.rand(64, 32, 3, generator=gen) * 255).byte().numpy()).save(p)
        (query if i < 4 else gallery).append(Sample(str(p), i % 4, int(i >= 4)))
    torch.manual_seed(0)
    model = DGNet(ModelConfig(backbone="resnet18", backbone_weights="none"), 5).eval()
    cfg = resolve_config("demo", {"data": {"workers": 0}})
    ds = type("DS", (), {"query": query, "gallery": gallery})()
    cpu = torch.device("cpu")
    rows = protocol.evaluate_models({"dgnet": model}, ds, cfg, cpu, "torch", rerank=False, alphas=(0.0, 0.5, "fine"))
    single = protocol.evaluate_models({"dgnet": model}, ds, cfg, cpu, "torch", rerank=False, alpha=0.5)
    for k, v in single["dgnet"]["plain"].items():
        assert rows["dgnet (alpha 0.5)"]["plain"][k] == pytest.approx(v, abs=1e-6), k
    qf, qp, qc = protocol.extract(model, "dgnet", query, cfg, "torch", cpu, 1.0)
    gf, gp, gc = protocol.extract(model, "dgnet", gallery, cfg, "torch", cpu, 1.0)
    for row, part in (("dgnet (alpha 0)", slice(0, 512)), ("dgnet (fine head)", slice(512, 1024))):
        want = evaluate_reference(-(qf[:, part] @ gf[:, part].T).double().numpy(), qp, gp, qc, gc)
        assert rows[row]["plain"]["mAP"] == pytest.approx(want.mAP, abs=1e-6), row
        assert rows[row]["plain"]["mAP_trapz"] == pytest.approx(want.mAP_trapz, abs=1e-6), row
        assert rows[row]["plain"]["rank1"] == pytest.approx(float(want.cmc[0])), row
    assert "| dgnet (fine head) | no |" in protocol.format_table(rows)
