"""The plain PyTorch input pipeline: a DataLoader whose workers decode and augment whole batches.

It is the reference twin of :mod:`dgnet.data.pipeline_dali`. Workers receive batch plans from the sampler
(indices + augmentation parameters), decode JPEGs with Pillow, flip, resize (bicubic), edge-pad
and crop in uint8, and return uint8 batches; the main process pins them (CUDA), copies them to the device
without blocking, normalises and erases there. Workers draw no random numbers, so the batches do not depend
on how many workers there are or when they finish.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dgnet.data.decoding import rgb8
from dgnet.data.layouts import Sample
from dgnet.data.transforms import augment_uint8, resize_uint8
from dgnet.data.workers import ignore_stop_signals, pool_context


def decode(path: str) -> torch.Tensor:
    """One image file -> ``[3, h, w]`` uint8 RGB (CPU); errors name the file.

    Pillow, as the DG-Net reference (torchvision's decoders are deprecated from 0.29 on); it is
    libjpeg-turbo with the same settings as DALI's CPU decoder, so the two agree bit for bit (DALI's
    GPU decoder, nvJPEG, is not held to that). Modes beyond 8-bit RGB are read as DALI reads them
    (:func:`dgnet.data.decoding.rgb8`: 16-bit samples scaled, not clipped); modes with no agreed reading
    raise :class:`dgnet.data.decoding.UnsupportedImage`.
    """
    try:
        return torch.from_numpy(rgb8(path)).permute(2, 0, 1)
    except OSError as e:
        raise RuntimeError(f"cannot decode image {path}: {e} (run python -m dgnet.data.check on its folder)") from e


class PlanDataset(Dataset):
    """Maps a batch plan (see :meth:`dgnet.data.sampler.TrainSampler.plan`) to uint8 tensors.

    ``__getitem__(plan)`` returns ``image``/``positive`` ``[B, 3, H, W]`` uint8 and the plan's arrays as tensors.
    For test plans (``{"index": ...}`` only) it returns the resized images alone.
    """

    def __init__(self, paths: Sequence[str], size: tuple[int, int], pad: int) -> None:
        self.paths, self.size, self.pad = list(paths), tuple(size), pad

    def __len__(self) -> int:  # plans are keys, not positions; the sampler decides how many
        return len(self.paths)

    def _load(self, indices, flips=None, crops=None) -> torch.Tensor:
        out = torch.empty((len(indices), 3, *self.size), dtype=torch.uint8)
        for i, k in enumerate(indices):
            img = decode(self.paths[int(k)])
            if flips is None:
                out[i] = resize_uint8(img, self.size)
            else:
                out[i] = augment_uint8(img, self.size, bool(flips[i]), tuple(crops[i]), self.pad)
        return out

    def __getitem__(self, plan: dict) -> dict:
        if "positive" not in plan:
            return {"image": self._load(plan["index"]), "index": torch.from_numpy(np.asarray(plan["index"]))}
        return {
            "image": self._load(plan["index"], plan["flip"][0], plan["crop"][0]),
            "positive": self._load(plan["positive"], plan["flip"][1], plan["crop"][1]),
            "index": torch.from_numpy(plan["index"]),
            "positive_index": torch.from_numpy(plan["positive"]),
            "flip": torch.from_numpy(plan["flip"]),
            "erase": torch.from_numpy(plan["erase"]),
            "epoch": plan["epoch"],
            "position": plan["position"],
        }


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one decode per worker at a time; threads would fight over the cores
    ignore_stop_signals()  # a Ctrl-C or SIGTERM is the training process's to handle (it saves, then stops)


def make_loader(samples: Sequence[Sample], plans: Iterator[dict], size, pad: int, workers: int, pin: bool):
    """A DataLoader over ``plans`` (an iterator of batch plans, possibly infinite) yielding uint8 batches."""
    return DataLoader(
        PlanDataset([s.path for s in samples], size, pad),
        batch_size=None,
        sampler=plans,
        num_workers=workers,
        pin_memory=pin,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=2 if workers else None,
        # never fork: the training process runs torch's, OpenMP's and maybe DALI's threads (dgnet.data.workers)
        multiprocessing_context=pool_context() if workers else None,
        persistent_workers=False,
    )
