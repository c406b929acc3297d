"""Disentanglement measures (dgnet.quality) against brute-force references, hand cases, stub generators and an
oracle teacher, and the CLI on a tiny checkpoint."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from _tiny_run import make_tiny_set

from dgnet import quality
from dgnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dgnet.generative import disentanglement as Q


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny synthetic set (64x32 images), its query persons and a probe with silhouettes and scenes."""
    from dgnet.data import load_dataset
    from dgnet.data.synthetic import load_manifest

    root = make_tiny_set(tmp_path_factory.mktemp("syn") / "syn")
    ds = load_dataset("synthetic", root, verbose=False)
    query = [s for s in ds.query if s.pid > 0]
    probe = Q.load_probe(query, (64, 32), load_manifest(root))
    return root, ds, query, probe


def _from_rgb01(rgb):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std


def test_silhouette_auc_matches_pairwise_count():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        d = torch.randint(0, 6, (7, 5), generator=g).float()  # many ties
        m = torch.rand(7, 5, generator=g) < 0.4
        pos, neg = d[m], d[~m]
        want = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean().item()
        assert Q.silhouette_auc(d, m) == pytest.approx(want, abs=1e-12)
    assert Q.silhouette_auc(torch.arange(4.0).view(2, 2), torch.tensor([[False, False], [True, True]])) == 1.0
    assert Q.silhouette_auc(torch.arange(4.0).view(2, 2), torch.tensor([[True, True], [False, False]])) == 0.0
    assert Q.silhouette_auc(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.bool)) != Q.silhouette_auc(
        torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.bool))  # nan: undefined for an empty mask


def test_nearest_class_mean_hand_case():
    # gallery: identity 5 around +x, identity 9 around +y (two images each, not unit length)
    gal = torch.tensor([[2.0, 0.0], [3.0, 1.0], [0.0, 1.0], [1.0, 4.0]])
    means, ids = Q.identity_means(gal, torch.tensor([9, 9, 5, 5]))
    assert ids.tolist() == [5, 9]
    m9 = torch.tensor([1.0, 0.0]) + torch.tensor([3.0, 1.0]) / 10**0.5
    assert torch.allclose(means[1], m9 / m9.norm())
    fakes = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.0], [0.2, 2.0]])
    assert Q.nearest_identity(fakes, means, ids).tolist() == [9, 5, 9, 5]
    # pairs (a, b): b is followed by fakes 0 and 3, a leaks in fake 1, fake 2 matches neither
    r = Q.appearance_following(fakes, torch.tensor([5, 5, 1, 9]), torch.tensor([9, 9, 2, 5]), means, ids)
    assert r == pytest.approx({"followed_b": 0.5, "leaked_a": 0.25, "other": 0.25, "chance": 0.5})
    with pytest.raises(ValueError, match="share an identity"):
        Q.appearance_following(fakes[:1], torch.tensor([5]), torch.tensor([5]), means, ids)


def test_draw_pairs():
    pids = torch.tensor([1, 1, 2, 3, 3, 3])
    ia, ib = Q.draw_pairs(pids, 50, seed=3)
    assert len(ia) == len(ib) == 50 and bool((pids[ia] != pids[ib]).all())
    ja, jb = Q.draw_pairs(pids, 50, seed=3)
    assert torch.equal(ia, ja) and torch.equal(ib, jb)
    with pytest.raises(ValueError, match="pairs=0"):
        Q.draw_pairs(pids, 0)
    with pytest.raises(ValueError, match="at least 2"):
        Q.draw_pairs(torch.tensor([4, 4]), 3)


def test_true_silhouettes_and_scenes(tiny):
    _, _, query, probe = tiny
    rgb = Q.to_rgb01(probe.images)
    dist = (rgb - probe.backgrounds).norm(dim=1)
    for i in range(len(query)):
        m = probe.masks[i]
        assert 0.05 < m.float().mean() < 0.6, "a person covers part of the box, not none or all of it"
        # the real image equals its rendered scene off the person (JPEG/blur spill aside) and differs on it
        assert dist[i][~m].median() < 0.06 and dist[i][m].median() > dist[i][~m].median() + 0.05


def test_structure_kept_hand_case_and_stubs(tiny):
    _, _, _, probe = tiny
    n = len(probe.pids)
    # a painted person: the scene of a with a's silhouette filled by a colour far from it -> perfect scores
    paint = torch.where(probe.masks[:, None], 1 - probe.backgrounds.round(), probe.backgrounds)
    perfect = Q.structure_kept(_from_rgb01(paint), probe.masks, probe.backgrounds)
    assert perfect["silhouette_auc"] == pytest.approx(1.0) and perfect["silhouette_iou"] == pytest.approx(1.0)
    # the empty scene: no person at all -> nothing detected, AUC at chance (only float rounding is left of d)
    empty = Q.structure_kept(_from_rgb01(probe.backgrounds), probe.masks, probe.backgrounds)
    assert empty["silhouette_auc"] == pytest.approx(0.5, abs=0.05) and empty["silhouette_iou"] == 0.0
    ia, ib = Q.draw_pairs(probe.pids, 3 * n, seed=1)
    keep_a = Q.structure_kept(probe.images[ia], probe.masks[ia], probe.backgrounds[ia])  # generator -> a
    copy_b = Q.structure_kept(probe.images[ib], probe.masks[ia], probe.backgrounds[ia])  # generator -> b
    assert keep_a["silhouette_auc"] > 0.97 and keep_a["silhouette_iou"] > 0.8
    assert copy_b["silhouette_auc"] < 0.8 and copy_b["silhouette_iou"] < 0.5
    with pytest.raises(ValueError, match="expected"):
        Q.structure_kept(probe.images[:2], probe.masks[:3], probe.backgrounds[:2])


def test_ideal_swap_with_itself_is_the_real_image_and_keeps_structure(tiny):
    root, _, query, probe = tiny
    from dgnet.data.synthetic import load_manifest

    manifest = load_manifest(root)
    same = torch.arange(len(query))
    # the generator re-draws the very file (same factors, noise seed and JPEG quality): identical pixels
    assert torch.equal(Q.render_ideal(query, manifest, same, same, (64, 32)), probe.images)
    ia, ib = Q.draw_pairs(probe.pids, 30, seed=4)
    ideal = Q.structure_kept(Q.render_ideal(query, manifest, ia, ib, (64, 32)), probe.masks[ia], probe.backgrounds[ia])
    assert ideal["silhouette_auc"] > 0.95 and ideal["silhouette_iou"] > 0.7


class OracleTeacher(nn.Module):
    """A 'teacher' that knows every image of the probe: features = one-hot of the identity of the stored image
    equal to the input (or to its mirror), zero for anything else."""

    def __init__(self, images, pids):
        super().__init__()
        self.images, self.ids = images, torch.unique(pids)
        self.onehot = (pids[:, None] == self.ids[None]).float()

    def features(self, x):
        flat = self.images.flatten(1)
        eq = (x.flatten(1)[:, None] == flat[None]).all(-1) | (x.flip(3).flatten(1)[:, None] == flat[None]).all(-1)
        return eq.float() @ self.onehot


def test_measure_with_stub_generators_and_oracle(tiny):
    _, _, _, probe = tiny
    teacher = OracleTeacher(probe.images, probe.pids)
    means, ids = Q.identity_means(Q.teacher_features(teacher, probe.images), probe.pids)
    ia, ib = Q.draw_pairs(probe.pids, 40, seed=2)
    follow = Q.measure(lambda a, b: b, teacher, probe, means, ids, ia, ib, batch_size=7)
    keep = Q.measure(lambda a, b: a, teacher, probe, means, ids, ia, ib, batch_size=7)
    assert follow["followed_b"] == 1.0 and follow["leaked_a"] == 0.0
    assert keep["followed_b"] == 0.0 and keep["leaked_a"] == 1.0
    assert keep["silhouette_auc"] > 0.97 > 0.8 > follow["silhouette_auc"]
    assert keep["silhouette_iou"] > 0.8 > 0.5 > follow["silhouette_iou"]
    assert follow["chance"] == pytest.approx(1 / len(torch.unique(probe.pids)))


def test_dgnet_swap_generator_is_the_decoder_of_swapped_codes():
    from dgnet.checkpoints.format import arch_only
    from dgnet.config import resolve_config
    from dgnet.models import DGNet

    torch.manual_seed(0)
    model = DGNet(arch_only(resolve_config("demo").model), 4).eval()
    xa, xb = torch.randn(2, 3, 64, 32), torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        fa, sa, _, _ = model.encode(xa)
        fb, sb, _, _ = model.encode(xb)
        assert torch.allclose(Q.swap_generator(model)(xa, xb), model.decode(sa, fb))
        assert torch.allclose(Q.reconstruction_generator(model)(xa, xb), model.decode(sa, fa))


def _tiny_checkpoint(root: Path, path: Path, dataset: str = "synthetic") -> Path:
    from dgnet.checkpoints.format import FORMAT, VERSION, arch_only
    from dgnet.config import resolve_config
    from dgnet.models import DGNet, ReidBaseline

    cfg = resolve_config("demo", {"data": {"root": str(root), "height": 64, "width": 32, "dataset": dataset},
                                  "eval": {"batch_size": 16}})
    torch.manual_seed(0)
    arch = arch_only(cfg.model)
    state = {"format": FORMAT, "version": VERSION, "num_ids": 6, "config": cfg.to_dict(),
             "models": {"dgnet": DGNet(arch, 6).state_dict(), "teacher": ReidBaseline(arch, 6).state_dict()}}
    torch.save(state, path)
    return path


def test_cli_on_tiny_checkpoint(tiny, tmp_path, capsys):
    root = tiny[0]
    ckpt = _tiny_checkpoint(root, tmp_path / "dgnet.pt")
    assert quality.main(["--checkpoint", str(ckpt), "--pairs", "12", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| swap G(s_a,f_b) |" in out and "| real x_a |" in out
    res = json.loads((tmp_path / "dgnet.quality.json").read_text())
    assert res["pairs"] == 12 and set(res["rows"]) == {name for name, _ in Q.ROWS}
    for row in res["rows"].values():
        assert 0 <= row["followed_b"] <= 1 and 0 <= row["leaked_a"] <= 1 and 0 <= row["silhouette_iou"] <= 1
        assert row["followed_b"] + row["leaked_a"] + row["other"] == pytest.approx(1.0)
    real_a, real_b = res["rows"]["real x_a"], res["rows"]["real x_b"]
    assert real_a["silhouette_auc"] > 0.97 and real_b["silhouette_auc"] < 0.8
    assert res["rows"]["ideal x_ab (rendered)"]["silhouette_auc"] > 0.95


def test_cli_bad_input(tiny, tmp_path, capsys):
    ckpt = _tiny_checkpoint(tiny[0], tmp_path / "dgnet.pt")
    assert quality.main(["--checkpoint", str(ckpt), "--pairs", "0", "--device", "cpu"]) == 2
    assert "--pairs 0" in capsys.readouterr().err
    other = _tiny_checkpoint(tiny[0], tmp_path / "market.pt", dataset="market1501")
    assert quality.main(["--checkpoint", str(other), "--device", "cpu"]) == 2
    assert "market1501" in capsys.readouterr().err
    assert quality.main(["--checkpoint", str(tmp_path / "missing.pt"), "--device", "cpu"]) == 2
