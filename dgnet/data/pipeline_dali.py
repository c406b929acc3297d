"""The DALI input pipeline: decode and augment on the GPU (nvJPEG, ``device="mixed"``), or on the CPU.

Like DALI's own PyTorch examples, this module imports no torch: the graph functions (decode, flip, resize,
pad-crop, normalise) are separate from the pipeline that adds the source, and the hand-over to torch
(:func:`to_torch`) imports DALI's torch plugin only when called.

The sample order and every random parameter come from :class:`dgnet.data.sampler.TrainSampler` through
``fn.external_source`` (``fn.readers.file`` cannot make pairs): the pairing logic lives once, and DALI
and the torch pipeline apply the same flips and crops to the same images. Random erasing is applied
afterwards on the device, on the torch tensors, by the shared :func:`dgnet.data.transforms.apply_erasing`.

The spec's edge-mode pad-10 random crop: DALI's crop cannot move inside an input of its own size, so it
is a ``warp_affine`` by the integer offset with nearest sampling and no ``fill_value`` (DALI then clamps
source coordinates: the border pixel repeats), which is exactly replicate padding followed by the crop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

IMAGENET_MEAN_255 = [0.485 * 255, 0.456 * 255, 0.406 * 255]
IMAGENET_STD_255 = [0.229 * 255, 0.224 * 255, 0.225 * 255]


def decode_resize(jpegs, decoder: str, size: tuple[int, int], flip=None):
    """Decode to RGB HWC uint8, optionally flip horizontally (per sample), bicubic resize to ``size``.

    EXIF orientation is applied (DALI's default, said here because the torch pipeline must match it:
    :func:`dgnet.data.decoding.orient`), so a phone photo is read upright.
    """
    images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, adjust_orientation=True)
    if flip is not None:
        images = fn.flip(images, horizontal=flip, vertical=0)
    return fn.resize(images, resize_y=size[0], resize_x=size[1], interp_type=types.INTERP_CUBIC, antialias=True)


def pad_crop(images, matrix, size: tuple[int, int]):
    """Edge-padded random crop: ``matrix`` is the per-sample destination->source map ``[[1,0,dx],[0,1,dy]]``."""
    return fn.warp_affine(images, matrix=matrix, size=list(size), interp_type=types.INTERP_NN)


def normalize(images):
    """HWC uint8 -> CHW float32, ImageNet mean/std."""
    return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                    mean=IMAGENET_MEAN_255, std=IMAGENET_STD_255)


def _read(path: str) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8)


def _matrix(crop: np.ndarray, pad: int) -> list[np.ndarray]:
    # crop: [B, 2] (y, x) offsets into the padded image -> destination->source translation (x, y order)
    return [np.array([[1, 0, x - pad], [0, 1, y - pad]], np.float32) for y, x in crop]


class _TrainSource:
    """External source: one call per batch, in order; remembers each plan until its batch is consumed."""

    def __init__(self, paths: Sequence[str], plans: Iterator[dict], pad: int) -> None:
        self.paths, self.plans, self.pad = paths, plans, pad
        self.pending: deque[dict] = deque()

    def __call__(self):
        plan = next(self.plans)
        self.pending.append(plan)
        flips = plan["flip"].astype(np.int32)
        return (
            [_read(self.paths[i]) for i in plan["index"]],
            [_read(self.paths[i]) for i in plan["positive"]],
            [np.array(f, np.int32) for f in flips[0]],
            [np.array(f, np.int32) for f in flips[1]],
            _matrix(plan["crop"][0], self.pad),
            _matrix(plan["crop"][1], self.pad),
        )


def train_pipeline(paths: Sequence[str], plans: Iterator[dict], batch_size: int, size: tuple[int, int], pad: int,
                   device_id: int | None, threads: int) -> tuple[Pipeline, _TrainSource]:
    """A built DALI pipeline with outputs ``(image, positive)``, each ``[B, 3, H, W]`` float32 normalised.

    ``device_id=None`` builds the CPU graph (decoders and operators on the CPU); otherwise the decode is
    ``mixed`` (nvJPEG) and every operator after it runs on that GPU.
    """
    source = _TrainSource(paths, plans, pad)
    pipe, _ = define_train_graph(source, batch_size, size, device_id, threads)
    pipe.build()
    return pipe, source


def define_train_graph(source, batch_size: int, size: tuple[int, int], device_id: int | None,
                       threads: int = 1) -> tuple[Pipeline, tuple]:
    """The training graph of ``train_pipeline``, defined but not built (defining needs no GPU, building does).

    Returns the pipeline and its two output nodes ``(image, positive)``, which lead back through the graph.
    """
    pipe = Pipeline(batch_size=batch_size, num_threads=max(1, threads), device_id=device_id, prefetch_queue_depth=2)
    decoder = "cpu" if device_id is None else "mixed"
    with pipe:
        jpg, pjpg, flip, pflip, mtx, pmtx = fn.external_source(source=source, num_outputs=6, batch=True,
                                                               dtype=[types.UINT8] * 2 + [types.INT32] * 2
                                                               + [types.FLOAT] * 2)
        image = normalize(pad_crop(decode_resize(jpg, decoder, size, flip), mtx, size))
        positive = normalize(pad_crop(decode_resize(pjpg, decoder, size, pflip), pmtx, size))
        pipe.set_outputs(image, positive)
    return pipe, (image, positive)


class _EvalSource:
    def __init__(self, paths: Sequence[str], batch_size: int) -> None:
        self.paths, self.batch_size, self.start = paths, batch_size, 0

    def __call__(self):
        if self.start >= len(self.paths):
            raise StopIteration
        chunk = self.paths[self.start : self.start + self.batch_size]
        self.start += len(chunk)
        return [_read(p) for p in chunk]


def eval_pipeline(paths: Sequence[str], batch_size: int, size: tuple[int, int], device_id: int | None,
                  threads: int) -> Pipeline:
    """A built pipeline over ``paths`` in order: decode, bicubic resize, normalise; the last batch may be short."""
    pipe = Pipeline(batch_size=batch_size, num_threads=max(1, threads), device_id=device_id, prefetch_queue_depth=2)
    with pipe:
        jpg = fn.external_source(source=_EvalSource(list(paths), batch_size), batch=True, dtype=types.UINT8)
        pipe.set_outputs(normalize(decode_resize(jpg, "cpu" if device_id is None else "mixed", size)))
    pipe.build()
    return pipe


def to_torch(tensor_list, device):
    """A dense DALI TensorList -> a torch tensor on ``device``; GPU data is copied device-to-device on the
    current stream (no host round trip). The copy is ours: DALI may reuse its buffer on the next run."""
    import torch
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    t = tensor_list.as_tensor()
    out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=device)
    stream = torch.cuda.current_stream(device) if out.is_cuda else None
    feed_ndarray(t, out, cuda_stream=stream)
    return out
