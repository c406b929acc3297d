"""The public Python API for using a trained model: :func:`load_model` and :class:`FeatureExtractor`.

    >>> import dgnet
    >>> fx = dgnet.FeatureExtractor("outputs/demo/dgnet.pt")          # doctest: +SKIP
    >>> feats = fx(["a.jpg", "b.jpg"])                                 # doctest: +SKIP  (2, 1024) float32
    >>> dist = dgnet.ops.pairwise_distance(feats, feats, "neg_dot")   # doctest: +SKIP

The features are the test protocol's (:mod:`dgnet.evaluation.protocol`): both heads, flip, normalisation, and the
fine-grained weight ``eval.alpha`` of the checkpoint's config, so their dot product is the score that
``python -m dgnet.test`` ranks by.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgnet.checkpoints.format import load_checkpoint
from dgnet.checkpoints.runs import MODEL_KINDS, build_model
from dgnet.config import config_from_dict
from dgnet.data import Sample, resolve_backend, test_stream
from dgnet.data.decoding import EXPECTED, MODES_16BIT_GREY, rgb8, scale16, unsupported
from dgnet.data.transforms import normalize, resize_uint8
from dgnet.evaluation.protocol import embed
from dgnet.runtime import resolve_device

ImageInput = str | Path | np.ndarray | Any  # a path, a uint8 HWC RGB array, or a PIL image


def load_model(path: str | Path, which: str = "dgnet", device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model ``which`` (``"dgnet"`` or ``"teacher"``) of any dgnet checkpoint, in eval mode on ``device``.

    ``"dgnet"`` is the :class:`dgnet.models.DGNet` with ``Ea``, ``Es``, ``G`` and ``D``; ``"teacher"`` the
    re-id baseline (:class:`dgnet.models.ReidBaseline`). Weights load with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a dgnet checkpoint, no such model in it, or non-finite weights (named).
    """
    if which not in MODEL_KINDS:
        raise ValueError(f"which={which!r}: expected one of {MODEL_KINDS}")
    return build_model(load_checkpoint(path), which, torch.device(device), source=str(path))


def _pil_rgb8(im: Any) -> np.ndarray:
    """A PIL image as ``(H, W, 3)`` uint8, read as the pipelines read files (``dgnet.data.decoding``)."""

    why = unsupported(im)
    if why is not None:
        raise ValueError(f"PIL image in mode {im.mode}: {why}; {EXPECTED}")
    if im.mode in MODES_16BIT_GREY:
        return np.repeat(scale16(np.asarray(im))[..., None], 3, axis=2)
    if im.mode == "P":
        return np.asarray(im.convert("RGBA"))[..., :3].copy()
    return np.array(im.convert("RGB"))


class FeatureExtractor:
    """Test-protocol features of images, from a dgnet checkpoint.

    Args:
        checkpoint: any dgnet checkpoint holding the model (``dgnet.pt``, ``teacher.pt``, a run's checkpoint).
        device: where the model runs and the features are returned (default: CUDA when available).
        batch_size: images per forward.
        which: ``"dgnet"`` (1024-d: primary and ``sqrt(alpha)``-scaled fine-grained halves) or ``"teacher"``
            (512-d).
        loader: how image *files* are decoded and resized: ``"auto"`` (DALI where it imports, decoding on the
            GPU with a CUDA device), ``"dali"`` or ``"torch"``; default: the checkpoint's ``data.loader``, as
            ``python -m dgnet.test`` reads it. PIL images and arrays always go through the torch transforms.

    ``fx(images)`` returns float32 ``(N, D)`` on ``fx.device``. ``images``: a list of file paths, PIL images or
    uint8 ``(H, W, 3)`` RGB arrays (any size; resized to the checkpoint's), or a float tensor
    ``(N, 3, H, W)`` already preprocessed as :meth:`preprocess` makes it.
    """

    def __init__(self, checkpoint: str | Path, device: str | torch.device | None = None, batch_size: int = 64,
                 which: str = "dgnet", loader: str | None = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")
        if which not in MODEL_KINDS:
            raise ValueError(f"which={which!r}: expected one of {MODEL_KINDS}")
        self.checkpoint = Path(checkpoint)
        ckpt = load_checkpoint(self.checkpoint)
        self.cfg = config_from_dict(ckpt["config"])
        self.device = resolve_device("auto" if device is None else str(device))
        self.model = build_model(ckpt, which, self.device, source=str(self.checkpoint))
        self.which, self.batch_size = which, batch_size
        self.alpha = self.cfg.eval.alpha
        self.size = (self.cfg.data.height, self.cfg.data.width)
        self.fingerprint = checkpoint_identity(ckpt)

        self.backend = resolve_backend(loader or self.cfg.data.loader, self.device)

    @property
    def dim(self) -> int:
        """Feature width: 1024 for DG-Net, 512 for the teacher (the heads' bottleneck widths)."""
        n = self.model.Ea.head_primary.bn.num_features if self.which == "dgnet" else self.model.head.bn.num_features
        return 2 * n if self.which == "dgnet" else n

    def preprocess(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        """``images`` as the test pipeline feeds the model: bicubic-resized to the checkpoint's ``(H, W)``,
        ImageNet-normalised; float32 ``(N, 3, H, W)`` on ``self.device``."""
        if isinstance(images, torch.Tensor):
            return self._check_tensor(images)
        out = []
        for i, im in enumerate(self._as_list(images)):
            if isinstance(im, (str, Path)):
                arr = rgb8(im)
            elif isinstance(im, np.ndarray):
                if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
                    raise ValueError(f"images[{i}]: a numpy image must be uint8 (H, W, 3) RGB, got {im.dtype} "
                                     f"{im.shape}")
                arr = im
            elif hasattr(im, "mode") and hasattr(im, "convert"):
                arr = _pil_rgb8(im)
            else:
                raise ValueError(f"images[{i}]: expected a path, a PIL image or a uint8 (H, W, 3) array, got "
                                 f"{type(im).__name__}")
            out.append(resize_uint8(torch.from_numpy(np.array(arr, copy=not arr.flags.writeable)).permute(2, 0, 1),
                                    self.size))
        return normalize(torch.stack(out).to(self.device))

    @torch.no_grad()
    def __call__(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            x = self._check_tensor(images)
            if len(x) == 0:
                return torch.zeros(0, self.dim, device=self.device)
            return torch.cat([embed(self.model, self.which, x[i : i + self.batch_size], self.alpha)
                              for i in range(0, len(x), self.batch_size)])
        images = self._as_list(images)
        if not images:
            return torch.zeros(0, self.dim, device=self.device)
        if all(isinstance(im, (str, Path)) for im in images):
            return torch.cat(list(self.batches([str(p) for p in images])))
        return torch.cat([embed(self.model, self.which, self.preprocess(images[i : i + self.batch_size]), self.alpha)
                          for i in range(0, len(images), self.batch_size)])

    def batches(self, paths: Sequence[str]) -> Iterator[torch.Tensor]:
        """Features of image files in order, one ``(B, D)`` batch at a time, decoded by the test pipeline
        (``loader``): what ``python -m dgnet.extract`` streams to disk."""
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"image {p!r} does not exist")
        stream = test_stream([Sample(str(p), -1, -1) for p in paths], self.backend, batch_size=self.batch_size,
                             size=self.size, device=self.device, workers=self.cfg.data.workers)
        with torch.no_grad():
            for batch in stream:  # test_stream yields batches in sample order
                yield embed(self.model, self.which, batch["image"], self.alpha)

    def _check_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point() or x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.size:
            raise ValueError(f"images: a tensor must be float (N, 3, {self.size[0]}, {self.size[1]}) as preprocess() "
                             f"makes it (this checkpoint's size), got {x.dtype} {tuple(x.shape)}")
        return x.to(self.device, torch.float32)

    @staticmethod
    def _as_list(images: Any) -> list:
        if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "mode"):
            return [images]  # one image
        return list(images)

    def __repr__(self) -> str:
        return (f"FeatureExtractor({str(self.checkpoint)!r}, which={self.which!r}, device={str(self.device)!r}, "
                f"size={self.size}, alpha={self.alpha}, dim={self.dim})")


def checkpoint_identity(ckpt: dict) -> str:
    """A short identity of a checkpoint's weights and test protocol: features written with one are never mixed
    with another's (``dgnet.extract`` / ``dgnet.search`` record and check it)."""
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(json.dumps({"fingerprint": ckpt.get("fingerprint"), "stage": ckpt.get("stage"),
                         "iteration": ckpt.get("iteration"), "alpha": ckpt["config"]["eval"]["alpha"],
                         "size": [ckpt["config"]["data"]["height"], ckpt["config"]["data"]["width"]]},
                        sort_keys=True).encode())
    for name in sorted(ckpt["models"]):
        for key, t in sorted(ckpt["models"][name].items()):
            if t.is_floating_point():
                h.update(key.encode())
                h.update(t.detach().float().sum().item().hex().encode())
    return h.hexdigest()[:16]
