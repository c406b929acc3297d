"""Training and test streams over either backend: the one interface the training code sees.

``train_stream`` is infinite and resumable: ``state_dict()`` holds the epoch and the position of the next
batch, and every random choice is a function of ``(seed, epoch, rank, position)`` drawn by the sampler, so
a stream restored from a state yields exactly the batches the original would have yielded next.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from dgnet.data.layouts import Sample
from dgnet.data.pipeline_torch import make_loader
from dgnet.data.sampler import AugmentParams, TrainSampler
from dgnet.data.transforms import apply_erasing, normalize

log = logging.getLogger("dgnet.data")
BACKENDS = ("auto", "dali", "torch")  # data.loader's choices (dgnet.config.LOADER_CHOICES)
PK_INSTANCES = 4  # images per identity in a "pk" batch (the teacher's stage): its batch is a multiple of it
_said: set[str] = set()


def dali_status() -> tuple[bool, str]:
    """``(True, version)`` when DALI imports, else ``(False, why)``."""
    try:
        import nvidia.dali as dali
        from nvidia.dali import fn  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything at import
        return False, f"{type(e).__name__}: {e}"
    return True, dali.__version__


def resolve_backend(requested: str, device: str | torch.device = "cpu") -> str:
    """The loader to use: ``"dali"`` or ``"torch"``.

    ``auto`` picks DALI wherever it imports (its CPU graph runs without a GPU too) and otherwise says once,
    with ``logging.warning``, that it falls back to the torch DataLoader. An explicit ``dali`` that cannot
    import is an error, never a silent fallback.
    """
    if requested not in BACKENDS:
        raise ValueError(f"loader {requested!r}; expected one of {', '.join(BACKENDS)}")
    if requested == "torch":
        return "torch"
    ok, why = dali_status()
    if ok:
        return "dali"
    if requested == "dali":
        raise RuntimeError(f"--loader dali: NVIDIA DALI is unavailable ({why}); use --loader torch or auto")
    if "dali" not in _said:
        _said.add("dali")
        log.warning("DALI is unavailable (%s); falling back to the torch DataLoader (--loader torch)", why)
    return "torch"


def _device(device) -> torch.device:
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", torch.cuda.current_device())
    return d


def drop_singletons(samples: Sequence[Sample]) -> tuple[list[Sample], int]:
    """``samples`` without identities that have a single image (no positive), and how many were left out.
    Labels are not renumbered: the classifier keeps its size, those classes simply get no images."""
    counts: dict[int, int] = {}
    for s in samples:
        counts[s.pid] = counts.get(s.pid, 0) + 1
    kept = [s for s in samples if counts[s.pid] > 1]
    return kept, len(samples) - len(kept)


class TrainStream:
    """Infinite iterator of training batches; see :func:`train_stream`."""

    def __init__(self, samples: Sequence[Sample], backend: str, batch_size: int, size: tuple[int, int], device,
                 seed: int, pad: int, erasing_p: float, mode: str, num_instances: int, rank: int,
                 world_size: int, augment: bool, workers: int) -> None:
        if not samples:
            raise ValueError("train_stream: the training split is empty; expected a list of Sample")
        self.samples = list(samples)
        self.backend = resolve_backend(backend, device)
        self.device = _device(device)
        self.size = (int(size[0]), int(size[1]))
        self.pad, self.workers = int(pad), int(workers)
        self.sampler = TrainSampler(
            [s.pid for s in self.samples], batch_size, mode, num_instances, seed, rank, world_size,
            AugmentParams(self.size, self.pad, 0.5, erasing_p, augment),
        )
        self._pids = torch.tensor([s.pid for s in self.samples], dtype=torch.int64)
        self._camids = torch.tensor([s.camid for s in self.samples], dtype=torch.int64)
        self.epoch, self.position = 0, 0
        self._it: Iterator[dict] | None = None

    # ---- state ----------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Where the stream stands: the next batch is ``position`` of ``epoch``."""
        s = self.sampler
        return {"epoch": self.epoch, "position": self.position, "seed": s.seed, "rank": s.rank,
                "world_size": s.world_size, "batch_size": s.batch_size, "mode": s.mode}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``; the stream's settings must match those it was saved with."""
        for key in ("seed", "rank", "world_size", "batch_size", "mode"):
            mine = getattr(self.sampler, key)
            if key in state and state[key] != mine:
                raise ValueError(f"train_stream state: {key}={state[key]!r} was saved, this stream has {mine!r}")
        self.close()
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def close(self) -> None:
        """Stop the workers or the DALI pipeline (a later ``next`` restarts them where the stream stands)."""
        self._it = None

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch(self.epoch)

    # ---- iteration ------------------------------------------------------------------------------------------------

    def __iter__(self) -> TrainStream:
        return self

    def __next__(self) -> dict:
        if self._it is None:
            start = self.sampler.iter_plans(self.epoch, self.position)
            self._it = self._torch_batches(start) if self.backend == "torch" else self._dali_batches(start)
        raw = next(self._it)
        self.epoch, self.position = raw["epoch"], raw["position"] + 1
        if self.position >= self.sampler.batches_per_epoch(self.epoch):
            self.epoch, self.position = self.epoch + 1, 0
        return self._finish(raw)

    def _torch_batches(self, plans: Iterator[dict]) -> Iterator[dict]:
        cuda = self.device.type == "cuda"
        loader = make_loader(self.samples, plans, self.size, self.pad, self.workers, pin=cuda)
        for b in loader:
            yield {
                "image": normalize(b["image"].to(self.device, non_blocking=cuda)),
                "positive": normalize(b["positive"].to(self.device, non_blocking=cuda)),
                "index": b["index"], "erase": b["erase"], "epoch": int(b["epoch"]), "position": int(b["position"]),
            }

    def _dali_batches(self, plans: Iterator[dict]) -> Iterator[dict]:
        from dgnet.data.pipeline_dali import to_torch, train_pipeline

        dev_id = self.device.index if self.device.type == "cuda" else None
        pipe, source = train_pipeline([s.path for s in self.samples], plans, self.sampler.batch_size, self.size,
                                      self.pad, dev_id, self.workers)
        try:
            while True:
                image, positive = pipe.run()
                plan = source.pending.popleft()
                yield {
                    "image": to_torch(image, self.device), "positive": to_torch(positive, self.device),
                    "index": torch.from_numpy(plan["index"]), "erase": torch.from_numpy(plan["erase"]),
                    "epoch": plan["epoch"], "position": plan["position"],
                }
        finally:
            del pipe

    def _finish(self, raw: dict) -> dict:
        nb = self.device.type == "cuda"
        index = raw["index"]
        erase = raw["erase"].to(self.device, non_blocking=nb)
        return {
            "image": raw["image"],
            "positive": raw["positive"],
            "image_erased": apply_erasing(raw["image"], erase[0]),
            "positive_erased": apply_erasing(raw["positive"], erase[1]),
            "pid": self._pids[index].to(self.device, non_blocking=nb),
            "camid": self._camids[index].to(self.device, non_blocking=nb),
            "index": index.to(self.device, non_blocking=nb),
        }


def train_stream(
    samples: Sequence[Sample],
    backend: str = "torch",
    batch_size: int = 8,
    size: tuple[int, int] = (256, 128),
    device: str | torch.device = "cpu",
    seed: int = 0,
    pad: int = 10,
    erasing_p: float = 0.5,
    mode: str = "pairs",
    num_instances: int = PK_INSTANCES,
    rank: int = 0,
    world_size: int = 1,
    augment: bool = True,
    workers: int = 2,
) -> TrainStream:
    """An infinite, resumable stream of training batches (dicts of tensors on ``device``).

    Keys: ``image``, ``positive`` (another image of the same identity, its own random transform),
    ``image_erased``, ``positive_erased`` (random-erased copies for the identity losses), each
    ``[B, 3, H, W]`` float32 ImageNet-normalised; ``pid`` (train label), ``camid``, ``index`` ``[B]`` int64.

    Args:
        samples: the training split (train labels ``0..K-1``).
        backend: ``"dali"``, ``"torch"`` or ``"auto"`` (see :func:`resolve_backend`).
        size: ``(H, W)`` after the transform. ``pad``: edge padding of the random crop.
        seed: the stream's seed; DG-Net's streams a and b are two streams with different seeds.
        mode: ``"pairs"`` (every sample once per epoch, with a positive) or ``"pk"`` (``batch_size // K``
            identities x ``num_instances`` images).
        rank, world_size: this process's shard of each epoch.
        augment: ``False`` turns flips, crop shifts and erasing off (resize + normalise only).
        workers: DataLoader workers (torch) or DALI threads.
    """
    return TrainStream(samples, backend, batch_size, size, device, seed, pad, erasing_p, mode, num_instances, rank,
                       world_size, augment, workers)


class TestStream:
    """Finite, re-iterable batches over samples in order; see :func:`test_stream`."""

    __test__ = False  # not a pytest class

    def __init__(self, samples: Sequence[Sample], backend: str, batch_size: int, size, device, workers: int) -> None:
        if not samples:
            raise ValueError("test_stream: no samples; the query or gallery split is empty")
        if batch_size < 1:
            raise ValueError(f"test_stream: batch_size={batch_size}; expected >= 1")
        self.samples, self.batch_size = list(samples), batch_size
        self.backend = resolve_backend(backend, device)
        self.device, self.size, self.workers = _device(device), (int(size[0]), int(size[1])), workers
        self._pids = torch.tensor([s.pid for s in self.samples], dtype=torch.int64)
        self._camids = torch.tensor([s.camid for s in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def _finish(self, image: torch.Tensor, index: torch.Tensor) -> dict:
        nb = self.device.type == "cuda"
        return {"image": image, "pid": self._pids[index].to(self.device, non_blocking=nb),
                "camid": self._camids[index].to(self.device, non_blocking=nb),
                "index": index.to(self.device, non_blocking=nb)}

    def __iter__(self) -> Iterator[dict]:
        n, B = len(self.samples), self.batch_size
        if self.backend == "torch":
            cuda = self.device.type == "cuda"
            plans = iter([{"index": np.arange(i, min(i + B, n))} for i in range(0, n, B)])
            for b in make_loader(self.samples, plans, self.size, 0, self.workers, pin=cuda):
                yield self._finish(normalize(b["image"].to(self.device, non_blocking=cuda)), b["index"])
            return
        from dgnet.data.pipeline_dali import eval_pipeline, to_torch

        dev_id = self.device.index if self.device.type == "cuda" else None
        pipe = eval_pipeline([s.path for s in self.samples], B, self.size, dev_id, self.workers)
        for start in range(0, n, B):
            (image,) = pipe.run()
            yield self._finish(to_torch(image, self.device), torch.arange(start, min(start + B, n)))


def test_stream(
    samples: Sequence[Sample],
    backend: str = "torch",
    batch_size: int = 64,
    size: tuple[int, int] = (256, 128),
    device: str | torch.device = "cpu",
    workers: int = 2,
) -> TestStream:
    """Batches over ``samples`` in order, without augmentation (bicubic resize + normalise).

    Keys: ``image`` ``[B, 3, H, W]`` float32 normalised, ``pid``, ``camid``, ``index`` ``[B]`` int64, on
    ``device``; the last batch may be shorter. Iterating again starts over.
    """
    return TestStream(samples, backend, batch_size, size, device, workers)


test_stream.__test__ = False  # a library function named test_*: keep pytest from collecting it when imported


def load_images(samples: list, size: tuple[int, int], backend: str, device: torch.device) -> torch.Tensor:
    """Normalised ``(N, 3, H, W)`` images of ``samples`` at ``size`` through the test pipeline, in order."""
    out = torch.zeros(len(samples), 3, *size, device=device)
    for batch in test_stream(samples, backend, batch_size=max(1, min(len(samples), 64)), size=size, device=device,
                             workers=0):
        out[torch.as_tensor(batch["index"]).long().to(device)] = batch["image"].to(device).float()
    return out
