"""Sampler invariants: positives, epoch coverage, rank shards, P x K batches, determinism, augmentation draws."""

from collections import Counter

import numpy as np
import pytest

from dgnet.data.sampler import AugmentParams, TrainSampler, draw_erasing


def make_pids(n_ids=13, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 9, n_ids)  # 2..8 images per identity
    pids = np.repeat(np.arange(n_ids), counts)
    return rng.permutation(pids)  # samples in no particular order


def epoch_indices(s: TrainSampler, epoch: int) -> np.ndarray:
    return np.concatenate([s.plan(epoch, p)["index"] for p in range(s.batches_per_epoch(epoch))])


def test_positive_same_identity_other_image():
    pids = make_pids()
    s = TrainSampler(pids, batch_size=8, seed=1)
    for epoch in range(2):
        for p in range(s.batches_per_epoch(epoch)):
            plan = s.plan(epoch, p)
            assert (pids[plan["positive"]] == pids[plan["index"]]).all()
            assert (plan["positive"] != plan["index"]).all()


def test_positives_cover_the_identity():
    pids = np.array([0, 0, 0, 0, 1, 1])
    s = TrainSampler(pids, batch_size=6, seed=0)
    seen = Counter()
    for e in range(200):
        plan = s.plan(e, 0)
        seen.update((int(a), int(b)) for a, b in zip(plan["index"], plan["positive"], strict=True) if a == 0)
    assert set(seen) == {(0, 1), (0, 2), (0, 3)}  # every other image of the identity, roughly uniformly
    assert min(seen.values()) > 40


@pytest.mark.parametrize("batch_size", [8, 7])
def test_epoch_covers_every_sample_once(batch_size):
    pids = make_pids()
    n = len(pids)
    s = TrainSampler(pids, batch_size=batch_size, seed=2)
    idx = epoch_indices(s, 0)
    counts = np.bincount(idx, minlength=n)
    assert (counts >= 1).all()  # nothing lost
    assert counts.sum() - n == len(idx) - n == (-n) % batch_size  # the only repeats are the padding
    assert not np.array_equal(idx, epoch_indices(s, 1))  # a new order each epoch


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shards_disjoint(world_size):
    pids = make_pids(n_ids=20)
    shards = [TrainSampler(pids, batch_size=4, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    assert len({s.batches_per_epoch(0) for s in shards}) == 1  # ranks step together
    parts = [epoch_indices(s, 3) for s in shards]
    allidx = np.concatenate(parts)
    pad = len(allidx) - len(pids)
    assert 0 <= pad < 4 * world_size
    assert set(allidx) == set(range(len(pids)))
    # disjoint apart from the padding, which repeats the epoch's first samples
    overlap = sum(len(set(a) & set(b)) for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert overlap <= pad
    if pad == 0:
        assert overlap == 0
    # the shards partition the single-process order of the same epoch
    single = epoch_indices(TrainSampler(pids, batch_size=4, seed=5), 3)
    assert sorted(allidx) == sorted(np.resize(single[: len(pids)], len(allidx)))


def test_deterministic_by_seed_epoch_position_rank():
    pids = make_pids()
    a = TrainSampler(pids, batch_size=8, seed=7)
    b = TrainSampler(pids, batch_size=8, seed=7)
    b.plan(4, 2)  # a different history must not matter
    for key, val in a.plan(1, 3).items():
        np.testing.assert_array_equal(val, b.plan(1, 3)[key])
    c = TrainSampler(pids, batch_size=8, seed=8)
    assert not np.array_equal(a.plan(1, 3)["index"], c.plan(1, 3)["index"])
    # iterating from a saved position continues exactly
    it = a.iter_plans(0, 0)
    plans = [next(it) for _ in range(a.batches_per_epoch(0) + 3)]
    resumed = a.iter_plans(plans[-4]["epoch"], plans[-4]["position"])
    for p in plans[-4:]:
        np.testing.assert_array_equal(next(resumed)["erase"], p["erase"])
    assert plans[-1]["epoch"] == 1 and plans[-1]["position"] == 2


def test_pk_batches():
    pids = make_pids(n_ids=30)
    s = TrainSampler(pids, batch_size=16, mode="pk", num_instances=4, seed=0)
    assert s.batches_per_epoch(0) > 0
    used = Counter()
    for p in range(s.batches_per_epoch(0)):
        plan = s.plan(0, p)
        groups = pids[plan["index"]].reshape(4, 4)
        assert (groups == groups[:, :1]).all()  # K images of each identity
        assert len(set(groups[:, 0])) == 4  # P distinct identities
        assert (pids[plan["positive"]] == pids[plan["index"]]).all()
        used.update(plan["index"].tolist())
    assert len(used) > 0.8 * len(pids)


def test_pk_with_singletons_uses_self_as_positive():
    pids = np.array([0, 1, 1, 2, 2, 2, 3, 3])
    s = TrainSampler(pids, batch_size=4, mode="pk", num_instances=2, seed=0)
    for p in range(s.batches_per_epoch(0)):
        plan = s.plan(0, p)
        single = plan["index"] == 0
        assert (plan["positive"][single] == 0).all()


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        TrainSampler([], batch_size=8)
    with pytest.raises(ValueError, match=r"single image.*labels \[2\].*drop_singletons"):
        TrainSampler([0, 0, 1, 1, 2], batch_size=2)
    with pytest.raises(ValueError, match="multiple of num_instances"):
        TrainSampler(make_pids(), batch_size=10, mode="pk", num_instances=4)
    with pytest.raises(ValueError, match="rank=2"):
        TrainSampler(make_pids(), batch_size=8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="mode"):
        TrainSampler(make_pids(), batch_size=8, mode="triplet")


def test_augmentation_draws():
    pids = make_pids(n_ids=40)
    aug = AugmentParams(size=(256, 128), pad=10, erasing_p=0.5)
    s = TrainSampler(pids, batch_size=16, seed=0, aug=aug)
    plans = [s.plan(0, p) for p in range(s.batches_per_epoch(0))]
    flip = np.concatenate([p["flip"].ravel() for p in plans])
    crop = np.concatenate([p["crop"].reshape(-1, 2) for p in plans])
    assert abs(flip.mean() - 0.5) < 0.1
    assert crop.min() == 0 and crop.max() == 20  # pad 10: offsets 0..20 into the padded image
    off = TrainSampler(pids, batch_size=16, seed=0, aug=AugmentParams(pad=10, augment=False)).plan(0, 0)
    assert not off["flip"].any() and (off["crop"] == 10).all() and not off["erase"].any()


def test_erasing_boxes():
    rng = np.random.default_rng(0)
    H, W = 256, 128
    boxes = draw_erasing(rng, 4000, (H, W), 0.5)
    on = boxes[:, 2] > 0
    assert 0.45 < on.mean() < 0.55  # p = 0.5, and nearly every draw fits within 10 tries
    y, x, h, w = boxes[on].T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= H).all() and (x + w <= W).all()
    area = h * w / (H * W)
    assert area.min() > 0.015 and area.max() < 0.42  # 0.02-0.4 up to rounding
    aspect = h / w
    assert aspect.min() > 0.28 and aspect.max() < 1 / 0.28
    assert (draw_erasing(rng, 100, (H, W), 0.0) == 0).all()
