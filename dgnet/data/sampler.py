"""The training sampler: which images form each batch, their positives, and every augmentation parameter.

All randomness of the input pipeline is drawn here, in the main process, as a pure function of
``(seed, epoch, rank, position)``: the order of an epoch from ``(seed, epoch)`` (shared by all ranks,
then sharded), and each batch's positives, flips, crop offsets and erasing boxes from
``(seed, epoch, rank, position)``. The pipelines (DALI and torch) only *apply* these parameters, so:

- both backends draw the same augmentation for the same batch (they are comparable in tests);
- the result does not depend on the number of workers or their timing;
- resuming from ``(epoch, position)`` reproduces the batches exactly.

Modes:

- ``pairs`` (DG-Net): every sample once per epoch in a shuffled order, each with a positive: another image
  of its identity. An epoch is padded (with samples from its own start) to a whole number of batches on
  every rank, like ``DistributedSampler``, so nothing is lost; the padding is the only repetition.
- ``pk`` (the re-id baseline/teacher): batches of P identities x K images. Each identity's images are
  shuffled and cut into groups of K (the last group topped up from the same identity); groups are
  shuffled and packed P to a batch with distinct identities.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from dgnet.data.layouts import singleton_identities

ERASE_AREA = (0.02, 0.4)  # fraction of the image
ERASE_ASPECT = 0.3  # aspect ratio drawn in [0.3, 1/0.3]
ERASE_TRIES = 10


@dataclass(frozen=True)
class AugmentParams:
    """What the training transform may do; ``augment=False`` turns flips, crop shifts and erasing off."""

    size: tuple[int, int] = (256, 128)
    pad: int = 10
    flip_p: float = 0.5
    erasing_p: float = 0.5
    augment: bool = True


def draw_erasing(rng: np.random.Generator, n: int, size: tuple[int, int], p: float) -> np.ndarray:
    """Random-erasing boxes ``[n, 4]`` int64 ``(y, x, h, w)`` in output pixels; ``h == 0`` means no erasing.

    With probability ``p`` an image is erased: area fraction uniform in 0.02-0.4, aspect ratio uniform in
    [0.3, 1/0.3]; the first of up to 10 draws that fits is used, none fitting means no erasing. Zhong et al.
    (and the reference) allow 100 draws; at 256x128 about 94% of draws fit, so 10 misses in a row have
    probability about 1e-13 and the distribution is the same.
    """
    H, W = size
    boxes = np.zeros((n, 4), np.int64)
    apply = rng.random(n) < p
    area = rng.uniform(*ERASE_AREA, (n, ERASE_TRIES)) * H * W
    aspect = rng.uniform(ERASE_ASPECT, 1 / ERASE_ASPECT, (n, ERASE_TRIES))
    h = np.rint(np.sqrt(area * aspect)).astype(np.int64)
    w = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    fits = (h < H) & (w < W) & (h > 0) & (w > 0)
    u = rng.random((n, 2))
    for i in np.flatnonzero(apply & fits.any(1)):
        t = int(np.argmax(fits[i]))
        boxes[i] = (int(u[i, 0] * (H - h[i, t] + 1)), int(u[i, 1] * (W - w[i, t] + 1)), h[i, t], w[i, t])
    return boxes


class TrainSampler:
    """Deterministic, rank-aware batch plans for :func:`dgnet.data.train_stream`.

    Args:
        pids: identity label of every training sample (index = sample index).
        batch_size: images per batch per rank (each also brings its positive).
        mode: ``"pairs"`` or ``"pk"``.
        num_instances: K of the ``pk`` mode (``batch_size`` must be a multiple of it).
        seed, rank, world_size: the stream's seed and this process's shard.
        aug: augmentation parameters drawn per batch.
    """

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        mode: str = "pairs",
        num_instances: int = 4,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        aug: AugmentParams = AugmentParams(),
    ) -> None:
        self.pids = np.asarray(pids, dtype=np.int64)
        if len(self.pids) == 0:
            raise ValueError("train sampler: the training split is empty; expected at least two images per identity")
        if batch_size < 1:
            raise ValueError(f"train sampler: batch_size={batch_size}; expected >= 1")
        if mode not in ("pairs", "pk"):
            raise ValueError(f"train sampler: mode={mode!r}; expected 'pairs' or 'pk'")
        if not 0 <= rank < world_size:
            raise ValueError(f"train sampler: rank={rank}, world_size={world_size}; expected 0 <= rank < world_size")
        if mode == "pk" and (num_instances < 1 or batch_size % num_instances):
            raise ValueError(
                f"train sampler: batch_size={batch_size} is not a multiple of num_instances={num_instances} (pk mode)"
            )
        single = singleton_identities([_P(int(p)) for p in self.pids])
        if single and mode == "pairs":
            raise ValueError(
                f"train sampler: {len(single)} training identities have a single image and so no positive "
                f"(labels {single[:10]}{' ...' if len(single) > 10 else ''}); DG-Net pairs every image with "
                f"another of its identity. Drop them with dgnet.data.drop_singletons(samples)"
            )
        self.batch_size, self.mode, self.num_instances = batch_size, mode, num_instances
        self.seed, self.rank, self.world_size, self.aug = seed, rank, world_size, aug
        order = np.argsort(self.pids, kind="stable")
        uniq, starts = np.unique(self.pids[order], return_index=True)
        bounds = np.append(starts, len(order))
        self._members = {int(p): order[bounds[i] : bounds[i + 1]] for i, p in enumerate(uniq)}
        self._epoch_cache: dict[int, np.ndarray] = {}
        if self.batches_per_epoch(0) == 0:
            raise ValueError(
                f"train sampler: {len(self.pids)} images over {len(uniq)} identities make no {mode} batch of "
                f"{batch_size} on {world_size} rank(s)"
            )

    # ---- epoch order ----------------------------------------------------------------------------------------------

    def _global_epoch(self, epoch: int) -> np.ndarray:
        """``[num_batches * world_size, batch_size]`` sample indices of an epoch, all ranks (rank-major per step)."""
        if epoch in self._epoch_cache:
            return self._epoch_cache[epoch]
        rng = np.random.default_rng([self.seed, epoch, 0x0DE7])
        B, W = self.batch_size, self.world_size
        if self.mode == "pairs":
            perm = rng.permutation(len(self.pids))
            total = math.ceil(len(perm) / (B * W)) * B * W
            perm = np.resize(perm, total)  # repeats from the start: the padding
            out = perm.reshape(-1, B)
        else:
            K, P = self.num_instances, self.batch_size // self.num_instances
            groups = []
            for pid in sorted(self._members):
                m = rng.permutation(self._members[pid])
                short = (-len(m)) % K
                if short:  # top the last group up from the same identity (with replacement if it is tiny)
                    m = np.concatenate([m, rng.choice(m, short, replace=len(m) < short)])
                groups += [(pid, g) for g in m.reshape(-1, K)]
            groups = [groups[i] for i in rng.permutation(len(groups))]
            batches, current, used, pending = [], [], set(), []
            for item in groups:
                queue = [item]
                # groups deferred because their identity was already in the batch get the next chance
                queue, pending = pending + queue, []
                for pid, g in queue:
                    if pid in used:
                        pending.append((pid, g))
                        continue
                    current.append(g)
                    used.add(pid)
                    if len(current) == P:
                        batches.append(np.concatenate(current))
                        current, used = [], set()
            n = (len(batches) // W) * W
            out = np.stack(batches[:n]) if n else np.zeros((0, B), np.int64)
        # two epochs: the prefetching plan iterator runs ahead of the consumer across an epoch boundary
        self._epoch_cache = {e: v for e, v in self._epoch_cache.items() if e >= epoch - 1}
        self._epoch_cache[epoch] = out
        return out

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Batches each rank takes from ``epoch`` (the same on every rank; fixed in pairs mode, and in pk mode
        it can vary by one or two with the packing of identities)."""
        if self.mode == "pairs":
            return math.ceil(len(self.pids) / (self.batch_size * self.world_size))
        return len(self._global_epoch(epoch)) // self.world_size

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """``[batches_per_epoch, batch_size]`` anchor indices this rank takes in ``epoch``."""
        return self._global_epoch(epoch)[self.rank :: self.world_size]

    # ---- one batch ----------------------------------------------------------------------------------------------

    def positives(self, rng: np.random.Generator, index: np.ndarray) -> np.ndarray:
        """For each anchor, another image of its identity, uniformly (itself only for a singleton, pk mode)."""
        out = np.empty_like(index)
        draws = rng.random(len(index))
        for i, a in enumerate(index):
            m = self._members[int(self.pids[a])]
            if len(m) == 1:
                out[i] = a
                continue
            k = int(draws[i] * (len(m) - 1))
            j = int(np.searchsorted(m, a))  # members are sorted indices: skip the anchor itself
            out[i] = m[k + 1 if k >= j else k]
        return out

    def plan(self, epoch: int, position: int) -> dict:
        """Everything about batch ``position`` of ``epoch`` on this rank (numpy arrays, picklable).

        Keys: ``epoch``, ``position``; ``index``/``positive`` ``[B]`` int64 sample indices; ``flip`` ``[2, B]``
        bool (anchor, positive); ``crop`` ``[2, B, 2]`` int64 ``(y, x)`` offsets into the edge-padded image,
        in ``0..2*pad`` (``pad`` = no shift); ``erase`` ``[2, B, 4]`` int64 boxes for ``image_erased`` and
        ``positive_erased`` (see :func:`draw_erasing`).
        """
        index = self.epoch_indices(epoch)[position]
        rng = np.random.default_rng([self.seed, epoch, self.rank, position, 0xA06])
        positive = self.positives(rng, index)
        B, a = len(index), self.aug
        flip = rng.random((2, B)) < a.flip_p
        crop = rng.integers(0, 2 * a.pad + 1, (2, B, 2))
        erase = draw_erasing(rng, 2 * B, a.size, a.erasing_p).reshape(2, B, 4)
        if not a.augment:
            flip[:] = False
            crop[:] = a.pad
            erase[:] = 0
        return {"epoch": epoch, "position": position, "index": index, "positive": positive,
                "flip": flip, "crop": crop, "erase": erase}

    def iter_plans(self, epoch: int = 0, position: int = 0) -> Iterator[dict]:
        """Plans from ``(epoch, position)`` on, forever."""
        while True:
            while position < self.batches_per_epoch(epoch):
                yield self.plan(epoch, position)
                position += 1
            epoch, position = epoch + 1, 0


class _P:  # the minimal sample shape singleton_identities needs
    __slots__ = ("pid",)

    def __init__(self, pid: int) -> None:
        self.pid = pid
