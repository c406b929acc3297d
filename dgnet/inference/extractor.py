"""The public Python API for using a trained model: :func:`load_model` and :class:`FeatureExtractor`.

    >>> import dgnet
    >>> fx = dgnet.FeatureExtractor("outputs/demo/dgnet.pt")          # doctest: +SKIP
    >>> feats = fx(["a.jpg", "b.jpg"])                                 # doctest: +SKIP  (2, 1024) float32
    >>> dist = dgnet.ops.pairwise_distance(feats, feats, "neg_dot")   # doctest: +SKIP
    >>> fx = dgnet.FeatureExtractor(model, config=cfg)                # doctest: +SKIP  a DGNet in memory

docs/api.md is the user's guide.

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
from dgnet.config import Config, config_from_dict
from dgnet.data import Sample, resolve_backend, test_stream
from dgnet.data.check import is_corrupt
from dgnet.data.decoding import (
    EXPECTED,
    MODES_16BIT_GREY,
    check_file_size,
    orient,
    orientation,
    refuse_too_large,
    rgb8,
    scale16,
    unsupported,
)
from dgnet.data.transforms import normalize, resize_uint8
from dgnet.evaluation.protocol import embed
from dgnet.models import DGNet, ReidBaseline, eval_mode
from dgnet.runtime import resolve_device

ImageInput = str | Path | np.ndarray | torch.Tensor | Any  # a path, a uint8 array or tensor, or a PIL image


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
    """A PIL image as ``(H, W, 3)`` uint8, read as the pipelines read files (``dgnet.data.decoding``): upright by
    its EXIF orientation (an image opened from a file keeps its tag)."""
    refuse_too_large(im.size, f"PIL image of size {im.size}")
    why = unsupported(im)
    if why is not None:
        raise ValueError(f"PIL image in mode {im.mode}: {why}; {EXPECTED}")
    if im.mode in MODES_16BIT_GREY:
        arr = np.repeat(scale16(np.asarray(im))[..., None], 3, axis=2)
    elif im.mode == "P":
        arr = np.asarray(im.convert("RGBA"))[..., :3].copy()
    else:
        arr = np.array(im.convert("RGB"))
    return orient(arr, orientation(im))


def _array_rgb8(arr: np.ndarray, where: str) -> np.ndarray:
    """A uint8 ``(H, W)`` grey, ``(H, W, 1)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA array as ``(H, W, 3)`` RGB,
    as Pillow's ``convert("RGB")`` reads the same image from a file: grey replicated, alpha dropped (not
    composited)."""
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"{where}: a numpy image must be uint8 (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA, got "
                         f"{arr.dtype} {arr.shape}")
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[..., :3]


_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA


def _tensor_hwc(t: torch.Tensor, where: str) -> list[np.ndarray]:
    """A uint8 image tensor (CHW, NCHW, or HWC / NHWC where the channel axis is not in doubt) as HWC arrays."""
    if t.dim() not in (3, 4):
        raise ValueError(f"{where}: a uint8 image tensor must be (C, H, W) or (N, C, H, W), got {tuple(t.shape)}")
    first, last = t.shape[-3] in _CHANNELS, t.shape[-1] in _CHANNELS
    if first and last and t.shape[-3] != t.shape[-1]:
        raise ValueError(f"{where}: uint8 tensor {tuple(t.shape)}: both its first and last image axes could hold "
                         "the channels; pass it as (N, C, H, W)")
    if not (first or last):
        raise ValueError(f"{where}: uint8 tensor {tuple(t.shape)}: no axis of 1, 3 or 4 channels; expected (N, C, H, "
                         "W) or (N, H, W, C) with grey, RGB or RGBA channels")
    batch = t.detach().cpu() if t.dim() == 4 else t.detach().cpu()[None]
    if first:  # channels first (also when both axes agree: an image of as many rows as channels is not plausible)
        batch = batch.permute(0, 2, 3, 1)
    return [_array_rgb8(img.numpy(), where) for img in batch]


class FeatureExtractor:
    """Test-protocol features of images, from a dgnet checkpoint or a model in memory.

    Args:
        model_or_path: a dgnet checkpoint holding the model (``dgnet.pt``, ``teacher.pt``, a run's checkpoint), or
            a :class:`dgnet.models.DGNet` or :class:`dgnet.models.ReidBaseline` (the teacher) in memory, e.g. one
            being fine-tuned. A model is used as it is (not copied; run in eval mode, its own mode restored after).
        device: where the model runs and the features are returned (default: CUDA when available for a
            checkpoint; a model's own device, which must not be another).
        batch_size: images per forward.
        which: ``"dgnet"`` (1024-d: primary and ``sqrt(alpha)``-scaled fine-grained halves) or ``"teacher"``
            (512-d); default: the model's kind, or the checkpoint's DG-Net when it holds one, else its teacher.
        loader: how image *files* are decoded and resized: ``"auto"`` (DALI where it imports, decoding on the
            GPU with a CUDA device), ``"dali"`` or ``"torch"``; default: the config's ``data.loader``, as
            ``python -m dgnet.test`` reads it. Images in memory always go through the torch transforms.
        config: for a model in memory, its run's :class:`dgnet.config.Config` (input size ``data.height`` x
            ``data.width``, ``eval.alpha``, ``data.loader``); default ``Config()``: 256x128, alpha 0.5.
        skip_errors: files that cannot be read are skipped (listed in :attr:`skipped`, with the reason) instead of
            raising a ``ValueError`` that names them all.

    ``fx(images)`` returns float32 ``(N, D)`` on ``fx.device``. ``images``: one image or a list of them, each a file
    path, a PIL image, a uint8 numpy array (``(H, W)`` grey, ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA), or a uint8
    tensor (``(3, H, W)``, or ``(H, W, 3)``; grey and RGBA too); or a uint8 ``(N, C, H, W)`` (or ``(N, H, W, C)``)
    batch. Any size (resized to the model's), converted as the same image read from a file (grey -> RGB, alpha
    dropped, EXIF orientation applied). A *float* tensor ``(N, 3, H, W)`` or ``(3, H, W)`` is taken as already
    preprocessed, as :meth:`preprocess` makes it (torchreid's convention): ``fx.preprocess(x)`` turns pixels
    (uint8, or float in [0, 1]) into that.

    After each call :attr:`skipped` maps each image that could not be read (its path, or ``images[i]``) to the
    reason, and :attr:`kept` lists the positions in ``images`` of the returned rows (all of them unless
    ``skip_errors`` skipped some).
    """

    def __init__(self, model_or_path: str | Path | torch.nn.Module, device: str | torch.device | None = None,
                 batch_size: int = 64, which: str | None = None, loader: str | None = None, *,
                 config: Config | None = None, skip_errors: bool = False) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected an integer >= 1")
        if which is not None and which not in MODEL_KINDS:
            raise ValueError(f"which={which!r}: expected one of {MODEL_KINDS}")
        self._ckpt_identity: str | None = None
        if isinstance(model_or_path, torch.nn.Module):
            kinds = {DGNet: "dgnet", ReidBaseline: "teacher"}
            kind = next((k for cls, k in kinds.items() if isinstance(model_or_path, cls)), None)
            if kind is None:
                raise TypeError(f"model_or_path: a {type(model_or_path).__name__}; expected a checkpoint path, a "
                                "dgnet.models.DGNet or a dgnet.models.ReidBaseline (the teacher)")
            if which is not None and which != kind:
                raise ValueError(f"which={which!r}, but the model is a {type(model_or_path).__name__} ({kind!r})")
            self.checkpoint = None
            self.cfg = config if config is not None else Config()
            param = next(model_or_path.parameters())
            self.device = param.device if device is None else torch.device(device)
            if self.device != param.device:
                raise ValueError(f"device={str(device)!r}, but the model is on {param.device}; move it first (it is "
                                 "used as it is, not copied)")
            self.model, self.which = model_or_path, kind
        elif isinstance(model_or_path, (str, Path)):
            self.checkpoint = Path(model_or_path)
            ckpt = load_checkpoint(self.checkpoint)
            self.cfg = config_from_dict(ckpt["config"])
            self.which = which or next((k for k in MODEL_KINDS if k in ckpt["models"]), "dgnet")
            self.device = resolve_device("auto" if device is None else str(device))
            self.model = build_model(ckpt, self.which, self.device, source=str(self.checkpoint))
            self._ckpt_identity = checkpoint_identity(ckpt)
        else:
            raise TypeError(f"model_or_path: a {type(model_or_path).__name__}; expected a checkpoint path or a "
                            "dgnet model")
        self.batch_size, self.skip_errors = batch_size, skip_errors
        self.alpha = self.cfg.eval.alpha
        self.size = (self.cfg.data.height, self.cfg.data.width)
        self.skipped: dict[str, str] = {}
        self.kept: list[int] = []
        self.backend = resolve_backend(loader or self.cfg.data.loader, self.device)

    @property
    def fingerprint(self) -> str:
        """The identity of the weights and the protocol (:func:`checkpoint_identity`): features with another are
        never mixed. A model in memory is hashed as it is now (fine-tuning changes it)."""
        if self._ckpt_identity is not None:
            return self._ckpt_identity
        return checkpoint_identity({"config": self.cfg.to_dict(), "models": {self.which: self.model.state_dict()}})

    @property
    def dim(self) -> int:
        """Feature width: 1024 for DG-Net, 512 for the teacher (the heads' bottleneck widths)."""
        n = self.model.Ea.head_primary.bn.num_features if self.which == "dgnet" else self.model.head.bn.num_features
        return 2 * n if self.which == "dgnet" else n

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        with eval_mode(self.model):
            return embed(self.model, self.which, x, self.alpha)

    def preprocess(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        """``images`` (any kind ``fx(...)`` takes as pixels; a float tensor here is pixels in [0, 1], as
        torchvision's ``to_tensor`` gives) as the test pipeline feeds the model: bicubic-resized to ``(H, W)``,
        ImageNet-normalised; float32 ``(N, 3, H, W)`` on ``self.device``."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            images = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)
        return self._normalised(self._pixels(images))

    def _normalised(self, pixels: list[np.ndarray]) -> torch.Tensor:
        out = [resize_uint8(torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1), self.size) for a in pixels]
        if not out:
            return torch.zeros(0, 3, *self.size, device=self.device)
        return normalize(torch.stack(out).to(self.device))

    def _pixels(self, images: Any) -> list[np.ndarray]:
        """Each image as ``(H, W, 3)`` uint8 RGB (files read as the pipelines read them); errors name the image."""
        if isinstance(images, torch.Tensor):
            return _tensor_hwc(images, "images")
        return [a for i, im in enumerate(self._as_list(images)) for a in self._image(im, f"images[{i}]")]

    def _image(self, im: Any, where: str) -> list[np.ndarray]:
        if isinstance(im, (str, Path)):
            self._require_file(im)
            try:
                return [rgb8(im)]
            except Exception as e:  # noqa: BLE001 - any decode failure, named with its file
                raise ValueError(f"{im}: cannot read it ({type(e).__name__}: {e})") from e
        if isinstance(im, np.ndarray):
            return [_array_rgb8(im, where)]
        if isinstance(im, torch.Tensor):
            if im.is_floating_point() or im.dim() != 3:
                raise ValueError(f"{where}: a tensor in a list must be one uint8 image (3, H, W) or (H, W, 3), got "
                                 f"{im.dtype} {tuple(im.shape)}")
            return _tensor_hwc(im, where)
        if hasattr(im, "mode") and hasattr(im, "convert"):
            return [_pil_rgb8(im)]
        raise ValueError(f"{where}: expected a path, a PIL image, a uint8 numpy array or tensor, got "
                         f"{type(im).__name__}")

    @torch.no_grad()
    def __call__(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        self.skipped = {}
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            x = self._check_tensor(images)
            self.kept = list(range(len(x)))
            return self._embed_batches(x)
        items = [images] if isinstance(images, torch.Tensor) else self._as_list(images)
        if items and all(isinstance(im, (str, Path)) for im in items):
            return self._files(items)
        if isinstance(images, torch.Tensor):
            x = self.preprocess(images)
            self.kept = list(range(len(x)))
            return self._embed_batches(x)
        if items and all(isinstance(im, torch.Tensor) and im.is_floating_point() for im in items):
            x = self._check_tensor(torch.stack(items))  # a list of preprocessed images
            self.kept = list(range(len(x)))
            return self._embed_batches(x)
        feats, pending, kept = [], [], []
        for i, im in enumerate(items):  # one at a time, so that a file that cannot be read names itself
            try:
                pending += self._image(im, f"images[{i}]")
                kept.append(i)
            except (ValueError, OSError) as e:
                if not (self.skip_errors and isinstance(im, (str, Path))):
                    raise
                self.skipped[str(im)] = str(e)
            if len(pending) >= self.batch_size or (i == len(items) - 1 and pending):
                feats.append(self._embed(self._normalised(pending)))  # a batch at a time: bounded memory
                pending = []
        self.kept = kept
        return torch.cat(feats) if feats else torch.zeros(0, self.dim, device=self.device)

    def _embed_batches(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            return torch.zeros(0, self.dim, device=self.device)
        return torch.cat([self._embed(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def _files(self, items: list) -> torch.Tensor:
        paths, kept = [], []
        for i, p in enumerate(items):
            try:
                self._require_file(p)
            except (FileNotFoundError, IsADirectoryError) as e:
                if not self.skip_errors:
                    raise
                self.skipped[str(p)] = str(e)
                continue
            paths.append(str(p))
            kept.append(i)
        feats = [f for f in self.batches(paths)] if paths else []
        read = set(paths) - set(self.skipped)
        self.kept = [i for i in kept if str(items[i]) in read]
        return torch.cat(feats) if feats else torch.zeros(0, self.dim, device=self.device)

    @staticmethod
    def _require_file(p: str | Path) -> None:
        path = Path(p)
        if path.is_dir():
            raise IsADirectoryError(f"image {str(p)!r} is a folder; pass its images "
                                    f"(dgnet.inference.gallery.list_images({str(p)!r}) lists them)")
        if not path.is_file():
            raise FileNotFoundError(f"image {str(p)!r} does not exist")

    def batches(self, paths: Sequence[str]) -> Iterator[torch.Tensor]:
        """Features of image files in order, one ``(B, D)`` batch at a time, decoded by the test pipeline
        (``loader``) at full batches: what ``python -m dgnet.extract`` streams to disk.

        A file that cannot be read stops the pipeline; the files from the failing batch on are then checked
        (:func:`dgnet.data.check.is_corrupt`) to name it: a ``ValueError`` lists each with its reason, or with
        ``skip_errors`` they are recorded in :attr:`skipped` and the stream goes on without them.
        """
        for p in paths:
            self._require_file(p)
            check_file_size(p)  # the commands' decompression-bomb limit, whichever decoder runs
        todo = [str(p) for p in paths]
        while todo:
            stream = test_stream([Sample(p, -1, -1) for p in todo], self.backend, batch_size=self.batch_size,
                                 size=self.size, device=self.device, workers=self.cfg.data.workers)
            it, done = iter(stream), 0
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    return
                except Exception as exc:  # noqa: BLE001 - whatever the decoder raised: find the file
                    rest = todo[done:]
                    # DALI runs a few batches ahead: look there first, then at everything after
                    window = 3 * self.batch_size
                    bad = {p: w for p in rest[:window] if (w := is_corrupt(p)) is not None}
                    if not bad:
                        bad = {p: w for p in rest[window:] if (w := is_corrupt(p)) is not None}
                    if not bad:
                        raise RuntimeError(f"the {self.backend} loader failed on images {rest[0]!r} .. (none of them "
                                           f"fails the decode check): {type(exc).__name__}: {exc}") from exc
                    if not self.skip_errors:
                        listed = "\n  ".join(f"{p}: {w}" for p, w in bad.items())
                        raise ValueError(f"{len(bad)} image(s) cannot be read:\n  {listed}\n(skip_errors=True skips "
                                         "them; python -m dgnet.data.check lists a folder's)") from None
                    self.skipped.update(bad)
                    todo = [p for p in rest if p not in bad]
                    break
                with torch.no_grad():
                    yield self._embed(batch["image"])
                done += len(batch["image"])

    def _check_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x[None]
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.size:
            raise ValueError(f"images: a float tensor is taken as preprocessed, (N, 3, {self.size[0]}, {self.size[1]}) "
                             f"as preprocess() makes it (this model's size), got {x.dtype} {tuple(x.shape)}; pass "
                             "pixels as uint8, or float pixels in [0, 1] through fx.preprocess(x)")
        return x.to(self.device, torch.float32)

    @staticmethod
    def _as_list(images: Any) -> list:
        if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "mode"):
            return [images]  # one image
        return list(images)

    def __repr__(self) -> str:
        source = str(self.checkpoint) if self.checkpoint is not None else f"<{type(self.model).__name__} in memory>"
        return (f"FeatureExtractor({source!r}, which={self.which!r}, device={str(self.device)!r}, "
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
